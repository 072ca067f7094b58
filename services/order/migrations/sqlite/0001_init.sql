CREATE TABLE IF NOT EXISTS orders (
    order_id       TEXT PRIMARY KEY NOT NULL,
    request_id     TEXT NOT NULL UNIQUE,
    customer_id    TEXT NOT NULL,
    items          TEXT NOT NULL,          -- JSON: [{"sku": "...", "quantity": n}, ...]
    status         TEXT NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'FAILED', 'CANCELLING', 'CANCELLED')),
    failure_reason TEXT NOT NULL DEFAULT '',
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id, created_at_ms DESC, order_id DESC);
