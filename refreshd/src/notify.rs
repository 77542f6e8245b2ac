//! Desktop notifications: who is logged in with a session bus, and how a notice reaches them
//! (docs/notifications.md).
//!
//! A user's runtime directory and session bus are the user's own, so refreshd (root) never
//! connects to them: it runs `refreshd-notify` as the user (their uid, gid and groups, a clean
//! environment), bounded in time, on a thread of its own, so that a notice never holds up or
//! fails a refresh. What was said to whom is recorded by the tasks (`tasks::notices`).

use std::collections::HashSet;
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures_util::StreamExt as _;
use inotify::{EventMask, Inotify, WatchMask};
use refreshd_snap::text::one_line;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::engine::Engine;
use crate::layout::Layout;
use crate::supervise::{self, End, Job};
use crate::tracking::IDLE_EVENT;

/// `refreshd --notify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Nothing is sent.
    None,
    /// Logged-in users are told on their session bus (org.freedesktop.Notifications).
    Session,
}

/// How long refreshd-notify may run before it is killed (it gives up by itself after
/// [`HELPER_BUS_TIMEOUT`]).
const HELPER_LIMIT: Duration = Duration::from_secs(10);
/// What refreshd-notify is told to wait for the bus and the server, in seconds.
const HELPER_BUS_TIMEOUT: u64 = 5;
/// How much of the helper's output is read.
const MAX_OUTPUT: usize = 4096;

/// How notices are sent (`refreshd --notify`, `--notify-reminder`, `--notify-helper`).
#[derive(Debug)]
pub struct Notifier {
    pub mode: Mode,
    /// Remind a user of a refresh still waiting at most this often; never when `None`.
    pub reminder: Option<Duration>,
    /// The `refreshd-notify` binary.
    pub helper: PathBuf,
    layout: Layout,
    /// Changes whose "already told" line this daemon run has logged (once per run).
    noted: Mutex<HashSet<u64>>,
}

/// A logged-in desktop user: a session bus socket at `run/user/UID/bus` that is theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub bus: PathBuf,
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (uid {})", self.user, self.uid)
    }
}

/// How a server should present a notice (the `urgency` hint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    Low,
    Normal,
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub summary: String,
    pub body: String,
    pub urgency: Urgency,
}

impl Notifier {
    pub fn new(
        layout: &Layout,
        mode: Mode,
        reminder: Option<Duration>,
        helper: PathBuf,
    ) -> Notifier {
        Notifier {
            mode,
            reminder,
            helper,
            layout: layout.clone(),
            noted: Mutex::new(HashSet::new()),
        }
    }

    /// From `refreshd --notify`, `--notify-reminder`, `--notify-helper`; says what it will do.
    pub fn from_options(
        layout: &Layout,
        mode: Mode,
        reminder: Option<Duration>,
        helper: Option<PathBuf>,
    ) -> anyhow::Result<Notifier> {
        if reminder.is_some_and(|d| d.is_zero()) {
            bail!("--notify-reminder 0s would remind at every look; give an interval like 1d, or leave it out");
        }
        let helper = match helper {
            Some(p) => p,
            None => default_helper()?,
        };
        let n = Notifier::new(layout, mode, reminder, helper);
        info!("notifications: {}", n.describe());
        if n.enabled() && !n.helper.is_file() {
            warn!(
                "{} is missing: users cannot be notified of refreshes (install it, pass --notify-helper, or --notify none)",
                n.helper.display()
            );
        }
        Ok(n)
    }

    /// A notifier that sends nothing.
    pub fn off(layout: &Layout) -> Notifier {
        Notifier::new(layout, Mode::None, None, PathBuf::new())
    }

    pub fn enabled(&self) -> bool {
        self.mode == Mode::Session
    }

    /// What `refreshd` says about notifications at start-up.
    pub fn describe(&self) -> String {
        match self.mode {
            Mode::None => "off (--notify none)".to_owned(),
            Mode::Session => {
                let reminder = match self.reminder {
                    Some(d) => format!("a reminder at most every {}", human(d)),
                    None => "no reminders".to_owned(),
                };
                format!(
                    "users' session buses, through {} ({reminder})",
                    self.helper.display()
                )
            }
        }
    }

    /// True the first time it is asked about `change` in this daemon run.
    pub fn first_look(&self, change: u64) -> bool {
        self.noted.lock().unwrap().insert(change)
    }

    /// Every logged-in desktop user, by uid.
    pub fn sessions(&self) -> Vec<Session> {
        sessions(&self.layout)
    }

    /// Sends `notice` to each of `to`, each on a thread of its own; returns at once. Outcomes
    /// go to the daemon's log with the uid.
    pub fn post(self: &Arc<Self>, to: Vec<Session>, notice: Notice, snap: &str) {
        for s in to {
            let me = self.clone();
            let notice = notice.clone();
            let name = snap.to_owned();
            let spawned = std::thread::Builder::new()
                .name("refreshd-notify".into())
                .spawn(move || match me.send(&s, &notice) {
                    Ok(id) => info!(
                        snap = name,
                        uid = s.uid,
                        "told {s}: {} (notification {id})",
                        notice.summary
                    ),
                    Err(e) => info!(snap = name, uid = s.uid, "cannot notify {s}: {e:#}"),
                });
            if let Err(e) = spawned {
                warn!(snap, "cannot start a thread to send a notification: {e}");
            }
        }
    }

    /// Runs refreshd-notify as the session's user and returns the server's notification id.
    /// Blocks for at most [`HELPER_LIMIT`] (plus the reaping of a killed helper).
    pub fn send(&self, s: &Session, n: &Notice) -> anyhow::Result<u32> {
        let job = self.job(s, n)?;
        let (exit, out) = supervise::output(&job, MAX_OUTPUT).map_err(|e| match e {
            supervise::Error::Start(e) => anyhow!("cannot start {}: {e}", self.helper.display()),
            e => anyhow!("{}: {e}", self.helper.display()),
        })?;
        let status = match exit.end {
            End::Exited(st) => st,
            End::TimedOut | End::Stopped => bail!(
                "no answer within {} s (the session bus or its notification server hangs): stopped it",
                HELPER_LIMIT.as_secs()
            ),
        };
        if !status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            let msg = msg.trim();
            let msg = msg.strip_prefix("refreshd-notify: ").unwrap_or(msg);
            bail!(
                "{}",
                if msg.is_empty() {
                    format!("{} failed ({status})", self.helper.display())
                } else {
                    one_line(msg)
                }
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().map_err(|_| {
            anyhow!(
                "{} printed {:?} instead of a notification id",
                self.helper.display(),
                one_line(&text)
            )
        })
    }

    /// The helper's command line, run as the session's user (killed at once past its limit).
    fn job(&self, s: &Session, n: &Notice) -> anyhow::Result<Job> {
        let user = supervise::User::login(&s.user, s.uid, s.gid)?;
        let runtime = s.bus.parent().unwrap_or(Path::new("/")).to_owned();
        Ok(Job::new(&self.helper, HELPER_LIMIT)
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}", dbus_escape(&s.bus)),
            )
            .env("XDG_RUNTIME_DIR", &runtime)
            .arg("--bus")
            .arg(&s.bus)
            .arg("--summary")
            .arg(&n.summary)
            .arg("--body")
            .arg(&n.body)
            .arg("--urgency")
            .arg(match n.urgency {
                Urgency::Low => "low",
                Urgency::Normal => "normal",
            })
            .arg("--timeout")
            .arg(HELPER_BUS_TIMEOUT.to_string())
            .user(user))
    }
}

/// After a login is seen, how long before the waiting refreshes are woken (logins close
/// together share one wake-up), and the least time between two wake-ups: logins are the
/// users' doing, and a user must not be able to keep the daemon busy.
const LOGIN_SETTLE: Duration = Duration::from_secs(1);
const LOGIN_MIN_GAP: Duration = Duration::from_secs(5);

/// Wakes the refreshes waiting for apps when a user logs in (a session bus appears in
/// `run/user/UID`), so that they tell the newcomer too. inotify on `run/user` and on each
/// `run/user/UID` (not below): nothing runs while no one logs in. Without `run/user` at
/// start-up, nothing is watched.
pub fn spawn_login_watcher(n: Arc<Notifier>, engine: Engine, shutdown: CancellationToken) {
    if !n.enabled() {
        return;
    }
    let base = n.layout.user_runtime_dirs();
    let ino = match Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            warn!("cannot watch for logins ({e}): users who log in while a refresh waits are told at its next look");
            return;
        }
    };
    let mut watches = ino.watches();
    let mask =
        WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR | WatchMask::DONT_FOLLOW;
    let base_wd = match watches.add(&base, mask) {
        Ok(wd) => wd,
        Err(e) => {
            debug!("not watching for logins: {}: {e}", base.display());
            return;
        }
    };
    // Directories made from now on are seen by the watch above; these are there already.
    for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        if parse_uid(&e.file_name()).is_some() {
            let _ = watches.add(e.path(), mask);
        }
    }
    tokio::spawn(async move {
        let Ok(mut events) = ino.into_event_stream(vec![0u8; 4096]) else {
            return;
        };
        let mut last: Option<tokio::time::Instant> = None;
        let mut wake_at: Option<tokio::time::Instant> = None;
        loop {
            let due = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = due => {
                    wake_at = None;
                    last = Some(tokio::time::Instant::now());
                    wake_waiting(&engine).await;
                    continue;
                }
                ev = events.next() => ev,
            };
            let Some(Ok(ev)) = ev else { return };
            let login = if ev.mask.contains(EventMask::Q_OVERFLOW) {
                true
            } else if ev.wd == base_wd {
                // A new runtime directory: watch it; its bus may be there already.
                match ev.name.as_deref().and_then(parse_uid) {
                    Some(uid) => {
                        let dir = base.join(uid.to_string());
                        let _ = watches.add(&dir, mask);
                        dir.join("bus").exists()
                    }
                    None => false,
                }
            } else {
                ev.name.as_deref() == Some(std::ffi::OsStr::new("bus"))
            };
            if login && wake_at.is_none() {
                let now = tokio::time::Instant::now();
                let earliest = last.map_or(now, |l| l + LOGIN_MIN_GAP);
                wake_at = Some((now + LOGIN_SETTLE).max(earliest));
            }
        }
    });
}

/// Wakes every task parked on a snap's idle event: wait-for-apps looks again (and tells whoever
/// logged in). Events are hints: a task with nothing new parks again.
async fn wake_waiting(engine: &Engine) {
    match engine.events_waited_on(IDLE_EVENT).await {
        Ok(events) => {
            for e in events {
                if let Err(err) = engine.notify_event(&e).await {
                    warn!("cannot wake the tasks waiting on {e}: {err}");
                }
            }
        }
        Err(e) => warn!("cannot list the refreshes waiting for apps: {e}"),
    }
}

/// Every logged-in desktop user under `layout`'s root, by uid: `run/user/UID` a directory (not
/// a link) owned by UID holding `bus`, a socket (not a link) owned by UID, and UID a user with
/// an entry in the user database. Anything else is passed over.
pub fn sessions(layout: &Layout) -> Vec<Session> {
    let base = layout.user_runtime_dirs();
    let Ok(rd) = std::fs::read_dir(&base) else {
        return vec![];
    };
    let mut out: Vec<Session> = rd
        .flatten()
        .filter_map(|e| {
            let uid = parse_uid(&e.file_name())?;
            match session(layout, uid) {
                Ok(s) => Some(s),
                Err(why) => {
                    debug!(uid, "no desktop session: {why}");
                    None
                }
            }
        })
        .collect();
    out.sort_by_key(|s| s.uid);
    out
}

/// The session of `uid`, or why there is none.
fn session(layout: &Layout, uid: u32) -> Result<Session, String> {
    let bus = layout.user_bus(uid);
    let dir = bus.parent().expect("run/user/UID/bus");
    let owned = |p: &Path, what: &str, want_socket: bool| -> Result<(), String> {
        let md = std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let ft = md.file_type();
        if ft.is_symlink() {
            return Err(format!("{} is a symbolic link", p.display()));
        }
        if want_socket && !ft.is_socket() {
            return Err(format!("{} is not a socket", p.display()));
        }
        if !want_socket && !ft.is_dir() {
            return Err(format!("{} is not a directory", p.display()));
        }
        if md.uid() != uid {
            return Err(format!(
                "{what} {} belongs to uid {}, not {uid}",
                p.display(),
                md.uid()
            ));
        }
        Ok(())
    };
    owned(dir, "the runtime directory", false)?;
    owned(&bus, "the bus", true)?;
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .ok_or_else(|| format!("uid {uid} has no entry in the user database"))?;
    Ok(Session {
        uid,
        gid: user.gid.as_raw(),
        user: user.name,
        bus,
    })
}

/// A directory name that is a uid written the canonical way (`1000`, not `01000` or `+1000`).
fn parse_uid(name: &std::ffi::OsStr) -> Option<u32> {
    let s = name.to_str()?;
    let uid: u32 = s.parse().ok()?;
    (uid.to_string() == s).then_some(uid)
}

/// A path as a D-Bus address value: bytes outside `[-0-9A-Za-z_/.*]` become `%XX`.
pub fn dbus_escape(p: &Path) -> String {
    let mut out = String::new();
    for &b in p.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"-_/.*".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// `1d`, `2h30m`, `45s`.
pub fn human(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= n {
            out.push_str(&format!("{}{unit}", s / n));
            s %= n;
        }
    }
    out
}

/// Where refreshd-notify is by default: next to the running refreshd.
pub fn default_helper() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()
        .context("cannot find refreshd's own path")?
        .with_file_name("refreshd-notify"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, DirBuilderExt};
    use std::os::unix::net::UnixListener;

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    /// run/user/UID with a bus socket bound in it; the listener keeps it alive.
    fn bus(root: &Path, uid: u32) -> (PathBuf, UnixListener) {
        let dir = root.join("run/user").join(uid.to_string());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .unwrap();
        let p = dir.join("bus");
        let l = UnixListener::bind(&p).unwrap();
        (p, l)
    }

    #[test]
    fn uids_are_read_the_canonical_way() {
        for (name, want) in [
            ("1000", Some(1000)),
            ("0", Some(0)),
            ("01000", None),
            ("+1000", None),
            ("1000 ", None),
            ("alice", None),
            ("4294967296", None),
            ("", None),
        ] {
            assert_eq!(parse_uid(std::ffi::OsStr::new(name)), want, "{name:?}");
        }
    }

    #[test]
    fn a_bus_of_ones_own_is_a_session() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::new(t.path());
        let (p, _keep) = bus(t.path(), me());
        let got = sessions(&l);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].uid, me());
        assert_eq!(got[0].bus, p);
    }

    #[test]
    fn links_files_and_strays_are_passed_over() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::new(t.path());
        // The real socket lives elsewhere; run/user/UID/bus only points at it.
        let (_, _keep) = bus(&t.path().join("elsewhere"), me());
        let dir = t.path().join("run/user").join(me().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        symlink(
            t.path()
                .join("elsewhere/run/user")
                .join(me().to_string())
                .join("bus"),
            dir.join("bus"),
        )
        .unwrap();
        assert_eq!(sessions(&l), vec![], "a bus that is a link");

        std::fs::remove_file(dir.join("bus")).unwrap();
        std::fs::write(dir.join("bus"), "").unwrap();
        assert_eq!(sessions(&l), vec![], "a bus that is a plain file");

        std::fs::remove_file(dir.join("bus")).unwrap();
        std::fs::create_dir(t.path().join("run/user/notauid")).unwrap();
        assert_eq!(sessions(&l), vec![], "no bus at all");

        // The runtime directory itself a link to a real one.
        std::fs::remove_dir(&dir).unwrap();
        symlink(
            t.path().join("elsewhere/run/user").join(me().to_string()),
            &dir,
        )
        .unwrap();
        assert_eq!(sessions(&l), vec![], "a runtime directory that is a link");
    }

    #[test]
    fn a_bus_of_someone_else_is_passed_over() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let l = Layout::new(t.path());
        // uid 1 (daemon) owns the directory; the socket stays root's.
        let (p, _keep) = bus(t.path(), 1);
        std::os::unix::fs::chown(p.parent().unwrap(), Some(1), None).unwrap();
        assert_eq!(
            sessions(&l),
            vec![],
            "a socket owned by root in uid 1's dir"
        );
        std::os::unix::fs::chown(&p, Some(1), None).unwrap();
        std::os::unix::fs::chown(p.parent().unwrap(), Some(0), None).unwrap();
        assert_eq!(
            sessions(&l),
            vec![],
            "uid 1's socket in a dir owned by root"
        );
        std::os::unix::fs::chown(p.parent().unwrap(), Some(1), None).unwrap();
        let got = sessions(&l);
        assert_eq!(got.len(), 1, "uid 1's socket in uid 1's dir: {got:?}");
    }

    #[test]
    fn addresses_are_escaped() {
        assert_eq!(
            dbus_escape(Path::new("/run/user/1000/bus")),
            "/run/user/1000/bus"
        );
        assert_eq!(dbus_escape(Path::new("/tmp/a b;c=d")), "/tmp/a%20b%3bc%3dd");
    }

    #[test]
    fn durations_read_back() {
        assert_eq!(human(Duration::from_secs(86_400)), "1d");
        assert_eq!(human(Duration::from_secs(9_000)), "2h30m");
        assert_eq!(human(Duration::from_secs(2)), "2s");
    }
}
