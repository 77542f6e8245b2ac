//! The threads that do requests' blocking work (reading `/proc`, asking the store, checking an
//! upload, writing the state).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::OpError;

/// A fixed number of workers, taken in turn (first come, first served). Work that cannot have
/// one within `wait` is refused as busy. Each permit is held by the work itself, so work whose
/// caller went away still counts until it ends.
pub struct Workers {
    permits: Arc<Semaphore>,
    size: usize,
    wait: Duration,
}

impl Workers {
    pub fn new(size: usize, wait: Duration) -> Workers {
        Workers {
            permits: Arc::new(Semaphore::new(size)),
            size,
            wait,
        }
    }

    /// A worker's permit, for work that runs where the caller chooses.
    pub async fn permit(&self) -> Result<OwnedSemaphorePermit, OpError> {
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(OpError::Busy {
                size: self.size,
                what: "workers",
                wait: self.wait,
            }),
        }
    }

    /// Runs `f` on a blocking thread once a worker is free.
    pub async fn run<T, F>(&self, f: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit = self.permit().await?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| OpError::Internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workers_are_taken_in_turn_and_busy_after_a_wait() {
        let w = Workers::new(1, Duration::from_millis(50));
        let held = w.permit().await.unwrap();
        let err = w.run(|| 1).await.expect_err("busy");
        assert!(err.to_string().contains("busy"), "{err:?}");
        drop(held);
        assert_eq!(w.run(|| 2).await.unwrap(), 2);
    }
}
