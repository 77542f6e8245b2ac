//! The event side of tracking: inotify, turned into engine events (`snap-idle:NAME`).

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::backend::Events;
use super::markers::running_marker_name;
use super::scopes::{self, Registry, Unit};
use super::{idle_event, Tracking, BACKSTOP, IDLE_EVENT};
use crate::engine::{failpoint, Engine};

/// Starts the watcher of the chosen backend's events, with its backstop (nothing for a
/// backend that is polled or not tracked).
pub fn spawn_watcher(
    t: Arc<Tracking>,
    engine: Engine,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Made at start with the first watch; none when polled (`Tracking::setup` says why).
    let Some(events) = t.take_events() else {
        return Ok(());
    };
    tokio::spawn(backstop(t.clone(), engine.clone(), shutdown.clone()));
    match events {
        Events::RunningMarkers(ino) => tokio::spawn(watch_v1(t, ino, engine, shutdown)),
        Events::Groups { inotify, parent } => {
            tokio::spawn(watch_v2(t, inotify, parent, engine, shutdown))
        }
        Events::Units { inotify, registry } => {
            tokio::spawn(watch_units(t, inotify, registry, engine, shutdown))
        }
    };
    Ok(())
}

async fn notify(engine: &Engine, name: &str) {
    if let Err(e) = engine.notify_event(&idle_event(name)).await {
        warn!(
            snap = name,
            "cannot wake tasks waiting for the snap's apps: {e}"
        );
    }
}

/// An event the watcher saw. The failpoint `lose-events` drops them, so that tests can show
/// the backstop catches up (it then looks every second).
async fn notify_watched(engine: &Engine, name: &str) {
    if failpoint::fails(LOSE_EVENTS) {
        debug!(snap = name, "failpoint lose-events: dropping the event");
        return;
    }
    notify(engine, name).await;
}

const LOSE_EVENTS: &str = "lose-events";

/// Against events lost outside the protocol (a release agent the kernel could not start, a
/// marker put back by hand): every `BACKSTOP` while a refresh waits for apps, one look at the
/// kernel for the snaps that parked refreshes wait for, waking only those with no process
/// left. One timer however many refreshes wait, none while none waits, and no database write
/// unless a task is woken.
async fn backstop(t: Arc<Tracking>, engine: Engine, shutdown: CancellationToken) {
    let every = if failpoint::fails(LOSE_EVENTS) {
        std::time::Duration::from_secs(1)
    } else {
        BACKSTOP
    };
    // Tasks parked before a restart are re-run at start-up and park again, which tells us.
    let mut waiting = false;
    loop {
        if !waiting {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = t.parked.notified() => {}
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let events = match engine.events_waited_on(IDLE_EVENT).await {
            Ok(v) => v,
            Err(e) => {
                warn!("cannot list the refreshes waiting for apps: {e}");
                waiting = true;
                continue;
            }
        };
        waiting = !events.is_empty();
        for name in events.iter().filter_map(|e| e.strip_prefix(IDLE_EVENT)) {
            if t.procs(name).is_ok_and(|p| p.is_empty()) {
                warn!(
                    snap = name,
                    "no process of the snap is left but no event said so; waking its refresh"
                );
                notify(&engine, name).await;
            }
        }
    }
}

/// After an overflow nothing can be trusted but the kernel: resync and wake every waiter.
async fn overflow(t: &Tracking, engine: &Engine) {
    warn!("inotify queue overflowed; rescanning the cgroups");
    t.rescan();
    for n in t.tracked_names() {
        notify(engine, &n).await;
    }
}

/// v1: the release agent unlinks `snap.NAME.running`; we see the unlink.
async fn watch_v1(t: Arc<Tracking>, ino: Inotify, engine: Engine, shutdown: CancellationToken) {
    let Ok(mut events) = ino.into_event_stream(vec![0u8; 4096]) else {
        warn!("cannot read inotify events; waiting tasks fall back to their timers");
        return;
    };
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.next() => ev,
        };
        let Some(Ok(ev)) = ev else { return };
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            overflow(&t, &engine).await;
            continue;
        }
        if let Some(name) = ev.name.as_deref().and_then(running_marker_name) {
            debug!(snap = name, "running marker removed");
            notify_watched(&engine, name).await;
        }
    }
}

/// v2: `cgroup.events` of each `snap.NAME` group changes to `populated 0` when it empties.
async fn watch_v2(
    t: Arc<Tracking>,
    ino: Inotify,
    parent: PathBuf,
    engine: Engine,
    shutdown: CancellationToken,
) {
    let mut watches = ino.watches();
    let mut by_wd: HashMap<WatchDescriptor, String> = HashMap::new();
    let parent_wd = match watches.add(&parent, WatchMask::CREATE) {
        Ok(wd) => wd,
        Err(e) => {
            warn!("cannot watch {}: {e}", parent.display());
            return;
        }
    };
    let Ok(mut events) = ino.into_event_stream(vec![0u8; 4096]) else {
        return;
    };
    // Groups that exist already (and any made between the scan and the watch: CREATE above
    // was armed first).
    for name in t.tracked_names() {
        add_group(&t, &parent, &mut watches, &mut by_wd, &name, &engine).await;
    }
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.next() => ev,
        };
        let Some(Ok(ev)) = ev else { return };
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            for name in t.tracked_names() {
                add_group(&t, &parent, &mut watches, &mut by_wd, &name, &engine).await;
            }
            overflow(&t, &engine).await;
            continue;
        }
        if ev.wd == parent_wd {
            let name = ev
                .name
                .as_deref()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("snap."))
                .filter(|n| refreshd_runctl::valid_instance_name(n.as_bytes()))
                .map(str::to_owned);
            if let Some(name) = name {
                add_group(&t, &parent, &mut watches, &mut by_wd, &name, &engine).await;
            }
            continue;
        }
        if ev.mask.contains(EventMask::IGNORED) {
            by_wd.remove(&ev.wd);
            continue;
        }
        if let Some(name) = by_wd.get(&ev.wd).cloned() {
            check_group(&t, &parent, &name, &engine).await;
        }
    }
}

async fn add_group(
    t: &Tracking,
    parent: &Path,
    watches: &mut inotify::Watches,
    by_wd: &mut HashMap<WatchDescriptor, String>,
    name: &str,
    engine: &Engine,
) {
    let events = parent.join(format!("snap.{name}")).join("cgroup.events");
    match watches.add(&events, WatchMask::MODIFY) {
        Ok(wd) => {
            by_wd.insert(wd, name.to_owned());
            // It may have emptied before the watch was armed.
            check_group(t, parent, name, engine).await;
        }
        Err(e) => warn!(snap = name, "cannot watch {}: {e}", events.display()),
    }
}

/// Reads `cgroup.events`; when the group is empty, the running marker goes and waiters wake.
async fn check_group(t: &Tracking, parent: &Path, name: &str, engine: &Engine) {
    let events = parent.join(format!("snap.{name}")).join("cgroup.events");
    let populated = std::fs::read_to_string(&events)
        .map(|s| s.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false);
    if !populated {
        if let Err(e) = t.sync_running_marker(name, &[]) {
            warn!(snap = name, "cannot remove the running marker: {e}");
        }
        notify_watched(engine, name).await;
    }
}

/// systemd: a unit recorded in the registry gets a watch on its `cgroup.events` (then a look, as
/// it may have emptied before); a unit that empties, or whose cgroup systemd removed, leaves the
/// registry and wakes its snap's waiters.
async fn watch_units(
    t: Arc<Tracking>,
    ino: Inotify,
    registry: Registry,
    engine: Engine,
    shutdown: CancellationToken,
) {
    let mut watches = ino.watches();
    // The registry's own watch was added at setup, before any entry was read.
    let Ok(mut events) = ino.into_event_stream(vec![0u8; 4096]) else {
        warn!("cannot read inotify events; waiting tasks fall back to their timers");
        return;
    };
    let mut by_wd: HashMap<WatchDescriptor, Unit> = HashMap::new();
    let add_all = |watches: &mut inotify::Watches, by_wd: &mut HashMap<WatchDescriptor, Unit>| {
        let mut emptied = vec![];
        for u in registry.units(None).unwrap_or_default() {
            if let Some(name) = add_unit(watches, by_wd, &registry, u) {
                emptied.push(name);
            }
        }
        emptied
    };
    for name in add_all(&mut watches, &mut by_wd) {
        unit_emptied(&t, &engine, &name).await;
    }
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.next() => ev,
        };
        let Some(Ok(ev)) = ev else { return };
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            add_all(&mut watches, &mut by_wd);
            overflow(&t, &engine).await;
            continue;
        }
        if let Some(name) = ev.name.as_deref() {
            // An entry of the registry (the only directory watched with names).
            let Some(u) = registry.unit(name.as_bytes()) else {
                continue;
            };
            if let Some(name) = add_unit(&mut watches, &mut by_wd, &registry, u) {
                unit_emptied(&t, &engine, &name).await;
            }
            continue;
        }
        let gone = ev.mask.contains(EventMask::IGNORED);
        let Some(u) = (if gone {
            by_wd.remove(&ev.wd)
        } else {
            by_wd.get(&ev.wd).cloned()
        }) else {
            continue;
        };
        if gone || !scopes::populated(&u.cgroup) {
            forget_unit(&mut watches, &mut by_wd, &registry, &ev.wd, &u);
            unit_emptied(&t, &engine, &u.instance).await;
        }
    }
}

/// Watches a unit's `cgroup.events`, then looks: the instance's name when it is already empty
/// (or gone), and its entry removed.
fn add_unit(
    watches: &mut inotify::Watches,
    by_wd: &mut HashMap<WatchDescriptor, Unit>,
    registry: &Registry,
    u: Unit,
) -> Option<String> {
    let events = u.cgroup.join("cgroup.events");
    match watches.add(&events, WatchMask::MODIFY) {
        Ok(wd) => {
            if scopes::populated(&u.cgroup) {
                by_wd.insert(wd, u);
                return None;
            }
            forget_unit(watches, by_wd, registry, &wd, &u);
        }
        // Gone before we looked: systemd removed the scope when it emptied.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_file(registry.dir.join(&u.name));
        }
        Err(e) => {
            warn!(unit = %u.name, "cannot watch {}: {e}", events.display());
            return None;
        }
    }
    Some(u.instance)
}

fn forget_unit(
    watches: &mut inotify::Watches,
    by_wd: &mut HashMap<WatchDescriptor, Unit>,
    registry: &Registry,
    wd: &WatchDescriptor,
    u: &Unit,
) {
    debug!(unit = %u.name, "the scope emptied");
    by_wd.remove(wd);
    // Gone already when systemd removed the cgroup (IN_IGNORED); else it would outlive the unit.
    let _ = watches.remove(wd.clone());
    let _ = std::fs::remove_file(registry.dir.join(&u.name));
}

/// One of the snap's units emptied: the running marker follows the kernel, and waiters look
/// again (other units of the snap may still have processes: the woken check says).
async fn unit_emptied(t: &Tracking, engine: &Engine, name: &str) {
    match t.procs(name) {
        Ok(p) => {
            if let Err(e) = t.sync_running_marker(name, &p) {
                warn!(snap = name, "cannot update the running marker: {e}");
            }
        }
        Err(e) => warn!(snap = name, "cannot read the snap's cgroups: {e}"),
    }
    notify_watched(engine, name).await;
}
