//! Removing a snap, inside its critical section: unlink → unmount → (save-data) → discard. Discard is the point of no return: it deletes
//! data, so it has no undo and retries rather than fails.

use super::install::{mount_revision, set_current, unmount_revision};
use super::{launchers, setup, Ctx, MountMode, RemoveSetup};
use crate::engine::{Outcome, Phase, TaskCtx};
use crate::fsutil;

/// Takes the snap out of use: launchers and `current` links go.
pub fn unlink(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let rs: RemoveSetup = setup(t)?;
    if let Some(out) = super::apps::reenter(c, t, &rs.instance, false, phase)? {
        return Ok(out);
    }
    match phase {
        Phase::Do => {
            launchers::remove_all(c, &rs.instance)?;
            set_current(c, t, &rs.instance, None)?;
            t.log(format!("unlinked {}", rs.instance));
        }
        Phase::Undo => {
            if let Some(rev) = &rs.current {
                set_current(c, t, &rs.instance, Some(rev))?;
                let manifest = super::recorded_manifest(t, &rs.instance, rev)?;
                launchers::write(c, &rs.instance, &manifest)?;
            }
        }
    }
    Ok(Outcome::Done)
}

/// Unmounts every revision (an extracted payload stays until discard, so undo can restore it).
pub fn unmount(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let rs: RemoveSetup = setup(t)?;
    if c.mount_mode == MountMode::Extract {
        return Ok(Outcome::Done);
    }
    for rev in &rs.revisions {
        let dir = c.layout.rev_dir(&rs.instance, rev);
        match phase {
            Phase::Do => unmount_revision(c, &dir)?,
            Phase::Undo => mount_revision(c, &c.layout.blob(&rs.instance, rev), &dir)?,
        }
    }
    Ok(Outcome::Done)
}

/// Deletes payloads, data (system and every user's), blobs and the records.
pub fn discard(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let rs: RemoveSetup = setup(t)?;
    if phase == Phase::Undo {
        // Nothing can bring deleted data back; the engine only gets here if discard never ran.
        return Ok(Outcome::Done);
    }
    if let Some(out) = super::apps::reenter(c, t, &rs.instance, false, phase)? {
        return Ok(out);
    }
    match discard_all(c, t, &rs) {
        Ok(()) => {
            t.db_with(|s| s.delete_snap(&rs.instance))?;
            // The snap is gone: its critical section ends here (a launch finds no revision).
            c.tracking.lift(&rs.instance)?;
            c.shutdown_delay.release(&rs.instance);
            t.log(format!("removed {} and its data", rs.instance));
            Ok(Outcome::Done)
        }
        // Past the point of no return: keep trying rather than undo a half-deleted snap.
        Err(e) => Ok(Outcome::Retry {
            reason: format!("{e:#}"),
            after: None,
        }),
    }
}

fn discard_all(c: &Ctx, t: &TaskCtx, rs: &RemoveSetup) -> anyhow::Result<()> {
    let l = &c.layout;
    for rev in &rs.revisions {
        // Never delete through a mount.
        unmount_revision(c, &l.rev_dir(&rs.instance, rev))?;
        fsutil::remove_file_if_exists(&l.blob(&rs.instance, rev))?;
    }
    fsutil::remove_tree_if_exists(&l.snap_dir(&rs.instance))?;
    launchers::remove_descriptions(c, &rs.instance, None)?;
    c.tracking.forget(&rs.instance);
    fsutil::remove_tree_if_exists(&l.data_dir(&rs.instance))?;
    // Users' trees, by file descriptor. What one of them keeps (a mount inside, an immutable
    // file) is that user's: reported, and the removal of the snap goes on for everyone.
    for p in crate::usertree::remove_all(l, &rs.instance) {
        t.log(format!("{p}: left in place"));
    }
    Ok(())
}
