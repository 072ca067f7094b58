//! Group commit for deductions.
//!
//! A [`Lane`] is a queue with one writer task behind it. Callers put a deduction on the queue
//! and wait for its answer; the writer takes everything that queued up while it was busy (up
//! to [`MAX_BATCH`]), hands the batch to the backend, which runs it in one transaction, and
//! answers every caller only after that transaction committed (or failed). Under load one
//! commit then carries many deductions, instead of one commit each.
//!
//! The backend keeps the per-request semantics (a guarded decrement and an idempotency record
//! per request, a replay for a known id, a refusal for a reused id with another payload) and
//! reports one outcome per request. When the batch transaction fails as a whole, the backend
//! retries each request on its own, so one bad request cannot fail the others.
//!
//! A caller that goes away after queueing does not cancel its deduction: it still executes
//! and is recorded, and a retry with the same request_id gets the recorded answer.

use std::future::Future;

use ferry_proto::domain::DeductStock;
use tokio::sync::{mpsc, oneshot};

use super::{Deducted, StoreError};

/// Most deductions one transaction carries.
pub(crate) const MAX_BATCH: usize = 256;
/// Deductions that may wait in one lane before callers wait to enqueue.
const QUEUE: usize = 4096;

/// The outcome of one deduction.
pub(crate) type Outcome = Result<Deducted, StoreError>;

struct Job {
    cmd: DeductStock,
    reply: oneshot::Sender<Outcome>,
}

/// A queue in front of one writer task. Dropping every clone stops the task once the queue
/// is empty.
#[derive(Debug, Clone)]
pub(crate) struct Lane {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("request_id", &self.cmd.request_id.as_str()).finish_non_exhaustive()
    }
}

impl Lane {
    /// Spawns the writer task. `exec` runs one batch and returns exactly one outcome per
    /// command, in order; it must only return once the batch's transaction has ended.
    pub(crate) fn spawn<F, Fut>(mut exec: F) -> Self
    where
        F: FnMut(Vec<DeductStock>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Outcome>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        tokio::spawn(async move {
            let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
                let (cmds, replies): (Vec<DeductStock>, Vec<oneshot::Sender<Outcome>>) =
                    jobs.drain(..).map(|j| (j.cmd, j.reply)).unzip();
                let n = cmds.len();
                let mut outcomes = exec(cmds).await;
                if outcomes.len() != n {
                    // A backend bug; never answer a caller with another caller's outcome.
                    outcomes = vec![
                        Err(StoreError::Internal(format!(
                            "batch of {n} deductions returned {} outcomes",
                            outcomes.len()
                        )));
                        n
                    ];
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // The caller may have gone away; its deduction stands regardless.
                    let _ = reply.send(outcome);
                }
            }
        });
        Self { tx }
    }

    /// Queues `cmd` and waits for its outcome.
    pub(crate) async fn deduct(&self, cmd: &DeductStock) -> Outcome {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { cmd: cmd.clone(), reply })
            .await
            .map_err(|_| StoreError::Unavailable("the deduction writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Internal("the deduction writer stopped before answering".into()))?
    }
}
