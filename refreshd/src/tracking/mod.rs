//! Knowing when a snap's processes are gone, and keeping new ones out (docs/runctl-protocol.md).
//!
//! confine-hook puts every app process in `PARENT/snap.NAME` of each cgroup hierarchy present
//! (v1 freezer, v2) and creates `runctl/snap.NAME.running`. `cgroup.procs` is the truth; the
//! events are only the fast signal that it may have changed. One [`Backend`] is chosen at start:
//! - `v1` ([`v1`]): the freezer's release agent unlinks the running marker when the group
//!   empties, and inotify on runctl sees the unlink;
//! - `v1-poll` ([`v1_poll`]): the freezer without our agent (another one owns the hierarchy):
//!   `cgroup.procs` is re-read every poll interval;
//! - `v2` ([`v2`]): inotify on `cgroup.events` says `populated 0`;
//! - `systemd` ([`scopes`]): systemd is PID 1, so the cgroup2 tree is its own: launches go into
//!   transient scopes of systemd's managers, recorded in `runctl/units`, and each scope's
//!   `cgroup.events` says when it empties;
//! - `environ` ([`environ`]): no cgroup hierarchy usable: apps are found by their environment
//!   in /proc, polled;
//! - `none` ([`none`]): not tracked (`--tracking none`): refreshes do not wait.
//!
//! The runctl files (lock, markers) are the same for all of them ([`markers`]).

pub mod agent;
pub mod backend;
pub mod cgroups;
mod environ;
pub mod markers;
mod none;
pub mod scopes;
mod v1;
mod v1_poll;
mod v2;
mod watch;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use nix::fcntl::Flock;
use refreshd_runctl::Marker;
use tracing::{info, warn};

use crate::layout::Layout;
use backend::{Backend, Events, Notice};
use cgroups::Parents;
use markers::Markers;
pub use watch::spawn_watcher;

/// Which backend to use (`refreshd --tracking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    Auto,
    V1,
    #[value(name = "v1-poll")]
    V1Poll,
    V2,
    /// systemd is PID 1: apps are in transient scopes of its managers (what `auto` picks then).
    Systemd,
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
    Systemd,
    Environ,
    None,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::V1 => "v1",
            Kind::V1Poll => "v1-poll",
            Kind::V2 => "v2",
            Kind::Systemd => "systemd",
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
    /// The backend's kind, fixed at start.
    pub kind: Kind,
    /// Why this backend: shown by `refreshctl status`.
    pub reason: String,
    /// Told when a refresh parks waiting for apps: the backstop timer runs only while one
    /// waits, so a daemon with nothing waiting never wakes by itself.
    pub parked: tokio::sync::Notify,
    backend: Box<dyn Backend>,
    markers: Markers,
    /// Where the v1 freezer hierarchy is mounted, if it is: its `release_agent` is what the
    /// kernel runs, shown by `refreshctl status` whatever the backend.
    freezer_mount: Option<PathBuf>,
    /// Where systemd is PID 1, its cgroup2 mount: the snap's services are in its units there.
    systemd_tree: Option<PathBuf>,
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
        let markers = Markers::new(runctl);
        let mounts = cgroups::Mounts::read().unwrap_or_default();
        // systemd as PID 1 owns the cgroup2 tree: nothing of ours is made there, and launches
        // go into its scopes (the freezer, not systemd's, is still joined where mounted).
        let systemd =
            mounts.unified.is_some() && Path::new(refreshd_runctl::SYSTEMD_BOOTED).is_dir();
        let root = layout.root().as_os_str().as_encoded_bytes();
        let mut buf = [0u8; 26];
        let parent =
            String::from_utf8_lossy(refreshd_runctl::cgroup_parent(root, &mut buf)).into_owned();
        // Parents are made now, so launchers only ever create leaves.
        let mut parents = Parents::default();
        let mut unusable = vec![];
        if let Some(p) = mounts.freezer.as_ref().map(|m| m.join(&parent)) {
            match cgroups::make_v1_parent(&p) {
                Ok(()) => parents.v1 = Some(p),
                Err(e) => unusable.push(format!(
                    "cannot use the freezer hierarchy at {}: {e}",
                    p.display()
                )),
            }
        }
        if let Some(p) = mounts
            .unified
            .as_ref()
            .filter(|_| !systemd)
            .map(|m| m.join(&parent))
        {
            match fs::DirBuilder::new().recursive(true).create(&p) {
                Ok(()) => parents.v2 = Some(p),
                Err(e) => unusable.push(format!(
                    "cannot use the cgroup2 hierarchy at {}: {e}",
                    p.display()
                )),
            }
        }
        for why in &unusable {
            warn!("{why}");
        }
        let every = opts.poll_interval;
        let environ = |parents: Parents, why: &str| -> Box<dyn Backend> {
            // Mounted but not usable (read-only, say): say so, not just "not available".
            let why = if unusable.is_empty() {
                why.to_owned()
            } else {
                format!("{why} ({})", unusable.join("; "))
            };
            Box::new(environ::Environ::new(
                parents,
                format!(
                    "{why}: apps are found by their environment in /proc, polled every {every:?}"
                ),
                layout.snaps_dir(),
                every,
            ))
        };
        const NO_FREEZER: &str = "the cgroup v1 freezer hierarchy is not available";
        let v1 = |parents: Parents| match (&parents.v1, &mounts.freezer) {
            (Some(_), Some(mount)) => v1::setup(parents, mount, layout, &markers, opts),
            _ => Ok(environ(parents, NO_FREEZER)),
        };
        let v2_or_environ = |parents: Parents| -> Box<dyn Backend> {
            if parents.v2.is_some() {
                Box::new(v2::setup(parents, every))
            } else {
                environ(parents, "no usable cgroup2 hierarchy")
            }
        };
        let scopes = |parents: Parents| -> anyhow::Result<Box<dyn Backend>> {
            let dir = markers.dir().join(refreshd_runctl::UNITS_DIR);
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&dir)
                .or_else(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let registry = scopes::Registry {
                dir,
                unified: mounts.unified.clone().unwrap_or_default(),
            };
            // Entries of scopes that ended while no daemon ran.
            registry.prune(None);
            Ok(Box::new(scopes::setup(parents, registry, every)))
        };
        let backend: Box<dyn Backend> = match opts.choice {
            // Launchers join systemd's scopes whatever cgroup backend was asked: read them.
            Choice::Auto | Choice::V1 | Choice::V1Poll | Choice::V2 | Choice::Systemd
                if systemd =>
            {
                scopes(parents)?
            }
            Choice::Systemd => environ(parents, "systemd is not PID 1"),
            Choice::None => Box::new(none::Untracked::new(
                parents,
                "tracking disabled (--tracking none)".to_owned(),
            )),
            Choice::Environ => environ(parents, "--tracking environ"),
            Choice::V2 => v2_or_environ(parents),
            Choice::V1 => v1(parents)?,
            Choice::V1Poll => match &parents.v1 {
                Some(p) => {
                    let why = format!(
                        "cgroup v1 freezer at {}, polled every {every:?} (--tracking v1-poll)",
                        p.display()
                    );
                    Box::new(v1_poll::V1Poll::new(parents, why, every, None))
                }
                None => environ(parents, NO_FREEZER),
            },
            // The design's primary: the freezer with its release agent; cgroup2 without it.
            Choice::Auto if parents.v1.is_some() => v1(parents)?,
            Choice::Auto => v2_or_environ(parents),
        };
        let t = Tracking {
            kind: backend.kind(),
            reason: backend.reason().to_owned(),
            parked: tokio::sync::Notify::new(),
            backend,
            markers,
            freezer_mount: mounts.freezer.clone(),
            systemd_tree: mounts.unified.clone().filter(|_| systemd),
            agent_cache: agent::Cache::default(),
        };
        t.markers.write_backend(t.kind);
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
        self.backend.unregister_agent();
    }

    /// At an orderly shutdown: the snaps' groups no process is in, then this root's parent
    /// groups if that leaves them empty, are removed, so a daemon leaves no cgroup behind (a
    /// launch makes them again).
    pub fn remove_unused_groups(&self) {
        self.backend.remove_unused_groups(&self.markers);
    }

    /// How often a refresh waiting for apps looks again; `None` when an event wakes it (or
    /// nothing is waited for).
    pub fn poll_every(&self) -> Option<Duration> {
        match self.backend.notice() {
            Notice::Poll(every) => Some(every),
            Notice::Events | Notice::Never => None,
        }
    }

    /// The watcher's event source, once.
    fn take_events(&self) -> Option<Events> {
        self.backend.take_events()
    }

    /// The per-snap lock launchers take around their join; `Ok(None)` when it is busy
    /// ([`Markers::try_lock`]).
    pub fn try_lock(&self, name: &str) -> io::Result<Option<Flock<File>>> {
        self.markers.try_lock(name)
    }

    /// The processes of the snap's services, in their units' cgroups
    /// (`system.slice/snap.NAME.APP.service`), where systemd is PID 1; none elsewhere. A
    /// refresh stops and starts them itself: they are not among [`Tracking::procs`].
    pub fn service_procs(&self, name: &str) -> Vec<u32> {
        let Some(tree) = &self.systemd_tree else {
            return vec![];
        };
        let prefix = format!("snap.{name}.");
        let Ok(rd) = fs::read_dir(tree.join("system.slice")) else {
            return vec![];
        };
        let mut all = vec![];
        for e in rd.flatten() {
            let unit = e.file_name();
            let Some(app) = unit
                .to_str()
                .and_then(|u| u.strip_prefix(&prefix))
                .and_then(|u| u.strip_suffix(".service"))
            else {
                continue;
            };
            if !refreshd_runctl::valid_app_name(app.as_bytes()) {
                continue;
            }
            if let Ok(text) = fs::read_to_string(e.path().join("cgroup.procs")) {
                all.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
        all.sort_unstable();
        all
    }

    /// Every process of the snap, from the kernel (union over the hierarchies; with `environ`,
    /// the processes whose environment names the snap).
    pub fn procs(&self, name: &str) -> io::Result<Vec<u32>> {
        self.backend.procs(name)
    }

    pub fn is_inhibited(&self, name: &str) -> bool {
        self.markers.is_inhibited(name)
    }

    /// Writes the inhibition marker (atomically): launches of NAME wait from now on.
    pub fn inhibit(&self, name: &str, change: u64) -> io::Result<()> {
        self.markers.inhibit(name, change)
    }

    /// Removes the inhibition marker: waiting launches go on.
    pub fn lift(&self, name: &str) -> io::Result<()> {
        self.markers.lift(name)
    }

    /// The change that owns NAME's inhibition marker, if there is one.
    pub fn inhibition_owner(&self, name: &str) -> Option<u64> {
        self.markers.inhibition_owner(name)
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

    /// Done before every emptiness check (rule R6): if the last process exits after the
    /// check, the agent's unlink is the event we wait for.
    pub fn arm(&self, name: &str) -> io::Result<()> {
        self.backend.arm(&self.markers, name)
    }

    pub fn disarm(&self, name: &str) -> io::Result<()> {
        self.backend.disarm(&self.markers, name)
    }

    /// Instance names that have a cgroup in some hierarchy.
    pub fn tracked_names(&self) -> Vec<String> {
        self.backend.tracked_names()
    }

    /// Names with a marker of kind `m` in runctl.
    pub fn marked(&self, m: Marker) -> Vec<String> {
        self.markers.marked(m)
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
        self.backend.forget(&self.markers, name);
    }
}
