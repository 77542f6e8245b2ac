//! The HTTP+JSON API on the Unix socket (docs/api.md).

mod auth;
mod changes;
mod error;
mod metrics;
pub mod refresh;
mod snaps;
mod status;
pub(crate) use status::hidepid;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use refreshd_client::types::{ErrorKind, MountMode as ApiMountMode};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::tasks::{Ctx, MountMode};
pub use auth::Peer;
pub use error::ApiError;

/// Everything a request handler can reach.
pub struct ApiState {
    pub engine: Engine,
    pub ctx: Arc<Ctx>,
    pub started: jiff::Timestamp,
    /// Members of this group may change state, besides root.
    pub admin_gid: Option<u32>,
    /// Largest snap file accepted by upload.
    pub max_upload: u64,
    /// Fires when the daemon shuts down: streams end, new work is refused.
    pub shutdown: CancellationToken,
}

impl ApiState {
    fn mount_mode(&self) -> ApiMountMode {
        match self.ctx.mount_mode {
            MountMode::Loop => ApiMountMode::Loop,
            MountMode::Extract => ApiMountMode::Extract,
        }
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
        .route("/v1/metrics", get(metrics::metrics))
        .fallback(|| async {
            ApiError::new(
                ErrorKind::NotFound,
                "no such API endpoint; see docs/api.md for the /v1 resources",
            )
        })
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` fires, then lets requests in flight finish.
pub async fn serve(listener: UnixListener, state: Arc<ApiState>) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let app = router(state).into_make_service_with_connect_info::<Peer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Parses a JSON request body whatever its Content-Type says, so `curl -d` works as is.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], example: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("bad request body: {e}; send {example}")))
}
