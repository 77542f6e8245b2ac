//! `GET /v1/metrics`: the Prometheus text exposition (docs/metrics.md), open to every local
//! user like every `GET`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use refreshd_state::now_ms;

use super::{ApiError, ApiState};
use crate::metrics::ProcessInfo;

/// The content type of the text format Prometheus scrapes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn metrics(State(st): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let gauges = st.read(|s| crate::metrics::gauges(s, now_ms())).await?;
    let process = ProcessInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        tracking: st.ops.ctx.tracking.kind.as_str().to_owned(),
        start_time: st.started.as_millisecond() as f64 / 1000.0,
        ..own_figures()
    };
    let body = st.metrics.render(&gauges, &process);
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response())
}

/// CPU time, resident memory and open descriptors of this process.
fn own_figures() -> ProcessInfo {
    let own = crate::procfs::own();
    ProcessInfo {
        cpu_seconds: own.cpu_seconds,
        resident_bytes: own.resident_bytes,
        open_fds: own.open_fds,
        ..ProcessInfo::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_figures_are_read() {
        let p = own_figures();
        assert!(p.cpu_seconds.is_some_and(|c| c >= 0.0), "{p:?}");
        assert!(p.resident_bytes.is_some_and(|r| r > 1024 * 1024), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
    }
}
