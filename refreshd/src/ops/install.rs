//! Installing a snap file the caller uploaded (already checked by the API): a new local
//! revision (`xN`) of the snap, a refresh when it is installed.

use std::path::PathBuf;

use refreshd_snap::{InstanceName, Revision, SnapYaml};
use refreshd_state::Created;

use super::{Ops, Result};
use crate::tasks::SnapSetup;

/// What the API learnt of an uploaded file.
pub struct Upload {
    pub instance: InstanceName,
    pub yaml: SnapYaml,
    /// meta/snap.yaml as it is in the file.
    pub manifest: String,
    pub sha3_384: String,
    pub size: u64,
    /// Where it lies (`var/lib/refreshd/uploads/`); the change owns it once made.
    pub path: PathBuf,
}

/// Makes the change that installs `up` as the snap's next local revision, replacing the
/// current one if any (both read in the transaction that makes the change). A retry under the
/// same idempotency key answers with the change made then (`Created::Existing`: the upload is
/// the caller's to remove).
pub async fn from_file(ops: &Ops, uid: u32, key: Option<String>, up: Upload) -> Result<Created> {
    ops.make(uid, key, "install", move |s| {
        let inst = up.instance.as_str();
        let existing = s.snap(inst)?;
        let revs: Vec<Revision> = s
            .revisions(inst)?
            .iter()
            .filter_map(|r| r.revision.parse().ok())
            .collect();
        Ok(crate::tasks::install_change(&SnapSetup {
            instance: inst.to_owned(),
            snap_name: up.yaml.name.clone(),
            instance_key: up.instance.instance_key().map(str::to_owned),
            revision: Revision::next_local(revs.iter()).to_string(),
            previous: existing.and_then(|e| e.current),
            sha3_384: up.sha3_384,
            size: up.size,
            upload: Some(up.path),
            download: None,
            channel: None,
            manifest: up.manifest,
            version: up.yaml.version.clone(),
            summary: up.yaml.summary.clone(),
            block_launches: up.yaml.pending_behavior()
                == refreshd_snap::RefreshPendingBehavior::Block,
        }))
    })
    .await
}
