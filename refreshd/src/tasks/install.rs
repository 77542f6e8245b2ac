//! Installing a revision: prepare → mount → setup-data → link (→ launchers).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use refreshd_snap::payload::Trust;
use refreshd_snap::Mounted;
use refreshd_state::{now_ms, RevisionRow, SnapRow};

use super::{data, setup, Ctx, MountMode, SnapSetup};
use crate::engine::{Outcome, Phase, TaskCtx};
use crate::fsutil;
use crate::kinds::ChangeKind;

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
            let (hash, size) = verify(t, &blob)?;
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
/// Whatever is found there already is used only if it shows this change's blob.
pub fn mount(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    let dir = c.layout.rev_dir(&ss.instance, &ss.revision);
    let blob = c.layout.blob(&ss.instance, &ss.revision);
    match phase {
        Phase::Do => {
            if let Some(note) = mount_verified(c, &ss.instance, &ss.revision, &ss.sha3_384)? {
                t.log(note);
            }
            if !dir.join("meta/snap.yaml").is_file() {
                bail!("{} has no meta/snap.yaml after mounting", dir.display());
            }
            // Descriptions of this revision number left by an earlier change (another blob,
            // other apps) must not outlive it: exactly this manifest's are written.
            super::launchers::remove_descriptions(c, &ss.instance, Some(&ss.revision))?;
            super::launchers::write_descriptions(c, &ss.instance, &ss.revision, &ss.manifest)?;
            t.log(format!(
                "{} {} at {}",
                verb(c.mount_mode),
                blob.display(),
                dir.display()
            ));
        }
        Phase::Undo => {
            forget_users_data(c, t, &ss);
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

/// The sha3-384 and size of `blob`, with the task's progress (`verifying`) recorded as it is
/// hashed: a large snap takes seconds.
fn verify(t: &TaskCtx, blob: &Path) -> anyhow::Result<(String, u64)> {
    let mut last: Option<std::time::Instant> = None;
    let mut progress = |done: u64, total: u64| {
        // Recorded a few times a second, not per chunk: each record is a commit (as downloads).
        if last.is_none_or(|at| at.elapsed().as_millis() >= 200) || done == total {
            last = Some(std::time::Instant::now());
            t.progress("verifying", done, total);
        }
        if done > 0 && done < total {
            crate::engine::failpoint::pause("mid-verify");
        }
    };
    crate::blob::sha3_file_with(blob, &mut progress)
        .with_context(|| format!("cannot read {}", blob.display()))
}

/// Makes `snap/INSTANCE/REV` show the blob whose sha3-384 is `sha3` (the one the change, or the
/// state, verified): a loop mount is kept only if its loop device is bound to this very blob
/// file, an extracted tree only if its record names this hash; anything else there is
/// replaced. Returns a note for the log when something stale was replaced.
pub fn mount_verified(
    c: &Ctx,
    instance: &str,
    rev: &str,
    sha3: &str,
) -> anyhow::Result<Option<String>> {
    let dir = c.layout.rev_dir(instance, rev);
    let blob = c.layout.blob(instance, rev);
    ensure_payload(
        c,
        &blob,
        &dir,
        &c.layout.payload_record(instance, rev),
        || Ok(sha3.to_owned()),
    )
}

/// [`mount_verified`] for a caller that knows the paths but not the blob's hash (in extract
/// mode the blob is hashed to learn it).
pub fn mount_revision(c: &Ctx, blob: &Path, dir: &Path) -> anyhow::Result<()> {
    let record = payload_record_of(dir)?;
    ensure_payload(c, blob, dir, &record, || {
        crate::blob::sha3_file(blob)
            .map(|(h, _)| h)
            .with_context(|| format!("cannot read {}", blob.display()))
    })
    .map(drop)
}

/// `snap/NAME/.REV.refreshd-payload` for `snap/NAME/REV`.
fn payload_record_of(dir: &Path) -> anyhow::Result<PathBuf> {
    let rev = dir.file_name().context("revision dir has no name")?;
    Ok(dir.with_file_name(format!(
        ".{}{}",
        rev.to_string_lossy(),
        crate::layout::PAYLOAD_RECORD
    )))
}

fn ensure_payload(
    c: &Ctx,
    blob: &Path,
    dir: &Path,
    record: &Path,
    sha3: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<Option<String>> {
    secure_parents(dir)?;
    match c.mount_mode {
        MountMode::Loop => {
            match fs::DirBuilder::new().mode(0o755).create(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(e).with_context(|| format!("cannot create {}", dir.display()))
                }
                _ => {}
            }
            // A tree extracted here by a run with --extract is no longer what this path shows.
            fsutil::remove_file_if_exists(record)?;
            Ok(match refreshd_snap::mount_squashfs_replacing(blob, dir)? {
                Mounted::Replaced { stale, detached } => Some(format!(
                    "{} showed another image ({}): unmounted{}, and {} mounted instead",
                    dir.display(),
                    stale.join(", "),
                    if detached {
                        " lazily (something still uses it)"
                    } else {
                        ""
                    },
                    blob.display()
                )),
                Mounted::Already | Mounted::Fresh => None,
            })
        }
        MountMode::Extract => extract_verified(blob, dir, record, &sha3()?),
    }
}

/// The directories holding payloads (`snap/` and `snap/NAME/`, made here if missing) must be
/// the daemon's and writable by no one else: a payload is only as safe as the directory it is
/// reached through.
fn secure_parents(dir: &Path) -> anyhow::Result<()> {
    let snap_dir = dir.parent().context("revision dir has no parent")?;
    let snaps = snap_dir.parent().context("snap dir has no parent")?;
    match fs::DirBuilder::new().mode(0o755).create(snap_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("cannot create {}", snap_dir.display()))
        }
        _ => {}
    }
    let trust = Trust::this_process();
    for d in [snaps, snap_dir] {
        if trust.open_dir(d)?.is_none() {
            bail!("{} does not exist", d.display());
        }
    }
    Ok(())
}

/// Extract mode: `dir` is taken as this blob's payload only if the record beside it names the
/// blob's hash — written only after the tree was unpacked, made safe and renamed into place,
/// and removed before anything else happens to it — and it is still a directory of the
/// daemon's that no one else may write. Otherwise the blob is unpacked again and swapped in.
fn extract_verified(
    blob: &Path,
    dir: &Path,
    record: &Path,
    sha3: &str,
) -> anyhow::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().context("revision dir has no parent")?;
    let recorded = fs::read_to_string(record).ok();
    let tree = fs::symlink_metadata(dir).ok();
    let sound = tree.as_ref().is_some_and(|m| {
        m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0
    });
    if sound && recorded.as_deref().map(str::trim) == Some(sha3) {
        return Ok(None);
    }
    // From here until the record is written again, nothing at `dir` counts as complete.
    fsutil::remove_file_if_exists(record)?;
    // Never delete through a mount (a payload mounted by a run without --extract).
    for m in refreshd_snap::mounts_under(dir)? {
        refreshd_snap::unmount(&m)?;
    }
    let tmp = fsutil::tmp_path(dir);
    fsutil::remove_tree_if_exists(&tmp)?;
    refreshd_snap::squashfs::extract(blob, &tmp)?;
    let note = tree.map(|_| {
        format!(
            "{} was not known to hold {} ({}): unpacked again",
            dir.display(),
            blob.display(),
            match recorded {
                Some(_) => "its record names another blob",
                None => "it has no record of its blob",
            }
        )
    });
    if fs::symlink_metadata(dir).is_ok() {
        // Swapped in one step, so the revision's path never stands empty; the old tree then
        // goes under the temporary name (swept at start if a crash comes first).
        let p = fs::File::open(parent)?;
        nix::fcntl::renameat2(
            &p,
            tmp.file_name().context("temporary has no name")?,
            &p,
            dir.file_name().context("revision dir has no name")?,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .with_context(|| format!("cannot swap {} into place", dir.display()))?;
        fsutil::sync_dir(parent)?;
        fsutil::remove_tree_if_exists(&tmp)?;
    } else {
        fs::rename(&tmp, dir)?;
        fsutil::sync_dir(parent)?;
    }
    // The commit: written after the tree is in place, so a crash before it leaves a tree
    // without a record, which is unpacked again.
    fsutil::write_atomic(record, format!("{sha3}\n").as_bytes(), 0o644)?;
    Ok(note)
}

/// Takes a revision's payload away: the loop mount (lazily if busy), or the extracted tree —
/// its record first, so a tree half-removed is never taken as complete.
pub fn unmount_revision(c: &Ctx, dir: &Path) -> anyhow::Result<()> {
    fsutil::remove_file_if_exists(&payload_record_of(dir)?)?;
    // Everything mounted there, stale mounts stacked below included; never delete through one.
    for m in refreshd_snap::mounts_under(dir)? {
        refreshd_snap::unmount(&m)?;
    }
    match c.mount_mode {
        MountMode::Loop => fsutil::remove_dir_if_empty(dir)?,
        MountMode::Extract => fsutil::remove_tree_if_exists(dir)?,
    }
    Ok(())
}

/// Creates the revision's system data directory, `var/snap/NAME/REV` (and `common`): a copy of
/// the previous revision's, or empty. The copy preserves everything (types, modes, owners,
/// times, hard links, xattrs and ACLs, holes) and uses reflinks where the filesystem can
/// (`refreshd-copydata`); with a pre-copy staged, only what changed since is copied now. It is
/// built beside its place and renamed in, so a half-copied directory never looks complete.
///
/// Users' data directories (`~/snap/NAME/REV`) are not made here: inside the critical section
/// every launch of the snap waits, and no user's tree may decide for how long. Each user's is
/// made by that user, outside it (the `user-data` task, or the user's first launch).
///
/// A directory found under the revision's name that this change did not make (a change that
/// failed or was undone left it, perhaps for another blob under the same revision number, or
/// before data written since) is never taken as complete: it is removed and made again. This
/// change's own copy is recorded in the task's data once it stands, so a re-run after a crash
/// keeps it.
pub fn setup_data(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    if let Some(out) = super::apps::reenter_switch(c, t, &ss, phase)? {
        return Ok(out);
    }
    let l = &c.layout;
    let name = &ss.instance;
    let dst = l.data_rev(name, &ss.revision);
    match phase {
        Phase::Do => {
            if t.data::<data::SetupData>().made.is_some() && fs::symlink_metadata(&dst).is_ok() {
                return Ok(Outcome::Done);
            }
            for d in [l.data_dir(name), l.data_common(name)] {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&d)?;
            }
            if fs::symlink_metadata(&dst).is_ok() {
                fsutil::remove_tree_if_exists(&dst)?;
                t.log(format!(
                    "removed {}, left by an earlier change of revision {}: it is made afresh",
                    dst.display(),
                    ss.revision
                ));
            }
            // Entries copied, for the crash tests' cut points.
            let mut entries = 0;
            copy_revision(
                t,
                &l.data_dir(name),
                ss.previous.as_deref(),
                &ss.revision,
                &mut entries,
            )?;
            t.try_record(&data::SetupData {
                made: Some(refreshd_state::now_ms()),
            })?;
        }
        Phase::Undo => {
            // Only the new revision's directory goes; the previous one was never touched.
            fsutil::remove_tree_if_exists(&dst)?;
            if ss.previous.is_none() {
                fsutil::remove_tree_if_exists(&l.data_common(name))?;
                fsutil::remove_dir_if_empty(&l.data_dir(name))?;
            }
        }
    }
    Ok(Outcome::Done)
}

/// `DIR/NEW` as a copy of `DIR/OLD`, or empty; `DIR/NEW` does not exist.
fn copy_revision(
    t: &TaskCtx,
    dir: &Path,
    old: Option<&str>,
    new: &str,
    entries: &mut u64,
) -> anyhow::Result<()> {
    let dst = dir.join(new);
    let src = old.map(|o| dir.join(o)).filter(|s| s.is_dir());
    let Some(src) = src else {
        let tmp = fsutil::tmp_path(&dst);
        fsutil::remove_tree_if_exists(&tmp)?;
        fs::DirBuilder::new().mode(0o755).create(&tmp)?;
        fs::rename(&tmp, &dst)?;
        fsutil::sync_dir(dir)?;
        return Ok(());
    };
    let opts = refreshd_copydata::Options::default();
    sweep_copy_temporaries(dir, new, &opts);
    let mut last = std::time::Instant::now();
    let started = std::time::Instant::now();
    // With a pre-copy staged, only what changed since is copied now; without, all of it.
    let staging = staging_for(dir, new);
    let base = *entries;
    let stats = refreshd_copydata::finish(&src, &staging, &dst, &opts, &mut |p| {
        *entries = base + p.entries;
        crate::engine::failpoint::hit_at("mid-copy:setup-data", *entries);
        if p.entries > 0 {
            crate::engine::failpoint::pause("mid-copy:setup-data");
        }
        if last.elapsed().as_millis() >= 250 {
            last = std::time::Instant::now();
            t.progress("copy-data", p.bytes, 0);
        }
    })
    .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    let mut msg = format!(
        "copied {} to {} in {:.1} ms ({} files, {} bytes copied, {} reflinked, {} kept from the pre-copy)",
        src.display(),
        dst.display(),
        started.elapsed().as_secs_f64() * 1e3,
        stats.files,
        stats.copied_bytes,
        stats.reflinked_files,
        stats.unchanged
    );
    let left_out = stats.notes.iter().filter(|n| n.kind.left_out()).count();
    let altered = stats.notes.len() - left_out;
    if left_out > 0 {
        msg.push_str(&format!("; {left_out} entries left out"));
    }
    if altered > 0 {
        msg.push_str(&format!("; {altered} entries copied with a change"));
    }
    if !stats.notes.is_empty() {
        msg.push_str(" (see the daemon log)");
        for n in &stats.notes {
            tracing::warn!(snap_data = %src.display(), entry = ?n.path, "{}", n.kind.describe());
        }
    }
    t.log(msg);
    Ok(())
}

/// Removes what a crash in the middle of a full copy to `DIR/NEW` left beside it
/// (`.NEW.refreshd-tmp-PID-N`); only a private directory of root's.
fn sweep_copy_temporaries(dir: &Path, new: &str, opts: &refreshd_copydata::Options) {
    let prefix = format!(".{new}{}-", fsutil::TMP_MARK);
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            match refreshd_copydata::discard(&e.path(), opts) {
                Ok(_) => tracing::info!(path = %e.path().display(), "removed an interrupted copy"),
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), "left alone: {}", err.chain())
                }
            }
        }
    }
}

/// Where the pre-copy of `DIR/NEW` is staged (beside it: same filesystem, so it can be renamed).
fn staging_for(dir: &Path, new: &str) -> PathBuf {
    dir.join(format!(".{new}.refreshd-staging"))
}

/// Copies the system data while the apps still run, before the refresh waits for them, so the
/// critical section only copies what changes after this. Best effort: whatever fails here is
/// copied in full by setup-data.
pub fn precopy_data(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    let Some(old) = ss.previous.as_deref() else {
        return Ok(Outcome::Done);
    };
    let dir = c.layout.data_dir(&ss.instance);
    let (src, staging) = (dir.join(old), staging_for(&dir, &ss.revision));
    let opts = refreshd_copydata::Options::default();
    match phase {
        Phase::Do => {
            if !src.is_dir() {
                return Ok(Outcome::Done);
            }
            let started = std::time::Instant::now();
            let mut progress = |p: refreshd_copydata::Progress| {
                crate::engine::failpoint::hit_at("mid-copy:precopy-data", p.entries);
            };
            match refreshd_copydata::precopy(&src, &staging, &opts, &mut progress) {
                Ok(st) => t.log(format!(
                    "pre-copied {} ({} files, {} bytes) in {:.1} ms",
                    src.display(),
                    st.files,
                    st.bytes,
                    started.elapsed().as_secs_f64() * 1e3
                )),
                Err(e) => t.log(format!(
                    "no pre-copy of {} ({}); it will be copied in full",
                    src.display(),
                    e.chain()
                )),
            }
        }
        Phase::Undo => {
            refreshd_copydata::discard(&staging, &opts).map_err(|e| match e {
                // Already says what it could not remove.
                e @ refreshd_copydata::Error::Remove { .. } => anyhow::Error::new(e),
                e => anyhow::Error::new(e).context(format!("cannot remove {}", staging.display())),
            })?;
        }
    }
    Ok(Outcome::Done)
}

/// Makes every user's data directory of the new revision ready, as that user, after the
/// critical section: `confine-hook --prepare-data` run with each user's credentials, each for
/// at most `refreshd --user-data-budget`, so the data is there before the user's first launch
/// (which would otherwise make it). Never fails the refresh: a user whose directory cannot be
/// made (or takes too long) is told in the log, and their own next launch tries again; no
/// other user is held up by it, since launches are already allowed.
pub fn user_data(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    if phase == Phase::Undo {
        // What users made is theirs, marked with the epoch of this refresh: a later launch of
        // another epoch makes it again, and cleanup removes it with its revision.
        return Ok(Outcome::Done);
    }
    let ss: SnapSetup = setup(t)?;
    let hook = c.layout.hook();
    let (mut ready, mut failed) = (0, 0);
    for p in
        crate::usertree::prepare_all(&c.layout, &hook, &ss.instance, c.user_data_budget, &|| {
            t.cancelled()
        })
    {
        match p.result {
            Ok(line) => {
                ready += 1;
                t.log(format!("{}: {line}", p.user));
            }
            Err(e) => {
                failed += 1;
                t.log(format!(
                    "{}: not ready ({e}); their next launch of {} makes it",
                    p.user, ss.instance
                ));
            }
        }
    }
    // Each run joined the snap's cgroups as a launch does (so no critical section could come
    // while it worked); its `running` marker is a hint the kernel's truth now replaces, as the
    // release agent would (with `v1-poll`, nothing else would for a while).
    if let Ok(procs) = c.tracking.procs(&ss.instance) {
        let _ = c.tracking.sync_running_marker(&ss.instance, &procs);
    }
    if t.cancelled() {
        return Ok(Outcome::Retry {
            reason: "refreshd is shutting down".into(),
            after: None,
        });
    }
    t.log(format!(
        "users' data of {} revision {}: {ready} ready, {failed} left for their next launch",
        ss.instance, ss.revision
    ));
    Ok(Outcome::Done)
}

/// Switches `current` (payload and data) to the new revision, atomically each.
pub fn link(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    if let Some(out) = super::apps::reenter_switch(c, t, &ss, phase)? {
        return Ok(out);
    }
    let target = match phase {
        Phase::Do => Some(ss.revision.clone()),
        Phase::Undo => ss.previous.clone(),
    };
    if phase == Phase::Do {
        // A revert goes back to the data the revision had; anything else that has a previous
        // revision (a refresh) starts each user's data as a copy of it.
        let from = (!ChangeKind::Revert.is(&t.change.kind))
            .then_some(ss.previous.as_deref())
            .flatten();
        write_data_file(c, &ss.instance, &ss.revision, from)?;
    }
    set_current(c, t, &ss.instance, target.as_deref())?;
    if ChangeKind::Revert.is(&t.change.kind) {
        // A revert sticks: refreshes that do not name the snap leave it where it was put.
        t.db_with(|s| match phase {
            Phase::Do => s.hold_since_revert(&ss.instance),
            Phase::Undo => s.lift_revert_hold(&ss.instance),
        })?;
    }
    if phase == Phase::Do {
        t.log(format!(
            "{} is now at revision {}",
            ss.instance, ss.revision
        ));
    }
    Ok(Outcome::Done)
}

/// The change is undone: users' data directories of its revision made since it linked it (by
/// the `user-data` task, or by launches after the critical section) go. This runs in the undo
/// of `mount`, after the critical section was re-entered and left again: no app of the
/// revision runs, and whatever a user's tree costs to remove holds up no one's launches. What
/// cannot be removed is logged; a later launch of another epoch never takes it as complete,
/// and cleanup removes it with its revision.
fn forget_users_data(c: &Ctx, t: &TaskCtx, ss: &SnapSetup) {
    let path = c
        .layout
        .launch_dir(&ss.instance)
        .join(&ss.revision)
        .join(refreshd_runctl::DATA_FILE);
    let Ok(text) = fs::read(&path) else {
        // Never linked: no user could have made a directory for it.
        return;
    };
    let Ok(spec) = refreshd_runctl::parse_data(&text) else {
        return;
    };
    let epoch = String::from_utf8_lossy(spec.epoch).into_owned();
    let (users, mut problems) = crate::usertree::UserSnapDir::all(&c.layout, &ss.instance);
    let mut gone = vec![];
    for u in &users {
        match u.forget(&ss.revision, &epoch) {
            Ok(true) => gone.push(u.path().display().to_string()),
            Ok(false) => {}
            Err(e) => problems.push(format!(
                "cannot remove {}: {e}",
                u.path().join(&ss.revision).display()
            )),
        }
    }
    if !gone.is_empty() {
        t.log(format!(
            "removed the users' data of the undone revision {}: {}",
            ss.revision,
            gone.join(", ")
        ));
    }
    if !problems.is_empty() {
        t.log(format!("left in place: {}", problems.join("; ")));
    }
}

/// Writes `launch/INSTANCE/REV/.data` (`refreshd_runctl::DATA_FILE`) with a new epoch: users'
/// data directories of `rev` made before now (in a refresh that was undone, say) no longer
/// count as made for it. Written before `current` points at `rev`, so a launch never finds
/// the one without the other. (Outside a critical section — a first install — a launch in
/// between only sees the epoch change, which keeps what it finds.)
pub(super) fn write_data_file(
    c: &Ctx,
    instance: &str,
    rev: &str,
    from: Option<&str>,
) -> anyhow::Result<()> {
    let epoch = uuid::Uuid::new_v4().simple().to_string();
    let mut text = format!("{}\nepoch {}\n", refreshd_runctl::DATA_MAGIC, &epoch[..16]);
    if let Some(f) = from {
        text.push_str(&format!("from {f}\n"));
    }
    let path = c
        .layout
        .launch_dir(instance)
        .join(rev)
        .join(refreshd_runctl::DATA_FILE);
    fsutil::write_atomic(&path, text.as_bytes(), 0o644)?;
    Ok(())
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
