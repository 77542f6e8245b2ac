//! Going back to a revision kept on this machine.

use refreshd_state::ChangeId;

use super::{OpError, Ops, Result};
use crate::tasks::SnapSetup;

/// Goes back to `revision`, or to the revision before the current one: it is still mounted,
/// its launch descriptions and its data directory are as they were when it was left (data is
/// copied forward, never back). Only the switch happens, inside the critical section; once it
/// is done the snap is held from refreshes that do not name it (`hold` `reverted`).
pub async fn revert(
    ops: &Ops,
    uid: u32,
    key: Option<String>,
    name: &str,
    revision: Option<&str>,
) -> Result<ChangeId> {
    let (n, wanted) = (name.to_owned(), revision.map(str::to_owned));
    let created = ops
        .make(uid, key, "revert", move |s| {
            let row = s
                .snap(&n)?
                .filter(|r| r.current.is_some())
                .ok_or_else(|| OpError::NotFound(super::store::not_installed(&n)))?;
            let current = row.current.clone().unwrap_or_default();
            let revs = s.revisions(&n)?;
            let target = match &wanted {
                Some(w) if *w == current => {
                    return Err(OpError::Invalid(format!(
                        "revision {w} of {n} is the current one; there is nothing to revert"
                    )))
                }
                Some(w) => revs.iter().find(|r| r.revision == *w).ok_or_else(|| {
                    let kept: Vec<&str> = revs
                        .iter()
                        .map(|r| r.revision.as_str())
                        .filter(|r| *r != current)
                        .collect();
                    OpError::Invalid(format!(
                        "revision {w} of {n} is not kept here (kept besides the current {current}: {})",
                        if kept.is_empty() { "none".to_owned() } else { kept.join(", ") }
                    ))
                })?,
                None => {
                    let pos = revs.iter().position(|r| r.revision == current).unwrap_or(0);
                    pos.checked_sub(1)
                        .and_then(|i| revs.get(i))
                        .ok_or_else(|| {
                            OpError::Invalid(format!(
                                "snap {n} has no revision before {current} to revert to"
                            ))
                        })?
                }
            };
            let ss = SnapSetup {
                instance: row.name.clone(),
                snap_name: row.snap_name.clone(),
                instance_key: row.instance_key.clone(),
                revision: target.revision.clone(),
                previous: Some(current),
                sha3_384: target.sha3_384.clone(),
                size: target.size,
                upload: None,
                download: None,
                channel: row.channel.clone(),
                manifest: target.manifest.clone(),
                version: target.version.clone(),
                summary: target.summary.clone(),
                block_launches: false,
            };
            Ok(crate::tasks::revert_change(&ss))
        })
        .await?;
    Ok(created.id())
}
