-- The checkout user service's tables (database checkout_users).
CREATE TABLE IF NOT EXISTS public.users (
    id      bigint PRIMARY KEY,
    balance bigint NOT NULL CHECK (balance >= 0)
);

-- One row per order charged or refused, so an order is charged at most once.
CREATE TABLE IF NOT EXISTS public.charges (
    order_id uuid   PRIMARY KEY,
    user_id  bigint NOT NULL,
    amount   bigint NOT NULL,
    state    text   NOT NULL CHECK (state IN ('CHARGED', 'REFUSED'))
);

-- See migrations/0001_orders.sql: the relay maps outbox.traceparent to a header.
ALTER TABLE public.outbox ADD COLUMN IF NOT EXISTS traceparent text;
