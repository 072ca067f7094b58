CREATE TABLE IF NOT EXISTS stock (
    sku           TEXT PRIMARY KEY,
    quantity      BIGINT NOT NULL CHECK (quantity >= 0),
    updated_at_ms BIGINT NOT NULL
);

-- One row per request_id: the idempotency record, written in the same transaction as the
-- stock change. `state` is 'deducted' or 'released' (a release of an unknown id leaves a
-- 'released' tombstone so a late deduction with that id cannot execute).
CREATE TABLE IF NOT EXISTS stock_requests (
    request_id    TEXT PRIMARY KEY,
    sku           TEXT NOT NULL,
    quantity      BIGINT NOT NULL CHECK (quantity > 0),
    state         TEXT NOT NULL CHECK (state IN ('deducted', 'released')),
    remaining     BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
