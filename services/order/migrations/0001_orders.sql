-- The order service's own table; the saga moves an order from PENDING to a final state.
CREATE TABLE IF NOT EXISTS public.orders (
    id         uuid        PRIMARY KEY,
    user_id    bigint      NOT NULL,
    product_id bigint      NOT NULL,
    quantity   int         NOT NULL CHECK (quantity > 0),
    price      bigint      NOT NULL CHECK (price >= 0),
    address    text        NOT NULL,
    status     text        NOT NULL CHECK (status IN ('PENDING', 'COMPLETED', 'CANCELLED')),
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
