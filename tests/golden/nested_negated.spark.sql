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
      OR `contacts`.`contact_id` IN (
        SELECT
          `events`.`contact_id`
        FROM `events`
        WHERE
          `events`.`type` = 'bounce' AND NOT `events`.`contact_id` IS NULL
      )
      OR NOT (
        TRUE
      )
    )
    AND NOT (
      `contacts`.`contact_id` IN (
        SELECT
          `events`.`contact_id`
        FROM `events`
        WHERE
          `events`.`type` = 'open' AND NOT `events`.`contact_id` IS NULL
      )
    )
    AND FALSE
  )
