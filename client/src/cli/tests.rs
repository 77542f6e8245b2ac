//! Commands end to end against a fake daemon (axum on a scratch Unix socket): what they ask
//! for and the exit code they end with. Their text output is tested in `format` and `progress`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::UnixListener;

use super::*;
use crate::client::RetryPolicy;
use crate::types::{
    Change, ChangeRef, ErrorBody, ErrorKind, NoteKind, RefreshActionKind, RefreshNote, RefreshPlan,
    RefreshRequest, RefreshResult, Snap, Status, Update,
};

type Log = Arc<Mutex<Vec<String>>>;

struct Fake {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    log: Log,
}

fn ts() -> jiff::Timestamp {
    "2026-11-21T20:15:03Z".parse().unwrap()
}

fn change(id: u64, status: Status, error: Option<&str>) -> Change {
    Change {
        id,
        kind: "install".into(),
        summary: "Install \"hello\" from file".into(),
        snap: Some("hello".into()),
        status,
        ready: status.is_ready(),
        spawn_time: ts(),
        ready_time: None,
        error: error.map(String::from),
        tasks: vec![],
    }
}

/// A daemon where change 7 succeeds, change 8 fails, removing `busy` conflicts, and removing
/// `guarded` is forbidden. Every request is logged as `METHOD PATH`.
async fn fake() -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("refreshd.socket");
    let log: Log = Arc::default();
    let app = Router::new()
        .route("/v1/snaps", post(|| async { (StatusCode::ACCEPTED, Json(ChangeRef { change: 7 })) }))
        .route(
            "/v1/snaps/{name}",
            get(|UrlPath(name): UrlPath<String>| async move {
                Json(Snap {
                    name: name.clone(),
                    snap_name: name,
                    instance_key: None,
                    revision: "x1".into(),
                    version: "1.0".into(),
                    summary: "Says hello".into(),
                    channel: None,
                    hold: None,
                    revisions: vec!["x1".into()],
                    apps: vec![],
                    installed: ts(),
                })
            })
            .post(|UrlPath(name): UrlPath<String>| async move {
                match name.as_str() {
                    "busy" => (
                        StatusCode::CONFLICT,
                        Json(ErrorBody::new(ErrorKind::Conflict, "snap \"busy\" has change 12 in progress").with_change(12)),
                    )
                        .into_response(),
                    "guarded" => (
                        StatusCode::FORBIDDEN,
                        Json(ErrorBody::new(
                            ErrorKind::Forbidden,
                            "removing snaps requires root (or membership of the admin group); try again with sudo",
                        )),
                    )
                        .into_response(),
                    "failing" => (StatusCode::ACCEPTED, Json(ChangeRef { change: 8 })).into_response(),
                    _ => (StatusCode::ACCEPTED, Json(ChangeRef { change: 7 })).into_response(),
                }
            }),
        )
        .route(
            "/v1/changes/{id}/watch",
            get(|UrlPath(id): UrlPath<u64>| async move {
                let mut body = String::new();
                let last = if id == 7 {
                    change(id, Status::Done, None)
                } else {
                    change(id, Status::Error, Some("cannot mount: no loop devices"))
                };
                for c in [change(id, Status::Doing, None), last] {
                    body.push_str(&serde_json::to_string(&c).unwrap());
                    body.push('\n');
                }
                body
            }),
        )
        .route(
            "/v1/changes/{id}",
            get(|UrlPath(id): UrlPath<u64>| async move { Json(change(id, Status::Doing, None)) })
                .post(|UrlPath(id): UrlPath<u64>| async move {
                    if id == 3 {
                        let msg = "change 3 is ready and cannot be aborted";
                        let body = ErrorBody::new(ErrorKind::Conflict, msg).with_change(3);
                        return (StatusCode::CONFLICT, Json(body)).into_response();
                    }
                    Json(change(id, Status::Undoing, None)).into_response()
                }),
        )
        .route("/v1/changes", get(|| async { Json(Vec::<Change>::new()) }))
        .route(
            "/v1/snaps/{name}/status",
            get(|UrlPath(name): UrlPath<String>| async move {
                let msg = format!("snap {name:?} is not installed; refreshctl list shows what is");
                (StatusCode::NOT_FOUND, Json(ErrorBody::new(ErrorKind::NotFound, msg)))
            }),
        )
        .route("/v1/refresh", get(refresh_plan).post(refresh_post))
        .layer(axum::middleware::from_fn_with_state(
            log.clone(),
            |State(log): State<Log>, req: axum::extract::Request, next: axum::middleware::Next| async move {
                log.lock().unwrap().push(format!("{} {}", req.method(), req.uri()));
                next.run(req).await
            },
        ));
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Fake {
        _dir: dir,
        socket,
        log,
    }
}

fn note(snap: &str, kind: NoteKind, change: Option<u64>) -> RefreshNote {
    RefreshNote {
        snap: snap.into(),
        kind,
        message: format!("{snap}: {kind:?}"),
        change,
        hold: None,
    }
}

/// `GET /v1/refresh`: one update, one snap up to date.
async fn refresh_plan() -> Json<RefreshPlan> {
    Json(RefreshPlan {
        updates: vec![Update {
            name: "hello".into(),
            revision: "1".into(),
            version: "1.0".into(),
            channel: "stable".into(),
            store_revision: "2".into(),
            store_version: "2.0".into(),
            hold: None,
            change: None,
        }],
        notes: vec![note("other", NoteKind::UpToDate, None)],
    })
}

/// `POST /v1/refresh`: refreshing `failing` makes change 8 (which fails), `broken` cannot be
/// checked, anything else makes change 7; holds answer with the snaps named.
async fn refresh_post(Json(req): Json<RefreshRequest>) -> axum::response::Response {
    match req.action {
        RefreshActionKind::Refresh => {
            let mut result = RefreshResult::default();
            let names = if req.names.is_empty() {
                vec!["hello".to_string(), "held".to_string()]
            } else {
                req.names
            };
            for name in names {
                match name.as_str() {
                    "failing" => {
                        result.changes.push(8);
                        result
                            .notes
                            .push(note(&name, NoteKind::Refreshing, Some(8)));
                    }
                    "broken" => result.notes.push(note(&name, NoteKind::Error, None)),
                    "held" => result.notes.push(note(&name, NoteKind::Held, None)),
                    "current" => result.notes.push(note(&name, NoteKind::UpToDate, None)),
                    "busy" => result.notes.push(RefreshNote {
                        message: "snap \"busy\" has change 12 in progress; skipped".into(),
                        ..note(&name, NoteKind::Busy, Some(12))
                    }),
                    _ => {
                        result.changes.push(7);
                        result
                            .notes
                            .push(note(&name, NoteKind::Refreshing, Some(7)));
                    }
                }
            }
            let status = if result.changes.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            (status, Json(result)).into_response()
        }
        RefreshActionKind::Hold | RefreshActionKind::Unhold => {
            let hold = req.hold.map(|h| h.until(ts()).to_string());
            let snaps: Vec<Snap> = req
                .names
                .iter()
                .map(|name| Snap {
                    name: name.clone(),
                    snap_name: name.clone(),
                    instance_key: None,
                    revision: "1".into(),
                    version: "1.0".into(),
                    summary: String::new(),
                    channel: Some("stable".into()),
                    hold: hold.clone(),
                    revisions: vec!["1".into()],
                    apps: vec![],
                    installed: ts(),
                })
                .collect();
            Json(snaps).into_response()
        }
    }
}

/// Runs refreshctl's `args` against `socket` and returns its exit code and error line.
async fn refreshctl(socket: &std::path::Path, args: &[&str]) -> (i32, String) {
    let cli =
        Cli::try_parse_from(std::iter::once("refreshctl").chain(args.iter().copied())).unwrap();
    let client = Client::new(socket.to_path_buf()).with_retry_policy(RetryPolicy {
        window: Duration::from_millis(200),
        reconnect_window: Duration::from_millis(200),
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    });
    let clock = format::Clock::system();
    match commands::run(cli.command, &client, &clock, format::Paint::default()).await {
        Ok(()) => (exit::SUCCESS, String::new()),
        Err(err) => (exit::exit_code(&err), exit::one_line(&err)),
    }
}

#[tokio::test]
async fn install_follows_the_change_then_names_the_snap() {
    let fake = fake().await;
    let file = fake._dir.path().join("hello_1.0.snap");
    std::fs::write(&file, b"hsqs").unwrap();
    let (code, err) = refreshctl(&fake.socket, &["install", file.to_str().unwrap()]).await;
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        *fake.log.lock().unwrap(),
        [
            "POST /v1/snaps",
            "GET /v1/changes/7/watch",
            "GET /v1/snaps/hello"
        ]
    );
}

#[tokio::test]
async fn no_wait_does_not_follow() {
    let fake = fake().await;
    let (code, _) = refreshctl(&fake.socket, &["remove", "hello", "--no-wait"]).await;
    assert_eq!(code, 0);
    assert_eq!(*fake.log.lock().unwrap(), ["POST /v1/snaps/hello"]);
}

#[tokio::test]
async fn exit_codes_of_commands() {
    let fake = fake().await;
    let missing = fake._dir.path().join("nowhere.socket");
    let cases: &[(&std::path::Path, &[&str], i32, &str)] = &[
        (&fake.socket, &["remove", "hello"], 0, ""),
        (&fake.socket, &["watch", "7"], 0, ""),
        (&fake.socket, &["tasks", "7", "--json"], 0, ""),
        (
            &fake.socket,
            &["remove", "failing"],
            1,
            "change 8 (Install \"hello\" from file) failed: cannot mount: no loop devices; details: refreshctl tasks 8",
        ),
        (&fake.socket, &["watch", "8", "--json"], 1, "change 8 (Install \"hello\" from file) failed"),
        (&fake.socket, &["remove", "busy"], 5, "snap \"busy\" has change 12 in progress"),
        (
            &fake.socket,
            &["remove", "guarded"],
            4,
            "removing snaps requires root (or membership of the admin group); try again with sudo",
        ),
        (&fake.socket, &["abort", "4"], 0, ""),
        (&fake.socket, &["abort", "3"], 5, "change 3 is ready and cannot be aborted"),
        (&fake.socket, &["changes", "--all"], 0, ""),
        (
            &fake.socket,
            &["status", "nope"],
            1,
            "snap \"nope\" is not installed; refreshctl list shows what is",
        ),
        (&fake.socket, &["remove", "hello", "--json"], 0, ""),
        (&fake.socket, &["remove", "failing", "--json"], 1, "change 8 (Install"),
        (&fake.socket, &["abort", "4", "--json"], 0, ""),
        (&fake.socket, &["list"], 1, "refreshd answered 405 Method Not Allowed"),
        (&missing, &["status"], 3, "cannot reach refreshd at "),
    ];
    for (socket, args, code, err) in cases {
        let (got_code, got_err) = refreshctl(socket, args).await;
        assert_eq!(got_code, *code, "{args:?}: {got_err}");
        assert!(
            got_err.starts_with(err),
            "{args:?}: {got_err:?} should start with {err:?}"
        );
    }
}

#[tokio::test]
async fn refreshing_many_follows_every_change_and_says_what_was_skipped() {
    let fake = fake().await;
    let cases: &[(&[&str], i32, &str, &[&str])] = &[
        // Every snap with an update: one change followed; the held one is only reported.
        (
            &["refresh"],
            0,
            "",
            &[
                "POST /v1/refresh",
                "GET /v1/changes/7/watch",
                "GET /v1/snaps/hello",
            ],
        ),
        (&["refresh", "--no-wait"], 0, "", &["POST /v1/refresh"]),
        (
            &["refresh", "held", "current"],
            0,
            "",
            &["POST /v1/refresh"],
        ),
        // One failed change fails the command, after the others were followed.
        (
            &["refresh", "failing", "a"],
            1,
            "change 8 (Install \"hello\" from file) failed",
            &[
                "POST /v1/refresh",
                "GET /v1/changes/8/watch",
                "GET /v1/changes/7/watch",
                "GET /v1/snaps/hello",
            ],
        ),
        (
            &["refresh", "broken", "a"],
            1,
            "cannot check broken for updates (see above)",
            &[
                "POST /v1/refresh",
                "GET /v1/changes/7/watch",
                "GET /v1/snaps/hello",
            ],
        ),
        // One name is a refresh of several with one name: a change in progress is a conflict,
        // no update is no failure.
        (
            &["refresh", "busy"],
            5,
            "snap \"busy\" has change 12 in progress",
            &["POST /v1/refresh"],
        ),
        (&["refresh", "current"], 0, "", &["POST /v1/refresh"]),
        (
            &["refresh", "broken"],
            1,
            "broken: Error",
            &["POST /v1/refresh"],
        ),
        (&["refresh", "--list"], 0, "", &["GET /v1/refresh"]),
        (
            &["refresh", "--list", "--json"],
            0,
            "",
            &["GET /v1/refresh"],
        ),
        (
            &["refresh", "--hold=2h", "a", "b"],
            0,
            "",
            &["POST /v1/refresh"],
        ),
        (&["refresh", "--unhold"], 0, "", &["POST /v1/refresh"]),
        // --json prints the changes once ready (or as they are, with --no-wait).
        (
            &["refresh", "--json"],
            0,
            "",
            &["POST /v1/refresh", "GET /v1/changes/7/watch"],
        ),
        (
            &["refresh", "a", "--json", "--no-wait"],
            0,
            "",
            &["POST /v1/refresh", "GET /v1/changes/7"],
        ),
        (
            &["refresh", "failing", "b", "--json"],
            1,
            "change 8 (Install \"hello\" from file) failed",
            &[
                "POST /v1/refresh",
                "GET /v1/changes/8/watch",
                "GET /v1/changes/7/watch",
            ],
        ),
        (
            &["refresh", "--hold", "a", "--json"],
            0,
            "",
            &["POST /v1/refresh"],
        ),
        // Usage errors are found before anything is asked.
        (
            &["refresh", "a", "b", "--channel", "beta"],
            2,
            "--channel goes with exactly one NAME",
            &[],
        ),
    ];
    for (args, code, err, requests) in cases {
        fake.log.lock().unwrap().clear();
        let (got_code, got_err) = refreshctl(&fake.socket, args).await;
        assert_eq!(got_code, *code, "{args:?}: {got_err}");
        assert!(
            got_err.starts_with(err),
            "{args:?}: {got_err:?} should start with {err:?}"
        );
        assert_eq!(*fake.log.lock().unwrap(), *requests, "{args:?}");
    }
}
