//! Living under systemd: socket activation, readiness and status (`sd_notify`), the watchdog,
//! and logging to the journal. Everything here is a no-op when refreshd runs without systemd.
//!
//! Socket activation is what lets refreshd restart without its clients falling off: systemd
//! owns the listening socket (refreshd.socket), so while the daemon restarts, connections wait
//! in the socket's backlog instead of being refused, and the next daemon accepts them.

use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use refreshd_state::Select;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::engine::Engine;

/// The listening socket systemd passed (`LISTEN_FDS`), if it passed one. Must run before any
/// thread starts: it unsets the `LISTEN_*` variables so children do not inherit them.
pub fn take_listener() -> anyhow::Result<Option<StdUnixListener>> {
    let mut fds = crate::supervise::sys::listen_fds()
        .context("cannot read the sockets systemd passed (LISTEN_FDS)")?;
    match fds.len() {
        0 => Ok(None),
        1 => {
            let fd = fds.remove(0);
            let kind = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)
                .context("the socket systemd passed is not a socket")?;
            let listening =
                nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn)
                    .unwrap_or(false);
            if kind != nix::sys::socket::SockType::Stream || !listening {
                bail!(
                    "the socket systemd passed is not a listening stream socket: set ListenStream= (and Accept=no) in refreshd.socket"
                );
            }
            let l = StdUnixListener::from(fd);
            l.set_nonblocking(true)?;
            Ok(Some(l))
        }
        more => bail!(
            "systemd passed {more} sockets; refreshd listens on one: give refreshd.socket a single ListenStream="
        ),
    }
}

/// Checks that an inherited socket is the one clients of this root look for.
pub fn check_listener(l: &StdUnixListener, expected: &Path) -> anyhow::Result<()> {
    let addr = l
        .local_addr()
        .context("cannot read the passed socket's address")?;
    match addr.as_pathname() {
        Some(p) if p == expected => Ok(()),
        Some(p) => bail!(
            "refreshd.socket listens on {} but clients of this root connect to {}: make ListenStream= and --root agree",
            p.display(),
            expected.display()
        ),
        None => bail!(
            "the socket systemd passed has no path; clients connect to {}: set ListenStream={}",
            expected.display(),
            expected.display()
        ),
    }
}

fn notify(state: &[NotifyState]) {
    // Without NOTIFY_SOCKET this does nothing; a failure to reach systemd is not the
    // daemon's to fix, and must not stop it.
    if let Err(e) = sd_notify::notify(false, state) {
        debug!("cannot notify systemd: {e}");
    }
}

/// READY=1 with a first status line: the API answers from now on.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STOPPING=1: the daemon is shutting down, on purpose.
pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The one-line status `systemctl status refreshd` shows.
async fn status_line(engine: &Engine) -> anyhow::Result<String> {
    let changes = engine
        .db()
        .call(|s| s.changes(Select::InProgress, None))
        .await?;
    let waiting = engine
        .events_waited_on(crate::tracking::IDLE_EVENT)
        .await
        .map(|e| e.len())
        .unwrap_or(0);
    Ok(match (changes.len(), waiting) {
        (0, _) => "idle: no change in progress".to_owned(),
        (n, 0) => format!("{n} change{} in progress", if n == 1 { "" } else { "s" }),
        (n, w) => format!(
            "{n} change{} in progress, {w} waiting for apps to close",
            if n == 1 { "" } else { "s" }
        ),
    })
}

/// Keeps STATUS= current: recomputed after changes move (at most once a second), never on a
/// timer of its own, so an idle daemon is not woken for it.
pub fn spawn_status(engine: Engine, shutdown: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut rx = engine.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return },
            }
            // Let a burst of updates settle, then report once.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            while rx.try_recv().is_ok() {}
            if let Ok(s) = status_line(&engine).await {
                notify(&[NotifyState::Status(&s)]);
            }
        }
    });
}

/// With `WatchdogSec=`, pings systemd at half the interval, but only after the state database
/// answered: a daemon whose database is stuck gets restarted instead of serving errors.
pub fn spawn_watchdog(engine: Engine, shutdown: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match tokio::time::timeout(every, status_line(&engine)).await {
                Ok(Ok(s)) => notify(&[NotifyState::Watchdog, NotifyState::Status(&s)]),
                Ok(Err(e)) => warn!("watchdog: the state database does not answer: {e:#}"),
                Err(_) => warn!(
                    "watchdog: the state database took longer than {}s to answer",
                    every.as_secs()
                ),
            }
        }
    });
}

/// Whether stderr is the journal's stream (`JOURNAL_STREAM` names its device and inode), as
/// under a systemd unit with the default StandardError=.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.st_dev) && ino.parse::<u64>().ok() == Some(meta.st_ino)
}
