//! `WatchOrder`: streams an order's state until it settles.
//!
//! The stream sends the order as it is now, then every change, and ends once the order is
//! CONFIRMED, FAILED or CANCELLED, or at the call's deadline. A change made in this process
//! (the event consumer, a saga, a cancel) wakes the watchers of that order at once through
//! [`Changes`]; a change made by another replica is seen by polling the database every
//! [`POLL`], so a watcher never depends on which replica did the work.

use std::{sync::Arc, time::Duration};

use ferry_proto::order::v1::WatchOrderResponse;
use tokio::{sync::broadcast, time::Instant};
use tonic::Status;

use crate::store::{Order, OrderStatus, OrderStore};

/// How often a watcher re-reads its order when nothing in this process announced a change.
pub const POLL: Duration = Duration::from_millis(200);

/// Order ids changed by this process, for the watchers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Changes {
    tx: broadcast::Sender<String>,
}

impl Default for Changes {
    fn default() -> Self {
        Self { tx: broadcast::Sender::new(1024) }
    }
}

impl Changes {
    /// Tells the watchers of `order_id` that it changed (after the change committed).
    pub fn changed(&self, order_id: &str) {
        // No receiver is not an error: nobody watches.
        let _ = self.tx.send(order_id.to_string());
    }

    fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tx.subscribe()
    }
}

/// `true` once the order has no saga work left that a watcher would wait for.
fn settled(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Confirmed | OrderStatus::Failed | OrderStatus::Cancelled)
}

/// The stream's items: the order each time it changed, until it settles or `deadline`.
/// `first` is the order as the handler read it (the caller already knows it exists).
pub fn watch(
    store: Arc<dyn OrderStore>,
    changes: &Changes,
    first: Order,
    deadline: Instant,
) -> tokio_stream::wrappers::ReceiverStream<Result<WatchOrderResponse, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut wakeups = changes.subscribe();
    tokio::spawn(async move {
        let order_id = first.order_id.clone();
        let mut last: Option<Order> = None;
        let mut next = Some(first);
        loop {
            if let Some(order) = next.take().filter(|o| last.as_ref() != Some(o)) {
                let done = settled(order.status);
                let shown = order.to_proto();
                last = Some(order);
                if tx.send(Ok(WatchOrderResponse { order: Some(shown) })).await.is_err() || done {
                    return;
                }
            }
            let woken = tokio::time::timeout_at(deadline.min(Instant::now() + POLL), async {
                loop {
                    match wakeups.recv().await {
                        Ok(id) if id == order_id => return,
                        Ok(_) => {}
                        // Missed announcements: re-read, one of them may have been ours.
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                    }
                }
            })
            .await;
            if woken.is_err() && Instant::now() >= deadline {
                let _ = tx
                    .send(Err(Status::deadline_exceeded(format!(
                        "order `{order_id}` has not settled yet; watch it again"
                    ))))
                    .await;
                return;
            }
            next = match store.get(&order_id).await {
                Ok(Some(order)) => Some(order),
                Ok(None) => {
                    let _ = tx.send(Err(Status::not_found(format!("order `{order_id}` not found")))).await;
                    return;
                }
                Err(err) => {
                    let _ = tx.send(Err(err.into())).await;
                    return;
                }
            };
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
