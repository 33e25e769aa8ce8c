-- The points service's tables, run at every start (spring.sql.init.mode=always), so each
-- statement is idempotent. The outbox is the shape of services/saga-kit/migrations/
-- 0001_messaging.sql plus the dead-letter columns; keep REPLICA IDENTITY default: the relay
-- creates its publication (points_outbox) on public.outbox and reads inserts only.

CREATE TABLE IF NOT EXISTS outbox (
    id             uuid  PRIMARY KEY,   -- Kafka header `id`: the consumers' dedupe key
    aggregatetype  text  NOT NULL,      -- topic outbox.event.<aggregatetype>: points, payment.DLT
    aggregateid    text  NOT NULL,      -- Kafka key: the payment id
    type           text  NOT NULL,      -- header `eventType`: PointsRewarded, PointsRewardFailed
    correlation_id text  NOT NULL,      -- header `correlationId`: the saga (payment) id
    payload        jsonb NOT NULL,      -- Kafka value
    dlt_reason     text  NULL,          -- header `dltReason`, dead letters only
    dlt_origin     text  NULL           -- header `dltOrigin`, <topic>/<partition>/<offset>
);

-- Header `traceparent` (config/points-relay.toml maps it; NULL sends none): the W3C trace
-- context of the span that wrote the row, as saga-kit writes it. This service leaves it
-- NULL; the README's "Trace context through the relay" shows how a Spring service fills it.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS traceparent text;

-- Events already handled, by their `id` header, written in the same transaction.
CREATE TABLE IF NOT EXISTS inbox (
    event_id       uuid        PRIMARY KEY,
    event_type     text,
    correlation_id text,
    topic          text,
    received_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS point_balances (
    user_id bigint PRIMARY KEY,
    balance bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS point_rewards (
    payment_id uuid        PRIMARY KEY,
    user_id    bigint      NOT NULL,
    points     bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
