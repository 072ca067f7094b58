-- One saga run per order at a time (a lease in the database's clock), the recoverer's retry
-- schedule, and COMPENSATING: a business failure decided, every line being given back.
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt.
CREATE TABLE orders_new (
    order_id        TEXT PRIMARY KEY NOT NULL,
    request_id      TEXT NOT NULL UNIQUE,
    customer_id     TEXT NOT NULL,
    items           TEXT NOT NULL,          -- JSON: [{"sku": "...", "quantity": n}, ...]
    status          TEXT NOT NULL CHECK (status IN ('PENDING', 'COMPENSATING', 'CONFIRMED', 'FAILED', 'CANCELLING', 'CANCELLED')),
    failure_reason  TEXT NOT NULL DEFAULT '',
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    lease_owner     TEXT NOT NULL DEFAULT '',
    lease_until_ms  INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0
);
INSERT INTO orders_new (order_id, request_id, customer_id, items, status, failure_reason, created_at_ms, updated_at_ms)
    SELECT order_id, request_id, customer_id, items, status, failure_reason, created_at_ms, updated_at_ms FROM orders;
DROP TABLE orders;
ALTER TABLE orders_new RENAME TO orders;
CREATE INDEX orders_by_customer ON orders (customer_id, created_at_ms DESC, order_id DESC);
CREATE INDEX orders_unsettled ON orders (next_attempt_ms) WHERE status IN ('PENDING', 'COMPENSATING');
