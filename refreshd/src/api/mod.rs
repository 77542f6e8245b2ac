//! The HTTP+JSON API on the Unix socket (docs/api.md).

mod auth;
mod changes;
mod error;
pub mod limits;
mod metrics;
pub mod refresh;
mod server;
mod snaps;
mod snapshots;
mod status;
mod watch;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use refreshd_client::types::{ErrorKind, MountMode as ApiMountMode};
use refreshd_state::State;

use crate::ops::{OpError, Ops};
use crate::tasks::MountMode;
pub use auth::Peer;
pub use error::ApiError;
pub use server::serve;

/// Everything a request handler can reach.
pub struct ApiState {
    /// The operations requests ask for, and what they work with (the engine, the state's
    /// connections, the workers, the shutdown).
    pub ops: Arc<Ops>,
    /// What finished since the daemon started (docs/metrics.md).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub started: jiff::Timestamp,
    /// Members of this group may change state, besides root.
    pub admin_gid: Option<u32>,
    /// Largest snap file accepted by upload.
    pub max_upload: u64,
    /// What each caller may hold (connections, requests, streams).
    pub limits: Arc<limits::Limits>,
    /// The answer of `GET /v1/refresh` for callers who are not admins, shared.
    pub plan: refresh::PlanCache,
    /// Watch streams, one snapshot per change shared by all of its watchers.
    pub watches: watch::Watches,
}

impl ApiState {
    fn mount_mode(&self) -> ApiMountMode {
        match self.ops.ctx.mount_mode {
            MountMode::Loop => ApiMountMode::Loop,
            MountMode::Extract => ApiMountMode::Extract,
        }
    }

    /// Reads the state on one of the read-only connections (one transaction).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        E: Into<ApiError> + Send + 'static,
        F: FnOnce(&mut State) -> Result<T, E> + Send + 'static,
    {
        self.ops
            .read(move |s| Ok::<_, OpError>(f(s)))
            .await?
            .map_err(Into::into)
    }

    /// Writes the state through the one writing connection, on one of the workers. Only for
    /// requests of callers who may change state.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        E: Into<ApiError> + Send + 'static,
        F: FnOnce(&mut State) -> Result<T, E> + Send + 'static,
    {
        self.ops
            .write(move |s| Ok::<_, OpError>(f(s)))
            .await?
            .map_err(Into::into)
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/system-info", get(snaps::system_info))
        .route(
            "/v1/snaps",
            get(snaps::list)
                .post(snaps::install)
                // The upload streams to disk and enforces its own limit.
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/snaps/{name}", get(snaps::one).post(snaps::action))
        .route("/v1/snaps/{name}/status", get(status::status))
        .route("/v1/refresh", get(refresh::plan).post(refresh::post))
        .route("/v1/changes", get(changes::list))
        .route("/v1/changes/{id}", get(changes::one).post(changes::action))
        .route("/v1/changes/{id}/watch", get(changes::watch))
        .route("/v1/snapshots", get(snapshots::list))
        .route("/v1/snapshots/{set}", post(snapshots::action))
        .route("/v1/metrics", get(metrics::metrics))
        .fallback(|| async {
            ApiError::new(
                ErrorKind::NotFound,
                "no such API endpoint; see docs/api.md for the /v1 resources",
            )
        })
        .with_state(state)
}

/// A time the state stores (unix ms) as the API shows it.
fn ts(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Parses a JSON request body whatever its Content-Type says, so `curl -d` works as is.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], example: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("bad request body: {e}; send {example}")))
}
