SELECT
  `contacts`.`contact_id`
FROM `contacts`
WHERE
  NOT (
    NOT (
      (
        NOT `contacts`.`state` IS NULL
        AND LOWER(REPLACE(`contacts`.`state`, 'I', 'i')) = 'οδος'
      )
      OR EXISTS(
        SELECT
          1
        FROM (
          SELECT
            `events`.`contact_id`
          FROM `events`
          WHERE
            `events`.`type` = 'bounce' AND NOT `events`.`contact_id` IS NULL
        ) AS `matched`
        WHERE
          `matched`.`contact_id` = `contacts`.`contact_id`
      )
      OR NOT (
        TRUE
      )
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
            `events`.`type` = 'open' AND NOT `events`.`contact_id` IS NULL
        ) AS `matched`
        WHERE
          `matched`.`contact_id` = `contacts`.`contact_id`
      )
    )
    AND FALSE
  )
