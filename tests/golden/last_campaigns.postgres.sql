WITH "recent_campaigns" AS (
  SELECT
    "events"."campaign",
    ROW_NUMBER() OVER (
      ORDER BY MIN("events"."timestamp") DESC NULLS LAST, "events"."campaign" COLLATE "C" DESC NULLS LAST
    ) AS "recency"
  FROM "events"
  WHERE
    "events"."type" = 'sent' AND NOT "events"."campaign" IS NULL
  GROUP BY
    "events"."campaign"
  HAVING
    CAST('1970-01-01' AS DATE) + CAST(FLOOR(EXTRACT(EPOCH FROM MIN("events"."timestamp")) / 86400) AS INT) <= CAST('2026-06-30' AS DATE)
)
SELECT
  "contacts"."contact_id"
FROM "contacts"
WHERE
  (
    NOT "contacts"."status" IS NULL AND LOWER("contacts"."status") = 'active'
  )
  AND NOT (
    "contacts"."contact_id" IN (
      SELECT
        "events"."contact_id"
      FROM "events"
      WHERE
        "events"."type" = 'open'
        AND NOT "events"."contact_id" IS NULL
        AND "events"."campaign" IN (
          SELECT
            "campaign"
          FROM "recent_campaigns"
          WHERE
            "recency" <= 3
        )
    )
  )
  AND "contacts"."contact_id" IN (
    SELECT
      "events"."contact_id"
    FROM "events"
    WHERE
      "events"."type" = 'sent'
      AND NOT "events"."contact_id" IS NULL
      AND "events"."campaign" IN (
        SELECT
          "campaign"
        FROM "recent_campaigns"
        WHERE
          "recency" <= 1
      )
  )
