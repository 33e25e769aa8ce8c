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

-- Dead letters (saga_kit::consumer, "Dead letters"): a consumed record that can never be
-- applied is written back through this outbox, aggregatetype `<x>.DLT` for a record read
-- from `outbox.event.<x>`, so the relay publishes it to `outbox.event.<x>.DLT`. These
-- columns say why; each relay config maps them to headers, and a NULL column gives no
-- header, so ordinary events are unchanged. Every service writing dead letters (the Rust
-- services through saga-kit, the Spring points service by hand) uses the same columns:
--   dlt_reason      header `dltReason`:     what was wrong, for a human (at most 1000 chars)
--   dlt_origin      header `dltOrigin`:     where it was read, `<topic>/<partition>/<offset>`
--   dlt_error_class header `dltErrorClass`: not-an-event | payload | permanent | retries-exhausted
-- ADD COLUMN IF NOT EXISTS: databases created before these columns migrate in place.
ALTER TABLE public.outbox ADD COLUMN IF NOT EXISTS dlt_reason      text;
ALTER TABLE public.outbox ADD COLUMN IF NOT EXISTS dlt_origin      text;
ALTER TABLE public.outbox ADD COLUMN IF NOT EXISTS dlt_error_class text;

-- Trace context (saga_kit::trace): the W3C `traceparent` (`00-<trace id>-<span id>-<flags>`)
-- of the span that wrote the row, which each relay config maps to header `traceparent`;
-- the consumer's span continues that trace. saga_kit::outbox::write fills it (a dead
-- letter carries the trace of the record it came from); NULL outside any trace, and then
-- the record has no such header. A service in another language fills it the same way
-- (README, "Trace context through the relay").
ALTER TABLE public.outbox ADD COLUMN IF NOT EXISTS traceparent text;

-- Client idempotency keys (saga_kit::idempotency): the first request with an
-- `Idempotency-Key` stores its response here in the same transaction as the resource it
-- created; a repeat with the same key and body gets that response back and writes nothing.
-- The primary key is the lock: a concurrent repeat waits for the first transaction.
CREATE TABLE IF NOT EXISTS public.idempotency_keys (
    scope         text        NOT NULL,  -- the endpoint, e.g. `POST /orders`
    key           text        NOT NULL,  -- the client's `Idempotency-Key` (1..=255 chars)
    request_hash  bytea       NOT NULL,  -- SHA-256 of the canonical request body
    status        smallint,              -- the response, NULL until the request finished
    response      jsonb,
    location      text,                  -- the response's `Location` header, if any
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
