//! The operations layer: what a request or a timer decides and makes. Refreshing one snap or
//! many, installing (from the store or a file), reverting, removing, holding refreshes and
//! restoring or forgetting snapshots are planned here, once, whoever asks:
//! the API (`api/`) only parses, authorizes and turns an [`OpError`] into a response, and
//! auto-refresh calls these same functions. The rules each operation keeps live here:
//! idempotency keys, no new work while the daemon shuts down, and a change is made from the
//! state read in the transaction that creates it (never from a picture taken before a store
//! look-up).

pub mod install;
pub mod refresh;
pub mod remove;
pub mod revert;
pub mod snapshots;
pub mod store;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use refreshd_client::types::ErrorKind;
use refreshd_state::{Created, IdempotencyKey, NewChange, State};
use tokio_util::sync::CancellationToken;

use crate::db::{ReadError, Reads};
use crate::engine::Engine;
use crate::tasks::Ctx;
pub use workers::Workers;

/// Why an operation was not done. Each kind maps to one answer of the API (docs/api.md).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request itself is wrong (a bad name or channel, nothing to do).
    #[error("{0}")]
    Invalid(String),
    /// What it names does not exist (a snap not installed, not in the store).
    #[error("{0}")]
    NotFound(String),
    /// It cannot be done as things are (already installed).
    #[error("{0}")]
    Conflict(String),
    #[error(
        "refreshd has no store configured; start it with --store URL (a directory or http(s)://...)"
    )]
    NoStore,
    #[error("refreshd is shutting down; try again when it is back")]
    ShuttingDown,
    /// Every one of `size` `what` stayed taken for `wait`.
    #[error(
        "refreshd is busy: its {size} {what} for requests stayed taken for {} s; try again in a moment",
        wait.as_secs_f64()
    )]
    Busy {
        size: usize,
        what: &'static str,
        wait: Duration,
    },
    /// The store could not be read, or said something that is not an answer.
    #[error("{0}")]
    Store(String),
    #[error(transparent)]
    State(#[from] refreshd_state::Error),
    #[error("{0}")]
    Internal(String),
}

impl OpError {
    /// The kind of answer the API gives for it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OpError::Invalid(_) | OpError::NoStore => ErrorKind::BadRequest,
            OpError::NotFound(_) => ErrorKind::NotFound,
            OpError::Conflict(_) => ErrorKind::Conflict,
            OpError::ShuttingDown | OpError::Busy { .. } => ErrorKind::Unavailable,
            // Not `unavailable`: that asks clients to retry, and a store that cannot be
            // reached was already retried; a bad index is no better the next time.
            OpError::Store(_) | OpError::Internal(_) => ErrorKind::Internal,
            OpError::State(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = OpError> = std::result::Result<T, E>;

/// What operations work with: the engine (and its one writing connection), the read-only
/// connections, the threads for blocking work, and the daemon's shutdown.
pub struct Ops {
    pub engine: Engine,
    pub ctx: Arc<Ctx>,
    pub reads: Reads,
    pub workers: Workers,
    /// Fires when the daemon shuts down: new work is refused.
    pub shutdown: CancellationToken,
}

impl Ops {
    /// Reads the state on one of the read-only connections (one transaction).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        E: Into<OpError> + Send + 'static,
        F: FnOnce(&mut State) -> std::result::Result<T, E> + Send + 'static,
    {
        match self.reads.call(f).await {
            Ok(r) => r.map_err(Into::into),
            Err(ReadError::Busy { size, wait }) => Err(OpError::Busy {
                size,
                what: "readers of the state",
                wait,
            }),
            Err(ReadError::Closed) => Err(OpError::ShuttingDown),
            Err(ReadError::State(e)) => Err(e.into()),
        }
    }

    /// Writes the state through the one writing connection (one transaction), on one of the
    /// workers.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        E: Into<OpError> + Send + 'static,
        F: FnOnce(&mut State) -> std::result::Result<T, E> + Send + 'static,
    {
        let db = self.engine.db().clone();
        self.workers
            .run(move || db.with(f))
            .await?
            .map_err(Into::into)
    }

    /// Refuses new work once the daemon is shutting down.
    fn open_for_work(&self) -> Result<()> {
        if self.shutdown.is_cancelled() {
            return Err(OpError::ShuttingDown);
        }
        Ok(())
    }

    fn store(&self) -> Result<Arc<refreshd_store::Store>> {
        self.ctx.store.clone().ok_or(OpError::NoStore)
    }

    /// Makes the change `plan` decides from the state, in one transaction, under the
    /// caller's idempotency `key` for `request`: a key seen before for the same request
    /// answers with the change it made then (`Created::Existing`), without planning again.
    async fn make<F>(
        &self,
        uid: u32,
        key: Option<String>,
        request: &'static str,
        plan: F,
    ) -> Result<Created>
    where
        F: FnOnce(&mut State) -> Result<NewChange> + Send + 'static,
    {
        self.open_for_work()?;
        let created = self
            .write(move |s| -> Result<Created> {
                if let Some(k) = &key {
                    if let Some((req, id)) = s.idempotency_key(uid, k)? {
                        if req == request {
                            return Ok(Created::Existing(id));
                        }
                    }
                }
                let new = plan(s)?;
                let key = key.as_deref().map(|k| IdempotencyKey {
                    uid,
                    key: k,
                    request,
                });
                Ok(s.create_change(&new, key)?)
            })
            .await?;
        if let Created::New(_) = created {
            self.engine.ensure();
        }
        Ok(created)
    }
}
