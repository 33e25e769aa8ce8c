# shellcheck shell=bash
# The benchmark's database and its backlogs. Sourced by bench/run.sh and
# bench/instructions.sh after bench/lib/measure.sh; needs DB and PG_PORT.

# The database, the outbox table (migrations/0001_outbox.sql), the publication bench_pub
# and the bench_fill procedure. Once per run.
backlog_prepare() {
  psql_run postgres "CREATE DATABASE $DB"
  psql_run "$DB" "$(cat migrations/0001_outbox.sql)"
  # Autovacuum of the fresh million-row table would otherwise land in one of the measured
  # runs (2 cores) and skew the comparison.
  psql_run "$DB" "ALTER TABLE public.outbox SET (autovacuum_enabled = false)"
  # The publication before the slots: pgoutput reads it through the slot's historic
  # snapshot, in which a publication created after the slot does not exist.
  psql_run "$DB" "CREATE PUBLICATION bench_pub FOR TABLE public.outbox"
  # One transaction per BATCH rows, committed inside a procedure (PG 11+), so a million
  # rows take one round trip instead of a thousand psql runs.
  psql_run "$DB" "
CREATE PROCEDURE bench_fill(total bigint, batch int, INOUT end_lsn pg_lsn DEFAULT NULL)
LANGUAGE plpgsql AS \$\$
DECLARE
  done bigint := 0;
  n bigint;
BEGIN
  WHILE done < total LOOP
    n := least(batch, total - done);
    INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload)
    SELECT gen_random_uuid(), k.aggregatetype, k.aggregateid, k.type,
           jsonb_build_object(
             'aggregateId', k.aggregateid,
             'sequence', i,
             'amountCents', (i * 7919) % 100000,
             'currency', 'EUR',
             'occurredAt', clock_timestamp(),
             'reference', md5(i::text))
    FROM generate_series(done + 1, done + n) AS i
    CROSS JOIN LATERAL (
      SELECT (ARRAY['order', 'payment', 'customer'])[1 + i % 3] AS aggregatetype,
             (ARRAY['OrderPlaced', 'PaymentCaptured', 'CustomerUpdated'])[1 + i % 3] AS type,
             md5(((i * 7919) % 1000)::text)::uuid::text AS aggregateid
    ) AS k;
    done := done + n;
    IF done >= total THEN
      -- The end mark is taken inside the last transaction, after its last row and before
      -- its COMMIT: any slot position at or past it means that COMMIT was confirmed.
      -- (The insert position after the COMMIT can lie past anything a client confirms:
      -- pg_recvlogical confirms only the end of the last message it received, and
      -- unrelated WAL such as a checkpoint may follow the COMMIT.)
      end_lsn := pg_current_wal_insert_lsn();
    END IF;
    COMMIT;
  END LOOP;
END
\$\$"
}

# backlog_write ROWS BATCH SLOT...: creates every SLOT (pgoutput) before any row, so they
# all hold exactly the same backlog, then writes ROWS outbox rows in transactions of BATCH
# rows. Sets START_LSN and END_LSN (see bench_fill). Slots of earlier backlogs keep their
# own rows: each drain uses the slots made for it.
backlog_write() {
  local rows=$1 batch=$2 slot
  shift 2
  START_LSN=""
  for slot in "$@"; do
    local lsn
    lsn=$(psql_value "$DB" "SELECT lsn FROM pg_create_logical_replication_slot('$slot', 'pgoutput')")
    START_LSN=${START_LSN:-$lsn}
  done
  echo "== writing a backlog: $rows outbox rows in transactions of $batch (slots: $*)"
  local t0=$EPOCHREALTIME before count wal_mb payload
  before=$(psql_value "$DB" "SELECT count(*) FROM public.outbox")
  END_LSN=$(psql_value "$DB" "CALL bench_fill($rows, $batch)")
  [[ -n $END_LSN ]] || die "the backlog procedure returned no end LSN"
  count=$(psql_value "$DB" "SELECT count(*) FROM public.outbox")
  ((count - before == rows)) || die "expected $rows new outbox rows, found $((count - before))"
  wal_mb=$(psql_value "$DB" "SELECT round(('$END_LSN'::pg_lsn - '$START_LSN'::pg_lsn) / 1048576.0)")
  payload=$(psql_value "$DB" "SELECT round(avg(length(payload::text)))
                              FROM (SELECT payload FROM public.outbox LIMIT 1000) AS sample")
  printf 'backlog written in %.1f s: %s MiB of WAL (%s .. %s), avg payload %s bytes\n' \
    "$(since "$t0")" "$wal_mb" "$START_LSN" "$END_LSN" "$payload"
  # Flush dirty buffers now rather than in the middle of a measured run.
  psql_run "$DB" "CHECKPOINT"
}

# Drops SLOT once its drain is measured, so the WAL it holds can go.
slot_drop() {
  psql_value "$DB" "SELECT pg_drop_replication_slot('$1')" >/dev/null
}
