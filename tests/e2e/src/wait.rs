//! Waiting on conditions with a deadline, never on wall-clock sleeps alone.

use std::{future::Future, time::Duration};

use tokio::time::{MissedTickBehavior, interval, timeout};

/// A condition did not hold before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct WaitError {
    pub what: String,
    pub waited: Duration,
}

/// Polls `check` until it yields `Some`, returning the value, or fails after
/// `limit`. The poll interval is short because everything here is local.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        let mut tick = interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(value) = check().await {
                return value;
            }
        }
    };
    timeout(limit, poll).await.map_err(|_| WaitError { what: what.to_string(), waited: limit })
}
