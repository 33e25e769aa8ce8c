-- The delivery service's own tables.

-- What it knows about each order so far. OrderCreated (the address) and a successful
-- ProductDecreased (stock reserved) come from different topics, so either may arrive
-- first; the delivery is decided once both are here, and only once.
CREATE TABLE IF NOT EXISTS public.delivery_requests (
    order_id       uuid    PRIMARY KEY,
    address        text,
    product_id     bigint,
    quantity       int,
    stock_reserved boolean NOT NULL DEFAULT false,
    decided        boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS public.deliveries (
    id         uuid        PRIMARY KEY,
    order_id   uuid        NOT NULL UNIQUE,
    address    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
