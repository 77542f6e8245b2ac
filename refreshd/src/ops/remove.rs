//! Removing a snap: every revision, its data and its launchers.

use refreshd_state::ChangeId;

use super::{OpError, Ops, Result};
use crate::tasks::RemoveSetup;

/// Makes the change that removes `name`, from what is kept of it when the change is made;
/// unless `purge`, its data is kept as a snapshot.
pub async fn remove(
    ops: &Ops,
    uid: u32,
    key: Option<String>,
    name: &str,
    purge: bool,
) -> Result<ChangeId> {
    let n = name.to_owned();
    let created = ops
        .make(uid, key, "remove", move |s| {
            let row = s
                .snap(&n)?
                .ok_or_else(|| OpError::NotFound(super::store::not_installed(&n)))?;
            Ok(crate::tasks::remove_change(&RemoveSetup {
                instance: n.clone(),
                current: row.current.clone(),
                revisions: s.revisions(&n)?.into_iter().map(|r| r.revision).collect(),
                purge,
            }))
        })
        .await?;
    Ok(created.id())
}
