-- One saga run per order at a time (a lease in the database's clock), the recoverer's retry
-- schedule, and COMPENSATING: a business failure decided, every line being given back.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING', 'COMPENSATING', 'CONFIRMED', 'FAILED', 'CANCELLING', 'CANCELLED'));
ALTER TABLE orders ADD COLUMN lease_owner     TEXT    NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN lease_until_ms  BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN next_attempt_ms BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN attempts        INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS orders_unsettled ON orders (next_attempt_ms)
    WHERE status IN ('PENDING', 'COMPENSATING');
