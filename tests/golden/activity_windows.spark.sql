SELECT
  `contacts`.`contact_id`
FROM `contacts`
WHERE
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
        AND CASE
          WHEN TYPEOF(`events`.`timestamp`) = 'timestamp_ntz'
          THEN CAST(`events`.`timestamp` AS DATE)
          ELSE DATE_FROM_UNIX_DATE(
            CAST(FLOOR(UNIX_SECONDS(CAST(`events`.`timestamp` AS TIMESTAMP)) / 86400) AS INT)
          )
        END BETWEEN CAST('2026-01-01' AS DATE) AND CAST('2026-03-31' AS DATE)
    ) AS `matched`
    WHERE
      `matched`.`contact_id` = `contacts`.`contact_id`
  )
  OR EXISTS(
    SELECT
      1
    FROM (
      SELECT
        `events`.`contact_id`
      FROM `events`
      WHERE
        `events`.`type` = 'click'
        AND NOT `events`.`contact_id` IS NULL
        AND CASE
          WHEN TYPEOF(`events`.`timestamp`) = 'timestamp_ntz'
          THEN CAST(`events`.`timestamp` AS DATE)
          ELSE DATE_FROM_UNIX_DATE(
            CAST(FLOOR(UNIX_SECONDS(CAST(`events`.`timestamp` AS TIMESTAMP)) / 86400) AS INT)
          )
        END BETWEEN CAST('2026-06-23' AS DATE) AND CAST('2026-06-30' AS DATE)
        AND (
          NOT `events`.`url` IS NULL
          AND LOCATE('pricing', LOWER(REPLACE(REPLACE(`events`.`url`, 'İ', 'i̇'), 'I', 'i'))) > 0
        )
    ) AS `matched`
    WHERE
      `matched`.`contact_id` = `contacts`.`contact_id`
  )
  OR EXISTS(
    SELECT
      1
    FROM (
      SELECT
        `events`.`contact_id`
      FROM `events`
      WHERE
        `events`.`type` = 'open'
        AND NOT `events`.`contact_id` IS NULL
        AND `events`.`campaign` IN ('c1', 'c2')
      GROUP BY
        `events`.`contact_id`
      HAVING
        COUNT(*) BETWEEN 2 AND 5
    ) AS `matched`
    WHERE
      `matched`.`contact_id` = `contacts`.`contact_id`
  )
  OR NOT (
    EXISTS(
      SELECT
        1
      FROM (
        SELECT
          `events`.`contact_id`
        FROM `events`
        WHERE
          `events`.`type` = 'click' AND NOT `events`.`contact_id` IS NULL
        GROUP BY
          `events`.`contact_id`
        HAVING
          NOT (
            COUNT(*) <= 2
          )
      ) AS `matched`
      WHERE
        `matched`.`contact_id` = `contacts`.`contact_id`
    )
  )
