//! `v2`: cgroup2. Each snap group's `cgroup.events` says `populated 0` when it empties, and
//! inotify sees it change.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::backend::{watch_or_poll, Backend, Events, Notice};
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
    let (events, polled) = watch_or_poll(
        &parent,
        inotify::WatchMask::CREATE,
        poll_interval,
        &mut reason,
    );
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
