//! Accepting and serving connections: who connected is read from the socket at accept, each
//! connection takes its share of [`Limits`](super::limits::Limits) or is refused at once (its
//! request answered 503 with the reason, and closed), and each is served by hyper's HTTP/1
//! server with a header timeout (docs/api.md, "Limits").

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::limits::Slot;
use super::{router, ApiError, ApiState, Peer};

/// How many connections over their limit are answered at a time; more are closed unanswered.
const REFUSING: usize = 64;
/// How long a connection over its limit has to send its request head (to be told why).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a shutdown waits for connections to finish the request they are in.
const DRAIN: Duration = Duration::from_secs(5);
/// How long accepting pauses when the daemon is out of descriptors (or memory).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// The most a request head may take in memory.
const MAX_HEAD: usize = 64 * 1024;

/// Serves the API on `listener` until `state.ops.shutdown` fires; then stops accepting, lets each
/// connection finish the request it is in (at most [`DRAIN`]) and returns.
pub async fn serve(listener: UnixListener, state: Arc<ApiState>) -> std::io::Result<()> {
    let shutdown = state.ops.shutdown.clone();
    let app = router(state.clone());
    let connections = TaskTracker::new();
    // Fires after the drain: connections still open then are dropped.
    let hard_stop = CancellationToken::new();
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let mut pause_warned: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or memory: the connection waits in the backlog while
                // others close; accepting again at once would spin.
                if pause_warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    warn!("cannot accept API connections: {e}; pausing accepts briefly");
                    pause_warned = Some(Instant::now());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                }
            }
        };
        let peer = Peer::of(&stream);
        let slot = match state.limits.connect(peer.uid) {
            Ok(slot) => slot,
            Err(e) => {
                // Told why, in a few bounded tasks; beyond those, closed at once.
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    connections.spawn(refuse(stream, e, permit));
                }
                continue;
            }
        };
        connections.spawn(connection(
            stream,
            peer,
            slot,
            app.clone(),
            state.clone(),
            hard_stop.clone(),
        ));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        let (open, _) = state.limits.open_connections();
        info!("closing {open} API connection(s) still open after {DRAIN:?}");
        hard_stop.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// Answers the request of a connection over its limit with `e` (a 503 and one line) and
/// closes it. It holds nothing of the caller's share: at most [`REFUSAL_TIMEOUT`] to send a
/// request head, twice that in all.
async fn refuse(stream: UnixStream, e: ApiError, _permit: OwnedSemaphorePermit) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_TIMEOUT)
        .max_buf_size(8 * 1024)
        .keep_alive(false);
    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
        let e = e.clone();
        async move { Ok::<_, Infallible>(e.into_response()) }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT * 2, conn).await;
}

/// Serves one connection: requests one after the other, until the client closes it, it sends
/// no complete request head for the header timeout, or the daemon shuts down.
async fn connection(
    stream: UnixStream,
    peer: Peer,
    slot: Slot,
    app: Router,
    state: Arc<ApiState>,
    hard_stop: CancellationToken,
) {
    let shutdown = state.ops.shutdown.clone();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.limits.config.header_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (app, state) = (app.clone(), state.clone());
        async move { Ok::<_, Infallible>(request(req, peer, app, &state).await) }
    });
    let mut conn = pin!(http.serve_connection(TokioIo::new(stream), service));
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = shutdown.cancelled() => None,
    };
    let ended = match ended {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = hard_stop.cancelled() => Ok(()),
            }
        }
    };
    if let Err(e) = ended {
        debug!(uid = peer.uid, "API connection ended: {e}");
    }
    drop(slot);
}

/// One request: its share of the caller's requests, then the router. A caller who may not
/// change state never has a request body read: whatever it sends is not waited for.
async fn request(req: Request<Incoming>, peer: Peer, app: Router, state: &ApiState) -> Response {
    let _slot = match state.limits.request(peer.uid) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    // Reads take no body; only those who may change state get theirs read.
    let reads_only = matches!(*req.method(), Method::GET | Method::HEAD);
    let mut req = if !reads_only && peer.is_admin(state) {
        req.map(Body::new)
    } else {
        req.map(|_| Body::empty())
    };
    req.extensions_mut().insert(ConnectInfo(peer));
    match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}
