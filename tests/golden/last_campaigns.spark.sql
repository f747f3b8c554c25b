WITH `recent_campaigns` AS (
  SELECT
    `events`.`campaign`,
    ROW_NUMBER() OVER (ORDER BY MIN(`events`.`timestamp`) DESC, `events`.`campaign` DESC) AS `recency`
  FROM `events`
  WHERE
    `events`.`type` = 'sent' AND NOT `events`.`campaign` IS NULL
  GROUP BY
    `events`.`campaign`
  HAVING
    CASE
      WHEN TYPEOF(MIN(`events`.`timestamp`)) = 'timestamp_ntz'
      THEN CAST(MIN(`events`.`timestamp`) AS DATE)
      ELSE DATE_FROM_UNIX_DATE(
        CAST(FLOOR(UNIX_SECONDS(CAST(MIN(`events`.`timestamp`) AS TIMESTAMP)) / 86400) AS INT)
      )
    END <= CAST('2026-06-30' AS DATE)
)
SELECT
  `contacts`.`contact_id`
FROM `contacts`
WHERE
  (
    NOT `contacts`.`status` IS NULL
    AND LOWER(REPLACE(`contacts`.`status`, 'I', 'i')) = 'active'
  )
  AND NOT (
    EXISTS(
      SELECT
        1
      FROM (
        SELECT
          `events`.`contact_id`
        FROM `events`
        WHERE
          `events`.`type` = 'open'
          AND NOT `events`.`contact_id` IS NULL
          AND `events`.`campaign` IN (
            SELECT
              `campaign`
            FROM `recent_campaigns`
            WHERE
              `recency` <= 3
          )
      ) AS `matched`
      WHERE
        `matched`.`contact_id` = `contacts`.`contact_id`
    )
  )
  AND EXISTS(
    SELECT
      1
    FROM (
      SELECT
        `events`.`contact_id`
      FROM `events`
      WHERE
        `events`.`type` = 'sent'
        AND NOT `events`.`contact_id` IS NULL
        AND `events`.`campaign` IN (
          SELECT
            `campaign`
          FROM `recent_campaigns`
          WHERE
            `recency` <= 1
        )
    ) AS `matched`
    WHERE
      `matched`.`contact_id` = `contacts`.`contact_id`
  )
