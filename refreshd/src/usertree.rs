//! Every operation refreshd makes in a tree a user can write: each user's `HOME/snap/INSTANCE`
//! (root's `/root/snap/INSTANCE` included). Nothing else in the daemon builds a path below a
//! home directory; `tests/user_trees.rs` fails the test run when another module does.
//!
//! Users' trees are hostile: their owner may swap any directory in them for a symlink, a
//! mount, or something else entirely, at any moment. So:
//!
//! - Root never writes into them. A user's data directory of a new revision is made by that
//!   user (`confine-hook --prepare-data`, which refreshd runs *as* the user: [`prepare_as`]),
//!   so it reads only what the user can read and counts against the user's quota.
//! - Root only deletes in them (old revisions, a removed snap), and only by file descriptor:
//!   `HOME` (root's `/home/USER`, which the user cannot replace) is opened by path, every
//!   component below it with `O_NOFOLLOW`, and trees are removed with
//!   `refreshd_copydata::remove_tree_at` — no symlink followed, no path resolved inside, no
//!   mount crossed.
//! - One user's tree never fails anything for others: whatever goes wrong in it is reported
//!   as that user's problem, and the work goes on with everyone else.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use refreshd_runctl::{valid_revision, USER_CURRENT, USER_STATE_DIR};

use crate::layout::Layout;
use crate::supervise::{self, End, Job};

/// A home directory refreshd knows of: the homes below `ROOT/home`, and `ROOT/root`.
#[derive(Debug, Clone)]
pub struct Home {
    pub path: PathBuf,
    /// The owner of the home directory: the user whose data is below it.
    pub uid: u32,
}

/// The homes on this root, sorted. A home that is a symlink (or not a directory) is not
/// listed: its owner cannot be told from it, and refreshd does not follow it.
pub fn homes(layout: &Layout) -> Vec<Home> {
    let root = layout.root();
    let mut paths: Vec<PathBuf> = fs::read_dir(root.join("home"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.push(root.join("root"));
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let md = fs::symlink_metadata(&path).ok()?;
            md.is_dir().then(|| Home {
                uid: md.uid(),
                path,
            })
        })
        .collect()
}

/// Whether `e` means "not there, or not a directory we may enter without following a link".
fn gone(e: Errno) -> bool {
    matches!(e, Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR)
}

const DIR: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NOFOLLOW);

/// `HOME/snap` opened without following a symlink; None when there is none.
fn open_snap_root(home: &Path) -> io::Result<Option<OwnedFd>> {
    // The home directory is in root's /home (or is /root): its owner cannot replace it.
    let home_fd = match nix::fcntl::open(home, DIR, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) if gone(e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match nix::fcntl::openat(&home_fd, "snap", DIR, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if gone(e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn cname(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// A user's `HOME/snap/INSTANCE`, held open: what refreshd does there goes through this.
pub struct UserSnapDir {
    /// For messages only: the directory may have been renamed since it was opened.
    path: PathBuf,
    fd: OwnedFd,
}

impl UserSnapDir {
    /// `HOME/snap/INSTANCE` of `home`; None when there is none (or a component of it is
    /// something else than a directory: then it is not ours to clean).
    pub fn open(home: &Home, instance: &str) -> io::Result<Option<UserSnapDir>> {
        let Some(snap) = open_snap_root(&home.path)? else {
            return Ok(None);
        };
        match nix::fcntl::openat(&snap, instance, DIR, Mode::empty()) {
            Ok(fd) => Ok(Some(UserSnapDir {
                path: home.path.join("snap").join(instance),
                fd,
            })),
            Err(e) if gone(e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every user's `HOME/snap/INSTANCE` that exists; the ones that cannot be opened come as
    /// one-line problems (the user's own doing: never a reason to stop).
    pub fn all(layout: &Layout, instance: &str) -> (Vec<UserSnapDir>, Vec<String>) {
        let (mut dirs, mut problems) = (vec![], vec![]);
        for h in homes(layout) {
            match UserSnapDir::open(&h, instance) {
                Ok(Some(d)) => dirs.push(d),
                Ok(None) => {}
                Err(e) => problems.push(format!(
                    "{}: {e}",
                    h.path.join("snap").join(instance).display()
                )),
            }
        }
        (dirs, problems)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<String> {
        refreshd_copydata::list_dir(self.fd.as_fd())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .collect()
    }

    /// The names in it spelled as revisions (the user's data directories, or whatever the
    /// user put under such a name).
    pub fn revisions(&self) -> Vec<String> {
        self.names()
            .into_iter()
            .filter(|n| valid_revision(n.as_bytes()))
            .collect()
    }

    /// The revision the user last ran: where `current` points, when it names a revision. The
    /// user can point it anywhere; it is only ever used as a name to keep.
    pub fn last_run(&self) -> Option<String> {
        let t = nix::fcntl::readlinkat(&self.fd, USER_CURRENT).ok()?;
        let t = t.to_str()?;
        valid_revision(t.as_bytes()).then(|| t.to_owned())
    }

    /// Removes the user's data directory of `rev` (and the user's record of it) without
    /// following anything: a symlink is unlinked, a directory removed by descriptor; a mount
    /// inside stops it.
    pub fn remove_revision(&self, rev: &str) -> io::Result<()> {
        refreshd_copydata::remove_tree_at(self.fd.as_fd(), &cname(rev)?)?;
        match nix::fcntl::openat(&self.fd, USER_STATE_DIR, DIR, Mode::empty()) {
            Ok(state) => match nix::unistd::unlinkat(
                &state,
                OsStr::new(rev),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) | Err(Errno::EISDIR) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Err(e) if gone(e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the user's data directory of `rev` was made in `epoch` (its mark says so).
    pub fn made_in(&self, rev: &str, epoch: &str) -> bool {
        nix::fcntl::openat(&self.fd, USER_STATE_DIR, DIR, Mode::empty())
            .ok()
            .and_then(|state| nix::fcntl::readlinkat(&state, rev).ok())
            .is_some_and(|t| t.as_encoded_bytes() == epoch.as_bytes())
    }

    /// A change that made `rev` current in `epoch` was undone: the user's directory of `rev`
    /// made in that epoch goes (snapd too drops what was written in an undone revision), with
    /// its mark, and `current` if it names `rev` (the user's next launch points it again).
    /// Returns whether there was one.
    pub fn forget(&self, rev: &str, epoch: &str) -> io::Result<bool> {
        if !self.made_in(rev, epoch) {
            return Ok(false);
        }
        self.remove_revision(rev)?;
        if self.last_run().as_deref() == Some(rev) {
            match nix::unistd::unlinkat(
                &self.fd,
                USER_CURRENT,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Removes what older refreshd versions (which copied users' data as root) may have left
    /// here: root's staging and temporary directories of a copy. Returns what it removed.
    pub fn sweep_root_leftovers(&self) -> Vec<String> {
        let mut removed = vec![];
        // In root's own tree a root-owned temporary is as likely a copy root's launch is making
        // right now (under its data lock, which this does not take); that launch, or the next,
        // removes a stale one itself.
        let owner = nix::sys::stat::fstat(&self.fd).map(|st| st.st_uid);
        if owner.is_ok_and(|uid| uid == 0) {
            return removed;
        }
        for n in self.names() {
            if !(n.ends_with(".refreshd-staging") || n.contains(".refreshd-tmp-")) {
                continue;
            }
            // Only root's own private directories: a user's entry of that name is theirs.
            let ours = nix::sys::stat::fstatat(
                &self.fd,
                n.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|st| st.st_uid == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            if ours
                && cname(&n)
                    .and_then(|c| refreshd_copydata::remove_tree_at(self.fd.as_fd(), &c))
                    .is_ok()
            {
                removed.push(n);
            }
        }
        removed
    }
}

/// Removes every user's whole `HOME/snap/INSTANCE` (the snap is being removed), through
/// `HOME/snap` opened without following symlinks. Returns what could not be removed, one line
/// each: one user's tree never keeps the others' from going.
pub fn remove_all(layout: &Layout, instance: &str) -> Vec<String> {
    let mut problems = vec![];
    for h in homes(layout) {
        let what = h.path.join("snap").join(instance);
        let r = open_snap_root(&h.path).and_then(|snap| match snap {
            Some(fd) => refreshd_copydata::remove_tree_at(fd.as_fd(), &cname(instance)?),
            None => Ok(()),
        });
        if let Err(e) = r {
            problems.push(format!("cannot remove {}: {e}", what.display()));
        }
    }
    problems
}

/// Whether `name` exists in the directory `dir`, whatever it is; looked at without following.
fn has_entry(dir: &OwnedFd, name: &str) -> bool {
    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
}

/// Renames `from` to `to` in `dir`, never over something: the one write root makes in a
/// user's tree, and only of the user's own entry, within one directory (so one filesystem,
/// nothing read or written inside it).
fn rename_in(dir: &OwnedFd, from: &str, to: &str) -> nix::Result<()> {
    nix::fcntl::renameat2(
        dir,
        from,
        dir,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
}

/// Each home with its `HOME/snap` opened (without following); one line in `problems` per
/// home whose `HOME/snap` cannot be opened.
fn snap_roots(layout: &Layout, problems: &mut Vec<String>) -> Vec<(Home, OwnedFd)> {
    let mut out = vec![];
    for h in homes(layout) {
        match open_snap_root(&h.path) {
            Ok(Some(fd)) => out.push((h, fd)),
            Ok(None) => {}
            Err(e) => problems.push(format!(
                "cannot open {}: {e}",
                h.path.join("snap").display()
            )),
        }
    }
    out
}

/// Sets each user's whole `HOME/snap/INSTANCE` aside as snapshot `set`
/// (`HOME/snap/.saved-SET-INSTANCE`, docs/layout.md). Returns the users whose data the set
/// holds (a re-run counts what an earlier run moved) and one line per user whose tree could
/// not be moved: that user's tree stays where it is.
pub fn save_all(layout: &Layout, instance: &str, set: u64) -> (Vec<u32>, Vec<String>) {
    let saved = crate::layout::saved_entry(set, instance);
    let (mut users, mut problems) = (vec![], vec![]);
    for (h, snap) in snap_roots(layout, &mut problems) {
        if has_entry(&snap, &saved) {
            users.push(h.uid);
            continue;
        }
        match rename_in(&snap, instance, &saved) {
            Ok(()) => users.push(h.uid),
            Err(Errno::ENOENT) => {}
            Err(e) => problems.push(format!(
                "cannot save {}: {e}",
                h.path.join("snap").join(instance).display()
            )),
        }
    }
    (users, problems)
}

/// Puts snapshot `set` back as each user's `HOME/snap/INSTANCE`; what a user has there now
/// is set aside first, as snapshot `displaced`. The set's data of revision `rev` becomes the
/// user's data of `cur` (a rename inside the tree put back, when it has none of `cur`; for the
/// set's users, `in_set`, also when an interrupted earlier run put the tree back). Returns
/// the users whose data `displaced` holds, and one line per user whose tree could not be moved
/// (their data stays where it is, under one name or the other). Runs again after an
/// interruption and finishes the work.
pub fn restore_all(
    layout: &Layout,
    instance: &str,
    (set, rev): (u64, &str),
    (displaced, cur): (u64, &str),
    in_set: &[u32],
) -> (Vec<u32>, Vec<String>) {
    let from = crate::layout::saved_entry(set, instance);
    let aside = crate::layout::saved_entry(displaced, instance);
    let (mut users, mut problems) = (vec![], vec![]);
    for (h, snap) in snap_roots(layout, &mut problems) {
        let path = |n: &str| h.path.join("snap").join(n).display().to_string();
        if has_entry(&snap, &from) && !has_entry(&snap, &aside) {
            match rename_in(&snap, instance, &aside) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    problems.push(format!("cannot set {} aside: {e}", path(instance)));
                    continue;
                }
            }
        }
        if has_entry(&snap, &aside) {
            users.push(h.uid);
        }
        match rename_in(&snap, &from, instance) {
            Ok(()) => {}
            // Put back already (an earlier run), or never in the set.
            Err(Errno::ENOENT) if in_set.contains(&h.uid) => {}
            Err(Errno::ENOENT) => continue,
            Err(e) => {
                problems.push(format!(
                    "cannot put {} back as {}: {e}",
                    path(&from),
                    path(instance)
                ));
                continue;
            }
        }
        if rev != cur {
            // A tree the user made a symlink is theirs to sort out: not followed.
            let moved = nix::fcntl::openat(&snap, instance, DIR, Mode::empty()).and_then(|tree| {
                match rename_in(&tree, rev, cur) {
                    Err(Errno::ENOENT | Errno::EEXIST | Errno::ENOTEMPTY) => Ok(()),
                    r => r,
                }
            });
            if let Err(e) = moved {
                problems.push(format!(
                    "cannot rename {}/{rev} to {cur}: {e}",
                    path(instance)
                ));
            }
        }
    }
    (users, problems)
}

/// Deletes every user's part of snapshot `set`, by file descriptor. Returns what could not be
/// deleted, one line each.
pub fn forget_all(layout: &Layout, instance: &str, set: u64) -> Vec<String> {
    let saved = crate::layout::saved_entry(set, instance);
    let mut problems = vec![];
    for h in homes(layout) {
        let r = open_snap_root(&h.path).and_then(|snap| match snap {
            Some(fd) => refreshd_copydata::remove_tree_at(fd.as_fd(), &cname(&saved)?),
            None => Ok(()),
        });
        if let Err(e) = r {
            problems.push(format!(
                "cannot delete {}: {e}",
                h.path.join("snap").join(&saved).display()
            ));
        }
    }
    problems
}

/// Whether `HOME/snap/INSTANCE` exists, whatever it is (a user may have made it a symlink to a
/// directory of theirs: their own copy, as them, may follow it). Looked at without following
/// anything.
fn has_snap_entry(home: &Home, instance: &str) -> bool {
    matches!(open_snap_root(&home.path), Ok(Some(snap)) if nix::sys::stat::fstatat(
        &snap,
        instance,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok())
}

/// The outcome of making one user's data directory ready.
pub struct Prepared {
    pub user: String,
    pub result: Result<String, String>,
}

/// Makes each user's data directory of `instance`'s current revision ready, as that user:
/// runs `confine-hook --prepare-data INSTANCE` (the launcher at `hook`) with the user's uid,
/// gid and groups, in turn, each for at most `budget` (then it is killed; the user's own next
/// launch finishes the work). Users whose `HOME/snap/INSTANCE` does not exist have nothing to
/// carry over. `stop` is asked between users (shutdown).
pub fn prepare_all(
    layout: &Layout,
    hook: &Path,
    instance: &str,
    budget: Duration,
    stop: &dyn Fn() -> bool,
) -> Vec<Prepared> {
    let mut out = vec![];
    for h in homes(layout) {
        if stop() {
            break;
        }
        if !has_snap_entry(&h, instance) {
            continue;
        }
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(h.uid))
            .ok()
            .flatten();
        let name = user
            .as_ref()
            .map_or_else(|| format!("uid {}", h.uid), |u| u.name.clone());
        let result = match user {
            None => Err(format!(
                "{} belongs to uid {}, which has no passwd entry: nothing to run as",
                h.path.display(),
                h.uid
            )),
            Some(u) => prepare_as(&u, hook, instance, budget),
        };
        out.push(Prepared { user: name, result });
    }
    out
}

/// How much of `confine-hook --prepare-data`'s output is read (it says one line).
const MAX_OUTPUT: usize = 4096;

/// Runs `hook --prepare-data INSTANCE` as `user` for at most `budget`; its one line of output.
fn prepare_as(
    user: &nix::unistd::User,
    hook: &Path,
    instance: &str,
    budget: Duration,
) -> Result<String, String> {
    let as_user = supervise::User::login(&user.name, user.uid.as_raw(), user.gid.as_raw())
        .map_err(|e| format!("{e:#}"))?;
    let job = Job::new(hook, budget)
        .arg("--prepare-data")
        .arg(instance)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .user(as_user);
    let (exit, out) = supervise::output(&job, MAX_OUTPUT).map_err(|e| match e {
        supervise::Error::Start(e) => format!("cannot start {}: {e}", hook.display()),
        e => format!("{}: {e}", hook.display()),
    })?;
    let status = match exit.end {
        End::Exited(st) => st,
        End::TimedOut | End::Stopped => {
            return Err(format!(
                "stopped after {} s (the budget per user): the user's next launch finishes it",
                exit.elapsed.as_secs()
            ))
        }
    };
    let line = |b: &[u8]| refreshd_snap::text::one_line(String::from_utf8_lossy(b).trim());
    if status.success() {
        Ok(line(&out.stdout))
    } else {
        let err = line(&out.stderr);
        if err.is_empty() {
            return Err(format!(
                "{} ended without a word ({status})",
                hook.display()
            ));
        }
        Err(err
            .strip_prefix("confine-hook: ")
            .map(str::to_owned)
            .unwrap_or(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(d: &Path, name: &str) -> Home {
        let path = d.join("home").join(name);
        fs::create_dir_all(&path).unwrap();
        Home { path, uid: 0 }
    }

    /// Root's temporaries in a user's tree are what an older refreshd left; in root's own tree
    /// they may be a copy root's launch is making now, and stay.
    #[test]
    fn root_leftovers_are_swept_only_where_root_cannot_be_copying() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to own and chown the scratch trees");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        for (name, owner, swept) in [("user", 4242, true), ("root", 0, false)] {
            let h = home(d.path(), name);
            let data = h.path.join("snap/hello");
            let tmp = data.join(".x2.refreshd-tmp-12-34");
            fs::create_dir_all(tmp.join("half")).unwrap();
            std::os::unix::fs::chown(&data, Some(owner), Some(owner)).unwrap();
            let u = UserSnapDir::open(&h, "hello").unwrap().unwrap();
            let gone = u.sweep_root_leftovers();
            assert_eq!(gone.len(), usize::from(swept), "{name}: {gone:?}");
            assert_eq!(tmp.exists(), !swept, "{name}");
        }
    }

    #[test]
    fn removals_never_follow_what_the_user_planted() {
        let d = tempfile::tempdir().unwrap();
        let h = home(d.path(), "u");
        let outside = d.path().join("outside");
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::write(outside.join("secret"), "keep").unwrap();
        fs::write(outside.join("dir/file"), "keep").unwrap();
        let data = h.path.join("snap/hello");
        fs::create_dir_all(data.join("x1/sub")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), data.join("x1/secret")).unwrap();
        std::os::unix::fs::symlink(outside.join("dir"), data.join("x1/sub/dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("dir"), data.join("x2")).unwrap();
        std::os::unix::fs::symlink("x1", data.join("current")).unwrap();
        fs::create_dir_all(data.join("common")).unwrap();

        let u = UserSnapDir::open(&h, "hello").unwrap().unwrap();
        let mut found = u.revisions();
        found.sort();
        assert_eq!(found, ["x1", "x2"]);
        assert_eq!(u.last_run().as_deref(), Some("x1"));
        u.remove_revision("x1").unwrap();
        u.remove_revision("x2").unwrap();
        u.remove_revision("x9").unwrap();
        assert!(!data.join("x1").exists());
        assert!(fs::symlink_metadata(data.join("x2")).is_err());
        assert!(data.join("common").is_dir());
        assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "keep");
        assert_eq!(
            fs::read_to_string(outside.join("dir/file")).unwrap(),
            "keep"
        );

        // `~/snap` swapped for a symlink to somewhere else: not opened, not removed.
        let elsewhere = d.path().join("elsewhere");
        fs::create_dir_all(elsewhere.join("hello/x1")).unwrap();
        fs::rename(h.path.join("snap"), d.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, h.path.join("snap")).unwrap();
        assert!(UserSnapDir::open(&h, "hello").unwrap().is_none());
        let layout = Layout::new(d.path());
        assert!(remove_all(&layout, "hello").is_empty());
        assert!(elsewhere.join("hello/x1").is_dir());
        // `~/snap/NAME` itself a symlink: unlinked, never followed.
        fs::remove_file(h.path.join("snap")).unwrap();
        fs::create_dir_all(h.path.join("snap")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, h.path.join("snap/hello")).unwrap();
        assert!(remove_all(&layout, "hello").is_empty());
        assert!(fs::symlink_metadata(h.path.join("snap/hello")).is_err());
        assert!(elsewhere.join("hello/x1").is_dir());
    }
}
