//! After a refresh: revisions beyond the retain count (`refreshd --retain`, the current one
//! included) are discarded, oldest first.
//!
//! Whatever the count, these are kept: the current revision; the one before it, which
//! `refreshctl revert` goes back to; and every revision an unfinished change names — this
//! change's own previous revision among them, since until the change is ready it can still be
//! undone back to it. `common` data is shared by all revisions and never touched.
//!
//! A revision is discarded in three steps:
//!
//! 1. Its loop mount goes (detached lazily if something still uses it; the loop device is
//!    released with the mount, as it was set up with autoclear). The revision is still whole:
//!    its blob and record are there, and a restart would mount it again.
//! 2. Its record goes (`State::delete_old_revision`, which also refuses the current revision).
//!    This is the point of no return.
//! 3. What is left of it on disk goes: the payload directory (or extracted payload), the launch
//!    descriptions, the system data, every user's data, the blob.
//!
//! Why the record goes before the files: everything in the daemon that trusts a revision starts
//! from its record — `list`, `revert`, the mounts made at start-up, the launch descriptions of
//! `current`. With the record gone first, a crash or a failure in step 3 leaves only leftovers
//! that nothing trusts. Deleting the record last would instead leave, after a crash in the
//! middle, a recorded revision with half its data or payload gone, which a revert (or the
//! start-up mount) would take as whole. Step 3 finds its work by looking at the disk — every
//! revision found there that has no record and that no unfinished change names — not at a list
//! an earlier run made, so a run after a crash, or the next refresh's cleanup, finishes what an
//! interrupted or failed one left. The handler is idempotent for the same reason.
//!
//! A user's data directory belongs to the user, who may have planted symlinks in it (or made
//! `~/snap` one): it is removed through `crate::usertree`, by file descriptor, never following
//! a symlink. In each user's tree the directory of the revision the user last ran is kept
//! whatever the retain count says: the user's data of a newer revision is made from it at
//! their next launch.
//!
//! The refresh is complete by the time this runs, so a failure here never fails the change:
//! what could not be removed is logged on the task, and the next cleanup tries again.
//!
//! Crash point for the tests: `mid-discard:cleanup`, right after a revision's record is deleted.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use anyhow::Context;
use refreshd_snap::{Revision, Unmounted};
use refreshd_state::Select;
use serde_json::Value;

use super::{launchers, setup, Ctx, SnapSetup};
use crate::engine::{Outcome, Phase, TaskCtx};
use crate::fsutil;

pub fn cleanup(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    if phase == Phase::Undo {
        // Nothing discarded can come back, and nothing this change's undo needs was discarded
        // (it names its own revisions, which are kept).
        return Ok(Outcome::Done);
    }
    let ss: SnapSetup = setup(t)?;
    let problems = discard_old(c, t, &ss.instance);
    if !problems.is_empty() {
        t.log(format!(
            "left for the next cleanup: {}",
            problems.join("; ")
        ));
    }
    Ok(Outcome::Done)
}

/// Discards the revisions of `instance` beyond the retain count, then what is left on disk of
/// any revision without a record. Returns what could not be done.
fn discard_old(c: &Ctx, t: &TaskCtx, instance: &str) -> Vec<String> {
    let mut problems = vec![];
    let known = match t.db_with(|s| known_revisions(s, instance)) {
        Ok(k) => k,
        Err(e) => return vec![format!("cannot read the state: {e}")],
    };
    let Some(current) = known.current.as_deref() else {
        // Not linked: no revision is surplus to a current one.
        return problems;
    };
    for rev in surplus(&known.recorded, current, &known.referenced, c.retain) {
        // Step 1: the revision stays whole until its record goes.
        let dir = c.layout.rev_dir(instance, &rev);
        match unmount_payload(&dir) {
            Ok(true) => t.log(format!(
                "revision {rev} is still in use: its mount was detached and goes with its last user"
            )),
            Ok(false) => {}
            Err(e) => {
                problems.push(format!("revision {rev} kept: {e:#}"));
                continue;
            }
        }
        // Step 2: the point of no return.
        if let Err(e) = t.db_with(|s| s.delete_old_revision(instance, &rev)) {
            problems.push(format!("revision {rev} kept: {e}"));
            continue;
        }
        crate::engine::failpoint::hit("mid-discard:cleanup");
    }
    // Step 3, for what step 2 just let go and for whatever an earlier run left.
    let recorded = match t.db_with(|s| s.revisions(instance)) {
        Ok(rows) => rows.into_iter().map(|r| r.revision),
        Err(e) => {
            problems.push(format!("cannot read the state: {e}"));
            return problems;
        }
    };
    let keep: BTreeSet<String> = recorded
        .chain(known.referenced)
        .chain([current.to_owned()])
        .collect();
    for rev in on_disk(c, instance) {
        if keep.contains(&rev) {
            continue;
        }
        let before = problems.len();
        remove_leftovers(c, instance, &rev, &mut problems);
        if problems.len() == before {
            t.log(format!(
                "discarded revision {rev}: payload, system data, launch descriptions, blob"
            ));
        }
    }
    let (users, trouble) = crate::usertree::UserSnapDir::all(&c.layout, instance);
    problems.extend(trouble);
    for u in &users {
        discard_users(t, u, &keep, current, &mut problems);
    }
    problems
}

/// In one user's `HOME/snap/INSTANCE`: the data directories of revisions that are gone, except
/// the one the user last ran — the user's own data is made from it at their next launch, which
/// may come after several refreshes. When that one is unknown (no `current` link naming a
/// directory of theirs, and none for the current revision), nothing of theirs goes.
fn discard_users(
    t: &TaskCtx,
    u: &crate::usertree::UserSnapDir,
    keep: &BTreeSet<String>,
    current: &str,
    problems: &mut Vec<String>,
) {
    let revs = u.revisions();
    let last = u.last_run().filter(|r| revs.contains(r)).or_else(|| {
        revs.iter()
            .any(|r| r == current)
            .then(|| current.to_owned())
    });
    let Some(last) = last else {
        return;
    };
    let mut gone = vec![];
    for rev in revs {
        if keep.contains(&rev) || rev == last {
            continue;
        }
        match u.remove_revision(&rev) {
            Ok(()) => gone.push(rev),
            Err(e) => problems.push(format!(
                "cannot remove {}: {e}",
                u.path().join(&rev).display()
            )),
        }
    }
    let swept = u.sweep_root_leftovers();
    if !gone.is_empty() || !swept.is_empty() {
        t.log(format!(
            "{}: removed the data of revisions {}{}",
            u.path().display(),
            if gone.is_empty() {
                "(none)".to_owned()
            } else {
                gone.join(", ")
            },
            if swept.is_empty() {
                String::new()
            } else {
                format!(" and what an older refreshd left ({})", swept.join(", "))
            }
        ));
    }
}

/// What the state says about a snap's revisions.
struct Known {
    current: Option<String>,
    /// Oldest first (the order `revert` counts in).
    recorded: Vec<String>,
    /// Named by an unfinished change of the snap (this one included).
    referenced: BTreeSet<String>,
}

fn known_revisions(s: &refreshd_state::State, instance: &str) -> refreshd_state::Result<Known> {
    let mut referenced = BTreeSet::new();
    for ch in s.changes(Select::InProgress, Some(instance))? {
        referenced.extend(named_revisions(&ch.data));
    }
    Ok(Known {
        current: s.snap(instance)?.and_then(|r| r.current),
        recorded: s
            .revisions(instance)?
            .into_iter()
            .map(|r| r.revision)
            .collect(),
        referenced,
    })
}

/// The revisions a change's data names: a `SnapSetup`'s `revision` and `previous`, a
/// `RemoveSetup`'s `current` and `revisions`.
fn named_revisions(data: &Value) -> Vec<String> {
    let one = ["revision", "previous", "current"]
        .into_iter()
        .filter_map(|k| data.get(k).and_then(Value::as_str));
    let many = data
        .get("revisions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    one.chain(many).map(str::to_owned).collect()
}

/// The revisions to discard, oldest first: as many of `recorded` (oldest first) as exceed
/// `retain`, never `current`, the one before it, or one in `referenced`. Fewer when those
/// take up the room.
fn surplus(
    recorded: &[String],
    current: &str,
    referenced: &BTreeSet<String>,
    retain: usize,
) -> Vec<String> {
    let Some(pos) = recorded.iter().position(|r| r == current) else {
        // The current revision has no record: something is off; keep everything.
        return vec![];
    };
    let before = pos.checked_sub(1).map(|i| recorded[i].as_str());
    let mut left = recorded.len();
    let mut out = vec![];
    for r in recorded {
        if left <= retain {
            break;
        }
        if r == current || Some(r.as_str()) == before || referenced.contains(r) {
            continue;
        }
        out.push(r.clone());
        left -= 1;
    }
    out
}

/// Unmounts whatever is mounted at or below a payload directory (in extract mode, normally
/// nothing: this also covers a daemon restarted with `--extract`). Returns whether a mount in
/// use had to be detached lazily.
fn unmount_payload(dir: &Path) -> anyhow::Result<bool> {
    let mut detached = false;
    for m in refreshd_snap::mounts_under(dir)? {
        detached |= refreshd_snap::unmount_reporting(&m)? == Unmounted::Detached;
    }
    if !refreshd_snap::mounts_under(dir)?.is_empty() {
        anyhow::bail!("{} is still mounted", dir.display());
    }
    Ok(detached)
}

/// Every revision of `instance` something of root's is left of on disk, by its directory or
/// file names. (Users' trees are looked at per user: a name a user makes there never decides
/// what happens to root's files.)
fn on_disk(c: &Ctx, instance: &str) -> BTreeSet<String> {
    let l = &c.layout;
    let mut names: Vec<String> = vec![];
    for dir in [
        l.snap_dir(instance),
        l.data_dir(instance),
        l.launch_dir(instance),
    ] {
        names.extend(entries(&dir));
    }
    let prefix = format!("{instance}_");
    names.extend(entries(&l.blobs()).into_iter().filter_map(|n| {
        n.strip_prefix(&prefix)?
            .strip_suffix(".snap")
            .map(str::to_owned)
    }));
    // Only names spelled as revisions: `common`, `current`, temporaries and staging
    // directories, another instance's blobs (`NAME_KEY_REV.snap`) are not.
    names
        .into_iter()
        .filter(|n| n.parse::<Revision>().is_ok())
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Removes what is left on disk of `rev`, which has no record any more. Each piece on its own,
/// so one that cannot go does not keep the others.
fn remove_leftovers(c: &Ctx, instance: &str, rev: &str, problems: &mut Vec<String>) {
    let l = &c.layout;
    // The removals' own errors name what they could not remove (fsutil); only the steps
    // before them get that said as their context.
    let mut note = |r: anyhow::Result<()>| {
        if let Err(e) = r {
            problems.push(format!("{e:#}"));
        }
    };
    let payload = l.rev_dir(instance, rev);
    note(
        // Never delete through a mount. The record that an extracted tree is whole goes
        // before the tree does: a removal cut short never leaves a partial tree that a later
        // change of the same revision would take as whole.
        unmount_payload(&payload)
            .with_context(|| format!("cannot remove {}", payload.display()))
            .and_then(|_| {
                fsutil::remove_file_if_exists(&l.payload_record(instance, rev))?;
                fsutil::remove_tree_if_exists(&payload).map_err(Into::into)
            }),
    );
    note(launchers::remove_descriptions(c, instance, Some(rev)));
    note(remove_data(&l.data_rev(instance, rev)));
    let blob = l.blob(instance, rev);
    let partial = refreshd_store::partial_path(&blob).ok();
    note(
        fsutil::remove_file_if_exists(&blob)
            .and_then(|()| partial.map_or(Ok(()), |p| fsutil::remove_file_if_exists(&p)))
            .map_err(Into::into),
    );
}

/// Removes a data directory, unless something is mounted inside it: that was put there on
/// purpose (an administrator's bind mount, a user's FUSE mount), and deleting through it would
/// delete what it shows. Once it is unmounted, the next cleanup removes the directory.
fn remove_data(path: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        let mounted = refreshd_snap::mounts_under(path)
            .with_context(|| format!("cannot remove {}", path.display()))?;
        if let Some(m) = mounted.last() {
            anyhow::bail!(
                "cannot remove {}: {} is mounted inside it",
                path.display(),
                m.display()
            );
        }
    }
    Ok(fsutil::remove_tree_if_exists(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn surplus_keeps_current_the_one_before_and_referenced() {
        let none = BTreeSet::new();
        let all = revs(&["x1", "x2", "x3", "x4"]);
        assert_eq!(surplus(&all, "x4", &none, 2), ["x1", "x2"]);
        assert_eq!(surplus(&all, "x4", &none, 3), ["x1"]);
        assert!(surplus(&all, "x4", &none, 4).is_empty());
        assert!(surplus(&all, "x4", &none, 20).is_empty());
        // After a revert to x2 (x3, x4 newer): x2 and x1, the one before it, stay.
        assert_eq!(surplus(&all, "x2", &none, 2), ["x3", "x4"]);
        // Named by an unfinished change: kept, and nothing else goes in its place.
        let refd: BTreeSet<String> = ["x2".to_owned()].into();
        assert_eq!(surplus(&all, "x4", &refd, 2), ["x1"]);
        let refd: BTreeSet<String> = ["x1".to_owned()].into();
        assert_eq!(surplus(&all, "x4", &refd, 2), ["x2"]);
        // A current revision without a record: nothing goes.
        assert!(surplus(&all, "x9", &none, 2).is_empty());
        assert!(surplus(&[], "x1", &none, 2).is_empty());
    }

    #[test]
    fn revisions_named_by_change_data() {
        let refresh = serde_json::json!({"instance": "hello", "revision": "x3", "previous": "x2"});
        assert_eq!(named_revisions(&refresh), ["x3", "x2"]);
        let install = serde_json::json!({"revision": "x1", "previous": null});
        assert_eq!(named_revisions(&install), ["x1"]);
        let remove = serde_json::json!({"current": "x2", "revisions": ["x1", "x2"]});
        assert_eq!(named_revisions(&remove), ["x2", "x1", "x2"]);
        assert!(named_revisions(&serde_json::json!({})).is_empty());
    }
}
