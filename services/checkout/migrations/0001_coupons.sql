-- The checkout coupon service's tables (database checkout_coupons).
-- A coupon is single use: used_by is the order that holds it, NULL while unused.
CREATE TABLE IF NOT EXISTS public.coupons (
    code     text   PRIMARY KEY,
    discount bigint NOT NULL CHECK (discount >= 0),
    used_by  uuid
);

-- One row per order this service has heard of, so it answers and compensates once:
-- CLAIMED (coupon marked used by the order, or code NULL: the order has none) →
-- RELEASED (unused again); REFUSED (used by another order, or unknown); VOID (the order
-- failed before its OrderProcessing arrived here: never claim).
CREATE TABLE IF NOT EXISTS public.coupon_claims (
    order_id uuid PRIMARY KEY,
    code     text,
    state    text NOT NULL CHECK (state IN ('CLAIMED', 'RELEASED', 'REFUSED', 'VOID'))
);

-- See migrations/0001_orders.sql: the relay maps outbox.traceparent to a header.
ALTER TABLE public.outbox ADD COLUMN IF NOT EXISTS traceparent text;
