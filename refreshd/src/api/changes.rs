//! /v1/changes: listing, one change with its tasks, abort, and the live watch stream.

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

use super::{ts, ApiError, ApiState, Peer};
use crate::engine::{change_status, AbortError, Status};
use crate::tracking::IDLE_EVENT;

type St = State<Arc<ApiState>>;

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

/// What a caller may see of changes (docs/api.md, "What users may see"). Task logs carry the
/// output of hooks run as root, paths in users' homes and the command lines of other users'
/// processes; retry and wait reasons and error messages are made of the same. Root and the
/// admin group see everything; anyone else sees what each change and task is, its status,
/// progress and times, and no log, reason or message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Full,
    Public,
}

impl View {
    pub fn of(peer: &Peer, st: &ApiState) -> View {
        if peer.is_admin(st) {
            View::Full
        } else {
            View::Public
        }
    }
}

/// What stands in a public view for a reason or a message.
const WITHHELD: &str = "details are shown to root and the admin group only";

fn task_json(t: &TaskRow, view: View) -> api::Task {
    let public = view == View::Public;
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
        log: if public { vec![] } else { t.log.clone() },
        retry: match (&t.retry_reason, t.status) {
            (Some(reason), Status::Do | Status::Undo) => Some(RetryInfo {
                count: t.retry_count,
                reason: if public {
                    WITHHELD.to_owned()
                } else {
                    reason.clone()
                },
                next_attempt: ts(t.wait_until.unwrap_or(t.spawn_time)),
            }),
            _ => None,
        },
        wait: (t.status == Status::Wait).then(|| {
            let event = t.wait_event.clone().unwrap_or_default();
            let reason = match (public, event.strip_prefix(IDLE_EVENT)) {
                (false, _) => t.wait_reason.clone().unwrap_or_default(),
                (true, Some(snap)) => format!(
                    "waiting for the processes of {snap} to exit (refreshctl status {snap} lists them)"
                ),
                (true, None) => format!("waiting ({WITHHELD})"),
            };
            WaitInfo {
                event,
                until: t.wait_until.map(ts),
                reason,
            }
        }),
        spawn_time: ts(t.spawn_time),
        ready_time: t.ready_time.map(ts),
    }
}

/// The change as the API shows it; its status is derived from the tasks.
pub fn change_json(c: &ChangeRow, tasks: &[TaskRow], with_tasks: bool, view: View) -> api::Change {
    let statuses: Vec<Status> = tasks.iter().map(|t| t.status).collect();
    let errors: Vec<String> = tasks
        .iter()
        .filter(|t| t.status == Status::Error)
        .map(|t| {
            if view == View::Public {
                return format!("{}: failed ({WITHHELD})", t.summary);
            }
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
            tasks.iter().map(|t| task_json(t, view)).collect()
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

/// Change `id` with its tasks, as the two views show it; None when there is no such change.
pub(super) async fn load_both(
    st: &ApiState,
    id: ChangeId,
) -> Result<Option<(api::Change, api::Change)>, ApiError> {
    st.read(move |s| match s.change(id)? {
        Some(c) => {
            let tasks = s.tasks(id)?;
            Ok::<_, refreshd_state::Error>(Some((
                change_json(&c, &tasks, true, View::Full),
                change_json(&c, &tasks, true, View::Public),
            )))
        }
        None => Ok(None),
    })
    .await
}

async fn load(st: &ApiState, id: ChangeId, view: View) -> Result<api::Change, ApiError> {
    let found = st
        .read(move |s| match s.change(id)? {
            Some(c) => {
                let tasks = s.tasks(id)?;
                Ok::<_, refreshd_state::Error>(Some(change_json(&c, &tasks, true, view)))
            }
            None => Ok(None),
        })
        .await?;
    found.ok_or_else(|| no_change(id))
}

pub async fn list(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<Peer>,
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
    let view = View::of(&peer, &st);
    let changes = st
        .read(move |s| {
            let mut out = vec![];
            for c in s.changes(select, q.snap.as_deref())? {
                let tasks = s.tasks(c.id)?;
                out.push(change_json(&c, &tasks, false, view));
            }
            Ok::<_, refreshd_state::Error>(out)
        })
        .await?;
    Ok(Json(changes))
}

pub async fn one(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
) -> Result<Json<api::Change>, ApiError> {
    Ok(Json(load(&st, parse_id(&id)?, View::of(&peer, &st)).await?))
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
    // The abort's write takes one of the API's workers, like any write of a request.
    let permit = st.ops.workers.permit().await?;
    let aborted = st.ops.engine.abort(id).await;
    drop(permit);
    match act.action {
        ChangeActionKind::Abort => match aborted {
            Ok(()) => {}
            Err(AbortError::NotFound(id)) => return Err(no_change(id)),
            Err(AbortError::Ready(id)) => {
                // Not a conflict: nothing is in progress; there is nothing to do.
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    format!("change {id} is already finished; there is nothing to abort"),
                )
                .with_change(id));
            }
            Err(AbortError::State(e)) => return Err(e.into()),
        },
    }
    Ok(Json(load(&st, id, View::Full).await?))
}

/// NDJSON: the current state at once, then a line whenever it changes, until it is ready.
pub async fn watch(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let slot = st.limits.stream(peer.uid)?;
    let view = View::of(&peer, &st);
    let lines = super::watch::lines(st.clone(), id, view, slot)
        .await?
        .ok_or_else(|| no_change(id))?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, status: Status, log: &[&str]) -> TaskRow {
        TaskRow {
            id,
            change_id: 1,
            seq: id as u32,
            kind: "post-refresh-hook".into(),
            summary: format!("task {id}"),
            status,
            data: serde_json::json!({"secret": "in the data"}),
            waits_for: vec![],
            log: log.iter().map(|l| l.to_string()).collect(),
            progress_label: "copy-data".into(),
            progress_done: 1,
            progress_total: 2,
            retry_count: 3,
            retry_reason: Some("secret retry reason".into()),
            wait_until: None,
            wait_event: Some(format!("{IDLE_EVENT}hello")),
            wait_reason: Some("waiting for pid 42 (user alice): secret --password".into()),
            spawn_time: 0,
            ready_time: None,
        }
    }

    #[test]
    fn users_see_what_a_change_is_but_no_log_reason_or_message() {
        let change = ChangeRow {
            id: 1,
            kind: "install".into(),
            summary: "Install".into(),
            snap: Some("hello".into()),
            data: serde_json::json!({}),
            spawn_time: 0,
            ready_time: Some(1),
            abort_requested: false,
        };
        let tasks = [
            task(
                1,
                Status::Error,
                &["2026-11-21T20:15:03Z ERROR hook said: secret output"],
            ),
            task(2, Status::Do, &["secret line"]),
            task(3, Status::Wait, &[]),
        ];
        let full = serde_json::to_string(&change_json(&change, &tasks, true, View::Full)).unwrap();
        assert!(full.contains("secret output") && full.contains("secret --password"));
        let public = change_json(&change, &tasks, true, View::Public);
        let text = serde_json::to_string(&public).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(public.status, api::Status::Wait, "statuses are shown");
        assert_eq!(
            public.error.as_deref(),
            Some("task 1: failed (details are shown to root and the admin group only)")
        );
        assert!(public.tasks.iter().all(|t| t.log.is_empty()));
        assert_eq!(public.tasks[1].retry.as_ref().unwrap().count, 3);
        assert_eq!(public.tasks[1].progress.done, 1);
        let wait = public.tasks[2].wait.as_ref().unwrap();
        assert_eq!(wait.event, "snap-idle:hello");
        assert_eq!(
            wait.reason,
            "waiting for the processes of hello to exit (refreshctl status hello lists them)"
        );
    }
}
