//! `v1`: the cgroup v1 freezer with refreshd's release agent. The kernel runs the agent when a
//! snap's group empties; the agent unlinks `snap.NAME.running`, and inotify on the runctl
//! directory sees the unlink.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use tracing::warn;

use super::backend::{Backend, Events, Notice};
use super::cgroups::Parents;
use super::markers::Markers;
use super::v1_poll::V1Poll;
use super::{agent, Kind, Options};
use crate::fsutil;
use crate::layout::Layout;

pub struct V1 {
    parents: Parents,
    reason: String,
    events: Mutex<Option<inotify::Inotify>>,
    agent: Registration,
}

/// A release agent this daemon registered (or accepted as another build's): cleared at an
/// orderly shutdown when no other daemon is running (agent::unregister).
pub struct Registration {
    freezer_mount: PathBuf,
    /// This daemon's lock (`run/refreshd/daemon.lock`), which is not another daemon's.
    daemon_lock: PathBuf,
}

impl Registration {
    pub fn unregister(&self) {
        agent::unregister(&self.freezer_mount, &self.daemon_lock);
    }
}

/// Registers the release agent and watches the runctl directory. Without the agent (another
/// program owns `release_agent`), or without inotify, the freezer is polled instead (`v1-poll`).
/// `parents.v1` is the group under `freezer_mount`.
pub fn setup(
    parents: Parents,
    freezer_mount: &Path,
    layout: &Layout,
    markers: &Markers,
    opts: &Options,
) -> anyhow::Result<Box<dyn Backend>> {
    let group = parents.v1.clone().unwrap_or_default();
    let reason = match agent::register(freezer_mount, &opts.release_agent) {
        Ok(agent::Registered::Ours(path)) => format!(
            "cgroup v1 freezer at {} with the release agent {}",
            group.display(),
            path.display()
        ),
        Ok(agent::Registered::Another(path)) => format!(
            "cgroup v1 freezer at {} with the release agent {path} (another build of refreshd's)",
            group.display()
        ),
        Err(why) => {
            warn!("release agent unavailable, polling instead: {why}");
            let reason = format!(
                "cgroup v1 freezer at {}, polled every {:?}: release agent unavailable: {why}",
                group.display(),
                opts.poll_interval
            );
            return Ok(Box::new(V1Poll::new(
                parents,
                reason,
                opts.poll_interval,
                None,
            )));
        }
    };
    let agent = Registration {
        freezer_mount: freezer_mount.to_owned(),
        daemon_lock: layout.daemon_lock(),
    };
    let watch = inotify::Inotify::init().and_then(|ino| {
        ino.watches().add(
            markers.dir(),
            inotify::WatchMask::DELETE | inotify::WatchMask::MOVED_FROM,
        )?;
        Ok(ino)
    });
    let ino = match watch {
        Ok(ino) => ino,
        Err(e) => {
            // Out of inotify instances or watches (EMFILE, ENOSPC: the per-user limits, which
            // another process of the same user may have used up): poll rather than refuse to
            // start or sleep until the backstop. The agent stays ours to clear at shutdown.
            warn!(
                "cannot watch for apps exiting ({e}); polling every {:?} instead",
                opts.poll_interval
            );
            let reason = format!(
                "{reason}, polled every {:?}: inotify unavailable: {e}",
                opts.poll_interval
            );
            return Ok(Box::new(V1Poll::new(
                parents,
                reason,
                opts.poll_interval,
                Some(agent),
            )));
        }
    };
    // Stays registered while the daemon is stopped: an agent still registered for other
    // daemons keeps this one's markers true.
    register_runctl(layout, markers.dir())?;
    Ok(Box::new(V1 {
        parents,
        reason,
        events: Mutex::new(Some(ino)),
        agent,
    }))
}

impl Backend for V1 {
    fn kind(&self) -> Kind {
        Kind::V1
    }

    fn reason(&self) -> &str {
        &self.reason
    }

    fn parents(&self) -> &Parents {
        &self.parents
    }

    fn notice(&self) -> Notice {
        Notice::Events
    }

    fn take_events(&self) -> Option<Events> {
        self.events
            .lock()
            .unwrap()
            .take()
            .map(Events::RunningMarkers)
    }

    fn unregister_agent(&self) {
        self.agent.unregister();
    }
}

/// For a root other than `/`: `AGENT_REGISTRY/ID -> ROOT/run/refreshd/runctl`, so the agent
/// finds this daemon's markers.
fn register_runctl(layout: &Layout, runctl: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let root = layout.root().as_os_str().as_encoded_bytes();
    let Some(id) = refreshd_runctl::instance_id(root) else {
        return Ok(());
    };
    let reg = Path::new(refreshd_runctl::AGENT_REGISTRY);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(reg)
        .with_context(|| format!("cannot create {}", reg.display()))?;
    let entry = reg.join(&*String::from_utf8_lossy(&id));
    fsutil::symlink_atomic(runctl, &entry)
        .with_context(|| format!("cannot register {}", entry.display()))
}
