//! /v1/system-info and /v1/snaps.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use refreshd_client::types::{
    AppInfo, ChangeRef, ErrorKind, HoldUntil, InstallQuery, NoteKind, ReleaseAgent, Snap,
    SnapAction, SnapActionKind, StoreInfo, StoreInstall, SystemInfo,
};
use refreshd_snap::InstanceName;
use refreshd_state::{Created, Select, SnapRow};
use sha3::{Digest, Sha3_384};
use tokio::io::AsyncWriteExt;

use super::{ts, ApiError, ApiState, Peer};
use crate::ops;

type St = State<Arc<ApiState>>;

pub async fn system_info(State(st): St) -> Result<Json<SystemInfo>, ApiError> {
    let (snaps, changes, auto) = st
        .read(|s| {
            let snaps = s.snaps()?.iter().filter(|r| r.current.is_some()).count();
            let changes = s.changes(Select::InProgress, None)?.len();
            let auto = crate::autorefresh::status(s)?;
            Ok::<_, refreshd_state::Error>((snaps, changes, auto))
        })
        .await?;
    let tracking = st.ops.ctx.tracking.clone();
    let release_agent = tokio::task::spawn_blocking(move || {
        tracking.release_agent().map(|seen| match seen {
            Ok(seen) => ReleaseAgent {
                ours: seen.ours(),
                safe: !seen.value.is_empty() && seen.unsafe_because.is_none(),
                why: seen.unsafe_because.clone().unwrap_or_default(),
                path: seen.value,
            },
            Err(why) => ReleaseAgent {
                path: String::new(),
                ours: false,
                safe: false,
                why,
            },
        })
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(SystemInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        api: "v1".to_owned(),
        root: st.ops.ctx.layout.root().to_owned(),
        pid: std::process::id(),
        started: st.started,
        snaps: snaps as u64,
        changes_in_progress: changes as u64,
        mount_mode: st.mount_mode(),
        tracking: st.ops.ctx.tracking.kind.as_str().to_owned(),
        tracking_reason: st.ops.ctx.tracking.reason.clone(),
        services: st.ops.ctx.services.kind.as_str().to_owned(),
        services_reason: st.ops.ctx.services.reason.clone(),
        auto_refresh: auto.every,
        next_auto_refresh: auto.next,
        last_auto_refresh: auto.last,
        release_agent,
        store: store_info(&st.ops.ctx),
    }))
}

/// The store and how it is trusted, for `GET /v1/system-info` (and the warning of `GET
/// /v1/snaps/NAME/status`).
pub(super) fn store_info(ctx: &crate::tasks::Ctx) -> Option<StoreInfo> {
    ctx.store.as_ref().map(|store| StoreInfo {
        url: store.url().to_owned(),
        signed: store.is_signed(),
        root: ctx.store_root.clone(),
    })
}

/// The API view of an installed snap; None while it has no current revision.
pub(super) fn snap_json(
    s: &mut refreshd_state::State,
    row: &SnapRow,
) -> refreshd_state::Result<Option<Snap>> {
    let Some(current) = &row.current else {
        return Ok(None);
    };
    let revs = s.revisions(&row.name)?;
    let Some(cur) = revs.iter().find(|r| &r.revision == current) else {
        return Ok(None);
    };
    let apps = refreshd_snap::yaml::parse(cur.manifest.as_bytes())
        .map(|y| {
            y.apps
                .iter()
                .map(|(name, a)| AppInfo {
                    name: name.clone(),
                    command: a.command.clone(),
                    daemon: a.daemon.map(|d| d.as_str().to_owned()),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(Snap {
        name: row.name.clone(),
        snap_name: row.snap_name.clone(),
        instance_key: row.instance_key.clone(),
        revision: current.clone(),
        version: cur.version.clone(),
        summary: cur.summary.clone().unwrap_or_default(),
        channel: row.channel.clone(),
        // An expired hold is no hold.
        hold: HoldUntil::active(row.hold.as_deref(), jiff::Timestamp::now()).and(row.hold.clone()),
        revisions: revs.iter().map(|r| r.revision.clone()).collect(),
        apps,
        installed: ts(row.installed),
    }))
}

pub async fn list(State(st): St) -> Result<Json<Vec<Snap>>, ApiError> {
    let snaps = st
        .read(|s| {
            let mut out = vec![];
            for row in s.snaps()? {
                out.extend(snap_json(s, &row)?);
            }
            Ok::<_, refreshd_state::Error>(out)
        })
        .await?;
    Ok(Json(snaps))
}

pub async fn one(State(st): St, Path(name): Path<String>) -> Result<Json<Snap>, ApiError> {
    let n = name.clone();
    let snap = st
        .read(move |s| match s.snap(&n)? {
            Some(row) => snap_json(s, &row),
            None => Ok(None),
        })
        .await?;
    snap.map(Json).ok_or_else(|| not_installed(&name))
}

pub(super) fn not_installed(name: &str) -> ApiError {
    ApiError::new(ErrorKind::NotFound, ops::store::not_installed(name))
}

/// The Idempotency-Key header, checked: 1–128 printable ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "Idempotency-Key must be 1 to 128 printable ASCII characters; send a fresh random key",
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if !refreshd_client::types::valid_idempotency_key(s.as_bytes()) {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

pub(super) fn accepted(id: u64) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/changes/{id}"))],
        Json(ChangeRef { change: id }),
    )
        .into_response()
}

/// Removes the uploaded file when the request does not hand it over to a change.
struct Upload(Option<PathBuf>);

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub async fn install(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(q): Query<InstallQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    peer.require_admin(&st, "installing snaps")?;
    let key = idempotency_key(&headers)?;
    if let Some(k) = &key {
        let (uid, k2) = (peer.uid, k.clone());
        if let Some((req, id)) = st.write(move |s| s.idempotency_key(uid, &k2)).await? {
            if req == "install" {
                // A retry of a request that got through: same answer, nothing new. Read the
                // body anyway so the client can finish sending it.
                let mut s = body.into_data_stream();
                while let Some(Ok(_)) = s.next().await {}
                return Ok(accepted(id));
            }
        }
    }
    if st.ops.shutdown.is_cancelled() {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            "refreshd is shutting down; try again when it is back",
        ));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if json {
        let bytes = axum::body::to_bytes(body, 64 * 1024)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the request: {e}")))?;
        let req: StoreInstall =
            super::json_body(&bytes, r#"{"name": "hello", "channel": "stable"}"#)?;
        let id =
            ops::store::install(&st.ops, peer.uid, key, &req.name, req.channel.as_deref()).await?;
        return Ok(accepted(id));
    }
    if let Some(name) = &q.instance_name {
        name.parse::<InstanceName>()
            .map_err(|e| ApiError::new(ErrorKind::InvalidSnap, e.to_string()))?;
    }

    // Stream the body to disk, hashing as it comes.
    let path = st
        .ops
        .ctx
        .layout
        .uploads()
        .join(format!("{}.snap", uuid::Uuid::new_v4()));
    let mut upload = Upload(Some(path.clone()));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .await
        .map_err(ApiError::internal)?;
    let mut hasher = Sha3_384::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
        size += chunk.len() as u64;
        if size > st.max_upload {
            return Err(ApiError::new(
                ErrorKind::TooLarge,
                format!(
                    "snap file is larger than the {} bytes refreshd accepts (--max-upload)",
                    st.max_upload
                ),
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    file.sync_all().await.map_err(ApiError::internal)?;
    drop(file);
    if size == 0 {
        return Err(ApiError::new(
            ErrorKind::InvalidSnap,
            "the uploaded snap file is empty; send the .snap file as the request body",
        ));
    }
    let sha3_384 = hex::encode(hasher.finalize());

    // Check the file before anything is recorded: a bad snap leaves no trace.
    let p = path.clone();
    let yaml = st
        .ops
        .workers
        .run(
            move || -> Result<(refreshd_snap::SnapYaml, String), String> {
                refreshd_snap::check_image(&p).map_err(|e| e.to_string())?;
                let bytes =
                    refreshd_snap::read_file(&p, "meta/snap.yaml").map_err(|e| e.to_string())?;
                let yaml = refreshd_snap::yaml::parse(&bytes).map_err(|e| e.to_string())?;
                Ok((yaml, String::from_utf8_lossy(&bytes).into_owned()))
            },
        )
        .await?
        .map_err(|e| ApiError::new(ErrorKind::InvalidSnap, e))?;
    let (yaml, manifest) = yaml;
    let instance: InstanceName = match &q.instance_name {
        Some(n) => n.parse().map_err(|e: refreshd_snap::NameError| {
            ApiError::new(ErrorKind::InvalidSnap, e.to_string())
        })?,
        None => yaml.name.parse().map_err(|e: refreshd_snap::NameError| {
            ApiError::new(ErrorKind::InvalidSnap, e.to_string())
        })?,
    };
    if instance.snap_name() != yaml.name {
        return Err(ApiError::new(
            ErrorKind::InvalidSnap,
            format!(
                "instance name {:?} does not belong to snap {:?}; use {}_KEY",
                instance.as_str(),
                yaml.name,
                yaml.name
            ),
        ));
    }

    let up = ops::install::Upload {
        instance,
        yaml,
        manifest,
        sha3_384,
        size,
        path: path.clone(),
    };
    let created = ops::install::from_file(&st.ops, peer.uid, key, up).await?;
    if let Created::New(_) = created {
        // The change owns the file now.
        upload.0 = None;
    }
    Ok(accepted(created.id()))
}

pub async fn action(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    peer.require_admin(&st, "removing, refreshing or reverting snaps")?;
    let act: SnapAction = super::json_body(&body, r#"{"action": "remove"}"#)?;
    let key = idempotency_key(&headers)?;
    if act.action == SnapActionKind::Revert {
        let id =
            ops::revert::revert(&st.ops, peer.uid, key, &name, act.revision.as_deref()).await?;
        return Ok(accepted(id));
    }
    if act.action == SnapActionKind::Refresh {
        return refresh_one(&st, peer.uid, key, name, act.channel.as_deref()).await;
    }
    let id = ops::remove::remove(&st.ops, peer.uid, key, &name, act.purge).await?;
    Ok(accepted(id))
}

/// `{"action": "refresh"}` of one snap: the refresh of several with one name; a change made is
/// answered `202 {"change": ID}`, a snap with nothing to refresh with the reason as an error
/// (`409` when a change of it is in progress).
async fn refresh_one(
    st: &ApiState,
    uid: u32,
    key: Option<String>,
    name: String,
    channel: Option<&str>,
) -> Result<Response, ApiError> {
    let result =
        ops::refresh::refresh_snaps(&st.ops, uid, key, std::slice::from_ref(&name), channel)
            .await?;
    if let Some(&id) = result.changes.first() {
        return Ok(accepted(id));
    }
    let note = result.notes.into_iter().next();
    Err(match note {
        Some(n) if n.kind == NoteKind::Busy => {
            let err = ApiError::new(ErrorKind::Conflict, n.message);
            match n.change {
                Some(c) => err.with_change(c),
                None => err,
            }
        }
        Some(n) => ApiError::bad_request(n.message),
        None => ApiError::internal(format!("the refresh of {name} said nothing")),
    })
}
