-- The product service's own tables. The CHECK is the last line of defence against
-- overselling; the conditional UPDATE in the consumer is the first.
CREATE TABLE IF NOT EXISTS public.products (
    id    bigint PRIMARY KEY,
    name  text   NOT NULL,
    stock int    NOT NULL CHECK (stock >= 0)
);

-- Stock taken for an order, so a compensation gives back exactly that, exactly once.
CREATE TABLE IF NOT EXISTS public.reservations (
    order_id   uuid    PRIMARY KEY,
    product_id bigint  NOT NULL REFERENCES products (id),
    quantity   int     NOT NULL CHECK (quantity > 0),
    released   boolean NOT NULL DEFAULT false
);
