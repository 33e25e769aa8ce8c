-- The auth service's own table: one row per login. The primary key on the login is what
-- refuses a taken one, however many registrations for it arrive at once.
CREATE TABLE IF NOT EXISTS public.credentials (
    login         text        PRIMARY KEY,
    user_id       uuid        NOT NULL UNIQUE,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
