-- Event-driven orders (issue 20): which saga runs an order, and the transactional outbox.
-- `saga`: 'sync' (order-service deducts over gRPC; the lease and the recoverer drive it) or
-- 'async' (events drive it; the recoverer leaves it alone).
ALTER TABLE orders ADD COLUMN saga TEXT NOT NULL DEFAULT 'sync' CHECK (saga IN ('sync', 'async'));
-- One row per event, written in the transaction of the state change it reports; the relay
-- publishes unsent rows in `seq` order and stamps `sent_at_ms`.
CREATE TABLE outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT NOT NULL UNIQUE,
    order_id      TEXT NOT NULL,
    kind          TEXT NOT NULL,
    payload       BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    sent_at_ms    INTEGER
);
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at_ms IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at_ms) WHERE sent_at_ms IS NOT NULL;
-- Who relays the outbox: one replica at a time, under a lease in the database's clock.
CREATE TABLE relay_lease (
    name     TEXT PRIMARY KEY NOT NULL,
    owner    TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
