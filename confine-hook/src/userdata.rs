//! The caller's data directory of the revision being launched, `HOME/snap/INSTANCE/REV`
//! (`SNAP_USER_DATA`), made the first time the caller runs that revision — as the caller.
//!
//! Users' data is not copied by refreshd inside the snap's critical section: one user's tree
//! must not decide how long every other user's launches wait, and root must not write into
//! trees users control. Instead each user's directory is made here, after the privilege drop
//! (the [`Dropped`] proof), where it reads and writes only what the caller could anyway and
//! counts against the caller's quota. refreshd makes the same call for each user right after a
//! refresh (`confine-hook --prepare-data`, run as that user), so the data is usually ready
//! before the first launch; whichever comes first does the work, under the caller's own lock.
//!
//! Whether a directory is complete is never inferred from its existence: the revision's data
//! file (`refreshd_runctl::DATA_FILE`) names an epoch — the period the revision became current
//! in — and a directory counts as made for it only once the caller's
//! `HOME/snap/INSTANCE/.refreshd/REV -> EPOCH` mark says so. A directory marked with another
//! epoch is from a refresh that was undone; with a `from` revision it is made again as a copy.
//! Copies are built beside their place and renamed in (`refreshd-copydata`), so a copy cut
//! short never stands under the revision's name.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use refreshd_runctl::{valid_revision, USER_CURRENT, USER_STATE_DIR};

use crate::error::{fail, show, Result};
use crate::launch::DataSpec;
use crate::privs::Dropped;
use crate::sys;

/// What [`prepare`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The directory was complete for this epoch already.
    UpToDate,
    /// An existing directory was kept as it is (an install, a revert).
    Kept,
    /// Made empty: there was nothing to copy.
    Created,
    /// Made as a copy of the caller's directory of revision `from`.
    Copied {
        from: String,
        files: u64,
        bytes: u64,
    },
}

impl Prepared {
    pub fn describe(&self, instance: &[u8], rev: &[u8]) -> String {
        let (name, rev) = (show(instance), show(rev));
        match self {
            Prepared::UpToDate => format!("the data of {name} revision {rev} is ready"),
            Prepared::Kept => format!("kept the data of {name} revision {rev} as it is"),
            Prepared::Created => format!("made an empty data directory for {name} revision {rev}"),
            Prepared::Copied { from, files, bytes } => format!(
                "copied the data of {name} from revision {from} to {rev} ({files} files, {bytes} bytes)"
            ),
        }
    }
}

fn path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

fn is_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// A symlink's target, when it is one.
fn link(p: &Path) -> Option<Vec<u8>> {
    fs::read_link(p)
        .ok()
        .map(|t| t.into_os_string().into_encoded_bytes())
}

/// Points the symlink `at` to `target`: a new link beside it, renamed over it.
fn set_link(at: &Path, target: &[u8]) -> io::Result<()> {
    if link(at).as_deref() == Some(target) {
        return Ok(());
    }
    let tmp = at.with_file_name(format!(
        ".{}.refreshd-tmp-{}",
        at.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp)?;
    fs::rename(&tmp, at).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Makes `HOME/snap/INSTANCE/REV` ready for a launch of `rev` (see the module doc). `spec` is
/// the revision's data file; None (a revision linked before data files existed) keeps what is
/// there or makes the directory empty, as launches always did. Also makes
/// `HOME/snap/INSTANCE/common` and points `HOME/snap/INSTANCE/current` at `rev`.
pub fn prepare(
    _: &Dropped,
    home: &[u8],
    instance: &[u8],
    rev: &[u8],
    spec: Option<&DataSpec>,
) -> Result<Prepared> {
    let snap = path(home).join("snap").join(OsStr::from_bytes(instance));
    let target = snap.join(OsStr::from_bytes(rev));
    let state = snap.join(USER_STATE_DIR);
    let mark = state.join(OsStr::from_bytes(rev));
    let Some(spec) = spec else {
        ensure_dirs(&snap, &[&target])?;
        return Ok(Prepared::UpToDate);
    };
    // The fast path of every launch after the first: one readlink, one stat, one mkdir.
    if link(&mark).as_deref() == Some(&spec.epoch[..]) && is_dir(&target) {
        let common = snap.join("common");
        match fs::DirBuilder::new().mode(0o755).create(&common) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(fail!("cannot create {}: {e}", common.display()))
            }
            _ => return Ok(Prepared::UpToDate),
        }
    }
    ensure_dirs(&snap, &[])?;
    let mk = |e: io::Error, what: &Path| fail!("cannot create {}: {e}", what.display());
    match fs::DirBuilder::new().mode(0o700).create(&state) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(mk(e, &state)),
        _ => {}
    }
    let lock_path = state.join("lock");
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
        .map_err(|e| fail!("cannot open {}: {e}", lock_path.display()))?;
    // Another launch of the caller's may be making this directory: wait for it.
    sys::flock_exclusive(lock.as_fd())
        .map_err(|e| fail!("cannot lock {}: {e}", lock_path.display()))?;
    let done = make(&snap, &target, &mark, rev, spec)?;
    // Best effort: `current` only tells people (and refreshd's cleanup, which keeps what it
    // names) which revision the caller last ran.
    let _ = set_link(&snap.join(USER_CURRENT), rev);
    drop(lock);
    Ok(done)
}

/// `HOME/snap/INSTANCE` and `common` in it, and `extra`; 0755 as snapd makes them. The home
/// itself must exist: making it is the administrator's job.
fn ensure_dirs(snap: &Path, extra: &[&Path]) -> Result<()> {
    let home = snap.parent().and_then(Path::parent).unwrap_or(snap);
    match fs::metadata(home) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(fail!(
                "the home directory {} is not a directory",
                home.display()
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(fail!(
                "the home directory {} does not exist; create it, owned by its user, and start \
                 the app again",
                home.display()
            ))
        }
        Err(e) => {
            return Err(fail!(
                "cannot use the home directory {}: {e}",
                home.display()
            ))
        }
    }
    for d in std::iter::once(&snap.join("common").as_path()).chain(extra) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(d)
            .map_err(|e| fail!("cannot create {}: {e}", d.display()))?;
    }
    Ok(())
}

/// Under the caller's lock: the mark for `spec.epoch`, then the directory. The mark comes
/// first and the directory's rename (or mkdir) commits it, so a directory under the mark of
/// this epoch is always one this epoch made complete; a copy cut short leaves no directory,
/// and the next run makes it again.
fn make(snap: &Path, target: &Path, mark: &Path, rev: &[u8], spec: &DataSpec) -> Result<Prepared> {
    let marked = link(mark);
    if marked.as_deref() == Some(&spec.epoch[..]) && is_dir(target) {
        // Another launch made it while this one waited for the lock.
        return Ok(Prepared::UpToDate);
    }
    sweep(snap, rev);
    let record = |what: &Path| {
        set_link(mark, &spec.epoch)
            .map_err(|e| fail!("cannot record the epoch of {}: {e}", what.display()))
    };
    let mut stale = None;
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            if spec.from.is_none() {
                // An install or a revert keeps what is there, as snapd does.
                record(target)?;
                return Ok(Prepared::Kept);
            }
            // Not made in this epoch (a refresh that was undone, or not made by a launch at
            // all): never taken as complete. Set aside, copied afresh, then removed.
            let aside = snap.join(format!(
                ".{}.refreshd-stale-{}",
                show(rev),
                std::process::id()
            ));
            fs::rename(target, &aside).map_err(|e| {
                fail!(
                    "cannot move {} (not made for this revision's current epoch) aside: {e}",
                    target.display()
                )
            })?;
            stale = Some(aside);
        }
        Ok(_) => {
            return Err(fail!(
                "{} is not a directory; move it away and start the app again",
                target.display()
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail!("cannot look at {}: {e}", target.display())),
    }
    record(target)?;
    let done = match source(snap, rev, spec) {
        Some(from) => copy(snap, target, &from)?,
        None => {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(target)
                .map_err(|e| fail!("cannot create {}: {e}", target.display()))?;
            Prepared::Created
        }
    };
    if let Some(aside) = stale {
        remove(snap, &aside);
    }
    Ok(done)
}

/// The caller's directory to copy from: the data file's `from` revision, else the revision the
/// caller last ran (`current`), whichever the caller has; None when a copy is not wanted (keep
/// mode) or there is nothing to copy.
fn source(snap: &Path, rev: &[u8], spec: &DataSpec) -> Option<Vec<u8>> {
    let from = spec.from.as_ref()?;
    let usable =
        |r: &[u8]| valid_revision(r) && r != rev && is_dir(&snap.join(OsStr::from_bytes(r)));
    if usable(from) {
        return Some(from.clone());
    }
    link(&snap.join(USER_CURRENT)).filter(|r| usable(r))
}

fn copy(snap: &Path, target: &Path, from: &[u8]) -> Result<Prepared> {
    // The caller's own links above the revisions' directories are theirs to have (this runs
    // as them): resolved once, and the copy anchored there; the directories themselves are
    // opened without following, as copies of users' trees always are.
    let base =
        fs::canonicalize(snap).map_err(|e| fail!("cannot resolve {}: {e}", snap.display()))?;
    let src = base.join(OsStr::from_bytes(from));
    let target = &base.join(target.file_name().unwrap_or_default());
    let opts = refreshd_copydata::Options {
        user: Some(refreshd_copydata::UserTree {
            uid: sys::getuid().0,
            home: base.clone(),
        }),
        owners: refreshd_copydata::Owners::Caller,
        ..Default::default()
    };
    let stats = refreshd_copydata::copy_tree(&src, target, &opts, &mut |_| {}).map_err(|e| {
        fail!(
            "cannot copy your data from {} to {}: {}; your data of revision {} is untouched: \
             make room (or fix what the error names) and start the app again",
            src.display(),
            target.display(),
            e.chain(),
            show(from)
        )
    })?;
    Ok(Prepared::Copied {
        from: show(from),
        files: stats.files,
        bytes: stats.bytes,
    })
}

/// Removes what an interrupted earlier run left beside the caller's directory of `rev`: a copy
/// cut short (`.REV.refreshd-tmp-…`) and a directory set aside (`.REV.refreshd-stale-…`).
fn sweep(snap: &Path, rev: &[u8]) {
    let rev = show(rev);
    let prefixes = [
        format!(".{rev}.refreshd-tmp-"),
        format!(".{rev}.refreshd-stale-"),
    ];
    for e in fs::read_dir(snap).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            remove(snap, &e.path());
        }
    }
}

/// Removes `what` in the directory `snap`, by descriptor; failures are the caller's own trouble
/// (their directory), so they only cost disk space.
fn remove(snap: &Path, what: &Path) {
    let (Ok(dir), Some(name)) = (fs::File::open(snap), what.file_name()) else {
        return;
    };
    if let Ok(name) = std::ffi::CString::new(name.as_bytes()) {
        let _ = refreshd_copydata::remove_tree_at(dir.as_fd(), &name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped() -> Dropped {
        crate::privs::Dropped::for_tests()
    }

    fn spec(epoch: &str, from: Option<&str>) -> DataSpec {
        DataSpec {
            epoch: epoch.as_bytes().to_vec(),
            from: from.map(|f| f.as_bytes().to_vec()),
        }
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn copies_once_per_epoch_and_replaces_an_undone_epoch() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().as_os_str().as_bytes();
        let snap = d.path().join("snap/hello");
        fs::create_dir_all(snap.join("x1/sub")).unwrap();
        fs::write(snap.join("x1/sub/f"), "one").unwrap();
        let (t, s) = (dropped(), spec("aa", Some("x1")));

        let done = prepare(&t, home, b"hello", b"x2", Some(&s)).unwrap();
        assert!(
            matches!(done, Prepared::Copied { files: 1, .. }),
            "{done:?}"
        );
        assert_eq!(read(&snap.join("x2/sub/f")), "one");
        assert_eq!(link(&snap.join("current")).unwrap(), b"x2");
        assert_eq!(link(&snap.join(".refreshd/x2")).unwrap(), b"aa");
        assert!(snap.join("common").is_dir());

        // The app writes; the next launch of the same epoch keeps it.
        fs::write(snap.join("x2/sub/f"), "two").unwrap();
        assert_eq!(
            prepare(&t, home, b"hello", b"x2", Some(&s)).unwrap(),
            Prepared::UpToDate
        );
        assert_eq!(read(&snap.join("x2/sub/f")), "two");

        // The refresh was undone and the revision comes again in a new epoch: the old x2 is
        // from an undone refresh, x1 (what the user ran since) is copied again.
        fs::write(snap.join("x1/sub/f"), "newer").unwrap();
        let s2 = spec("bb", Some("x1"));
        let done = prepare(&t, home, b"hello", b"x2", Some(&s2)).unwrap();
        assert!(matches!(done, Prepared::Copied { .. }), "{done:?}");
        assert_eq!(read(&snap.join("x2/sub/f")), "newer");
        let leftovers: Vec<_> = fs::read_dir(&snap)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("refreshd-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn keep_mode_and_unmarked_directories_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().as_os_str().as_bytes();
        let snap = d.path().join("snap/hello");
        fs::create_dir_all(snap.join("x1")).unwrap();
        fs::write(snap.join("x1/f"), "mine").unwrap();
        let t = dropped();
        // A revert (no `from`) keeps x1 as it is, whatever epoch it had.
        let done = prepare(&t, home, b"hello", b"x1", Some(&spec("cc", None))).unwrap();
        assert_eq!(done, Prepared::Kept);
        assert_eq!(read(&snap.join("x1/f")), "mine");
        // A directory no launch made for this epoch (left by an older refreshd's copy, say)
        // is never taken as complete when the revision's data is a copy: made afresh.
        fs::create_dir_all(snap.join("x3")).unwrap();
        fs::write(snap.join("x3/f"), "stale").unwrap();
        let done = prepare(&t, home, b"hello", b"x3", Some(&spec("dd", Some("x1")))).unwrap();
        assert!(matches!(done, Prepared::Copied { .. }), "{done:?}");
        assert_eq!(read(&snap.join("x3/f")), "mine");
        // A copy cut short after its mark was written: no directory, so made again.
        fs::remove_dir_all(snap.join("x3")).unwrap();
        let done = prepare(&t, home, b"hello", b"x3", Some(&spec("dd", Some("x1")))).unwrap();
        assert!(matches!(done, Prepared::Copied { .. }), "{done:?}");
        // Nothing to copy from: an empty directory.
        let done = prepare(&t, home, b"other", b"x1", Some(&spec("ee", Some("x9")))).unwrap();
        assert_eq!(done, Prepared::Created);
        assert!(d.path().join("snap/other/x1").is_dir());
    }

    #[test]
    fn copies_from_what_the_user_last_ran_when_from_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().as_os_str().as_bytes();
        let snap = d.path().join("snap/hello");
        fs::create_dir_all(snap.join("x1")).unwrap();
        fs::write(snap.join("x1/f"), "last run").unwrap();
        std::os::unix::fs::symlink("x1", snap.join("current")).unwrap();
        // The user skipped x2: x3 comes from x1, the revision they last ran.
        let done = prepare(
            &dropped(),
            home,
            b"hello",
            b"x3",
            Some(&spec("ff", Some("x2"))),
        )
        .unwrap();
        assert!(
            matches!(done, Prepared::Copied { ref from, .. } if from == "x1"),
            "{done:?}"
        );
        assert_eq!(read(&snap.join("x3/f")), "last run");
        assert_eq!(link(&snap.join("current")).unwrap(), b"x3");
    }

    #[test]
    fn a_copy_cut_short_is_swept_and_made_again() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().as_os_str().as_bytes();
        let snap = d.path().join("snap/hello");
        fs::create_dir_all(snap.join("x1")).unwrap();
        fs::write(snap.join("x1/f"), "data").unwrap();
        fs::create_dir_all(snap.join(".x2.refreshd-tmp-123-4/half")).unwrap();
        let done = prepare(
            &dropped(),
            home,
            b"hello",
            b"x2",
            Some(&spec("ab", Some("x1"))),
        )
        .unwrap();
        assert!(matches!(done, Prepared::Copied { .. }), "{done:?}");
        assert!(!snap.join(".x2.refreshd-tmp-123-4").exists());
        // A user's file where the directory should be: refused in one line, nothing touched.
        fs::write(snap.join("x4"), "not a dir").unwrap();
        let err = prepare(
            &dropped(),
            home,
            b"hello",
            b"x4",
            Some(&spec("ac", Some("x1"))),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("is not a directory"), "{err}");
        assert_eq!(read(&snap.join("x4")), "not a dir");
    }
}
