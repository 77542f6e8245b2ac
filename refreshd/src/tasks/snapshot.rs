//! Snapshots of a snap's data (system and users'): what a remove saves so that a remove one
//! regrets loses nothing, and what a restore puts back (docs/layout.md, "Snapshots").
//!
//! A snapshot is data moved, never copied: the system data of the current revision and
//! `common` go into `var/snap/.saved-SET-NAME/`, each user's whole `HOME/snap/NAME` becomes
//! `HOME/snap/.saved-SET-NAME` (renames within one directory: instant, on one filesystem, and
//! nothing of a user's is read or written by root). The set is the id of the change that
//! made it. A restore is the same moves the other way; what it replaces is saved as a set of
//! its own (the restore's change id), so a restore can be undone by restoring that.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use refreshd_state::SnapshotRow;

use super::{data, setup, Ctx, RemoveSetup, RestoreSetup};
use crate::engine::{Outcome, Phase, TaskCtx};
use crate::fsutil;

/// The snapshots' shared parts: how long they are kept, and which sets are being worked on.
pub struct Saved {
    /// How long a snapshot is kept before it is deleted (`refreshd --snapshot-retention`).
    pub retention: Duration,
    /// Sets a restore or a forget is moving or deleting right now: the other waits.
    busy: Mutex<HashSet<u64>>,
    /// Told when a snapshot is made, so that expiry knows there is something to expire.
    pub made: tokio::sync::Notify,
}

impl Saved {
    pub fn new(retention: Duration) -> Saved {
        Saved {
            retention,
            busy: Mutex::new(HashSet::new()),
            made: tokio::sync::Notify::new(),
        }
    }

    /// Claims `set` until the guard drops; None when something else has it.
    pub fn claim(&self, set: u64) -> Option<Claim<'_>> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.insert(set).then_some(Claim { saved: self, set })
    }

    fn expiry(&self, now: i64) -> i64 {
        now.saturating_add(i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX))
    }
}

pub struct Claim<'a> {
    saved: &'a Saved,
    set: u64,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut busy = self.saved.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.set);
    }
}

/// In a remove, once the snap is unlinked and unmounted: its data is moved into a snapshot
/// named by this change. Undo moves it back.
pub fn save_data(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let rs: RemoveSetup = setup(t)?;
    let (name, set) = (&rs.instance, t.change.id);
    if let Some(out) = super::apps::reenter(c, t, name, false, phase)? {
        return Ok(out);
    }
    if phase == Phase::Undo {
        let (_, problems) =
            crate::usertree::restore_all(&c.layout, name, (set, ""), (set, ""), &[]);
        for p in problems {
            t.log(p);
        }
        let saved = c.layout.saved_data(set, name);
        let rev = t.db_with(|s| s.snapshot(set))?.map(|r| r.revision);
        if let Some(rev) = rev.or(rs.current.clone()) {
            move_entry(&saved.join(&rev), &c.layout.data_rev(name, &rev))?;
        }
        move_entry(&saved.join("common"), &c.layout.data_common(name))?;
        fsutil::remove_dir_if_empty(&saved)?;
        t.db_with(|s| s.delete_snapshot(set))?;
        return Ok(Outcome::Done);
    }
    let Some(rev) = rs.current.clone() else {
        t.log(format!("{name} had no current revision: no data to save"));
        return Ok(Outcome::Done);
    };
    let version = t
        .db_with(|s| s.revision(name, &rev))?
        .map(|r| r.version)
        .unwrap_or_default();
    save_system(c, name, set, &rev)?;
    crate::engine::failpoint::hit("mid-save:save-data");
    let (users, problems) = crate::usertree::save_all(&c.layout, name, set);
    for p in &problems {
        t.log(format!("{p}: removed with the snap"));
    }
    let now = refreshd_state::now_ms();
    let row = SnapshotRow {
        id: set,
        snap: name.clone(),
        revision: rev.clone(),
        version,
        users,
        made: now,
        expires: Some(c.saved.expiry(now)),
    };
    t.db_with(|s| s.put_snapshot(&row))?;
    c.saved.made.notify_one();
    t.log(format!(
        "saved the data of {name} revision {rev} (system and {} user{}) as snapshot {set}",
        row.users.len(),
        if row.users.len() == 1 { "" } else { "s" }
    ));
    Ok(Outcome::Done)
}

/// `var/snap/NAME/REV` and `common` into `var/snap/.saved-SET-NAME/`; other revisions' data
/// stays for discard (a snapshot holds the data in use, as snapd's do).
fn save_system(c: &Ctx, name: &str, set: u64, rev: &str) -> anyhow::Result<()> {
    let l = &c.layout;
    let saved = l.saved_data(set, name);
    // 0700 from its making (docs/layout.md): no moment in which it is open to others.
    match fs::DirBuilder::new().mode(0o700).create(&saved) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("cannot create {}", saved.display()))
        }
        _ => {}
    }
    move_entry(&l.data_rev(name, rev), &saved.join(rev))?;
    move_entry(&l.data_common(name), &saved.join("common"))?;
    fsutil::sync_dir(&l.at_var_snap())?;
    Ok(())
}

/// Renames `from` to `to` unless it was already (a re-run): absent `from` is done; an existing
/// `to` is never replaced.
fn move_entry(from: &Path, to: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(from).is_err() {
        return Ok(());
    }
    if fs::symlink_metadata(to).is_ok() {
        anyhow::bail!(
            "cannot move {} to {}: it exists; move one of them away",
            from.display(),
            to.display()
        );
    }
    fs::rename(from, to)
        .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
    if let Some(dir) = to.parent() {
        fsutil::sync_dir(dir)?;
    }
    Ok(())
}

/// In a restore, inside the snap's critical section: what the snap has now is saved as a set
/// named by this change, then snapshot `set` becomes the data of the current revision.
/// Interrupted, it runs again and finishes (every move is done once).
pub fn restore_data(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let rs: RestoreSetup = setup(t)?;
    let (name, set, aside) = (&rs.instance, rs.set, t.change.id);
    if let Some(out) = super::apps::reenter(c, t, name, false, phase)? {
        return Ok(out);
    }
    if phase == Phase::Undo {
        // Undone only when nothing was moved (it is the last step that can fail): the moves
        // below are each done once and never half.
        return Ok(Outcome::Done);
    }
    let Some(_claim) = c.saved.claim(set) else {
        return Ok(Outcome::Retry {
            reason: format!("snapshot {set} is being deleted"),
            after: Some(Duration::from_millis(200)),
        });
    };
    let Some(row) = t.db_with(|s| s.snapshot(set))? else {
        if t.db_with(|s| s.snapshot(aside))?.is_some() {
            // An earlier run finished the moves and recorded them.
            return Ok(Outcome::Done);
        }
        return Ok(Outcome::Failed(format!(
            "snapshot {set} is gone (forgotten or expired); nothing was changed"
        )));
    };
    let l = &c.layout;
    let cur = &rs.current;
    let version = t
        .db_with(|s| s.revision(name, cur))?
        .map(|r| r.version)
        .unwrap_or_default();
    // What the snap has now, saved as a set of its own; recorded, since once the set's data
    // stands in its place the two cannot be told apart.
    if !t.data::<data::RestoreData>().set_aside {
        save_system(c, name, aside, cur)?;
        t.try_record(&data::RestoreData { set_aside: true })?;
    }
    // The set's data, as the current revision's.
    let saved = l.saved_data(set, name);
    move_entry(&saved.join(&row.revision), &l.data_rev(name, cur))?;
    move_entry(&saved.join("common"), &l.data_common(name))?;
    for d in [l.data_rev(name, cur), l.data_common(name)] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&d)?;
    }
    // A new epoch that keeps what each user's tree has: the set's data (renamed to the current
    // revision in the trees put back), or, for users not in the set, their own.
    super::install::write_data_file(c, name, cur, None)?;
    crate::engine::failpoint::hit("mid-restore:restore-data");
    let (users, problems) =
        crate::usertree::restore_all(l, name, (set, &row.revision), (aside, cur), &row.users);
    for p in &problems {
        t.log(format!("{p}: left in place"));
    }
    fsutil::remove_tree_if_exists(&saved)?;
    let now = refreshd_state::now_ms();
    let displaced = SnapshotRow {
        id: aside,
        snap: name.clone(),
        revision: cur.clone(),
        version,
        users,
        made: now,
        expires: Some(c.saved.expiry(now)),
    };
    t.db_with(|s| {
        s.put_snapshot(&displaced)?;
        s.delete_snapshot(set)
    })?;
    c.saved.made.notify_one();
    t.log(format!(
        "restored snapshot {set} (revision {}) as the data of {name} revision {cur}; the data it replaced is snapshot {aside}",
        row.revision
    ));
    Ok(Outcome::Done)
}

/// Deletes snapshot `row`: users' parts, then the system part, then the record (so an
/// interrupted forget leaves a set that can be forgotten again). Returns what could not be
/// deleted in users' trees.
pub fn forget(c: &Ctx, row: &SnapshotRow) -> anyhow::Result<Vec<String>> {
    let problems = crate::usertree::forget_all(&c.layout, &row.snap, row.id);
    fsutil::remove_tree_if_exists(&c.layout.saved_data(row.id, &row.snap))?;
    Ok(problems)
}
