//! The client against fake daemons: axum on a Unix socket in a scratch directory, or raw
//! sockets where a test needs a connection to break at a precise point.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;

use super::*;
use crate::types::{MountMode, Progress, Status, Task};

fn fast() -> RetryPolicy {
    RetryPolicy {
        window: Duration::from_secs(3),
        reconnect_window: Duration::from_secs(3),
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
    }
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("refreshd.socket");
    (dir, socket)
}

fn client(socket: &Path) -> Client {
    Client::new(socket.to_path_buf()).with_retry_policy(fast())
}

fn serve(listener: UnixListener, app: Router) {
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

fn info() -> SystemInfo {
    SystemInfo {
        version: "0.1.0".into(),
        api: "v1".into(),
        root: "/".into(),
        pid: 4242,
        started: ts("2026-11-21T20:15:03.120Z"),
        snaps: 3,
        changes_in_progress: 1,
        mount_mode: MountMode::Loop,
        tracking: "v1".into(),
        tracking_reason: "test".into(),
        services: "none".into(),
        services_reason: "test".into(),
        auto_refresh: None,
        next_auto_refresh: None,
        last_auto_refresh: None,
        release_agent: None,
        store: None,
    }
}

fn change(id: u64, status: Status) -> Change {
    Change {
        id,
        kind: "install".into(),
        summary: "Install \"hello\" from file".into(),
        snap: Some("hello".into()),
        status,
        ready: status.is_ready(),
        spawn_time: ts("2026-11-21T20:15:03Z"),
        ready_time: None,
        error: None,
        tasks: vec![Task {
            id: 31,
            kind: "prepare".into(),
            summary: "Prepare snap \"hello\" (x1)".into(),
            status,
            progress: Progress::default(),
            log: vec![],
            retry: None,
            wait: None,
            spawn_time: ts("2026-11-21T20:15:03Z"),
            ready_time: None,
        }],
    }
}

fn line(change: &Change) -> Bytes {
    let mut v = serde_json::to_vec(change).unwrap();
    v.push(b'\n');
    v.into()
}

fn key(headers: &HeaderMap) -> String {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Reads one request head from a raw connection and returns its Idempotency-Key, leaving the
/// body (if any) unread.
async fn read_head(stream: &mut UnixStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before sending a request head");
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case(IDEMPOTENCY_KEY)
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn get_is_retried_until_the_daemon_is_back() {
    let (_dir, socket) = scratch();
    // No socket at all (ENOENT), then a stale one nobody listens on (ECONNREFUSED), then the
    // daemon.
    let path = socket.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::fs::remove_file(&path).unwrap();
        let listener = UnixListener::bind(&path).unwrap();
        serve(
            listener,
            Router::new().route("/v1/system-info", get(|| async { Json(info()) })),
        );
    });
    let got = client(&socket).system_info().await.unwrap();
    assert_eq!(got, info());
}

#[tokio::test]
async fn unreachable_after_the_window() {
    let (_dir, socket) = scratch();
    let client = Client::new(socket.clone()).with_retry_policy(RetryPolicy {
        window: Duration::from_millis(200),
        ..fast()
    });
    let started = Instant::now();
    let err = client.snaps().await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot reach refreshd at {}: ", socket.display())),
        "{msg}"
    );
    assert!(msg.ends_with("; is refreshd running?"), "{msg}");
}

#[tokio::test]
async fn get_is_retried_while_the_daemon_is_unavailable() {
    let (_dir, socket) = scratch();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/v1/snaps",
            get(|State(calls): State<Arc<AtomicUsize>>| async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    let body = ErrorBody::new(ErrorKind::Unavailable, "shutting down");
                    return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                }
                Json(Vec::<Snap>::new()).into_response()
            }),
        )
        .with_state(calls.clone());
    serve(UnixListener::bind(&socket).unwrap(), app);
    assert!(client(&socket).snaps().await.unwrap().is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

type Keys = Arc<Mutex<Vec<String>>>;

#[tokio::test]
async fn post_is_retried_with_the_same_key() {
    let (_dir, socket) = scratch();
    let keys: Keys = Arc::default();
    let listener = UnixListener::bind(&socket).unwrap();
    let recorded = keys.clone();
    tokio::spawn(async move {
        // The first connection breaks after the request arrived and before any answer.
        let (mut stream, _) = listener.accept().await.unwrap();
        let first_key = read_head(&mut stream).await;
        recorded.lock().unwrap().push(first_key);
        drop(stream);
        let app = Router::new()
            .route(
                "/v1/snaps/{name}",
                post(
                    |State(keys): State<Keys>,
                     UrlPath(name): UrlPath<String>,
                     headers: HeaderMap,
                     Json(action): Json<SnapAction>| async move {
                        assert_eq!(name, "hello");
                        assert_eq!(action, SnapAction::remove(false));
                        keys.lock().unwrap().push(key(&headers));
                        (StatusCode::ACCEPTED, Json(ChangeRef { change: 7 }))
                    },
                ),
            )
            .with_state(recorded);
        axum::serve(listener, app).await.unwrap();
    });

    assert_eq!(client(&socket).remove("hello", false).await.unwrap(), 7);
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], keys[1]);
    assert!(uuid::Uuid::parse_str(&keys[0]).is_ok(), "{keys:?}");
}

#[tokio::test]
async fn upload_is_sent_whole_again_on_retry() {
    let (dir, socket) = scratch();
    let snap: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let file = dir.path().join("hello_1.0.snap");
    std::fs::write(&file, &snap).unwrap();

    let keys: Keys = Arc::default();
    let listener = UnixListener::bind(&socket).unwrap();
    let recorded = keys.clone();
    let want = snap.clone();
    tokio::spawn(async move {
        // Break the first upload part way through its body.
        let (mut stream, _) = listener.accept().await.unwrap();
        let first_key = read_head(&mut stream).await;
        recorded.lock().unwrap().push(first_key);
        drop(stream);
        let app = Router::new().route(
            "/v1/snaps",
            post(
                move |Query(q): Query<crate::types::InstallQuery>,
                      headers: HeaderMap,
                      body: Bytes| async move {
                    assert_eq!(q.instance_name.as_deref(), Some("hello_work"));
                    assert_eq!(headers[CONTENT_TYPE], "application/octet-stream");
                    assert_eq!(headers[CONTENT_LENGTH], want.len().to_string().as_str());
                    assert!(body == want, "upload differs");
                    recorded.lock().unwrap().push(key(&headers));
                    (StatusCode::ACCEPTED, Json(ChangeRef { change: 9 }))
                },
            ),
        );
        axum::serve(listener, app).await.unwrap();
    });

    let id = client(&socket)
        .install_file(&file, Some("hello_work"))
        .await
        .unwrap();
    assert_eq!(id, 9);
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], keys[1]);
    assert!(!keys[0].is_empty());
}

#[tokio::test]
async fn each_post_gets_a_fresh_key() {
    let (_dir, socket) = scratch();
    let keys: Keys = Arc::default();
    let app = Router::new()
        .route(
            "/v1/changes/{id}",
            post(
                |State(keys): State<Keys>, UrlPath(id): UrlPath<u64>, headers: HeaderMap| async move {
                    keys.lock().unwrap().push(key(&headers));
                    Json(change(id, Status::Hold))
                },
            ),
        )
        .with_state(keys.clone());
    serve(UnixListener::bind(&socket).unwrap(), app);
    let client = client(&socket);
    assert_eq!(client.abort(3).await.unwrap().status, Status::Hold);
    client.abort(3).await.unwrap();
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);
}

#[tokio::test]
async fn missing_upload_file_is_an_io_error() {
    let (dir, socket) = scratch();
    let missing = dir.path().join("nope.snap");
    let err = client(&socket)
        .install_file(&missing, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Io { path, .. } if *path == missing),
        "{err:?}"
    );
}

#[tokio::test]
async fn error_bodies_become_api_errors() {
    let (_dir, socket) = scratch();
    let app = Router::new()
        .route(
            "/v1/snaps/{name}",
            get(|UrlPath(name): UrlPath<String>| async move {
                let msg = format!("snap {name:?} is not installed");
                (
                    StatusCode::NOT_FOUND,
                    Json(ErrorBody::new(ErrorKind::NotFound, msg)),
                )
            }),
        )
        .route(
            "/v1/snaps/{name}",
            post(|| async {
                let msg = "snap \"hello\" has change 12 in progress; wait for it or abort it with: refreshctl abort 12";
                let body = ErrorBody::new(ErrorKind::Conflict, msg).with_change(12);
                (StatusCode::CONFLICT, Json(body))
            }),
        )
        .route(
            "/v1/system-info",
            get(|| async {
                (
                    StatusCode::BAD_GATEWAY,
                    "\n  upstream went away  \nmore detail\n",
                )
            }),
        );
    serve(UnixListener::bind(&socket).unwrap(), app);
    let client = client(&socket);

    let err = client.snap("a b/c").await.unwrap_err();
    match &err {
        ClientError::Api {
            status: 404,
            kind: ErrorKind::NotFound,
            change: None,
            ..
        } => {}
        _ => panic!("{err:?}"),
    }
    // The name travelled percent-encoded and came back decoded.
    assert_eq!(err.to_string(), "snap \"a b/c\" is not installed");

    let err = client.remove("hello", false).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Api {
                status: 409,
                kind: ErrorKind::Conflict,
                change: Some(12),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("snap \"hello\" has change 12"));

    let err = client.system_info().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "refreshd answered 502 Bad Gateway: upstream went away"
    );
    assert!(matches!(
        err,
        ClientError::Api {
            kind: ErrorKind::Unknown,
            ..
        }
    ));
}

#[tokio::test]
async fn bad_json_is_a_protocol_error() {
    let (_dir, socket) = scratch();
    let app = Router::new().route("/v1/changes/{id}", get(|| async { "{\"id\": " }));
    serve(UnixListener::bind(&socket).unwrap(), app);
    let err = client(&socket).change(1).await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
}

#[tokio::test]
async fn changes_query() {
    let (_dir, socket) = scratch();
    let app = Router::new().route(
        "/v1/changes",
        get(|Query(q): Query<crate::types::ChangesQuery>| async move {
            assert_eq!(q.select, Select::All);
            assert_eq!(q.snap.as_deref(), Some("hello_work"));
            let mut c = change(4, Status::Done);
            c.tasks.clear();
            Json(vec![c])
        }),
    );
    serve(UnixListener::bind(&socket).unwrap(), app);
    let got = client(&socket)
        .changes(Select::All, Some("hello_work"))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].tasks.is_empty());
}

/// A watch endpoint whose first stream breaks after one non-ready line, either abruptly
/// (`abort`) or by ending cleanly, and whose second sends the ready state.
fn flaky_watch(abort: bool) -> (Router, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/v1/changes/{id}/watch",
            get(
                move |State(calls): State<Arc<AtomicUsize>>, UrlPath(id): UrlPath<u64>| async move {
                    let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                    let body = if first {
                        let doing = line(&change(id, Status::Doing));
                        // Give the line time to be written before the connection is cut.
                        let stream = futures_util::stream::unfold(0, move |n| {
                            let doing = doing.clone();
                            async move {
                                match n {
                                    0 => Some((Ok(doing), 1)),
                                    1 if abort => {
                                        tokio::time::sleep(Duration::from_millis(100)).await;
                                        Some((Err(io::Error::other("daemon stopping")), 2))
                                    }
                                    _ => None,
                                }
                            }
                        });
                        Body::from_stream(stream)
                    } else {
                        Body::from(line(&change(id, Status::Done)))
                    };
                    ([(CONTENT_TYPE, "application/x-ndjson")], body)
                },
            ),
        )
        .with_state(calls.clone());
    (app, calls)
}

async fn watch_survives_a_broken_stream(abort: bool) {
    let (_dir, socket) = scratch();
    let (app, calls) = flaky_watch(abort);
    serve(UnixListener::bind(&socket).unwrap(), app);
    let mut watch = client(&socket).watch(7);
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(
        (first.id, first.status, first.ready),
        (7, Status::Doing, false)
    );
    let second = watch.next().await.unwrap().unwrap();
    assert_eq!((second.status, second.ready), (Status::Done, true));
    assert!(watch.next().await.is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn watch_reconnects_after_the_connection_breaks() {
    watch_survives_a_broken_stream(true).await;
}

#[tokio::test]
async fn watch_reconnects_after_the_stream_ends_early() {
    watch_survives_a_broken_stream(false).await;
}

#[tokio::test]
async fn watch_as_a_stream() {
    let (_dir, socket) = scratch();
    let (app, _) = flaky_watch(true);
    serve(UnixListener::bind(&socket).unwrap(), app);
    let all: Vec<_> = client(&socket).watch(7).into_stream().collect().await;
    let statuses: Vec<_> = all.into_iter().map(|c| c.unwrap().status).collect();
    assert_eq!(statuses, [Status::Doing, Status::Done]);
}

#[tokio::test]
async fn watch_of_an_unknown_change_fails_once() {
    let (_dir, socket) = scratch();
    let app = Router::new().route(
        "/v1/changes/{id}/watch",
        get(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(ErrorBody::new(ErrorKind::NotFound, "no change 99")),
            )
        }),
    );
    serve(UnixListener::bind(&socket).unwrap(), app);
    let mut watch = client(&socket).watch(99);
    let err = watch.next().await.unwrap().unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn watch_gives_up_when_the_daemon_stays_away() {
    let (_dir, socket) = scratch();
    let client = Client::new(socket).with_retry_policy(RetryPolicy {
        window: Duration::from_millis(200),
        ..fast()
    });
    let mut watch = client.watch(1);
    let err = watch.next().await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert!(watch.next().await.is_none());
}

#[test]
fn encoding() {
    assert_eq!(encode("hello_work"), "hello_work");
    assert_eq!(encode("a b/c?d"), "a%20b%2Fc%3Fd");
}

#[tokio::test]
async fn upload_refused_before_it_is_read_gives_the_answer() {
    let (dir, socket) = scratch();
    // Far more than the socket buffers hold, so the daemon closes while we are still writing.
    let file = dir.path().join("big.snap");
    std::fs::write(&file, vec![0u8; 8 << 20]).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/v1/snaps",
            post(|State(calls): State<Arc<AtomicUsize>>| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let msg = "installing snaps requires root (or membership of the admin group); try again with sudo";
                (
                    StatusCode::FORBIDDEN,
                    Json(ErrorBody::new(ErrorKind::Forbidden, msg)),
                )
            }),
        )
        .with_state(calls.clone());
    serve(UnixListener::bind(&socket).unwrap(), app);
    let err = client(&socket).install_file(&file, None).await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err:?}");
    assert!(err
        .to_string()
        .starts_with("installing snaps requires root"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
