//! /v1/changes: listing, one change with its tasks, abort, and the live watch stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use refreshd_client::types::{
    self as api, ChangeAction, ChangeActionKind, ChangesQuery, ErrorKind, RetryInfo, WaitInfo,
};
use refreshd_state::{ChangeId, ChangeRow, Select, TaskRow};
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, ApiState, Peer};
use crate::engine::{change_status, AbortError, Status};

type St = State<Arc<ApiState>>;

fn ts(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

pub fn api_status(s: Status) -> api::Status {
    match s {
        Status::Do => api::Status::Do,
        Status::Doing => api::Status::Doing,
        Status::Done => api::Status::Done,
        Status::Undo => api::Status::Undo,
        Status::Undoing => api::Status::Undoing,
        Status::Undone => api::Status::Undone,
        Status::Error => api::Status::Error,
        Status::Hold => api::Status::Hold,
        Status::Wait => api::Status::Wait,
    }
}

fn task_json(t: &TaskRow) -> api::Task {
    api::Task {
        id: t.id,
        kind: t.kind.clone(),
        summary: t.summary.clone(),
        status: api_status(t.status),
        progress: api::Progress {
            label: t.progress_label.clone(),
            done: t.progress_done,
            total: t.progress_total,
        },
        log: t.log.clone(),
        retry: match (&t.retry_reason, t.status) {
            (Some(reason), Status::Do | Status::Undo) => Some(RetryInfo {
                count: t.retry_count,
                reason: reason.clone(),
                next_attempt: ts(t.wait_until.unwrap_or(t.spawn_time)),
            }),
            _ => None,
        },
        wait: (t.status == Status::Wait).then(|| WaitInfo {
            event: t.wait_event.clone().unwrap_or_default(),
            until: t.wait_until.map(ts),
            reason: t.wait_reason.clone().unwrap_or_default(),
        }),
        spawn_time: ts(t.spawn_time),
        ready_time: t.ready_time.map(ts),
    }
}

/// The change as the API shows it; its status is derived from the tasks.
pub fn change_json(c: &ChangeRow, tasks: &[TaskRow], with_tasks: bool) -> api::Change {
    let statuses: Vec<Status> = tasks.iter().map(|t| t.status).collect();
    let errors: Vec<String> = tasks
        .iter()
        .filter(|t| t.status == Status::Error)
        .map(|t| {
            let msg = t
                .log
                .iter()
                .rev()
                .find_map(|l| l.split_once(" ERROR ").map(|(_, m)| m.to_owned()))
                .unwrap_or_else(|| "failed".to_owned());
            format!("{}: {msg}", t.summary)
        })
        .collect();
    api::Change {
        id: c.id,
        kind: c.kind.clone(),
        summary: c.summary.clone(),
        snap: c.snap.clone(),
        status: api_status(change_status(&statuses)),
        ready: c.ready_time.is_some(),
        spawn_time: ts(c.spawn_time),
        ready_time: c.ready_time.map(ts),
        error: (!errors.is_empty()).then(|| errors.join("\n")),
        tasks: if with_tasks {
            tasks.iter().map(task_json).collect()
        } else {
            vec![]
        },
    }
}

fn parse_id(id: &str) -> Result<ChangeId, ApiError> {
    id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "change id {} is not a number; refreshctl changes lists them",
            super::error::quote(id)
        ))
    })
}

fn no_change(id: ChangeId) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no change {id}; refreshctl changes --all lists them"),
    )
}

async fn load(st: &ApiState, id: ChangeId) -> Result<api::Change, ApiError> {
    let found = st
        .engine
        .db()
        .call(move |s| match s.change(id)? {
            Some(c) => {
                let tasks = s.tasks(id)?;
                Ok::<_, refreshd_state::Error>(Some(change_json(&c, &tasks, true)))
            }
            None => Ok(None),
        })
        .await?;
    found.ok_or_else(|| no_change(id))
}

pub async fn list(
    State(st): St,
    q: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<api::Change>>, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::bad_request(format!(
            "bad query: {}; use select=in-progress|ready|all and snap=NAME",
            e.body_text()
        ))
    })?;
    let select = match q.select {
        api::Select::InProgress => Select::InProgress,
        api::Select::Ready => Select::Ready,
        api::Select::All => Select::All,
    };
    let changes = st
        .engine
        .db()
        .call(move |s| {
            let mut out = vec![];
            for c in s.changes(select, q.snap.as_deref())? {
                let tasks = s.tasks(c.id)?;
                out.push(change_json(&c, &tasks, false));
            }
            Ok::<_, refreshd_state::Error>(out)
        })
        .await?;
    Ok(Json(changes))
}

pub async fn one(State(st): St, Path(id): Path<String>) -> Result<Json<api::Change>, ApiError> {
    Ok(Json(load(&st, parse_id(&id)?).await?))
}

pub async fn action(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<api::Change>, ApiError> {
    peer.require_admin(&st, "aborting changes")?;
    let id = parse_id(&id)?;
    let act: ChangeAction = super::json_body(&body, r#"{"action": "abort"}"#)?;
    match act.action {
        ChangeActionKind::Abort => match st.engine.abort(id).await {
            Ok(()) => {}
            Err(AbortError::NotFound(id)) => return Err(no_change(id)),
            Err(AbortError::Ready(id)) => {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!("change {id} is already finished; there is nothing to abort"),
                )
                .with_change(id))
            }
            Err(AbortError::State(e)) => return Err(e.into()),
        },
    }
    Ok(Json(load(&st, id).await?))
}

/// NDJSON: the current state at once, then a line whenever it changes, until it is ready.
pub async fn watch(State(st): St, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    // Subscribe before the first read, so no change between the two is missed.
    let rx = st.engine.subscribe();
    let first = load(&st, id).await?;
    struct W {
        st: Arc<ApiState>,
        rx: tokio::sync::broadcast::Receiver<ChangeId>,
        last: Option<String>,
        pending: Option<api::Change>,
        done: bool,
    }
    let w = W {
        st: st.clone(),
        rx,
        last: None,
        pending: Some(first),
        done: false,
    };
    let stream = futures_util::stream::unfold(w, move |mut w| async move {
        loop {
            if w.done {
                return None;
            }
            let change = match w.pending.take() {
                Some(c) => c,
                None => {
                    let hit = tokio::select! {
                        _ = w.st.shutdown.cancelled() => return None,
                        r = w.rx.recv() => match r {
                            Ok(cid) => cid == id,
                            Err(RecvError::Lagged(_)) => true,
                            Err(RecvError::Closed) => return None,
                        },
                    };
                    if !hit {
                        continue;
                    }
                    match load(&w.st, id).await {
                        Ok(c) => c,
                        Err(_) => return None,
                    }
                }
            };
            let mut line = serde_json::to_string(&change).expect("serializable");
            if w.last.as_deref() == Some(line.as_str()) {
                continue;
            }
            w.last = Some(line.clone());
            w.done = change.ready;
            line.push('\n');
            return Some((Ok::<_, Infallible>(line), w));
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
