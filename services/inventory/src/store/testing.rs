//! Fixtures the backends' batch tests share.

#![allow(clippy::unwrap_used)]

use ferry_proto::domain::{DeductStock, Quantity, RequestId, SetStock, Sku, StockLevel};

use super::{Deducted, InventoryStore, StoreError};

pub(crate) fn sku(s: &str) -> Sku {
    Sku::parse("sku", s).unwrap()
}

pub(crate) fn deduct(id: &str, s: &str, q: i64) -> DeductStock {
    DeductStock {
        request_id: RequestId::parse("r", id).unwrap(),
        sku: sku(s),
        quantity: Quantity::parse("q", q).unwrap(),
    }
}

/// `a` = 5, `b` = 1.
pub(crate) async fn stock_a5_b1(store: &dyn InventoryStore) {
    for (s, q) in [("a", 5), ("b", 1)] {
        store.set(&SetStock { sku: sku(s), quantity: StockLevel::parse("q", q).unwrap() }).await.unwrap();
    }
}

/// After [`stock_a5_b1`] and `deduct("old", "a", 1)`: one batch holding every kind of
/// outcome, and the outcome each request must get.
pub(crate) fn mixed_batch() -> (Vec<DeductStock>, Vec<Result<Deducted, StoreError>>) {
    let batch = vec![
        deduct("r1", "a", 2),
        deduct("r1", "a", 2),    // the same id again in the same batch: a replay
        deduct("r2", "nope", 1), // unknown sku
        deduct("r3", "b", 2),    // not enough stock
        deduct("old", "a", 3),   // a known id with another payload
        deduct("old", "a", 1),   // a replay of an earlier batch
        deduct("r4", "a", 2),    // takes the last units
        deduct("r5", "a", 1),    // nothing left
    ];
    let outcomes = vec![
        Ok(Deducted { remaining: 2, replayed: false }),
        Ok(Deducted { remaining: 2, replayed: true }),
        Err(StoreError::NotFound("nope".into())),
        Err(StoreError::Insufficient { sku: "b".into(), requested: 2, available: 1 }),
        Err(StoreError::RequestIdReused("old".into())),
        Ok(Deducted { remaining: 4, replayed: true }),
        Ok(Deducted { remaining: 0, replayed: false }),
        Err(StoreError::Insufficient { sku: "a".into(), requested: 1, available: 0 }),
    ];
    (batch, outcomes)
}

/// A batch whose middle request a `poison` trigger makes fail, and checks of the outcomes.
pub(crate) fn poisoned_batch() -> Vec<DeductStock> {
    vec![deduct("r1", "a", 1), deduct("poison", "a", 1), deduct("r2", "a", 1)]
}

pub(crate) fn assert_only_the_poisoned_request_failed(outcomes: &[Result<Deducted, StoreError>]) {
    assert_eq!(outcomes[0], Ok(Deducted { remaining: 4, replayed: false }));
    assert!(matches!(outcomes[1], Err(StoreError::Internal(_))), "{:?}", outcomes[1]);
    assert_eq!(outcomes[2], Ok(Deducted { remaining: 3, replayed: false }));
}
