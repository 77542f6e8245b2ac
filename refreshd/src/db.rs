//! Shared access to the state store from async and blocking code.
//!
//! SQLite commits fsync (`synchronous=FULL`), so they never run on the async executor's threads:
//! async callers go through [`Db::call`], which hops to a blocking thread; code already on a
//! blocking thread (task handlers) uses [`Db::with`].

use std::sync::{Arc, Mutex, MutexGuard};

use refreshd_state::State;

#[derive(Clone)]
pub struct Db(Arc<Mutex<State>>);

impl Db {
    pub fn new(state: State) -> Db {
        Db(Arc::new(Mutex::new(state)))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A handler that panicked while holding the lock cannot have left SQLite half-written
        // (transactions roll back), so the state behind a poisoned lock is still good.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state from a blocking context.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.lock())
    }

    /// Runs `f` on the state on a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&mut State) -> T + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.with(f))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}
