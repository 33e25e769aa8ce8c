-- The user service's own table. A registration is PENDING until the auth service has
-- answered: COMPLETED (credentials created) or FAILED (with the reason, e.g. the login
-- is taken). The client polls GET /users/{id}.
CREATE TABLE IF NOT EXISTS public.users (
    id         uuid        PRIMARY KEY,
    login      text        NOT NULL,
    name       text        NOT NULL,
    status     text        NOT NULL CHECK (status IN ('PENDING', 'COMPLETED', 'FAILED')),
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
