SELECT
  `contacts`.`contact_id`
FROM `contacts`
WHERE
  NOT (
    NOT `contacts`.`state` IS NULL
    AND LOWER(REPLACE(`contacts`.`state`, 'I', 'i')) IN ('ca', 'new york')
  )
  AND (
    NOT SUBSTRING(
      `contacts`.`email`,
      LENGTH(`contacts`.`email`) - LOCATE('@', REVERSE(`contacts`.`email`)) + 2
    ) IS NULL
    AND ENDSWITH(
      LOWER(
        REPLACE(
          SUBSTRING(
            `contacts`.`email`,
            LENGTH(`contacts`.`email`) - LOCATE('@', REVERSE(`contacts`.`email`)) + 2
          ),
          'I',
          'i'
        )
      ),
      'example.com'
    )
  )
  AND (
    NOT `contacts`.`from` IS NULL
    AND LOCATE('x\' or 1=1 --', LOWER(REPLACE(`contacts`.`from`, 'I', 'i'))) > 0
  )
  AND (
    NOT `contacts`.`order` IS NULL AND `contacts`.`order` BETWEEN 1.0 AND 2.5
  )
  AND NOT (
    NOT `contacts`.`age` IS NULL
  )
  AND (
    NOT `contacts`.`birthday` IS NULL
    AND `contacts`.`birthday` BETWEEN CAST('2026-05-31' AS DATE) AND CAST('2026-06-30' AS DATE)
  )
  AND NOT (
    NOT CASE
      WHEN TYPEOF(`contacts`.`last_seen`) = 'timestamp_ntz'
      THEN CAST(`contacts`.`last_seen` AS DATE)
      ELSE DATE_FROM_UNIX_DATE(
        CAST(FLOOR(UNIX_SECONDS(CAST(`contacts`.`last_seen` AS TIMESTAMP)) / 86400) AS INT)
      )
    END IS NULL
    AND CASE
      WHEN TYPEOF(`contacts`.`last_seen`) = 'timestamp_ntz'
      THEN CAST(`contacts`.`last_seen` AS DATE)
      ELSE DATE_FROM_UNIX_DATE(
        CAST(FLOOR(UNIX_SECONDS(CAST(`contacts`.`last_seen` AS TIMESTAMP)) / 86400) AS INT)
      )
    END = CAST('2026-06-30' AS DATE)
  )
  AND (
    NOT `contacts`.`vip` IS NULL AND `contacts`.`vip` = TRUE
  )
  AND (
    NOT `contacts`.`status` IS NULL
    AND LOWER(REPLACE(`contacts`.`status`, 'I', 'i')) IN ('active', 'bounced')
  )
  AND (
    COALESCE(
      SIZE(
        FILTER(
          `contacts`.`lists`,
          list_name -> LOWER(REPLACE(list_name, 'I', 'i')) IN ('newsletter')
        )
      ),
      0
    ) > 0
    AND COALESCE(
      SIZE(
        FILTER(
          `contacts`.`lists`,
          list_name -> LOWER(REPLACE(REPLACE(list_name, 'İ', 'i̇'), 'I', 'i')) IN ('vip')
        )
      ),
      0
    ) > 0
  )
  AND NOT (
    NOT (
      NOT `contacts`.`lists` IS NULL AND COALESCE(SIZE(`contacts`.`lists`), 0) > 0
    )
  )
