-- Messaging tables every saga service has in its own database.

-- The outbox the service's relay tails (Debezium Outbox Event Router columns, as in
-- migrations/0001_outbox.sql, plus correlation_id, published as header `correlationId`).
CREATE TABLE IF NOT EXISTS public.outbox (
    id             uuid  PRIMARY KEY,   -- event id: the Kafka `id` header consumers dedupe on
    aggregatetype  text  NOT NULL,      -- routes to topic outbox.event.<aggregatetype>
    aggregateid    text  NOT NULL,      -- the Kafka key: per-aggregate order is kept
    type           text  NOT NULL,      -- header `eventType`, e.g. OrderCreated
    correlation_id text  NOT NULL,      -- header `correlationId`: the saga's order id
    payload        jsonb NOT NULL       -- the Kafka value
);

-- Events already applied, by their `id` header: a redelivered event finds its row here
-- and changes nothing. Written in the same transaction as the state change it caused.
CREATE TABLE IF NOT EXISTS public.inbox (
    event_id       uuid        PRIMARY KEY,
    event_type     text        NOT NULL,
    correlation_id text        NOT NULL,
    topic          text        NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);

-- The next Kafka offset to read, per consumer group and partition, committed in the same
-- transaction as the inbox row: the consumer's position can never run ahead of its state.
CREATE TABLE IF NOT EXISTS public.consumer_offsets (
    group_id    text   NOT NULL,
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);
