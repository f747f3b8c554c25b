SELECT
  "contacts"."contact_id"
FROM "contacts"
WHERE
  NOT (
    NOT "contacts"."state" IS NULL
    AND LOWER("contacts"."state") IN ('ca', 'new york')
  )
  AND (
    NOT SUBSTRING(
      "contacts"."email",
      LENGTH("contacts"."email") - CHARINDEX('@', REVERSE("contacts"."email")) + 2
    ) IS NULL
    AND ENDSWITH(
      LOWER(
        SUBSTRING(
          "contacts"."email",
          LENGTH("contacts"."email") - CHARINDEX('@', REVERSE("contacts"."email")) + 2
        )
      ),
      'example.com'
    )
  )
  AND (
    NOT "contacts"."from" IS NULL
    AND CHARINDEX('x\' or 1=1 --', LOWER("contacts"."from")) > 0
  )
  AND (
    NOT "contacts"."order" IS NULL AND "contacts"."order" BETWEEN 1.0 AND 2.5
  )
  AND NOT (
    NOT "contacts"."age" IS NULL
  )
  AND (
    NOT "contacts"."birthday" IS NULL
    AND "contacts"."birthday" BETWEEN CAST('2026-05-31' AS DATE) AND CAST('2026-06-30' AS DATE)
  )
  AND NOT (
    NOT DATEADD(
      DAY,
      FLOOR(DATE_PART(EPOCH_MICROSECOND, "contacts"."last_seen") / 86400000000),
      CAST('1970-01-01' AS DATE)
    ) IS NULL
    AND DATEADD(
      DAY,
      FLOOR(DATE_PART(EPOCH_MICROSECOND, "contacts"."last_seen") / 86400000000),
      CAST('1970-01-01' AS DATE)
    ) = CAST('2026-06-30' AS DATE)
  )
  AND (
    NOT "contacts"."vip" IS NULL AND "contacts"."vip" = TRUE
  )
  AND (
    NOT "contacts"."status" IS NULL
    AND LOWER("contacts"."status") IN ('active', 'bounced')
  )
  AND (
    COALESCE(
      ARRAY_SIZE(FILTER("contacts"."lists", list_name -> LOWER(list_name) IN ('newsletter'))),
      0
    ) > 0
    AND COALESCE(
      ARRAY_SIZE(
        FILTER("contacts"."lists", list_name -> LOWER(REPLACE(list_name, 'İ', 'i̇')) IN ('vip'))
      ),
      0
    ) > 0
  )
  AND NOT (
    NOT (
      NOT "contacts"."lists" IS NULL
      AND COALESCE(ARRAY_SIZE("contacts"."lists"), 0) > 0
    )
  )
