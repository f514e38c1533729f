-- Each item's OpenTelemetry trace id: 32 hex digits, random, given when the
-- item is added (the insert writes it; this trigger covers the paths that
-- do not, such as import and store copy) and kept for its whole life, so
-- every process that works on the item adds its spans to the same trace.
ALTER TABLE items ADD COLUMN trace_id TEXT;
UPDATE items SET trace_id = lower(hex(randomblob(16))) WHERE trace_id IS NULL;
CREATE TRIGGER items_trace_id AFTER INSERT ON items WHEN NEW.trace_id IS NULL BEGIN
    UPDATE items SET trace_id = lower(hex(randomblob(16))) WHERE id = NEW.id;
END;
