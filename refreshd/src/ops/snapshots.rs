//! Snapshots of removed snaps' data: listing, restoring, forgetting, and their expiry
//! (the data moves themselves are tasks: `tasks::snapshot`).

use std::sync::Arc;
use std::time::Duration;

use refreshd_state::{ChangeId, Select, SnapshotRow};

use super::{OpError, Ops, Result};
use crate::kinds::ChangeKind;
use crate::tasks::{snapshot, RestoreSetup};

/// Every snapshot, oldest first; only `snap`'s when given.
pub async fn list(ops: &Ops, snap: Option<String>) -> Result<Vec<SnapshotRow>> {
    ops.read(move |s| s.snapshots(snap.as_deref())).await
}

fn no_such(set: u64) -> OpError {
    OpError::NotFound(format!(
        "there is no snapshot {set}; refreshctl saved lists the snapshots kept"
    ))
}

/// Makes the change that puts snapshot `set` back as the data of its snap, which must be
/// installed.
pub async fn restore(ops: &Ops, uid: u32, key: Option<String>, set: u64) -> Result<ChangeId> {
    let created = ops
        .make(uid, key, "restore", move |s| {
            let row = s.snapshot(set)?.ok_or_else(|| no_such(set))?;
            let name = row.snap;
            let Some(current) = s.snap(&name)?.and_then(|r| r.current) else {
                return Err(OpError::Invalid(format!(
                    "snap {name:?} is not installed; install it first (refreshctl install {name}), then restore snapshot {set}"
                )));
            };
            Ok(crate::tasks::restore_change(&RestoreSetup {
                instance: name,
                set,
                previous: current.clone(),
                current,
            }))
        })
        .await?;
    Ok(created.id())
}

/// The change in progress that restores `set`, if any.
fn restoring(s: &mut refreshd_state::State, set: u64) -> refreshd_state::Result<Option<ChangeId>> {
    Ok(s.changes(Select::InProgress, None)?
        .into_iter()
        .find(|c| {
            ChangeKind::Restore.is(&c.kind)
                && serde_json::from_value::<RestoreSetup>(c.data.clone())
                    .is_ok_and(|r| r.set == set)
        })
        .map(|c| c.id))
}

/// Deletes snapshot `set` now. Returns what could not be deleted in users' trees (one line
/// each: that user's to clean).
pub async fn forget(ops: &Ops, set: u64) -> Result<Vec<String>> {
    ops.open_for_work()?;
    let row = ops
        .read(move |s| -> Result<_> {
            let row = s.snapshot(set)?.ok_or_else(|| no_such(set))?;
            if let Some(id) = restoring(s, set)? {
                return Err(OpError::Conflict(format!(
                    "snapshot {set} is being restored by change {id}; wait for it (refreshctl watch {id}) or abort it (refreshctl abort {id})"
                )));
            }
            Ok(row)
        })
        .await?;
    forget_row(ops, row).await
}

async fn forget_row(ops: &Ops, row: SnapshotRow) -> Result<Vec<String>> {
    let ctx = ops.ctx.clone();
    let db = ops.engine.db().clone();
    ops.workers
        .run(move || -> Result<Vec<String>> {
            let set = row.id;
            let Some(_claim) = ctx.saved.claim(set) else {
                return Err(OpError::Conflict(format!(
                    "snapshot {set} is being restored or deleted; try again when that is done"
                )));
            };
            let problems = snapshot::forget(&ctx, &row)
                .map_err(|e| OpError::Internal(format!("cannot delete snapshot {set}: {e:#}")))?;
            db.with(|s| s.delete_snapshot(set))?;
            Ok(problems)
        })
        .await?
}

/// Deletes the snapshots whose time is up, as they expire: one timer, set for the next expiry
/// (or none while none is kept), so an idle daemon stays asleep.
pub fn spawn_expiry(ops: Arc<Ops>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = refreshd_state::now_ms();
            let next = match ops.read(|s| s.next_snapshot_expiry()).await {
                Ok(n) => n,
                Err(OpError::ShuttingDown) => return,
                Err(e) => {
                    tracing::warn!("cannot read when snapshots expire: {e}");
                    Some(now + 60_000)
                }
            };
            let made = ops.ctx.saved.made.notified();
            match next {
                Some(at) if at <= now => {
                    if !expire(&ops, now).await {
                        // One is being restored, or could not be deleted: again in a minute,
                        // not in a loop.
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                            _ = ops.shutdown.cancelled() => return,
                        }
                    }
                    continue;
                }
                Some(at) => {
                    let wait = Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = made => {}
                        _ = ops.shutdown.cancelled() => return,
                    }
                }
                None => {
                    tokio::select! {
                        _ = made => {}
                        _ = ops.shutdown.cancelled() => return,
                    }
                }
            }
        }
    })
}

/// Deletes the snapshots expired at `now`; false when one of them is left.
async fn expire(ops: &Ops, now: i64) -> bool {
    let rows = match ops.read(move |s| s.expired_snapshots(now)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("cannot read expired snapshots: {e}");
            return false;
        }
    };
    let mut all = true;
    for row in rows {
        let (set, snap) = (row.id, row.snap.clone());
        // One being restored stays until it is (then it is gone, or saved anew).
        if !matches!(ops.read(move |s| restoring(s, set)).await, Ok(None)) {
            all = false;
            continue;
        }
        match forget_row(ops, row).await {
            Ok(problems) => {
                tracing::info!("snapshot {set} of {snap} expired and was deleted");
                for p in problems {
                    tracing::warn!("snapshot {set} of {snap}: {p}");
                }
            }
            Err(e) => {
                all = false;
                tracing::warn!("cannot delete expired snapshot {set} of {snap}: {e}");
            }
        }
    }
    all
}
