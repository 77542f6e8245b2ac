//! What differs from one tracking backend to another, behind one trait: where a snap's
//! processes are read from, how the daemon notices the snap going idle, and what the backend
//! registered and must clean up. The runctl files ([`Markers`]) and the protocol built on them
//! (lock, check, inhibit: docs/runctl-protocol.md) are the same for every backend, and stay in
//! `Tracking`.
//!
//! A new backend is a module with a type implementing [`Backend`], and a branch of
//! `Tracking::setup` that picks it (with a `Kind` and a `--tracking` value of its own).

use std::path::PathBuf;
use std::time::Duration;

use super::cgroups::Parents;
use super::markers::Markers;
use super::Kind;

/// How the daemon notices that a snap went idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// An event, seen by the watcher (`Backend::take_events`), wakes the waiting refresh.
    Events,
    /// Nothing says so: a waiting refresh looks again at this interval.
    Poll(Duration),
    /// Never: running apps are not waited for (`none`).
    Never,
}

/// What the watcher listens to, made at start (with its first watch, so that a failure can
/// still choose polling) and taken by the watcher once.
pub enum Events {
    /// v1: the runctl directory, where the release agent unlinks a snap's running marker when
    /// its group empties.
    RunningMarkers(inotify::Inotify),
    /// v2: the cgroup2 parent, for groups being made, and each group's `cgroup.events`, which
    /// says `populated 0` when it empties.
    Groups {
        inotify: inotify::Inotify,
        parent: PathBuf,
    },
    /// systemd: the registry of units launches joined, for units being recorded, and each
    /// unit's `cgroup.events`, which says `populated 0` when it empties.
    Units {
        inotify: inotify::Inotify,
        registry: super::scopes::Registry,
    },
}

/// The first watch of an event-driven backend, on `dir` for `mask`; when inotify cannot be had
/// (EMFILE, ENOSPC: per-user limits another process of the same user may have used up), the
/// backend polls every `poll_interval` instead of refusing to start or sleeping until the
/// backstop, and `reason` says so. Returns the inotify instance, or the interval to poll at.
pub fn watch_or_poll(
    dir: &std::path::Path,
    mask: inotify::WatchMask,
    poll_interval: Duration,
    reason: &mut String,
) -> (Option<inotify::Inotify>, Option<Duration>) {
    let watch = inotify::Inotify::init().and_then(|ino| {
        ino.watches().add(dir, mask)?;
        Ok(ino)
    });
    match watch {
        Ok(ino) => (Some(ino), None),
        Err(e) => {
            tracing::warn!(
                "cannot watch for apps exiting ({e}); polling every {poll_interval:?} instead"
            );
            *reason = format!("{reason}, polled every {poll_interval:?}: inotify unavailable: {e}");
            (None, Some(poll_interval))
        }
    }
}

pub trait Backend: Send + Sync {
    fn kind(&self) -> Kind;

    /// Why this backend, for `refreshctl status`.
    fn reason(&self) -> &str;

    /// The groups launchers put the snap's processes in: every hierarchy present, whichever
    /// backend reads them.
    fn parents(&self) -> &Parents;

    /// Every process of the snap, from the kernel.
    fn procs(&self, name: &str) -> std::io::Result<Vec<u32>> {
        self.parents().procs(name)
    }

    /// The snap's groups.
    fn groups(&self, name: &str) -> Vec<PathBuf> {
        self.parents().groups(name)
    }

    /// Instance names that have a group.
    fn tracked_names(&self) -> Vec<String> {
        self.parents().names()
    }

    fn notice(&self) -> Notice;

    /// The watcher's event source; `None` for a backend that is polled or not watched, and
    /// after the first call.
    fn take_events(&self) -> Option<Events> {
        None
    }

    /// Done before every emptiness check: the running marker is made, so if the last process
    /// exits after the check the release agent's unlink is the event waited for (v1: rule R6).
    /// For the other backends it is a hint for people and for rescans.
    fn arm(&self, markers: &Markers, name: &str) -> std::io::Result<()> {
        markers.set_running(name)
    }

    /// When no process is left.
    fn disarm(&self, markers: &Markers, name: &str) -> std::io::Result<()> {
        markers.clear_running(name)
    }

    /// On remove: the snap's groups (only empty ones go) and its running marker.
    fn forget(&self, markers: &Markers, name: &str) {
        for g in self.groups(name) {
            let _ = std::fs::remove_dir(g);
        }
        let _ = self.disarm(markers, name);
    }

    /// At an orderly shutdown: the snaps' groups no process is in, then the parents if that
    /// leaves them empty. Each snap's groups go under its lock, so that no launch is between
    /// making its group and joining it. What cannot go (a process still in it, a busy lock)
    /// stays, and is said at debug level.
    fn remove_unused_groups(&self, markers: &Markers) {
        for name in self.tracked_names() {
            let Ok(Some(_lock)) = markers.try_lock(&name) else {
                tracing::debug!("the groups of {name} stay: its lock is busy");
                continue;
            };
            if !self.procs(&name).is_ok_and(|p| p.is_empty()) {
                continue;
            }
            for g in self.groups(&name) {
                super::cgroups::remove_group(&g);
            }
        }
        self.parents().remove_parents();
    }

    /// At an orderly shutdown: what the backend registered outside the root (the release
    /// agent) goes, when nobody else needs it.
    fn unregister_agent(&self) {}
}
