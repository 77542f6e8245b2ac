//! Knowing when a snap's processes are gone, and keeping new ones out (docs/runctl-protocol.md).
//!
//! confine-hook puts every app process in `PARENT/snap.NAME` of each cgroup hierarchy present
//! (v1 freezer, v2) and creates `runctl/snap.NAME.running`. `cgroup.procs` is the truth; the
//! events are only the fast signal that it may have changed:
//! - `v1`: the freezer's release agent unlinks the running marker when the group empties, and
//!   inotify on runctl sees the unlink;
//! - `v1-poll`: the freezer without our agent (another one owns the hierarchy): `cgroup.procs`
//!   is re-read every poll interval;
//! - `v2`: inotify on `cgroup.events` says `populated 0`;
//! - `none`: no cgroup hierarchy usable: snaps are untrackable, and status says so.

pub mod agent;
pub mod cgroups;
mod watch;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};
use refreshd_runctl::Marker;
use tracing::{debug, info, warn};

use crate::fsutil;
use crate::layout::Layout;
pub use watch::spawn_watcher;

/// Which backend to use (`refreshd --tracking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    Auto,
    V1,
    #[value(name = "v1-poll")]
    V1Poll,
    V2,
    /// No cgroups: find apps by their environment in /proc (what `auto` falls back to).
    Environ,
    /// Do not track: refreshes go on without waiting for running apps.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    V1,
    V1Poll,
    V2,
    Environ,
    None,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::V1 => "v1",
            Kind::V1Poll => "v1-poll",
            Kind::V2 => "v2",
            Kind::Environ => "environ",
            Kind::None => "none",
        }
    }
}

/// The event a parked wait-for-apps task waits on.
pub fn idle_event(name: &str) -> String {
    format!("{IDLE_EVENT}{name}")
}

/// The prefix of [`idle_event`]s.
pub const IDLE_EVENT: &str = "snap-idle:";

/// How often the event-driven backends look at the kernel for the snaps refreshes wait for,
/// against events lost outside the protocol (docs/runctl-protocol.md): one timer for all of
/// them, not one per waiting refresh.
pub const BACKSTOP: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Tracking {
    pub kind: Kind,
    /// Why this backend: shown by `refreshctl status`.
    pub reason: String,
    /// `FREEZER/PARENT`, when the v1 freezer hierarchy is mounted.
    pub v1: Option<PathBuf>,
    /// `UNIFIED/PARENT`, when a cgroup2 hierarchy is mounted.
    pub v2: Option<PathBuf>,
    pub runctl: PathBuf,
    /// `ROOT/snap`: with no hierarchy (`environ`), a snap's processes are found by the `SNAP`
    /// variable confine-hook gives them, which lies under it.
    snaps: PathBuf,
    pub poll_interval: Duration,
    /// Told when a refresh parks waiting for apps: the backstop timer runs only while one
    /// waits, so a daemon with nothing waiting never wakes by itself.
    pub parked: tokio::sync::Notify,
    /// Waiting refreshes look again every `poll_interval`: `v1-poll`, or no inotify to be had.
    pub polled: bool,
    /// The event backends' inotify instance, made (with its first watch) at start so that a
    /// failure can still choose polling; the watcher takes it.
    pub(crate) inotify: std::sync::Mutex<Option<inotify::Inotify>>,
    /// Where the v1 freezer hierarchy is mounted, if it is: its `release_agent` is what the
    /// kernel runs, shown by `refreshctl status`.
    freezer_mount: Option<PathBuf>,
    /// Set when this daemon registered (or accepted) the release agent: unregistered at an
    /// orderly shutdown when nobody else needs it (agent.rs).
    agent_registered: bool,
    /// This daemon's lock (`run/refreshd/daemon.lock`), which is not another daemon's.
    daemon_lock: PathBuf,
    agent_cache: agent::Cache,
}

pub struct Options {
    pub choice: Choice,
    pub release_agent: PathBuf,
    pub poll_interval: Duration,
}

impl Tracking {
    /// Detects the hierarchies, picks the backend, and sets up what it needs (parents, the
    /// release agent, the agent registry, the runctl directory).
    pub fn setup(layout: &Layout, opts: &Options) -> anyhow::Result<Tracking> {
        let runctl = layout.runctl_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&runctl)
            .with_context(|| format!("cannot create {}", runctl.display()))?;
        let mounts = cgroups::Mounts::read().unwrap_or_default();
        let root = layout.root().as_os_str().as_encoded_bytes();
        let mut buf = [0u8; 26];
        let parent =
            String::from_utf8_lossy(refreshd_runctl::cgroup_parent(root, &mut buf)).into_owned();
        let v1 = mounts.freezer.as_ref().map(|m| m.join(&parent));
        let v2 = mounts.unified.as_ref().map(|m| m.join(&parent));
        let mut t = Tracking {
            kind: Kind::None,
            reason: String::new(),
            v1: None,
            v2: None,
            runctl,
            snaps: layout.snaps_dir(),
            poll_interval: opts.poll_interval,
            parked: tokio::sync::Notify::new(),
            polled: false,
            inotify: std::sync::Mutex::new(None),
            freezer_mount: mounts.freezer.clone(),
            agent_registered: false,
            daemon_lock: layout.daemon_lock(),
            agent_cache: agent::Cache::default(),
        };
        // Parents are made now, so launchers only ever create leaves.
        let mut unusable = vec![];
        if let Some(p) = &v1 {
            match cgroups::make_v1_parent(p) {
                Ok(()) => t.v1 = Some(p.clone()),
                Err(e) => unusable.push(format!(
                    "cannot use the freezer hierarchy at {}: {e}",
                    p.display()
                )),
            }
        }
        if let Some(p) = &v2 {
            match fs::DirBuilder::new().recursive(true).create(p) {
                Ok(()) => t.v2 = Some(p.clone()),
                Err(e) => unusable.push(format!(
                    "cannot use the cgroup2 hierarchy at {}: {e}",
                    p.display()
                )),
            }
        }
        for why in &unusable {
            warn!("{why}");
        }
        let v2_or_none = |t: &Tracking| match &t.v2 {
            Some(p) => (
                Kind::V2,
                format!("cgroup v2: cgroup.events under {}", p.display()),
            ),
            None => (Kind::Environ, "no usable cgroup2 hierarchy".to_owned()),
        };
        let v1_agent = |t: &Tracking| {
            match (&t.v1, &mounts.freezer) {
            (Some(p), Some(mount)) => match agent::register(mount, &opts.release_agent) {
                Ok(agent::Registered::Ours(path)) => (
                    Kind::V1,
                    format!(
                        "cgroup v1 freezer at {} with the release agent {}",
                        p.display(),
                        path.display()
                    ),
                    true,
                ),
                Ok(agent::Registered::Another(path)) => (
                    Kind::V1,
                    format!(
                        "cgroup v1 freezer at {} with the release agent {path} (another build of refreshd's)",
                        p.display()
                    ),
                    true,
                ),
                Err(why) => {
                    warn!("release agent unavailable, polling instead: {why}");
                    (
                        Kind::V1Poll,
                        format!(
                            "cgroup v1 freezer at {}, polled every {:?}: release agent unavailable: {why}",
                            p.display(),
                            opts.poll_interval
                        ),
                        false,
                    )
                }
            },
            _ => (
                Kind::Environ,
                "the cgroup v1 freezer hierarchy is not available".to_owned(),
                false,
            ),
        }
        };
        let with_no_agent = |(k, r): (Kind, String)| (k, r, false);
        let (kind, reason, registered) = match opts.choice {
            Choice::None => {
                with_no_agent((Kind::None, "tracking disabled (--tracking none)".to_owned()))
            }
            Choice::Environ => with_no_agent((Kind::Environ, "--tracking environ".to_owned())),
            Choice::V2 => with_no_agent(v2_or_none(&t)),
            Choice::V1 => v1_agent(&t),
            Choice::V1Poll => with_no_agent(match &t.v1 {
                Some(p) => (
                    Kind::V1Poll,
                    format!(
                        "cgroup v1 freezer at {}, polled every {:?} (--tracking v1-poll)",
                        p.display(),
                        opts.poll_interval
                    ),
                ),
                None => (
                    Kind::Environ,
                    "the cgroup v1 freezer hierarchy is not available".to_owned(),
                ),
            }),
            // The design's primary: the freezer with its release agent; cgroup2 without it.
            Choice::Auto if t.v1.is_some() => v1_agent(&t),
            Choice::Auto => with_no_agent(v2_or_none(&t)),
        };
        t.kind = kind;
        t.reason = reason;
        t.agent_registered = registered;
        if t.kind == Kind::Environ && !unusable.is_empty() {
            // Mounted but not usable (read-only, say): say so, not just "not available".
            t.reason = format!("{} ({})", t.reason, unusable.join("; "));
        }
        // `environ` finds processes by their environment in /proc, which has no events.
        t.polled = matches!(t.kind, Kind::V1Poll | Kind::Environ);
        if t.kind == Kind::Environ {
            t.reason = format!(
                "{}: apps are found by their environment in /proc, polled every {:?}",
                t.reason, opts.poll_interval
            );
        }
        if matches!(t.kind, Kind::V1 | Kind::V2) {
            // Out of inotify instances or watches (EMFILE, ENOSPC: the per-user limits, which
            // another process of the same user may have used up): poll rather than refuse to
            // start or sleep until the backstop.
            match t.watch() {
                Ok(ino) => *t.inotify.lock().unwrap() = Some(ino),
                Err(e) => {
                    warn!(
                        "cannot watch for apps exiting ({e}); polling every {:?} instead",
                        opts.poll_interval
                    );
                    if t.kind == Kind::V1 {
                        t.kind = Kind::V1Poll;
                    }
                    t.polled = true;
                    t.reason = format!(
                        "{}, polled every {:?}: inotify unavailable: {e}",
                        t.reason, opts.poll_interval
                    );
                }
            }
        }
        if t.kind == Kind::V1 {
            // Stays registered while the daemon is stopped: an agent still registered for
            // other daemons keeps this one's markers true.
            register_runctl(layout, &t.runctl)?;
        }
        // For people and tests only: a full run directory (which a user may be able to fill
        // where /run/lock is part of it) must not keep the daemon from starting.
        let file = t.runctl.join(refreshd_runctl::TRACKING_FILE);
        if let Err(e) =
            fsutil::write_atomic(&file, format!("{}\n", t.kind.as_str()).as_bytes(), 0o644)
        {
            warn!("cannot write {}: {e}", file.display());
        }
        info!(backend = t.kind.as_str(), "tracking apps: {}", t.reason);
        Ok(t)
    }

    /// What the kernel runs when a group of the freezer hierarchy empties (its
    /// `release_agent`), for `refreshctl status`; `None` without a freezer hierarchy.
    pub fn release_agent(&self) -> Option<Result<agent::Inspected, String>> {
        let mount = self.freezer_mount.as_ref()?;
        Some(self.agent_cache.inspect(mount))
    }

    /// At an orderly shutdown: the release agent this daemon registered or used is cleared
    /// when no other daemon is running (agent::unregister).
    pub fn unregister_agent(&self) {
        if let (true, Some(mount)) = (self.agent_registered, &self.freezer_mount) {
            agent::unregister(mount, &self.daemon_lock);
        }
    }

    /// At an orderly shutdown: the snaps' groups no process is in, then this root's parent
    /// groups if that leaves them empty, are removed, so a daemon leaves no cgroup behind (a
    /// launch makes them again). Each snap's groups go under its lock, so that no launch is
    /// between making its group and joining it. What cannot go (a process still in it, a busy
    /// lock) stays, and is said at debug level.
    pub fn remove_unused_groups(&self) {
        let parents: Vec<&PathBuf> = [&self.v1, &self.v2].into_iter().flatten().collect();
        let mut names: Vec<String> = parents
            .iter()
            .filter_map(|p| fs::read_dir(p).ok())
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("snap.")
                    .map(str::to_owned)
            })
            .filter(|n| refreshd_runctl::valid_instance_name(n.as_bytes()))
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let Ok(Some(_lock)) = self.try_lock(&name) else {
                debug!("the groups of {name} stay: its lock is busy");
                continue;
            };
            if !self.procs(&name).is_ok_and(|p| p.is_empty()) {
                continue;
            }
            for g in self.groups(&name) {
                if let Err(e) = fs::remove_dir(&g) {
                    if e.kind() != io::ErrorKind::NotFound {
                        debug!(group = %g.display(), "group stays: {e}");
                    }
                }
            }
        }
        for p in parents {
            if let Err(e) = fs::remove_dir(p) {
                if e.kind() != io::ErrorKind::NotFound {
                    debug!(group = %p.display(), "group stays: {e}");
                }
            }
        }
    }

    /// The inotify instance and the backend's first watch: `runctl` for v1, the cgroup2
    /// parent for v2 (the watcher adds the groups' `cgroup.events`).
    fn watch(&self) -> io::Result<inotify::Inotify> {
        let ino = inotify::Inotify::init()?;
        match (self.kind, &self.v2) {
            (Kind::V1, _) => ino.watches().add(
                &self.runctl,
                inotify::WatchMask::DELETE | inotify::WatchMask::MOVED_FROM,
            )?,
            (_, Some(parent)) => ino.watches().add(parent, inotify::WatchMask::CREATE)?,
            _ => return Ok(ino),
        };
        Ok(ino)
    }

    fn marker(&self, name: &str, m: Marker) -> PathBuf {
        let mut buf = [0u8; refreshd_runctl::MAX_MARKER];
        let n = refreshd_runctl::marker_name(name.as_bytes(), m, &mut buf)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| format!("snap.{name}.invalid"));
        self.runctl.join(n)
    }

    /// The snap's cgroups in every hierarchy present.
    fn groups(&self, name: &str) -> Vec<PathBuf> {
        [&self.v1, &self.v2]
            .into_iter()
            .flatten()
            .map(|p| p.join(format!("snap.{name}")))
            .collect()
    }

    /// The per-snap lock launchers take around their join. Never waits: a launcher holds it for
    /// microseconds, unless its user stopped it (SIGSTOP); then the caller retries later rather
    /// than hang. `Ok(None)` when it is busy.
    pub fn try_lock(&self, name: &str) -> io::Result<Option<Flock<File>>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.marker(name, Marker::Lock))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e.into()),
        }
    }

    /// Every process of the snap, from the kernel (union over the hierarchies; with `environ`,
    /// the processes whose environment names the snap).
    pub fn procs(&self, name: &str) -> io::Result<Vec<u32>> {
        if self.kind == Kind::Environ {
            return procs_by_environment(&self.snaps.join(name));
        }
        let mut all = vec![];
        for g in self.groups(name) {
            match fs::read_to_string(g.join("cgroup.procs")) {
                Ok(s) => all.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    pub fn is_inhibited(&self, name: &str) -> bool {
        self.marker(name, Marker::Inhibited).exists()
    }

    /// Writes the inhibition marker (atomically): launches of NAME wait from now on.
    pub fn inhibit(&self, name: &str, change: u64) -> io::Result<()> {
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let body = format!(
            "reason=refresh\nchange={change}\npid={}\nboot-id={}\n",
            std::process::id(),
            boot.trim()
        );
        let path = self.marker(name, Marker::Inhibited);
        fsutil::write_atomic(&path, body.as_bytes(), 0o644).map_err(|e| {
            // Said in full: it ends the refresh before its critical section, and the caller
            // should know where space is missing.
            io::Error::new(
                e.kind(),
                format!(
                    "cannot write the inhibition marker {}: {e}; launches could not be held back, so the refresh stops before its critical section: free space there and refresh again",
                    path.display()
                ),
            )
        })
    }

    /// Removes the inhibition marker: waiting launches go on.
    pub fn lift(&self, name: &str) -> io::Result<()> {
        fsutil::remove_file_if_exists(&self.marker(name, Marker::Inhibited))
    }

    /// The change that owns NAME's inhibition marker, if there is one.
    pub fn inhibition_owner(&self, name: &str) -> Option<u64> {
        let s = fs::read_to_string(self.marker(name, Marker::Inhibited)).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("change="))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Makes the running marker agree with the kernel: present while processes exist (so the
    /// release agent has something to remove and we an event to see), absent otherwise.
    pub fn sync_running_marker(&self, name: &str, procs: &[u32]) -> io::Result<()> {
        if procs.is_empty() {
            self.disarm(name)
        } else {
            self.arm(name)
        }
    }

    /// Creates the running marker if it is missing. Done before every emptiness check (rule R6):
    /// if the last process exits after the check, the agent's unlink is the event we wait for.
    pub fn arm(&self, name: &str) -> io::Result<()> {
        let m = self.marker(name, Marker::Running);
        if m.exists() {
            return Ok(());
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&m)
            .map(drop)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create {}: {e}; free space there and try again",
                        m.display()
                    ),
                )
            })
    }

    pub fn disarm(&self, name: &str) -> io::Result<()> {
        fsutil::remove_file_if_exists(&self.marker(name, Marker::Running))
    }

    /// Instance names that have a cgroup in some hierarchy.
    pub fn tracked_names(&self) -> Vec<String> {
        let mut names = vec![];
        for p in [&self.v1, &self.v2].into_iter().flatten() {
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                if let Some(n) = e.file_name().to_str().and_then(|n| n.strip_prefix("snap.")) {
                    if refreshd_runctl::valid_instance_name(n.as_bytes()) {
                        names.push(n.to_owned());
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// Names with a marker of kind `m` in runctl.
    pub fn marked(&self, m: Marker) -> Vec<String> {
        let suffix = match m {
            Marker::Running => ".running",
            Marker::Inhibited => ".inhibited",
            Marker::Lock => ".lock",
        };
        fs::read_dir(&self.runctl)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let name = n.strip_prefix("snap.")?.strip_suffix(suffix)?.to_owned();
                refreshd_runctl::valid_instance_name(name.as_bytes()).then_some(name)
            })
            .collect()
    }

    /// After a start or an inotify overflow: the picture comes from the kernel, not memory.
    pub fn rescan(&self) {
        let mut names = self.tracked_names();
        names.extend(self.marked(Marker::Running));
        names.sort();
        names.dedup();
        for n in names {
            match self.procs(&n) {
                Ok(p) => {
                    if let Err(e) = self.sync_running_marker(&n, &p) {
                        warn!(snap = %n, "cannot update the running marker: {e}");
                    }
                }
                Err(e) => warn!(snap = %n, "cannot read cgroup.procs: {e}"),
            }
        }
    }

    /// Removes the snap's cgroups (only empty ones go) and its running marker, on remove. The
    /// lock file stays (rule R8): unlinking it could leave two holders on two inodes.
    pub fn forget(&self, name: &str) {
        for g in self.groups(name) {
            let _ = fs::remove_dir(g);
        }
        let _ = self.disarm(name);
    }
}

/// Without a cgroup hierarchy: the processes whose environment carries `SNAP=SNAP_DIR/REV`,
/// which confine-hook gives every app and children inherit. Best effort: a process that
/// clears its environment, or a launch between its check of the inhibition and its `execve`,
/// is not seen (docs/runctl-protocol.md, `none`). Processes that vanish mid-scan are skipped.
fn procs_by_environment(snap_dir: &Path) -> io::Result<Vec<u32>> {
    let mut want = b"SNAP=".to_vec();
    want.extend_from_slice(snap_dir.as_os_str().as_encoded_bytes());
    want.push(b'/');
    let mut found = vec![];
    for entry in fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|var| var.starts_with(&want)) {
            found.push(pid);
        }
    }
    Ok(found)
}

/// For a root other than `/`: `AGENT_REGISTRY/ID -> ROOT/run/refreshd/runctl`, so the agent
/// finds this daemon's markers.
fn register_runctl(layout: &Layout, runctl: &Path) -> anyhow::Result<()> {
    let root = layout.root().as_os_str().as_encoded_bytes();
    let Some(id) = refreshd_runctl::instance_id(root) else {
        return Ok(());
    };
    let reg = Path::new(refreshd_runctl::AGENT_REGISTRY);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(reg)
        .with_context(|| format!("cannot create {}", reg.display()))?;
    let entry = reg.join(String::from_utf8_lossy(&id).as_ref());
    fsutil::symlink_atomic(runctl, &entry)
        .with_context(|| format!("cannot register {}", entry.display()))
}
