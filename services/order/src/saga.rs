//! The CreateOrder saga: deduct every line from inventory, then confirm; or, when a line is
//! refused for a business reason, record that the order fails, give every line back, then
//! mark it FAILED.
//!
//! - **One run per order at a time.** A run works only while it holds the order's lease in
//!   the database ([`crate::store::Lease`]); every decision (confirm, compensate, fail) is a
//!   conditional update fenced by that lease. Within one process, callers of the same order
//!   join the run already going instead of claiming; callers on another replica poll the
//!   database until the run there settles the order.
//! - **Detached from the caller.** A run has its own budget (the inventory client's per-call
//!   budget, within the lease), never the caller's deadline: a caller whose deadline passes
//!   gets `DEADLINE_EXCEEDED` and the run goes on.
//! - **FAILED only for a business reason** (no stock, unknown sku, or another answer a retry
//!   cannot change). When inventory cannot be reached the order stays PENDING: the caller gets
//!   `UNAVAILABLE`, and a retry or the recoverer ([`crate::recovery`]) resumes it later.
//! - **Compensation releases every line**, not only those this run took: a release of a line
//!   never deducted leaves a tombstone in inventory, so no late deduction (of a run that lost
//!   its lease, or a call still in flight when a replica died) can take stock afterwards.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_proto::{
    domain::{CreateOrder, Sku},
    inventory::v1::{DeductStockRequest, ReleaseStockRequest},
};
use ferry_service_common::telemetry::TraceContext;
use tokio::{sync::watch, time::Instant};
use tokio_util::task::TaskTracker;
use tonic::{Code, Status};

use crate::{
    api::OrderMetrics,
    client::InventoryClient,
    events::{self, EventLog},
    store::{Claim, Lease, Leased, NewOrder, Order, OrderStatus, OrderStore, Saga},
};

/// Saga and recovery settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaSettings {
    /// How long a run's claim on an order lasts without renewal; a replica that dies mid-saga
    /// leaves its orders to others after this.
    pub lease: Duration,
    /// How often the recoverer looks for orders nobody is working on, and the first retry
    /// delay after an interrupted run (it doubles per attempt, up to [`MAX_RETRY_DELAY`]).
    pub recovery_interval: Duration,
    /// Most orders the recoverer claims (and runs at once) per pass.
    pub recovery_batch: u32,
    /// The saga new orders run: synchronous (the default) or asynchronous (events; needs a
    /// broker). An existing order keeps the saga it was created with.
    pub mode: Saga,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            recovery_interval: Duration::from_secs(2),
            recovery_batch: 16,
            mode: Saga::Sync,
        }
    }
}

/// Longest wait before the recoverer retries an order whose runs keep being interrupted.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// How often a caller polls the database while another replica runs its order.
const POLL_OTHER_REPLICA: Duration = Duration::from_millis(25);

/// Lines released at once when giving stock back.
const RELEASES_AT_ONCE: usize = 8;

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The order is settled (CONFIRMED or FAILED, or cancelled since).
    Settled(Order),
    /// The order still has saga work left; why this run stopped.
    Unsettled(Status),
}

impl Outcome {
    /// What CreateOrder answers: the order, `FAILED_PRECONDITION` for a FAILED one, or the
    /// reason the order is not settled yet (`UNAVAILABLE`: retry with the same request_id).
    pub fn into_answer(self) -> Result<Order, Status> {
        match self {
            Self::Settled(o) if o.status == OrderStatus::Failed => {
                Err(Status::failed_precondition(o.failure_reason))
            }
            Self::Settled(o) => Ok(o),
            Self::Unsettled(status) => Err(status),
        }
    }
}

/// What a caller waits on: `None` until the run publishes its outcome.
type Published = watch::Receiver<Option<Outcome>>;
type Publisher = Arc<watch::Sender<Option<Outcome>>>;

/// A run's lease and when it runs out by this process's clock (never later than the
/// database's view of it: the local time is taken before the claim is written).
struct Held {
    lease: Lease,
    until: Instant,
}

/// Why a run stopped before the end of a phase.
enum Stop {
    /// The order was refused for a business reason (the failure reason).
    Refused(String),
    /// Inventory or the database could not be reached: the order stays unsettled.
    Interrupted(Status),
    /// Another run holds the order now.
    LeaseLost,
}

/// Runs sagas. Cheap to clone.
#[derive(Clone)]
pub struct Sagas {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn OrderStore>,
    inventory: InventoryClient,
    metrics: Arc<OrderMetrics>,
    settings: SagaSettings,
    events: EventLog,
    /// Runs (or polls of another replica's run) in this process, by order id.
    running: Mutex<HashMap<String, Publisher>>,
    tasks: TaskTracker,
}

impl Sagas {
    /// Sagas over `store`, deducting through `inventory`, writing events as `events` says.
    pub fn new(
        store: Arc<dyn OrderStore>,
        inventory: InventoryClient,
        metrics: Arc<OrderMetrics>,
        settings: SagaSettings,
        events: EventLog,
    ) -> Self {
        let inner = Inner {
            store,
            inventory,
            metrics,
            settings,
            events,
            running: Mutex::default(),
            tasks: TaskTracker::new(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The settings in force.
    pub fn settings(&self) -> SagaSettings {
        self.inner.settings
    }

    /// CreateOrder: stores the order (or finds it by its request_id). Synchronous saga: makes
    /// sure a run is working on it, and waits for the outcome until `deadline`. Asynchronous
    /// saga: answers the order as stored (PENDING when new; OrderPlaced is in the outbox).
    pub async fn create(
        &self,
        cmd: CreateOrder,
        trace: Option<TraceContext>,
        deadline: Instant,
    ) -> Result<Order, Status> {
        let held = self.new_hold();
        let mode = self.inner.settings.mode;
        let new = NewOrder {
            order_id: uuid::Uuid::new_v4().to_string(),
            request_id: cmd.request_id.to_string(),
            customer_id: cmd.customer_id,
            items: cmd.items,
            saga: mode,
        };
        let placed = self.inner.events.event(|| {
            events::placed(&new.order_id, new.customer_id.as_str(), &new.items, mode == Saga::Async)
        });
        let lease = (mode == Saga::Sync).then_some(&held.lease);
        let (order, created) = self.inner.store.create_or_get(new, lease, placed.as_ref()).await?;
        if created {
            self.inner.events.committed(&order.order_id, placed.is_some());
        }
        let order_id = order.order_id.clone();
        let published = match (order.saga, created) {
            (Saga::Async, _) if order.status.is_unsettled() => return Ok(order),
            (Saga::Sync, true) => {
                tracing::info!(%order_id, "reserving stock");
                self.start(Leased { order, attempts: 0 }, held, trace)
            }
            (Saga::Sync, false) if order.status.is_unsettled() => self.join_or_claim(order, trace),
            _ => return Outcome::Settled(order).into_answer(),
        };
        wait(published, deadline, &order_id).await
    }

    /// Runs orders the recoverer claimed with `lease` (taken at `claimed_at`), all at once,
    /// and returns when every run has ended.
    pub async fn recover(&self, claimed: Vec<Leased>, lease: &Lease, claimed_at: Instant) {
        let runs = claimed.into_iter().map(|leased| {
            let held = Held { lease: lease.clone(), until: claimed_at + lease.ttl };
            let mut published = self.start(leased, held, None);
            async move {
                let _ = published.wait_for(Option::is_some).await;
            }
        });
        futures::future::join_all(runs).await;
    }

    /// Stops taking new runs and waits up to `grace` for the running ones to end.
    pub async fn drain(&self, grace: Duration) {
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!(
                running = self.inner.tasks.len(),
                "sagas still running at exit; their leases will run out and another run resumes them"
            );
        }
    }

    fn new_hold(&self) -> Held {
        let lease = Lease::new_run(self.inner.settings.lease);
        Held { until: Instant::now() + lease.ttl, lease }
    }

    /// Registers a run of `order_id` in this process, or returns the one already there.
    fn register(&self, order_id: &str) -> Result<Publisher, Published> {
        let mut running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = running.get(order_id)
            && tx.borrow().is_none()
        {
            return Err(tx.subscribe());
        }
        let tx = Arc::new(watch::Sender::new(None));
        running.insert(order_id.to_string(), tx.clone());
        Ok(tx)
    }

    fn publish(&self, order_id: &str, tx: &Publisher, outcome: Outcome) {
        tx.send_replace(Some(outcome));
        let mut running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.get(order_id).is_some_and(|t| Arc::ptr_eq(t, tx)) {
            running.remove(order_id);
        }
    }

    /// Runs an order this process has claimed, in a task of its own.
    fn start(&self, leased: Leased, held: Held, trace: Option<TraceContext>) -> Published {
        let order_id = leased.order.order_id.clone();
        // Someone in this process already waits on the order (polling for a claim that this
        // run now holds): they see the settled order in the database. This run reports to
        // its own caller only.
        let tx = self.register(&order_id).unwrap_or_else(|_| Arc::new(watch::Sender::new(None)));
        let published = tx.subscribe();
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let outcome = this.run(leased, held, trace).await;
            this.publish(&order_id, &tx, outcome);
        });
        published
    }

    /// Joins this process's run of `order`, or claims it, or waits for another replica's run.
    fn join_or_claim(&self, order: Order, trace: Option<TraceContext>) -> Published {
        let tx = match self.register(&order.order_id) {
            Ok(tx) => tx,
            Err(joined) => return joined,
        };
        let published = tx.subscribe();
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let outcome = this.claim_and_run(&order.order_id, &tx, trace).await;
            this.publish(&order.order_id, &tx, outcome);
        });
        published
    }

    async fn claim_and_run(&self, order_id: &str, tx: &Publisher, trace: Option<TraceContext>) -> Outcome {
        loop {
            let held = self.new_hold();
            match self.inner.store.claim(order_id, &held.lease).await {
                Ok(Claim::Claimed(leased)) => return self.run(leased, held, trace).await,
                Ok(Claim::Settled(order)) => return Outcome::Settled(order),
                Ok(Claim::Busy(_)) => {}
                Err(err) => return Outcome::Unsettled(err.into()),
            }
            if tx.receiver_count() == 0 {
                return Outcome::Unsettled(Status::unavailable("nobody waits for the order any more"));
            }
            tokio::select! {
                () = tokio::time::sleep(POLL_OTHER_REPLICA) => {}
                () = tx.closed() => {}
            }
        }
    }

    /// One run of a claimed order, to its end or to its first interruption.
    async fn run(&self, leased: Leased, mut held: Held, trace: Option<TraceContext>) -> Outcome {
        let Leased { order, attempts } = leased;
        let stopped = match order.status {
            OrderStatus::Compensating => Err(Stop::Refused(order.failure_reason.clone())),
            _ => self.deduct_every_line(&order, &mut held, trace).await,
        };
        let outcome = match stopped {
            Ok(()) => self.confirm(&order, &held).await,
            Err(Stop::Refused(reason)) => self.fail(&order, &mut held, &reason, trace).await,
            Err(stop) => Err(stop),
        };
        match outcome {
            Ok(settled) => Outcome::Settled(settled),
            Err(Stop::Interrupted(status)) => self.pause(&order, &held, attempts, status).await,
            Err(Stop::LeaseLost | Stop::Refused(_)) => self.after_losing_the_lease(&order).await,
        }
    }

    /// The deadline of the next inventory call: the client's budget for one call, never past
    /// the lease, which is renewed first once half of it has gone.
    async fn step_deadline(&self, order_id: &str, held: &mut Held) -> Result<Instant, Stop> {
        let now = Instant::now();
        if held.until.saturating_duration_since(now) < held.lease.ttl / 2 {
            match self.inner.store.renew(order_id, &held.lease).await {
                Ok(true) => held.until = now + held.lease.ttl,
                Ok(false) => return Err(Stop::LeaseLost),
                Err(err) => return Err(Stop::Interrupted(err.into())),
            }
        }
        Ok((now + self.inner.inventory.call_budget()).min(held.until))
    }

    async fn deduct_every_line(
        &self,
        order: &Order,
        held: &mut Held,
        trace: Option<TraceContext>,
    ) -> Result<(), Stop> {
        for (i, line) in order.items.iter().enumerate() {
            let deadline = self.step_deadline(&order.order_id, held).await?;
            let req = DeductStockRequest {
                request_id: order.line_key(i),
                sku: line.sku.to_string(),
                quantity: line.quantity.get(),
            };
            if let Err(status) = self.inner.inventory.deduct(req, deadline, trace).await {
                return Err(match classify(status.code()) {
                    LineFailure::Refused => Stop::Refused(refusal_reason(&line.sku, &status)),
                    LineFailure::Interrupted => Stop::Interrupted(interrupted(&line.sku, &status)),
                });
            }
        }
        Ok(())
    }

    async fn confirm(&self, order: &Order, held: &Held) -> Result<Order, Stop> {
        let store = &self.inner.store;
        let owner = &held.lease.owner;
        let event = self.inner.events.event(|| events::confirmed(&order.order_id));
        let confirmed = OrderStatus::Confirmed;
        match store.advance(&order.order_id, owner, OrderStatus::Pending, confirmed, "", event.as_ref()).await
        {
            Ok(Some(confirmed)) => {
                self.inner.metrics.confirmed.inc();
                self.inner.events.committed(&order.order_id, event.is_some());
                Ok(confirmed)
            }
            Ok(None) => Err(Stop::LeaseLost),
            Err(err) => Err(Stop::Interrupted(err.into())),
        }
    }

    /// Records the decision to fail (fenced), gives every line back, then marks it FAILED.
    async fn fail(
        &self,
        order: &Order,
        held: &mut Held,
        reason: &str,
        trace: Option<TraceContext>,
    ) -> Result<Order, Stop> {
        let (store, owner, id) = (&self.inner.store, held.lease.owner.clone(), &order.order_id);
        if order.status == OrderStatus::Pending {
            match store
                .advance(id, &owner, OrderStatus::Pending, OrderStatus::Compensating, reason, None)
                .await
            {
                Ok(Some(_)) => {
                    tracing::info!(order_id = %id, %reason, "order fails; giving every line back");
                    self.inner.events.committed(id, false);
                }
                Ok(None) => return Err(Stop::LeaseLost),
                Err(err) => return Err(Stop::Interrupted(err.into())),
            }
        }
        self.release_every_line(order, held, trace).await.map_err(|stop| match stop {
            Stop::Interrupted(status) => Stop::Interrupted(Status::unavailable(format!(
                "{reason}; giving stock back did not complete ({}); the order stays PENDING and is resumed \
                 in the background, or retry CreateOrder with the same request_id",
                status.message()
            ))),
            other => other,
        })?;
        let event = self.inner.events.event(|| events::failed(id, reason));
        match store
            .advance(id, &owner, OrderStatus::Compensating, OrderStatus::Failed, reason, event.as_ref())
            .await
        {
            Ok(Some(failed)) => {
                self.inner.metrics.failed.inc();
                self.inner.events.committed(id, event.is_some());
                Ok(failed)
            }
            Ok(None) => Err(Stop::LeaseLost),
            Err(err) => Err(Stop::Interrupted(err.into())),
        }
    }

    /// Releases every line of `order` (a few at a time), whether or not it was deducted.
    async fn release_every_line(
        &self,
        order: &Order,
        held: &mut Held,
        trace: Option<TraceContext>,
    ) -> Result<(), Stop> {
        let lines: Vec<usize> = (0..order.items.len()).collect();
        for chunk in lines.chunks(RELEASES_AT_ONCE) {
            let deadline = self.step_deadline(&order.order_id, held).await?;
            let releases = chunk.iter().map(|&i| {
                let line = &order.items[i];
                let req = ReleaseStockRequest {
                    request_id: order.line_key(i),
                    sku: line.sku.to_string(),
                    quantity: line.quantity.get(),
                };
                self.inner.metrics.compensations.inc();
                self.inner.inventory.release(req, deadline, trace)
            });
            let results = futures::future::join_all(releases).await;
            let mut first_error = None;
            for (status, &i) in results.into_iter().filter_map(Result::err).zip(chunk) {
                self.inner.metrics.compensation_failures.inc();
                tracing::error!(order_id = %order.order_id, line = i, code = ?status.code(), message = status.message(), "release failed");
                first_error.get_or_insert(status);
            }
            if let Some(status) = first_error {
                return Err(Stop::Interrupted(status));
            }
        }
        Ok(())
    }

    /// Gives the lease up after an interruption; the recoverer retries after a delay.
    async fn pause(&self, order: &Order, held: &Held, attempts: u32, status: Status) -> Outcome {
        let retry_after = retry_delay(self.inner.settings.recovery_interval, attempts);
        if let Err(err) = self.inner.store.unlease(&order.order_id, &held.lease.owner, retry_after).await {
            tracing::warn!(order_id = %order.order_id, error = %err, "could not give the order's lease up; it runs out on its own");
        }
        tracing::warn!(
            order_id = %order.order_id,
            attempts = attempts + 1,
            retry_in_ms = retry_after.as_millis() as u64,
            reason = status.message(),
            "saga interrupted; the order stays unsettled"
        );
        Outcome::Unsettled(status)
    }

    /// Another run took the order over: report what it has become.
    async fn after_losing_the_lease(&self, order: &Order) -> Outcome {
        match self.inner.store.get(&order.order_id).await {
            Ok(Some(now)) if !now.status.is_unsettled() => Outcome::Settled(now),
            _ => Outcome::Unsettled(Status::unavailable(format!(
                "order `{}` is being processed by another run; retry CreateOrder with the same request_id",
                order.order_id
            ))),
        }
    }
}

/// Waits for `published` until `deadline`.
async fn wait(mut published: Published, deadline: Instant, order_id: &str) -> Result<Order, Status> {
    let outcome = tokio::time::timeout_at(deadline, async {
        published.wait_for(Option::is_some).await.ok().and_then(|o| o.clone())
    })
    .await;
    match outcome {
        Ok(Some(outcome)) => outcome.into_answer(),
        Ok(None) => Err(Status::unavailable(format!(
            "the run of order `{order_id}` ended without an answer; retry CreateOrder with the same request_id"
        ))),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "order `{order_id}` is still being processed; it goes on in the background: retry CreateOrder \
             with the same request_id, or read it with GetOrder"
        ))),
    }
}

/// What an inventory error on one line means for the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFailure {
    /// A business answer no retry changes: the order fails and every line is given back.
    Refused,
    /// Inventory could not answer (or not yet): the order stays unsettled and is resumed.
    Interrupted,
}

/// Sorts an inventory status code. Only answers about the request itself refuse an order:
/// no stock (`FAILED_PRECONDITION`), unknown sku (`NOT_FOUND`), or a request inventory will
/// never accept (`INVALID_ARGUMENT`, `ALREADY_EXISTS`, `ABORTED`: the line was released,
/// `OUT_OF_RANGE`). Everything else (unavailable, deadline, overload, auth, internal) is about
/// the infrastructure, and retrying later can succeed.
pub fn classify(code: Code) -> LineFailure {
    match code {
        Code::FailedPrecondition
        | Code::NotFound
        | Code::InvalidArgument
        | Code::AlreadyExists
        | Code::Aborted
        | Code::OutOfRange => LineFailure::Refused,
        _ => LineFailure::Interrupted,
    }
}

/// The failure reason stored on the order (and sent with `FAILED_PRECONDITION`).
fn refusal_reason(sku: &Sku, status: &Status) -> String {
    match status.code() {
        Code::FailedPrecondition => format!("insufficient stock for sku `{sku}`"),
        Code::NotFound => format!("sku `{sku}` not found"),
        code => format!("inventory refused sku `{sku}`: {code:?}: {}", status.message()),
    }
}

fn interrupted(sku: &Sku, status: &Status) -> Status {
    Status::unavailable(format!(
        "inventory did not answer for sku `{sku}` ({:?}: {}); the order stays PENDING and is resumed in the \
         background, or retry CreateOrder with the same request_id",
        status.code(),
        status.message()
    ))
}

/// Delay before the recoverer retries an order after `attempts` interrupted runs: `base`,
/// doubling per attempt, at most [`MAX_RETRY_DELAY`].
pub fn retry_delay(base: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1u32 << attempts.min(16)).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_answers_about_the_request_refuse_an_order() {
        for code in [Code::FailedPrecondition, Code::NotFound, Code::InvalidArgument, Code::Aborted] {
            assert_eq!(classify(code), LineFailure::Refused, "{code:?}");
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Unknown,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Cancelled,
        ] {
            assert_eq!(classify(code), LineFailure::Interrupted, "{code:?}");
        }
    }

    #[test]
    fn the_retry_delay_doubles_up_to_its_cap() {
        let base = Duration::from_secs(2);
        assert_eq!(retry_delay(base, 0), Duration::from_secs(2));
        assert_eq!(retry_delay(base, 1), Duration::from_secs(4));
        assert_eq!(retry_delay(base, 3), Duration::from_secs(16));
        assert_eq!(retry_delay(base, 5), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(base, u32::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn a_failed_order_answers_failed_precondition_and_an_unsettled_one_its_reason() {
        let order = Order {
            order_id: "o".into(),
            request_id: "r".into(),
            customer_id: "c".into(),
            items: Vec::new(),
            status: OrderStatus::Failed,
            failure_reason: "insufficient stock for sku `a`".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            saga: Saga::Sync,
        };
        let err = Outcome::Settled(order.clone()).into_answer().unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::FailedPrecondition, "insufficient stock for sku `a`"));
        let confirmed = Order { status: OrderStatus::Confirmed, ..order };
        assert_eq!(Outcome::Settled(confirmed.clone()).into_answer().ok(), Some(confirmed));
        let pending = Outcome::Unsettled(Status::unavailable("later")).into_answer().unwrap_err();
        assert_eq!(pending.code(), Code::Unavailable);
    }
}
