//! Shared access to the state store from async and blocking code.
//!
//! [`Db`] is the one connection that writes. The engine uses it, from a runtime of its own
//! (daemon.rs): its blocking calls run on threads no client can take. The API writes through it
//! only for callers who may change state, each write on one of the API's bounded workers
//! (api/limits.rs).
//!
//! [`Reads`] is a few read-only connections for the API's reads. The database is in WAL mode,
//! so those reads never wait for the engine's commits nor hold them up, however many clients
//! ask.
//!
//! SQLite commits fsync (`synchronous=FULL`), so they never run on the async executor's threads:
//! async callers go through [`Db::call`], which hops to a blocking thread; code already on a
//! blocking thread (task handlers) uses [`Db::with`].

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use refreshd_state::State;
use tokio::sync::Semaphore;

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

    /// Runs `f` on the state on a blocking thread of the calling runtime.
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

/// Why a read could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Every reader stayed taken for as long as a caller may wait.
    #[error("all {size} readers of the state stayed taken for {wait:?}")]
    Busy { size: usize, wait: Duration },
    /// The daemon is shutting down: the readers are closed.
    #[error("the readers of the state are closed")]
    Closed,
    #[error(transparent)]
    State(#[from] refreshd_state::Error),
}

/// Read-only connections, each used by one read at a time, taken in turn.
#[derive(Clone)]
pub struct Reads(Arc<ReadsInner>);

struct ReadsInner {
    idle: Mutex<Vec<State>>,
    permits: Arc<Semaphore>,
    size: usize,
    wait: Duration,
}

impl Reads {
    /// Opens `size` read-only connections to the database at `path` (already opened and
    /// migrated by the writer). A read waits at most `wait` for one.
    pub fn open(path: &Path, size: usize, wait: Duration) -> refreshd_state::Result<Reads> {
        let idle = (0..size)
            .map(|_| State::open_read_only(path))
            .collect::<refreshd_state::Result<Vec<_>>>()?;
        Ok(Reads(Arc::new(ReadsInner {
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(size)),
            size,
            wait,
        })))
    }

    /// Runs `f` in one read transaction on a blocking thread, once a reader is free.
    pub async fn call<T, F>(&self, f: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&mut State) -> T + Send + 'static,
    {
        let inner = self.0.clone();
        let permit =
            match tokio::time::timeout(inner.wait, inner.permits.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(ReadError::Closed),
                Err(_) => {
                    return Err(ReadError::Busy {
                        size: inner.size,
                        wait: inner.wait,
                    })
                }
            };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // A permit is a connection: there are as many of each.
            let mut conn = Taken {
                inner: &inner,
                state: inner.idle.lock().unwrap_or_else(|e| e.into_inner()).pop(),
            };
            let state = conn.state.as_mut().expect("one idle reader per permit");
            Ok(state.read(f)?)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

impl Reads {
    /// Closes the readers (those in use as their reads end), so that the writing connection is
    /// the last one open: SQLite then folds the WAL into the database file as it closes.
    pub fn close(&self) {
        self.0.permits.close();
        self.0
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// A reader in use, given back however the read ends (or closed, once the readers are).
struct Taken<'a> {
    inner: &'a ReadsInner,
    state: Option<State>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.state.take() {
            if !self.inner.permits.is_closed() {
                self.inner
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(s);
            }
        }
    }
}
