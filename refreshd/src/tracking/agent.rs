//! The freezer hierarchy's `release_agent`: the one program the kernel runs, as root, whenever a
//! group with `notify_on_release` empties — for every daemon on the machine
//! (docs/runctl-protocol.md, "The release agent").
//!
//! Whatever path is written there is run as root, so:
//! - refreshd registers only an agent that is **safe** ([`check_safe`]): a regular file owned by
//!   root and writable by no one else, on a path whose every directory up to `/` is root's and
//!   writable by no one else, followed as the kernel follows it, symbolic links included. A
//!   sticky world-writable directory such as /tmp does not count: while a name there is missing
//!   (a build tree deleted), anyone may create it;
//! - and **ours**: named [`AGENT_NAME`] and carrying [`AGENT_MARKER`], the agent protocol's
//!   marker compiled into every build. Builds that carry it serve each other's daemons;
//! - a registered value that is ours by name but now missing, unsafe or without the marker (a
//!   deleted or older build: a path someone may plant a binary at) is replaced, and the log
//!   says so. A value naming nothing is replaced. Any other program is someone else's and is
//!   left alone, safe or not (tracking falls back to `v1-poll`, and status says what it is);
//! - at an orderly shutdown the value is cleared if it is ours and no other daemon is running
//!   ([`unregister`]).
//!
//! Reading and writing the value is done under [`AGENT_LOCK`].

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use refreshd_runctl::{AGENT_LOCK, AGENT_MARKER, AGENT_NAME};
use tracing::{info, warn};

use crate::layout::Layout;

/// How many symbolic links a path may go through (the kernel's own limit).
const MAX_LINKS: usize = 40;
/// A file larger than this is not looked into for the marker (the agent is a few KB built for
/// release, a few MB for debug).
const MAX_AGENT_SIZE: u64 = 64 << 20;

/// What a `release_agent` value is, for the decision to register and for `refreshctl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The value, as the kernel holds it ("" when none).
    pub value: String,
    /// The file it names exists (symbolic links followed).
    pub exists: bool,
    /// Named [`AGENT_NAME`].
    pub ours_by_name: bool,
    /// The file carries [`AGENT_MARKER`].
    pub marked: bool,
    /// Why it is not safe to run as root; `None` when it is.
    pub unsafe_because: Option<String>,
}

impl Inspected {
    /// Named like ours and carrying our marker: a build of refreshd's agent.
    pub fn ours(&self) -> bool {
        self.ours_by_name && self.marked
    }
}

/// Looks at what `value` names. Reads the file only to look for the marker, and only a
/// regular file (never a FIFO someone planted), without following a final link twice.
pub fn inspect(value: &str) -> Inspected {
    let path = Path::new(value);
    let resolved = fs::canonicalize(path).ok();
    Inspected {
        value: value.to_owned(),
        exists: resolved.is_some(),
        ours_by_name: path.file_name().is_some_and(|n| n == AGENT_NAME),
        marked: resolved
            .as_deref()
            .is_some_and(|p| carries_marker(p).unwrap_or(false)),
        unsafe_because: if value.is_empty() {
            None
        } else {
            check_safe(path).err()
        },
    }
}

/// Follows `path` the way the kernel does and checks that only root could have put, or could
/// change, what it leads to: every directory on the way (from `/`, and again from `/` or the
/// link's directory for each symbolic link) and the file itself belong to root and are
/// writable by neither group nor others (the mode's group bits are an ACL's mask: a grant
/// through an ACL shows there). Returns the file it leads to.
pub fn check_safe(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let mut todo: VecDeque<OsString> = parts(path);
    let mut at = PathBuf::from("/");
    trusted(
        &at,
        &fs::symlink_metadata(&at).map_err(|e| stat_error(&at, e))?,
    )?;
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&part);
        let md = fs::symlink_metadata(&next).map_err(|e| stat_error(&next, e))?;
        if md.file_type().is_symlink() {
            // The link sits in `at`, already trusted: only root made it.
            links += 1;
            if links > MAX_LINKS {
                return Err(format!(
                    "{} goes through too many symbolic links",
                    path.display()
                ));
            }
            let target = fs::read_link(&next).map_err(|e| stat_error(&next, e))?;
            if target.is_absolute() {
                at = PathBuf::from("/");
            }
            for p in parts(&target).into_iter().rev() {
                todo.push_front(p);
            }
            continue;
        }
        let last = todo.is_empty();
        if last && !md.file_type().is_file() {
            return Err(format!("{} is not a regular file", next.display()));
        }
        if !last && !md.is_dir() {
            return Err(format!("{} is not a directory", next.display()));
        }
        trusted(&next, &md)?;
        at = next;
    }
    Ok(at)
}

/// The normal and `..` parts of a path (`.` and `/` mean nothing here).
fn parts(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn stat_error(p: &Path, e: io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound {
        format!("{} does not exist", p.display())
    } else {
        format!("cannot look at {}: {e}", p.display())
    }
}

/// Root's, and writable by no one else.
fn trusted(p: &Path, md: &fs::Metadata) -> Result<(), String> {
    if md.uid() != 0 {
        return Err(format!(
            "{} belongs to uid {}, not root",
            p.display(),
            md.uid()
        ));
    }
    let mode = md.mode();
    if mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 {
            "everyone"
        } else {
            "its group"
        };
        let sticky = if mode & 0o1000 != 0 {
            " (sticky, but anyone may create a name there that is missing)"
        } else {
            ""
        };
        return Err(format!(
            "{} is writable by {who}{sticky} (mode {:o})",
            p.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Whether the regular file at `path` holds [`AGENT_MARKER`].
fn carries_marker(path: &Path) -> io::Result<bool> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let md = f.metadata()?;
    if !md.is_file() || md.len() > MAX_AGENT_SIZE {
        return Ok(false);
    }
    let mut window: Vec<u8> = Vec::with_capacity(64 * 1024 + AGENT_MARKER.len());
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut chunk)?;
        if n == 0 {
            return Ok(false);
        }
        window.extend_from_slice(&chunk[..n]);
        if window
            .windows(AGENT_MARKER.len())
            .any(|w| w == AGENT_MARKER)
        {
            return Ok(true);
        }
        // Keep what could be the start of a marker cut by the chunk's end.
        let keep = AGENT_MARKER.len() - 1;
        if window.len() > keep {
            window.drain(..window.len() - keep);
        }
    }
}

/// The machine-wide lock around reading and writing `release_agent`.
fn lock() -> Result<Flock<File>, String> {
    let path = Path::new(AGENT_LOCK);
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let f = crate::fsutil::open_lock_file(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // Held for microseconds by each daemon as it starts or stops; only root can open it.
    Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", path.display()))
}

fn read_value(file: &Path) -> Result<String, String> {
    fs::read_to_string(file)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
}

fn write_value(file: &Path, value: &str) -> Result<(), String> {
    // The kernel strips the newline; a file standing in for it in tests reads as a line.
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)
        .and_then(|mut f| f.write_all(format!("{value}\n").as_bytes()))
        .map_err(|e| format!("cannot set {}: {e}", file.display()))
}

/// What registration made of the hierarchy's `release_agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// Our agent is registered (just now, or it already was).
    Ours(PathBuf),
    /// Another safe build of our agent was registered and serves us too.
    Another(String),
}

/// Registers `agent` (the daemon's own, `--release-agent`) on the hierarchy mounted at
/// `freezer_mount`, unless another program owns it. `Err(why)`: the agent cannot be used (the
/// daemon polls instead and says why).
pub fn register(freezer_mount: &Path, agent: &Path) -> Result<Registered, String> {
    let resolved = check_safe(agent).map_err(|why| {
        format!(
            "refusing to register {}: {why}; install it where only root can write, every directory up to / included (make install puts it in /usr/lib/refreshd)",
            agent.display()
        )
    })?;
    if resolved.file_name().is_none_or(|n| n != AGENT_NAME)
        || !carries_marker(&resolved).unwrap_or(false)
    {
        return Err(format!(
            "{} is not refreshd's release agent (it lacks the name {AGENT_NAME} or the agent protocol's marker)",
            resolved.display()
        ));
    }
    let ours = resolved.to_string_lossy().into_owned();
    let file = freezer_mount.join("release_agent");
    let _lock = lock()?;
    let current = read_value(&file)?;
    if current == ours {
        return Ok(Registered::Ours(resolved));
    }
    if current.is_empty() {
        write_value(&file, &ours)?;
        return Ok(Registered::Ours(resolved));
    }
    let seen = inspect(&current);
    let stale = if !seen.exists {
        Some("it names nothing".to_owned())
    } else if seen.ours_by_name && !seen.marked {
        Some("it does not carry the agent protocol's marker (an older build, or not ours)".into())
    } else if seen.ours_by_name {
        seen.unsafe_because.clone()
    } else {
        None
    };
    if let Some(why) = stale {
        // A path that names nothing, or ours by name but unsafe: whoever can create the name
        // (or write the file) would have the kernel run their program as root.
        warn!("replacing the registered release agent {current}: {why}; registering {ours}");
        write_value(&file, &ours)?;
        return Ok(Registered::Ours(resolved));
    }
    if seen.ours() && seen.unsafe_because.is_none() {
        return Ok(Registered::Another(current));
    }
    let unsafe_note = match &seen.unsafe_because {
        Some(why) => {
            warn!("the freezer's release agent {current} is not ours and is unsafe: {why}; left alone");
            format!("; it is unsafe: {why}")
        }
        None => String::new(),
    };
    Err(format!(
        "the hierarchy's release_agent is already {current} (not ours; left alone{unsafe_note})"
    ))
}

/// At an orderly shutdown: clears `release_agent` when it is ours (by name: a build of ours,
/// or a stale path of ours) and no other daemon is running — the daemon of `/`
/// (`/run/refreshd/daemon.lock`) or one registered in the agent registry (its root's
/// `run/refreshd/daemon.lock`), each found holding its lock in `/proc/locks`. `own_lock` is this
/// daemon's. Kept otherwise, and the log says which. Nothing is lost by clearing: the markers
/// the agent removes are hints, and every daemon rebuilds them from the kernel when it starts.
pub fn unregister(freezer_mount: &Path, own_lock: &Path) {
    let file = freezer_mount.join("release_agent");
    let outcome = (|| -> Result<String, String> {
        let _lock = lock()?;
        let current = read_value(&file)?;
        if current.is_empty()
            || Path::new(&current)
                .file_name()
                .is_none_or(|n| n != AGENT_NAME)
        {
            return Ok(String::new());
        }
        let others = other_daemons(own_lock);
        if let Some(first) = others.first() {
            return Ok(format!(
                "release agent {current} kept: {} other daemon(s) use it ({})",
                others.len(),
                first.display()
            ));
        }
        write_value(&file, "")?;
        Ok(format!(
            "release agent {current} unregistered: no other daemon is running"
        ))
    })();
    match outcome {
        Ok(msg) if msg.is_empty() => {}
        Ok(msg) => info!("{msg}"),
        Err(e) => warn!("cannot unregister the release agent: {e}"),
    }
}

/// The lock files of the other daemons that are running: the daemon of `/` and those in the
/// agent registry, whose lock is held (flock) according to `/proc/locks`.
fn other_daemons(own_lock: &Path) -> Vec<PathBuf> {
    let held = flocked();
    let own = fs::metadata(own_lock).ok().map(|m| (m.dev(), m.ino()));
    let mut locks = vec![Layout::new("/").daemon_lock()];
    for entry in fs::read_dir(refreshd_runctl::AGENT_REGISTRY)
        .into_iter()
        .flatten()
        .flatten()
    {
        // ID -> ROOT/run/refreshd/runctl, made by the daemon of ROOT.
        if let Some(root) = fs::read_link(entry.path())
            .ok()
            .and_then(|runctl| root_of_runctl(&runctl))
        {
            locks.push(Layout::new(root).daemon_lock());
        }
    }
    locks
        .into_iter()
        .filter(|l| {
            fs::metadata(l).is_ok_and(|m| {
                Some((m.dev(), m.ino())) != own
                    && held.contains(&(
                        nix::sys::stat::major(m.dev()),
                        nix::sys::stat::minor(m.dev()),
                        m.ino(),
                    ))
            })
        })
        .collect()
}

/// `ROOT` of `ROOT/run/refreshd/runctl`.
fn root_of_runctl(runctl: &Path) -> Option<PathBuf> {
    let mut root = runctl.to_path_buf();
    for want in Path::new(refreshd_runctl::RUNCTL_DIR).components().rev() {
        if root.file_name()? != want.as_os_str() {
            return None;
        }
        root.pop();
    }
    Some(root)
}

/// (major, minor, inode) of every file someone holds a flock(2) on, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0 EOF`; `->` lines are waiters).
fn flocked() -> std::collections::HashSet<(u64, u64, u64)> {
    parse_locks(&crate::procfs::locks())
}

fn parse_locks(text: &str) -> std::collections::HashSet<(u64, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(1) != Some(&"FLOCK") {
                return None;
            }
            let mut id = f.get(5)?.split(':');
            let major = u64::from_str_radix(id.next()?, 16).ok()?;
            let minor = u64::from_str_radix(id.next()?, 16).ok()?;
            let ino = id.next()?.parse().ok()?;
            Some((major, minor, ino))
        })
        .collect()
}

/// What `refreshctl status` says of the release agent, recomputed only when the value or the
/// file it names changes (the marker is looked for in the whole file).
#[derive(Default)]
pub struct Cache {
    last: Mutex<Option<(CacheKey, Inspected)>>,
}

type CacheKey = (String, Option<(u64, u64, u64, i64, i64)>);

impl Cache {
    pub fn inspect(&self, freezer_mount: &Path) -> Result<Inspected, String> {
        let value = read_value(&freezer_mount.join("release_agent"))?;
        let key: CacheKey = (
            value.clone(),
            fs::metadata(&value)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.len(), m.mtime_nsec(), m.ctime_nsec())),
        );
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, seen)) = last.as_ref() {
            if *k == key {
                return Ok(seen.clone());
            }
        }
        let seen = inspect(&value);
        *last = Some((key, seen.clone()));
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn dir(p: &Path, mode: u32) {
        fs::create_dir_all(p).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Needs root (files owned by root, and by others): skipped otherwise.
    #[test]
    fn only_paths_root_alone_controls_are_safe() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // Under /run: root's, 0755 on the way (a scratch under /tmp would be unsafe itself).
        let base = tempfile::Builder::new()
            .prefix("refreshd-agent-test-")
            .tempdir_in("/run")
            .unwrap();
        let b = base.path();
        dir(b, 0o755);
        let file = |p: &Path, mode: u32, marker: bool| {
            let mut body = b"\x7fELF...".to_vec();
            if marker {
                body.extend_from_slice(AGENT_MARKER);
            }
            fs::write(p, body).unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        };
        dir(&b.join("good"), 0o755);
        file(&b.join("good").join(AGENT_NAME), 0o755, true);
        dir(&b.join("open"), 0o1777);
        file(&b.join("open").join(AGENT_NAME), 0o755, true);
        dir(&b.join("group"), 0o775);
        dir(&b.join("user"), 0o755);
        std::os::unix::fs::chown(b.join("user"), Some(65534), None).unwrap();
        file(&b.join("writable"), 0o757, true);
        symlink(b.join("good"), b.join("link")).unwrap();
        symlink(b.join("open"), b.join("badlink")).unwrap();
        dir(&b.join("open/sub"), 0o755);

        let good = b.join("good").join(AGENT_NAME);
        assert_eq!(check_safe(&good), Ok(good.clone()));
        assert_eq!(
            check_safe(&b.join("link").join(AGENT_NAME)),
            Ok(good.clone())
        );
        assert_eq!(
            check_safe(&b.join("open/sub/../../good").join(AGENT_NAME)),
            Err(format!(
                "{} is writable by everyone (sticky, but anyone may create a name there that is missing) (mode 1777)",
                b.join("open").display()
            ))
        );
        let cases: &[(PathBuf, &str)] = &[
            (
                b.join("open").join(AGENT_NAME),
                "writable by everyone (sticky",
            ),
            (b.join("badlink").join(AGENT_NAME), "writable by everyone"),
            (b.join("group/x"), "writable by its group"),
            (b.join("user/x"), "belongs to uid 65534"),
            (b.join("writable"), "writable by everyone (mode 757)"),
            (b.join("good/missing"), "does not exist"),
            (b.join("good"), "not a regular file"),
            (PathBuf::from("relative/agent"), "not an absolute path"),
            (
                PathBuf::from("/tmp/refresh-release-agent"),
                "/tmp is writable by everyone",
            ),
        ];
        for (p, want) in cases {
            let got = check_safe(p).unwrap_err();
            assert!(got.contains(want), "{}: {got}", p.display());
        }

        let seen = inspect(good.to_str().unwrap());
        assert!(
            seen.ours() && seen.exists && seen.unsafe_because.is_none(),
            "{seen:?}"
        );
        let unmarked = b.join("good/unmarked");
        fs::create_dir(&unmarked).unwrap();
        file(&unmarked.join(AGENT_NAME), 0o755, false);
        let seen = inspect(unmarked.join(AGENT_NAME).to_str().unwrap());
        assert!(
            seen.ours_by_name && !seen.marked && !seen.ours(),
            "{seen:?}"
        );
        let seen = inspect("/bin/true");
        assert!(!seen.ours_by_name && seen.exists, "{seen:?}");
    }

    #[test]
    fn flocks_from_proc_locks() {
        let text = "1: FLOCK  ADVISORY  WRITE 10890 fe:00:10010977 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 10891 fe:00:10010977 0 EOF\n\
                    3: POSIX  ADVISORY  WRITE 77 08:01:42 0 EOF\n\
                    4: FLOCK  ADVISORY  READ 12 103:0a:5 0 EOF\n";
        let got = parse_locks(text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.contains(&(0xfe, 0, 10010977)));
        assert!(got.contains(&(0x103, 0x0a, 5)));
        assert_eq!(
            root_of_runctl(Path::new("/tmp/x/root/run/refreshd/runctl")),
            Some(PathBuf::from("/tmp/x/root"))
        );
        assert_eq!(root_of_runctl(Path::new("/tmp/x/runctl")), None);
    }

    #[test]
    fn the_marker_is_found_across_chunks() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("agent");
        let mut body = vec![0u8; 64 * 1024 - 10];
        body.extend_from_slice(AGENT_MARKER);
        body.extend_from_slice(&[0u8; 100]);
        fs::write(&p, &body).unwrap();
        assert!(carries_marker(&p).unwrap());
        fs::write(&p, &body[..body.len() - 120]).unwrap();
        assert!(!carries_marker(&p).unwrap());
    }
}
