//! /v1/snapshots: what removes saved of snaps' data, listed, restored and forgotten.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use refreshd_client::types::{Forgotten, Snapshot, SnapshotAction, SnapshotActionKind};
use refreshd_state::SnapshotRow;
use serde::Deserialize;

use super::{ts, ApiError, ApiState, Peer};
use crate::ops;

type St = State<Arc<ApiState>>;

#[derive(Deserialize)]
pub struct SnapshotsQuery {
    snap: Option<String>,
}

fn snapshot_json(row: SnapshotRow) -> Snapshot {
    Snapshot {
        set: row.id,
        snap: row.snap,
        revision: row.revision,
        version: row.version,
        users: row
            .users
            .iter()
            .map(|&uid| super::status::user_name(uid).unwrap_or_else(|| uid.to_string()))
            .collect(),
        time: ts(row.made),
        expires: row.expires.map(ts),
    }
}

/// Every snapshot kept (anyone may list them, as `snap saved`).
pub async fn list(
    State(st): St,
    q: Result<Query<SnapshotsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Snapshot>>, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::bad_request(format!("bad query: {}; use snap=NAME", e.body_text()))
    })?;
    let rows = ops::snapshots::list(&st.ops, q.snap).await?;
    Ok(Json(rows.into_iter().map(snapshot_json).collect()))
}

pub async fn action(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(set): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    peer.require_admin(&st, "restoring or forgetting snapshots")?;
    let set: u64 = set.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "snapshot {} is not a number; refreshctl saved lists them",
            super::error::quote(&set)
        ))
    })?;
    let act: SnapshotAction = super::json_body(&body, r#"{"action": "restore"}"#)?;
    match act.action {
        SnapshotActionKind::Restore => {
            let key = super::snaps::idempotency_key(&headers)?;
            let id = ops::snapshots::restore(&st.ops, peer.uid, key, set).await?;
            Ok(super::snaps::accepted(id))
        }
        SnapshotActionKind::Forget => {
            let left = ops::snapshots::forget(&st.ops, set).await?;
            Ok(Json(Forgotten { set, left }).into_response())
        }
    }
}
