-- The checkout product service's tables (database checkout_products).
CREATE TABLE IF NOT EXISTS public.products (
    id    bigint PRIMARY KEY,
    stock int    NOT NULL CHECK (stock >= 0)
);

-- One row per order this service has heard of, so it answers and compensates once:
-- RESERVED (stock taken) → RESTORED (given back); REFUSED (not enough, or no such
-- product); VOID (the order failed before its OrderProcessing arrived here: never reserve).
CREATE TABLE IF NOT EXISTS public.stock_reservations (
    order_id   uuid   PRIMARY KEY,
    product_id bigint,
    quantity   int    CHECK (quantity > 0),
    state      text   NOT NULL CHECK (state IN ('RESERVED', 'RESTORED', 'REFUSED', 'VOID')),
    CHECK (state = 'VOID' OR (product_id IS NOT NULL AND quantity IS NOT NULL))
);

-- See migrations/0001_orders.sql: the relay maps outbox.traceparent to a header.
ALTER TABLE public.outbox ADD COLUMN IF NOT EXISTS traceparent text;
