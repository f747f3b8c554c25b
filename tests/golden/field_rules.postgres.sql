SELECT
  "contacts"."contact_id"
FROM "contacts"
WHERE
  NOT (
    NOT "contacts"."state" IS NULL
    AND LOWER("contacts"."state") IN ('ca', 'new york')
  )
  AND (
    NOT SUBSTRING("contacts"."email" FROM LENGTH("contacts"."email") - POSITION('@' IN REVERSE("contacts"."email")) + 2) IS NULL
    AND RIGHT(
      LOWER(
        SUBSTRING("contacts"."email" FROM LENGTH("contacts"."email") - POSITION('@' IN REVERSE("contacts"."email")) + 2)
      ),
      11
    ) = 'example.com'
  )
  AND (
    NOT "contacts"."from" IS NULL
    AND POSITION('x'' or 1=1 --' IN LOWER("contacts"."from")) > 0
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
    NOT CAST('1970-01-01' AS DATE) + CAST(FLOOR(EXTRACT(EPOCH FROM "contacts"."last_seen") / 86400) AS INT) IS NULL
    AND CAST('1970-01-01' AS DATE) + CAST(FLOOR(EXTRACT(EPOCH FROM "contacts"."last_seen") / 86400) AS INT) = CAST('2026-06-30' AS DATE)
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
      ARRAY_LENGTH(
        ARRAY(SELECT
          list_name
        FROM UNNEST("contacts"."lists") AS _t0(list_name)
        WHERE
          LOWER(list_name) IN ('newsletter')),
        1
      ),
      0
    ) > 0
    AND COALESCE(
      ARRAY_LENGTH(
        ARRAY(SELECT
          list_name
        FROM UNNEST("contacts"."lists") AS _t1(list_name)
        WHERE
          LOWER(REPLACE(list_name, 'İ', 'i̇')) IN ('vip')),
        1
      ),
      0
    ) > 0
  )
  AND NOT (
    NOT (
      NOT "contacts"."lists" IS NULL
      AND COALESCE(ARRAY_LENGTH("contacts"."lists", 1), 0) > 0
    )
  )
