-- Each item's OpenTelemetry trace id: 32 hex digits, random, given when the
-- item is added (a volatile default: existing rows each get their own) and
-- kept for its whole life, so every process that works on the item adds its
-- spans to the same trace. md5 of two random() draws and the clock needs no
-- extension (gen_random_uuid is core only from PostgreSQL 13).
ALTER TABLE items ADD COLUMN trace_id TEXT NOT NULL
    DEFAULT md5(random()::text || random()::text || clock_timestamp()::text);
