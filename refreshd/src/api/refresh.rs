//! /v1/refresh: refreshing several snaps at once (every snap with an update when none is
//! named), what such a refresh would do, and holds. What is done is decided in
//! [`crate::ops::refresh`], which auto-refresh calls too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jiff::Timestamp;
use refreshd_client::types::{
    Hold, HoldUntil, RefreshActionKind, RefreshPlan, RefreshRequest, Snap,
};

use super::snaps::{idempotency_key, snap_json};
use super::{ApiError, ApiState, Peer};
use crate::ops::{self, OpError};

type St = State<Arc<ApiState>>;

/// How long the answer of `GET /v1/refresh` is served again to callers who are not admins.
const PLAN_TTL: Duration = Duration::from_secs(30);

/// The answer of `GET /v1/refresh` shared by callers who are not admins: the store is asked by
/// one look-up at a time, whose answer serves every caller for [`PLAN_TTL`] after it. A caller
/// who goes away does not stop the look-up the others wait for.
#[derive(Default)]
pub struct PlanCache {
    /// The last answer and when it was made.
    last: Arc<tokio::sync::Mutex<Option<(Instant, RefreshPlan)>>>,
}

impl PlanCache {
    async fn get(&self, st: &Arc<ApiState>) -> Result<RefreshPlan, ApiError> {
        let mut last = self.last.clone().lock_owned().await;
        if let Some((at, plan)) = last.as_ref() {
            if at.elapsed() < PLAN_TTL {
                return Ok(plan.clone());
            }
        }
        // The look-up runs on its own, holding the cache, so that callers queued behind it get
        // its answer and a caller that goes away cancels nothing. A store that cannot be read
        // is an answer (its notes say so); refreshd too busy to ask is not kept.
        let ops = st.ops.clone();
        let lookup = tokio::spawn(async move {
            let plan = ops::refresh::plan(&ops).await;
            if let Ok(plan) = &plan {
                *last = Some((Instant::now(), plan.clone()));
            }
            plan
        });
        Ok(lookup.await.map_err(ApiError::internal)??)
    }
}

/// `GET /v1/refresh`: every snap whose channel has a newer revision, held and busy ones
/// included (marked); changes nothing. Root and the admin group have the store asked at once;
/// anyone else gets the shared answer of the last 30 s ([`PlanCache`]).
pub async fn plan(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<RefreshPlan>, ApiError> {
    if st.ops.ctx.store.is_none() {
        return Err(OpError::NoStore.into());
    }
    if peer.is_admin(&st) {
        return Ok(Json(ops::refresh::plan(&st.ops).await?));
    }
    Ok(Json(st.plan.get(&st).await?))
}

/// `POST /v1/refresh`: refresh, hold or unhold.
pub async fn post(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // Before the body: it is not read for callers who may not change state (server.rs).
    peer.require_admin(&st, "refreshing snaps or holding their refreshes")?;
    let req: RefreshRequest =
        super::json_body(&body, r#"{"action": "refresh", "names": ["hello"]}"#)?;
    if req.channel.is_some() && req.action != RefreshActionKind::Refresh {
        return Err(ApiError::bad_request(
            "\"channel\" goes with the refresh action only; send {\"action\": \"refresh\", \"names\": [\"hello\"], \"channel\": \"beta\"}",
        ));
    }
    if req.hold.is_some() && req.action != RefreshActionKind::Hold {
        return Err(ApiError::bad_request(
            "\"hold\" goes with the hold action only; send {\"action\": \"hold\", \"names\": [...], \"hold\": \"2h\"}",
        ));
    }
    match req.action {
        RefreshActionKind::Refresh => {
            peer.require_admin(&st, "refreshing snaps")?;
            let key = idempotency_key(&headers)?;
            let result = ops::refresh::refresh_snaps(
                &st.ops,
                peer.uid,
                key,
                &req.names,
                req.channel.as_deref(),
            )
            .await?;
            let status = if result.changes.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok((status, Json(result)).into_response())
        }
        RefreshActionKind::Hold => {
            peer.require_admin(&st, "holding refreshes")?;
            let until = req.hold.unwrap_or(Hold::Forever).until(Timestamp::now());
            Ok(Json(set_holds(&st, req.names, Some(until)).await?).into_response())
        }
        RefreshActionKind::Unhold => {
            peer.require_admin(&st, "lifting holds")?;
            Ok(Json(set_holds(&st, req.names, None).await?).into_response())
        }
    }
}

/// Holds or unholds (`until` None), then answers with those snaps as they are now.
async fn set_holds(
    st: &ApiState,
    names: Vec<String>,
    until: Option<HoldUntil>,
) -> Result<Vec<Snap>, ApiError> {
    let names = ops::refresh::set_holds(&st.ops, names, until).await?;
    st.read(move |s| {
        let mut snaps = vec![];
        for n in &names {
            if let Some(row) = s.snap(n)? {
                snaps.extend(snap_json(s, &row)?);
            }
        }
        Ok::<_, refreshd_state::Error>(snaps)
    })
    .await
}
