-- The outbox table outbox-relay expects by default (Debezium Outbox Event Router columns).
-- A service inserts one row here in the same transaction as its business change.
CREATE TABLE IF NOT EXISTS public.outbox (
    id            uuid PRIMARY KEY,          -- event id: the Kafka `id` header consumers dedupe on
    aggregatetype text  NOT NULL,            -- routes to topic outbox.event.<aggregatetype>
    aggregateid   text  NOT NULL,            -- the Kafka key: per-aggregate order is kept
    type          text  NOT NULL,            -- event type, e.g. OrderCreated
    payload       jsonb NOT NULL             -- the Kafka value, as written
);
