//! `v2`: cgroup2. Each snap group's `cgroup.events` says `populated 0` when it empties, and
//! inotify sees it change.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tracing::warn;

use super::backend::{Backend, Events, Notice};
use super::cgroups::Parents;
use super::Kind;

pub struct V2 {
    parents: Parents,
    reason: String,
    /// `UNIFIED/PARENT`.
    parent: PathBuf,
    events: Mutex<Option<inotify::Inotify>>,
    /// Set when inotify is not to be had: waiting refreshes look again at this interval.
    polled: Option<Duration>,
}

/// Watches the cgroup2 parent for groups being made (the watcher adds each group's
/// `cgroup.events`). `parents.v2` must be set.
pub fn setup(parents: Parents, poll_interval: Duration) -> V2 {
    let parent = parents.v2.clone().unwrap_or_default();
    let mut reason = format!("cgroup v2: cgroup.events under {}", parent.display());
    let watch = inotify::Inotify::init().and_then(|ino| {
        ino.watches().add(&parent, inotify::WatchMask::CREATE)?;
        Ok(ino)
    });
    let (events, polled) = match watch {
        Ok(ino) => (Some(ino), None),
        Err(e) => {
            // Out of inotify instances or watches (EMFILE, ENOSPC: the per-user limits, which
            // another process of the same user may have used up): poll rather than refuse to
            // start or sleep until the backstop.
            warn!("cannot watch for apps exiting ({e}); polling every {poll_interval:?} instead");
            reason = format!("{reason}, polled every {poll_interval:?}: inotify unavailable: {e}");
            (None, Some(poll_interval))
        }
    };
    V2 {
        parents,
        reason,
        parent,
        events: Mutex::new(events),
        polled,
    }
}

impl Backend for V2 {
    fn kind(&self) -> Kind {
        Kind::V2
    }

    fn reason(&self) -> &str {
        &self.reason
    }

    fn parents(&self) -> &Parents {
        &self.parents
    }

    fn notice(&self) -> Notice {
        self.polled.map_or(Notice::Events, Notice::Poll)
    }

    fn take_events(&self) -> Option<Events> {
        let inotify = self.events.lock().unwrap().take()?;
        Some(Events::Groups {
            inotify,
            parent: self.parent.clone(),
        })
    }
}
