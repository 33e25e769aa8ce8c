-- The payment service's own table. A payment is PENDING (paid, points not yet decided)
-- until the points service answers: COMPLETED (points rewarded), REFUNDED (points refused,
-- money given back: the compensation) or NEEDS_ATTENTION (the refund itself failed: an
-- operator must act; GET /payments?status=NEEDS_ATTENTION lists them).
CREATE TABLE IF NOT EXISTS public.payments (
    id             uuid        PRIMARY KEY,
    user_id        bigint      NOT NULL,
    reservation_id bigint      NOT NULL,
    amount         bigint      NOT NULL CHECK (amount > 0),
    card           text        NOT NULL,
    status         text        NOT NULL
        CHECK (status IN ('PENDING', 'COMPLETED', 'REFUNDED', 'NEEDS_ATTENTION')),
    points         bigint,
    reason         text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS payments_status ON public.payments (status) WHERE status <> 'COMPLETED';
