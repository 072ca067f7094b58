//! A fault-injecting store for tests (the `testing` feature, enabled only by tests through
//! `[dev-dependencies]`, so no production build contains it).

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use async_trait::async_trait;
use ferry_proto::domain::{DeductStock, ReleaseStock, Restock, SetStock, Sku};
use tokio::sync::watch;

use crate::store::{Deducted, InventoryStore, Released, StoreError};

/// An inventory store around a real one that can fail, hold and count deductions and releases;
/// reads, `set`, `restock` and `ping` pass straight through.
///
/// A deduction, in order: counts as in flight until it ends (a dropped future included); is
/// refused with UNAVAILABLE while [`down`](Self::down) is set ("test outage") or while
/// [`fail_next`](Self::fail_next) is above zero ("test blip", taking one off); waits while a
/// hold covers its sku; then counts in [`deductions`](Self::deductions) and reaches the real
/// store. A release does the same but for the hold and the count.
pub struct FaultyStore {
    inner: Arc<dyn InventoryStore>,
    /// Answer UNAVAILABLE to deductions and releases.
    pub down: AtomicBool,
    /// Answer UNAVAILABLE to this many more deductions and releases.
    pub fail_next: AtomicUsize,
    /// `Some(sku)` holds deductions of that sku, `Some("")` holds every deduction.
    hold: watch::Sender<Option<String>>,
    /// Deductions that reached a hold.
    pub held: AtomicUsize,
    /// Deductions and releases executing now.
    pub in_flight: AtomicUsize,
    /// Deductions and releases refused (down or `fail_next`).
    pub refused: AtomicUsize,
    /// Deductions passed on to the real store.
    pub deductions: AtomicUsize,
}

/// Decrements `in_flight` when a call ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FaultyStore {
    /// Around `inner`: up, nothing held.
    pub fn new(inner: Arc<dyn InventoryStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            down: AtomicBool::new(false),
            fail_next: AtomicUsize::new(0),
            hold: watch::Sender::new(None),
            held: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            deductions: AtomicUsize::new(0),
        })
    }

    /// Holds every deduction until [`FaultyStore::release_hold`].
    pub fn hold_all(&self) {
        self.hold.send_replace(Some(String::new()));
    }

    /// Holds deductions of `sku` until [`FaultyStore::release_hold`].
    pub fn hold_sku(&self, sku: &str) {
        self.hold.send_replace(Some(sku.to_string()));
    }

    /// Lets held deductions (and later ones) through.
    pub fn release_hold(&self) {
        self.hold.send_replace(None);
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("test outage".into()));
        }
        let blip = self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if blip.is_ok() {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("test blip".into()));
        }
        Ok(())
    }

    async fn wait_if_held(&self, sku: &Sku) {
        let held = |h: &Option<String>| h.as_deref().is_some_and(|s| s.is_empty() || s == sku.as_str());
        let mut rx = self.hold.subscribe();
        if held(&rx.borrow_and_update()) {
            self.held.fetch_add(1, Ordering::SeqCst);
            let _ = rx.wait_for(|h| !held(h)).await;
        }
    }
}

#[async_trait]
impl InventoryStore for FaultyStore {
    async fn deduct(&self, cmd: &DeductStock) -> Result<Deducted, StoreError> {
        let _guard = InFlight::enter(&self.in_flight);
        self.check_up()?;
        self.wait_if_held(&cmd.sku).await;
        self.deductions.fetch_add(1, Ordering::SeqCst);
        self.inner.deduct(cmd).await
    }
    async fn release(&self, cmd: &ReleaseStock) -> Result<Released, StoreError> {
        let _guard = InFlight::enter(&self.in_flight);
        self.check_up()?;
        self.inner.release(cmd).await
    }
    async fn get(&self, sku: &Sku) -> Result<i64, StoreError> {
        self.inner.get(sku).await
    }
    async fn set(&self, cmd: &SetStock) -> Result<i64, StoreError> {
        self.inner.set(cmd).await
    }
    async fn restock(&self, cmd: &Restock) -> Result<i64, StoreError> {
        self.inner.restock(cmd).await
    }
    async fn ping(&self) -> bool {
        self.inner.ping().await
    }
}
