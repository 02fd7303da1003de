//! Group commit: one task owns flushing. Waiters that arrive while a flush runs share the
//! next one, so a burst of acknowledgements costs one `fsync`-backed flush.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use super::StoreError;
use crate::telemetry::Metrics;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// Starts the flusher. It exits, dropping its database handle, when every sender is gone;
/// the returned watch receiver then reports closed.
pub fn spawn(
    db: sled::Db,
    metrics: Arc<Metrics>,
) -> (mpsc::UnboundedSender<Waiter>, watch::Receiver<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
    let (alive, closed) = watch::channel(());
    tokio::spawn(async move {
        let _alive = alive;
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while let Ok(w) = rx.try_recv() {
                batch.push(w);
            }
            let started = Instant::now();
            let res = db.flush_async().await.map(|_| ()).map_err(StoreError::from);
            metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
            metrics.flush_batch.observe(batch.len() as f64);
            if let Err(e) = &res {
                tracing::error!(message = "storage flush failed", error = %e);
            }
            for w in batch.drain(..) {
                let _ = w.send(res.clone());
            }
        }
        drop(db);
    });
    (tx, closed)
}
