-- The checkout order service's table (database checkout_orders). An order is
-- PROCESSING while its two branches (stock, coupon) answer, PAYING once both succeeded
-- (the aggregator wrote OrderProcessingSucceeded), then COMPLETED or CANCELLED (reason).
CREATE TABLE IF NOT EXISTS public.orders (
    id                uuid        PRIMARY KEY,
    user_id           bigint      NOT NULL,
    product_id        bigint      NOT NULL,
    quantity          int         NOT NULL CHECK (quantity > 0),
    unit_price        bigint      NOT NULL CHECK (unit_price >= 0),
    coupon_code       text,
    status            text        NOT NULL
        CHECK (status IN ('PROCESSING', 'PAYING', 'COMPLETED', 'CANCELLED')),
    reason            text,
    -- The aggregator's state: which branch answers are in (the seed's Redis store).
    stock_reserved    boolean     NOT NULL DEFAULT false,
    coupon_applied    boolean     NOT NULL DEFAULT false,
    discount          bigint      NOT NULL DEFAULT 0,
    -- Set when OrderPaymentRequested is written, so it is written once.
    payment_requested boolean     NOT NULL DEFAULT false,
    -- Both branches must have answered by then (the deadline sweeper's clock is the
    -- database's, so replicas agree on it).
    deadline_at       timestamptz NOT NULL,
    -- The W3C traceparent of the request that created the order: the deadline sweeper
    -- continues that trace when it cancels the order.
    traceparent       text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- What the deadline sweeper scans: only orders still waiting for their branches.
CREATE INDEX IF NOT EXISTS orders_processing_deadline
    ON public.orders (deadline_at) WHERE status = 'PROCESSING';

-- The relay config maps outbox.traceparent to the Kafka header `traceparent`; saga-kit
-- adds the column to the shared messaging tables (and fills it), and this makes sure it
-- exists either way: a relay naming a missing column holds the stream.
ALTER TABLE public.outbox ADD COLUMN IF NOT EXISTS traceparent text;
