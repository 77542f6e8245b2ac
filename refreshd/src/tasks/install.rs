//! Installing a revision: prepare → mount → setup-data → link (→ launchers).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};
use refreshd_state::{now_ms, RevisionRow, SnapRow};

use super::{setup, Ctx, MountMode, SnapSetup};
use crate::engine::{Outcome, Phase, TaskCtx};
use crate::fsutil;

/// Takes the uploaded file into blobs/ and checks it; records the revision.
pub fn prepare(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    let blob = c.layout.blob(&ss.instance, &ss.revision);
    match phase {
        Phase::Do => {
            if fs::symlink_metadata(&blob).is_err() {
                let up = ss
                    .upload
                    .as_deref()
                    .context("change has no uploaded file")?;
                fs::rename(up, &blob).with_context(|| {
                    format!("cannot move {} to {}", up.display(), blob.display())
                })?;
                fsutil::sync_dir(&c.layout.blobs())?;
            }
            let (hash, size) = crate::blob::sha3_file(&blob)
                .with_context(|| format!("cannot read {}", blob.display()))?;
            if hash != ss.sha3_384 || size != ss.size {
                fs::remove_file(&blob)?;
                bail!("blob {} does not match what was uploaded (sha3-384 or size differ); install it again", blob.display());
            }
            refreshd_snap::squashfs::check_image(&blob)?;
            let ss = if ss.manifest.is_empty() {
                take_manifest(t, ss, &blob)?
            } else {
                ss
            };
            t.db_with(|s| -> refreshd_state::Result<()> {
                if let Some(mut row) = s.snap(&ss.instance)? {
                    if ss.channel.is_some() && row.channel != ss.channel {
                        row.channel = ss.channel.clone();
                        s.put_snap(&row)?;
                    }
                } else {
                    s.put_snap(&SnapRow {
                        name: ss.instance.clone(),
                        snap_name: ss.snap_name.clone(),
                        instance_key: ss.instance_key.clone(),
                        current: None,
                        channel: ss.channel.clone(),
                        hold: None,
                        settings: serde_json::json!({}),
                        installed: now_ms(),
                    })?;
                }
                s.put_revision(&RevisionRow {
                    snap: ss.instance.clone(),
                    revision: ss.revision.clone(),
                    version: ss.version.clone(),
                    summary: ss.summary.clone(),
                    sha3_384: ss.sha3_384.clone(),
                    size: ss.size,
                    manifest: ss.manifest.clone(),
                    added: now_ms(),
                })
            })?;
            t.log(format!("took blob {} ({} bytes)", blob.display(), size));
        }
        Phase::Undo => {
            t.db_with(|s| -> refreshd_state::Result<()> {
                s.delete_revision(&ss.instance, &ss.revision)?;
                if let Some(snap) = s.snap(&ss.instance)? {
                    if snap.current.is_none() && s.revisions(&ss.instance)?.is_empty() {
                        s.delete_snap(&ss.instance)?;
                    }
                }
                Ok(())
            })?;
            fsutil::remove_file_if_exists(&blob)?;
            if let Some(up) = &ss.upload {
                fsutil::remove_file_if_exists(up)?;
            }
        }
    }
    Ok(Outcome::Done)
}

/// A downloaded blob's snap.yaml becomes the change's manifest (what an upload had checked
/// before the change existed), so the tasks after this one see it.
fn take_manifest(t: &TaskCtx, mut ss: SnapSetup, blob: &Path) -> anyhow::Result<SnapSetup> {
    let bytes = refreshd_snap::read_file(blob, "meta/snap.yaml")?;
    let yaml = refreshd_snap::yaml::parse(&bytes)?;
    if yaml.name != ss.snap_name {
        bail!(
            "the store's blob for {} holds snap {:?}; the store is inconsistent",
            ss.snap_name,
            yaml.name
        );
    }
    ss.manifest = String::from_utf8_lossy(&bytes).into_owned();
    ss.version = yaml.version.clone();
    ss.summary = yaml.summary.clone();
    ss.block_launches = yaml.pending_behavior() == refreshd_snap::RefreshPendingBehavior::Block;
    t.set_change_data(serde_json::to_value(&ss)?)?;
    Ok(ss)
}

/// Makes the payload available at `snap/NAME/REV`: a read-only loop mount, or an unpacked copy.
pub fn mount(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    let dir = c.layout.rev_dir(&ss.instance, &ss.revision);
    let blob = c.layout.blob(&ss.instance, &ss.revision);
    match phase {
        Phase::Do => {
            mount_revision(c, &blob, &dir)?;
            if !dir.join("meta/snap.yaml").is_file() {
                bail!("{} has no meta/snap.yaml after mounting", dir.display());
            }
            super::launchers::write_descriptions(c, &ss.instance, &ss.revision, &ss.manifest)?;
            t.log(format!(
                "{} {} at {}",
                verb(c.mount_mode),
                blob.display(),
                dir.display()
            ));
        }
        Phase::Undo => {
            super::launchers::remove_descriptions(c, &ss.instance, Some(&ss.revision))?;
            unmount_revision(c, &dir)?;
            fsutil::remove_dir_if_empty(&c.layout.snap_dir(&ss.instance))?;
        }
    }
    Ok(Outcome::Done)
}

fn verb(m: MountMode) -> &'static str {
    match m {
        MountMode::Loop => "loop-mounted",
        MountMode::Extract => "extracted (no loop devices)",
    }
}

/// Idempotent: a revision already mounted (or fully extracted) is left as it is.
pub fn mount_revision(c: &Ctx, blob: &Path, dir: &Path) -> anyhow::Result<()> {
    match c.mount_mode {
        MountMode::Loop => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
            if !refreshd_snap::mount::is_mountpoint(dir)? {
                refreshd_snap::mount::mount_squashfs(blob, dir)?;
            }
        }
        MountMode::Extract => {
            if dir.join("meta/snap.yaml").is_file() {
                return Ok(());
            }
            // The rename below is the commit: a crash leaves only a temporary directory.
            fsutil::remove_tree_if_exists(dir)?;
            let tmp = fsutil::tmp_path(dir);
            fsutil::remove_tree_if_exists(&tmp)?;
            fs::create_dir_all(dir.parent().context("revision dir has no parent")?)?;
            refreshd_snap::squashfs::extract(blob, &tmp)?;
            fs::rename(&tmp, dir)?;
        }
    }
    Ok(())
}

pub fn unmount_revision(c: &Ctx, dir: &Path) -> anyhow::Result<()> {
    match c.mount_mode {
        MountMode::Loop => {
            if dir.exists() && refreshd_snap::mount::is_mountpoint(dir)? {
                refreshd_snap::mount::unmount(dir)?;
            }
            fsutil::remove_dir_if_empty(dir)?;
        }
        MountMode::Extract => fsutil::remove_tree_if_exists(dir)?,
    }
    Ok(())
}

/// Creates the revision's system data directory: a copy of the previous revision's, or empty.
pub fn setup_data(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    if let Some(out) = super::apps::reenter(c, t, &ss, phase)? {
        return Ok(out);
    }
    let l = &c.layout;
    let dst = l.data_rev(&ss.instance, &ss.revision);
    match phase {
        Phase::Do => {
            for d in [l.data_dir(&ss.instance), l.data_common(&ss.instance)] {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&d)?;
            }
            if fs::symlink_metadata(&dst).is_ok() {
                return Ok(Outcome::Done);
            }
            // Built beside its final place and renamed in: a crash never leaves a half-copied
            // directory under the final name.
            let tmp = fsutil::tmp_path(&dst);
            fsutil::remove_tree_if_exists(&tmp)?;
            let prev = ss.previous.as_ref().map(|p| l.data_rev(&ss.instance, p));
            match prev.filter(|p| p.is_dir()) {
                Some(src) => {
                    // Interim: system data is root's, so cp -a is safe here; the refresh issue
                    // brings per-user data and pre-copy.
                    let out = Command::new("cp")
                        .args(["-a", "--reflink=auto", "--no-target-directory"])
                        .arg(&src)
                        .arg(&tmp)
                        .output()
                        .context("cannot run cp")?;
                    if !out.status.success() {
                        let _ = fsutil::remove_tree_if_exists(&tmp);
                        bail!(
                            "cannot copy {} to {}: {}",
                            src.display(),
                            dst.display(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                    t.log(format!("copied {} to {}", src.display(), dst.display()));
                }
                None => fs::DirBuilder::new().mode(0o755).create(&tmp)?,
            }
            fs::rename(&tmp, &dst)?;
            fsutil::sync_dir(&l.data_dir(&ss.instance))?;
        }
        Phase::Undo => {
            fsutil::remove_tree_if_exists(&dst)?;
            if ss.previous.is_none() {
                fsutil::remove_tree_if_exists(&l.data_common(&ss.instance))?;
                fsutil::remove_dir_if_empty(&l.data_dir(&ss.instance))?;
            }
        }
    }
    Ok(Outcome::Done)
}

/// Switches `current` (payload and data) to the new revision, atomically each.
pub fn link(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    if let Some(out) = super::apps::reenter(c, t, &ss, phase)? {
        return Ok(out);
    }
    let target = match phase {
        Phase::Do => Some(ss.revision.clone()),
        Phase::Undo => ss.previous.clone(),
    };
    set_current(c, t, &ss.instance, target.as_deref())?;
    if phase == Phase::Do {
        t.log(format!(
            "{} is now at revision {}",
            ss.instance, ss.revision
        ));
    }
    Ok(Outcome::Done)
}

/// Points both `current` links at `rev` (or removes them) and records it.
pub fn set_current(c: &Ctx, t: &TaskCtx, instance: &str, rev: Option<&str>) -> anyhow::Result<()> {
    let l = &c.layout;
    for link in [l.current_link(instance), l.data_current(instance)] {
        match rev {
            Some(r) => fsutil::symlink_atomic(Path::new(r), &link)?,
            None => fsutil::remove_file_if_exists(&link)?,
        }
    }
    t.db_with(|s| s.set_current(instance, rev))?;
    Ok(())
}
