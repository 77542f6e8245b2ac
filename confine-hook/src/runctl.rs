//! The runctl directory: the per-snap lock, waiting out an `inhibited` marker, and the
//! `running` marker (docs in `refreshd_runctl`).

use std::ffi::CString;
use std::io::{IsTerminal, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use refreshd_runctl::{marker_name, Marker, MAX_MARKER, RUNCTL_DIR};

use crate::error::{fail, show, Result};
use crate::root::{Dir, Root};
use crate::sys;

/// Largest inhibited marker we read (it holds four short lines).
const MARKER_CAP: u64 = 4096;

/// Opens `ROOT/run/refreshd/runctl`, creating the missing directories (0755, root) as after
/// a reboot before the daemon ran; everything on the way is checked to be root's.
pub fn open_dir(root: &Root) -> Result<Dir> {
    let mut dir = root.dir.ensure(b"run")?;
    for part in RUNCTL_DIR.split('/').skip(1) {
        dir = dir.ensure(part.as_bytes())?;
    }
    Ok(dir)
}

fn marker(name: &[u8], m: Marker) -> CString {
    let mut buf = [0u8; MAX_MARKER];
    // The name was validated by args::parse; marker_name re-checks it.
    let n = marker_name(name, m, &mut buf).expect("instance name validated before use");
    CString::new(n).expect("marker names hold no NUL")
}

/// The per-snap lock, held while the launch joins the cgroups and creates its marker, so the
/// daemon's "no process left" check cannot interleave. Released by dropping (closing) it.
///
/// Launchers hold it shared and the daemon takes it exclusively (rule R1 of
/// docs/runctl-protocol.md): launches never wait for one another, so a user who stops their
/// own launcher while it holds the lock holds back refreshes of the snap (as a running app
/// does), never another user's launches.
pub struct Lock(#[allow(dead_code)] OwnedFd);

pub fn lock(runctl: &Dir, name: &[u8]) -> Result<Lock> {
    let m = marker(name, Marker::Lock);
    let fd = sys::openat(
        Some(runctl.as_fd()),
        &m,
        libc::O_CREAT | libc::O_RDWR | libc::O_NOFOLLOW,
        0o600,
    )
    .map_err(|e| {
        fail!(
            "cannot open the lock {}: {e}",
            show(&runctl.child_path(m.as_bytes()))
        )
    })?;
    sys::flock_shared(fd.as_fd()).map_err(|e| {
        fail!(
            "cannot lock {}: {e}",
            show(&runctl.child_path(m.as_bytes()))
        )
    })?;
    Ok(Lock(fd))
}

/// What an `inhibited` marker says about its writer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inhibition {
    pub reason: Option<String>,
    pub change: Option<String>,
    pub pid: Option<libc::pid_t>,
    pub boot_id: Option<String>,
}

/// Parses the marker's `key=value` lines; unknown keys and malformed lines are ignored.
pub fn parse_inhibition(text: &[u8]) -> Inhibition {
    let mut out = Inhibition::default();
    for line in text.split(|&c| c == b'\n') {
        let line = String::from_utf8_lossy(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "reason" => out.reason = Some(v.to_owned()),
            "change" => out.change = Some(v.to_owned()),
            "pid" => out.pid = v.parse().ok().filter(|&p: &libc::pid_t| p > 0),
            "boot-id" => out.boot_id = Some(v.to_owned()),
            _ => {}
        }
    }
    out
}

impl Inhibition {
    /// Whether the daemon that wrote the marker is gone: its pid does not exist, or it was
    /// written during another boot.
    pub fn writer_gone(&self, current_boot_id: Option<&str>) -> bool {
        if let (Some(theirs), Some(ours)) = (&self.boot_id, current_boot_id) {
            if theirs != ours {
                return true;
            }
        }
        match self.pid {
            Some(pid) => !sys::process_exists(pid),
            None => false,
        }
    }
}

/// Reads the inhibited marker; None when there is none.
fn read_inhibited(runctl: &Dir, name: &[u8]) -> Result<Option<Inhibition>> {
    let m = marker(name, Marker::Inhibited);
    match sys::openat(
        Some(runctl.as_fd()),
        &m,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    ) {
        Ok(fd) => {
            let mut text = Vec::new();
            // A marker we cannot read still inhibits; its content is only for messages.
            let _ = std::fs::File::from(fd)
                .take(MARKER_CAP)
                .read_to_end(&mut text);
            Ok(Some(parse_inhibition(&text)))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        // Anything else there (a symlink, unreadable) is still "the marker exists".
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Ok(Some(Inhibition::default())),
        Err(e) => Err(fail!(
            "cannot read {}: {e}",
            show(&runctl.child_path(m.as_bytes()))
        )),
    }
}

fn exists(runctl: &Dir, m: &CString) -> Result<bool> {
    match sys::lstatat(runctl.as_fd(), m) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(fail!(
            "cannot check {}: {e}",
            show(&runctl.child_path(m.as_bytes()))
        )),
    }
}

/// The inotify instance a waiting launch sleeps on.
///
/// Closing an inotify instance that had watches waits for an SRCU grace period in the kernel
/// (fsnotify destroys marks only after one): 5-20 ms. So each wait removes its watch as soon
/// as it wakes (the kernel then finishes that mark in the background while the launch goes
/// on), and the instance itself stays open until `execve` closes it (`O_CLOEXEC`), by which
/// time there is nothing left to wait for.
///
/// `None`: no inotify to be had (`EMFILE`, `ENFILE`, `ENOMEM`: the user's instances are used
/// up); the launch then looks for the marker every [`POLL`] instead. It still waits: a launch
/// never goes on while the marker exists.
pub struct Waiter(Option<std::fs::File>);

/// How often a launch without inotify looks whether the refresh is over.
const POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Out of inotify instances or watches: a limit, not a fault of the launch.
fn exhausted(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOSPC)
    )
}

impl Waiter {
    /// The instance is charged to the caller (`uid` as the effective uid while it is made),
    /// not to root: waiting launches of any user must not use up root's inotify instances
    /// (`fs.inotify.max_user_instances`), which root's services need.
    fn new(uid: sys::Uid) -> Result<Waiter> {
        let made = sys::with_euid(uid, sys::inotify_init)
            .map_err(|e| fail!("cannot wait for the refresh (switching uid): {e}"))?;
        match made {
            Ok(fd) => Ok(Waiter(Some(std::fs::File::from(fd)))),
            Err(e) if exhausted(&e) => Ok(Waiter(None)),
            Err(e) => Err(fail!("cannot wait for the refresh: {e}")),
        }
    }

    /// Polls until the inhibited marker is gone, when inotify cannot be had.
    fn poll_gone(runctl: &Dir, m: &CString) -> Result<()> {
        while exists(runctl, m)? {
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Blocks (no polling) until the inhibited marker is gone: a watch on runctl, a re-check
    /// after adding it (a removal before the watch existed is not missed), then reads.
    fn wait_gone(&mut self, runctl: &Dir, name: &[u8]) -> Result<()> {
        let m = marker(name, Marker::Inhibited);
        let Some(ino) = &self.0 else {
            return Self::poll_gone(runctl, &m);
        };
        // Watch the directory we hold open, not a path that could be swapped.
        let path =
            CString::new(format!("/proc/self/fd/{}", runctl.as_fd().as_raw_fd())).expect("no NUL");
        let wd = match sys::inotify_add_watch(
            ino.as_fd(),
            &path,
            libc::IN_DELETE
                | libc::IN_MOVED_FROM
                | libc::IN_MOVED_TO
                | libc::IN_CREATE
                | libc::IN_DELETE_SELF
                | libc::IN_MOVE_SELF,
        ) {
            Ok(wd) => wd,
            Err(e) if exhausted(&e) => return Self::poll_gone(runctl, &m),
            Err(e) => {
                return Err(fail!(
                    "cannot watch {} for the end of the refresh: {e}",
                    show(runctl.path())
                ))
            }
        };
        let mut buf = [0u8; 4096];
        let waited = loop {
            match exists(runctl, &m) {
                Ok(false) => break Ok(()),
                Ok(true) => {}
                Err(e) => break Err(e),
            }
            match (&*ino).read(&mut buf) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(fail!("cannot wait for the refresh: {e}")),
            }
        };
        // Best effort: a failure only means the close at exec may take a little longer.
        let _ = sys::inotify_rm_watch(ino.as_fd(), wd);
        waited
    }
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Takes the lock, waiting out any refresh in progress: while `snap.NAME.inhibited` exists the
/// lock is released and the launch blocks until the marker disappears, then tries again.
/// SIGINT and friends keep their default action, so Ctrl-C ends the wait.
///
/// `waiter` receives the inotify instance if the launch had to wait; keep it until `execve`
/// (see [`Waiter`]).
pub fn lock_when_not_inhibited(
    runctl: &Dir,
    name: &[u8],
    uid: sys::Uid,
    waiter: &mut Option<Waiter>,
) -> Result<Lock> {
    let mut announced = false;
    loop {
        let lock = lock(runctl, name)?;
        let Some(inhibition) = read_inhibited(runctl, name)? else {
            return Ok(lock);
        };
        drop(lock);
        if !announced {
            announced = true;
            announce(name, uid, &inhibition);
        }
        let w = match waiter {
            Some(w) => w,
            None => waiter.insert(Waiter::new(uid)?),
        };
        w.wait_gone(runctl, name)?;
    }
}

fn announce(name: &[u8], uid: sys::Uid, inhibition: &Inhibition) {
    let name = show(name);
    let gone = inhibition.writer_gone(boot_id().as_deref());
    if std::io::stderr().is_terminal() {
        let mut msg =
            format!("{name} is being refreshed; it will start when the refresh completes");
        if gone {
            msg.push_str(&format!(
                "\nrefreshd is not running; {name} will start once refreshd is back and has \
                 finished the interrupted refresh"
            ));
        }
        eprintln!("{msg}");
    }
    let change = inhibition.change.as_deref().unwrap_or("?");
    let reason = inhibition.reason.as_deref().unwrap_or("refresh");
    sys::syslog_notice(&format!(
        "launch of {name} by uid {uid} waits for {reason} (change {change}){}",
        if gone {
            "; refreshd is not running"
        } else {
            ""
        }
    ));
}

/// Creates `snap.NAME.running` (it may exist already).
pub fn mark_running(runctl: &Dir, name: &[u8]) -> Result<()> {
    let m = marker(name, Marker::Running);
    sys::openat(
        Some(runctl.as_fd()),
        &m,
        libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW,
        0o644,
    )
    .map_err(|e| {
        fail!(
            "cannot create {}: {e}",
            show(&runctl.child_path(m.as_bytes()))
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inhibition_markers() {
        let i = parse_inhibition(b"reason=refresh\nchange=42\npid=1234\nboot-id=abc\nx=y\nnoise\n");
        assert_eq!(
            i,
            Inhibition {
                reason: Some("refresh".into()),
                change: Some("42".into()),
                pid: Some(1234),
                boot_id: Some("abc".into()),
            }
        );
        assert_eq!(parse_inhibition(b"pid=-3\n").pid, None);
        assert_eq!(parse_inhibition(b"pid=abc").pid, None);
        assert_eq!(parse_inhibition(b"").pid, None);
        assert_eq!(parse_inhibition(b"\xff\xfe").pid, None);
        // Our own process exists; another boot's marker means its writer is gone.
        let me = Inhibition {
            pid: Some(std::process::id() as libc::pid_t),
            boot_id: Some("b1".into()),
            ..Default::default()
        };
        assert!(!me.writer_gone(Some("b1")));
        assert!(me.writer_gone(Some("b2")));
        let nobody = Inhibition {
            pid: Some(libc::pid_t::MAX),
            ..Default::default()
        };
        assert!(nobody.writer_gone(None));
        assert!(!Inhibition::default().writer_gone(None));
    }
}
