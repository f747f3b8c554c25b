SELECT
  "contacts"."contact_id"
FROM "contacts"
WHERE
  "contacts"."contact_id" IN (
    SELECT
      "events"."contact_id"
    FROM "events"
    WHERE
      "events"."type" = 'open'
      AND NOT "events"."contact_id" IS NULL
      AND CAST(MAKE_TIMESTAMP(EPOCH_US("events"."timestamp")) AS DATE) BETWEEN CAST('2026-01-01' AS DATE) AND CAST('2026-03-31' AS DATE)
  )
  OR "contacts"."contact_id" IN (
    SELECT
      "events"."contact_id"
    FROM "events"
    WHERE
      "events"."type" = 'click'
      AND NOT "events"."contact_id" IS NULL
      AND CAST(MAKE_TIMESTAMP(EPOCH_US("events"."timestamp")) AS DATE) BETWEEN CAST('2026-06-23' AS DATE) AND CAST('2026-06-30' AS DATE)
      AND (
        NOT "events"."url" IS NULL
        AND STRPOS(LOWER(REPLACE("events"."url", 'İ', 'i̇')), 'pricing') > 0
      )
  )
  OR "contacts"."contact_id" IN (
    SELECT
      "events"."contact_id"
    FROM "events"
    WHERE
      "events"."type" = 'open'
      AND NOT "events"."contact_id" IS NULL
      AND "events"."campaign" IN ('c1', 'c2')
    GROUP BY
      "events"."contact_id"
    HAVING
      COUNT(*) BETWEEN 2 AND 5
  )
  OR NOT (
    "contacts"."contact_id" IN (
      SELECT
        "events"."contact_id"
      FROM "events"
      WHERE
        "events"."type" = 'click' AND NOT "events"."contact_id" IS NULL
      GROUP BY
        "events"."contact_id"
      HAVING
        NOT (
          COUNT(*) <= 2
        )
    )
  )
