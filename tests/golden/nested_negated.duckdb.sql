SELECT
  "contacts"."contact_id"
FROM "contacts"
WHERE
  NOT (
    NOT (
      (
        NOT "contacts"."state" IS NULL
        AND LOWER(
          REGEXP_REPLACE(
            "contacts"."state",
            '([\p{Lu}\p{Ll}\p{Lt}\x{aa}\x{ba}\x{2160}-\x{217f}\x{24b6}-\x{24e9}\x{1f130}-\x{1f149}\x{1f150}-\x{1f169}\x{1f170}-\x{1f189}][\p{Mn}\p{Me}\p{Cf}\p{Lm}\p{Sk}''.:\x{b7}\x{387}\x{55f}\x{5f4}\x{2018}\x{2019}\x{2024}\x{2027}\x{fe13}\x{fe52}\x{fe55}\x{ff07}\x{ff0e}\x{ff1a}]*)Σ([\p{Mn}\p{Me}\p{Cf}\p{Lm}\p{Sk}''.:\x{b7}\x{387}\x{55f}\x{5f4}\x{2018}\x{2019}\x{2024}\x{2027}\x{fe13}\x{fe52}\x{fe55}\x{ff07}\x{ff0e}\x{ff1a}]*)([^\p{Lu}\p{Ll}\p{Lt}\x{aa}\x{ba}\x{2160}-\x{217f}\x{24b6}-\x{24e9}\x{1f130}-\x{1f149}\x{1f150}-\x{1f169}\x{1f170}-\x{1f189}\p{Mn}\p{Me}\p{Cf}\p{Lm}\p{Sk}''.:\x{b7}\x{387}\x{55f}\x{5f4}\x{2018}\x{2019}\x{2024}\x{2027}\x{fe13}\x{fe52}\x{fe55}\x{ff07}\x{ff0e}\x{ff1a}]|$)',
            '\1ς\2\3',
            'g'
          )
        ) = 'οδος'
      )
      OR "contacts"."contact_id" IN (
        SELECT
          "events"."contact_id"
        FROM "events"
        WHERE
          "events"."type" = 'bounce' AND NOT "events"."contact_id" IS NULL
      )
      OR NOT (
        TRUE
      )
    )
    AND NOT (
      "contacts"."contact_id" IN (
        SELECT
          "events"."contact_id"
        FROM "events"
        WHERE
          "events"."type" = 'open' AND NOT "events"."contact_id" IS NULL
      )
    )
    AND FALSE
  )
