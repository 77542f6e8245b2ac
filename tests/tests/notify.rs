//! Desktop notifications of refreshes, delivered for real: each logged-in user is a real
//! unprivileged user with a real `dbus-daemon --session` at ROOT/run/user/UID/bus and a
//! notification server on it (Python and GLib's GDBus, from Debian's packages) that prints
//! every `Notify` call it gets, with the uid of the caller as the bus daemon saw it.
//!
//! A refresh that waits for an app tells the user once — not again after a restart — and once
//! more when it is done; a user without a bus gets nothing; a bus that is a link or someone
//! else's socket is never connected to; a broken session holds nothing up; `--notify none`
//! sends nothing; `--notify-reminder` reminds, at most that often.

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use refreshd_tests::*;

const PYTHON: &str = "/usr/bin/python3";
/// How long any one awaited thing may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

fn prerequisites() -> bool {
    if !root_with(
        "real users, cgroups and a setuid launcher",
        &[("dbus-daemon", "dbus-daemon")],
    ) {
        return false;
    }
    let gi = Command::new(PYTHON)
        .args(["-c", "from gi.repository import Gio, GLib"])
        .stderr(Stdio::null())
        .status();
    if !gi.is_ok_and(|s| s.success()) {
        skip("python3 with GLib's introspection missing (python3-gi, gir1.2-glib-2.0)");
        return false;
    }
    true
}

/// A notification server: owns org.freedesktop.Notifications, answers every Notify with a new
/// id and prints it as one JSON line (with the caller's uid, asked of the bus), after a
/// `ready` line once the name is owned.
const SERVER: &str = r#"
import json, sys
from gi.repository import Gio, GLib

XML = """<node><interface name="org.freedesktop.Notifications">
<method name="Notify"><arg type="s" direction="in"/><arg type="u" direction="in"/>
<arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="s" direction="in"/>
<arg type="as" direction="in"/><arg type="a{sv}" direction="in"/><arg type="i" direction="in"/>
<arg type="u" direction="out"/></method>
<method name="GetCapabilities"><arg type="as" direction="out"/></method>
<method name="CloseNotification"><arg type="u" direction="in"/></method>
<method name="GetServerInformation"><arg type="s" direction="out"/><arg type="s" direction="out"/>
<arg type="s" direction="out"/><arg type="s" direction="out"/></method>
</interface></node>"""

bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
count = 0

def call(conn, sender, path, iface, method, params, inv):
    global count
    if method == "Notify":
        count += 1
        app, replaces, icon, summary, body, actions, hints, expire = params.unpack()
        uid = conn.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus",
            "org.freedesktop.DBus", "GetConnectionUnixUser", GLib.Variant("(s)", (sender,)),
            GLib.VariantType("(u)"), Gio.DBusCallFlags.NONE, -1, None).unpack()[0]
        print(json.dumps({"id": count, "app": app, "summary": summary, "body": body,
            "urgency": hints.get("urgency"), "uid": uid}), flush=True)
        inv.return_value(GLib.Variant("(u)", (count,)))
    elif method == "GetCapabilities":
        inv.return_value(GLib.Variant("(as)", (["body"],)))
    elif method == "GetServerInformation":
        inv.return_value(GLib.Variant("(ssss)", ("fake", "refreshd-tests", "1", "1.2")))
    else:
        inv.return_value(None)

node = Gio.DBusNodeInfo.new_for_xml(XML)
bus.register_object("/org/freedesktop/Notifications", node.interfaces[0], call, None, None)
loop = GLib.MainLoop()
Gio.bus_own_name_on_connection(bus, "org.freedesktop.Notifications",
    Gio.BusNameOwnerFlags.DO_NOT_QUEUE,
    lambda c, n: print("ready", flush=True),
    lambda c, n: (print("lost", flush=True), loop.quit()))
loop.run()
"#;

/// A session bus's configuration: the session defaults without service directories, so that no
/// notification daemon of the host is ever activated.
fn bus_config(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

/// `setpriv` to `user` (its uid, gid and groups) with a clean environment.
fn as_user(user: &TestUser, program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    c
}

/// `ROOT/run/user/UID`, 0700 and the user's, as logind makes it.
fn runtime_dir(r: &Path, user: &TestUser) -> PathBuf {
    let base = r.join("run/user");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&base)
        .unwrap();
    let dir = base.join(user.uid.to_string());
    fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
    dir
}

/// A child killed (by its pid: it is ours) and reaped on drop.
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A user's desktop session: a dbus-daemon at ROOT/run/user/UID/bus, run as the user, and
/// optionally the notification server on it, whose lines arrive on `lines`.
struct Session {
    server: Option<Proc>,
    lines: Option<mpsc::Receiver<String>>,
    _bus: Proc,
}

impl Session {
    fn start(root: &Root, user: &TestUser, with_server: bool) -> Session {
        let dir = runtime_dir(root.path(), user);
        let socket = dir.join("bus");
        let conf = root.aux(&format!("bus-{}.conf", user.uid));
        fs::write(&conf, bus_config(&socket)).unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).unwrap();
        let mut bus = as_user(user, "dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .env("XDG_RUNTIME_DIR", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dbus-daemon");
        // It prints its address once it listens.
        let mut out = BufReader::new(bus.stdout.take().unwrap()).lines();
        let bus = Proc(Some(bus));
        let addr = out.next().expect("dbus-daemon printed no address").unwrap();
        assert!(addr.starts_with("unix:path="), "{addr}");
        std::thread::spawn(move || for _ in out {});
        let mut s = Session {
            server: None,
            lines: None,
            _bus: bus,
        };
        if with_server {
            let script = root.aux("notifications.py");
            fs::write(&script, SERVER).unwrap();
            fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
            let mut server = as_user(user, PYTHON)
                .arg(&script)
                .env("DBUS_SESSION_BUS_ADDRESS", &addr)
                .env("XDG_RUNTIME_DIR", &dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the notification server");
            let out = server.stdout.take().unwrap();
            s.server = Some(Proc(Some(server)));
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
            let first = rx
                .recv_timeout(DEADLINE)
                .expect("the server never got ready");
            assert_eq!(first, "ready");
            s.lines = Some(rx);
        }
        s
    }

    /// The next Notify the server got, waiting at most [`DEADLINE`].
    fn next(&self, what: &str) -> Value {
        let l = self
            .lines
            .as_ref()
            .unwrap()
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("no notification {what} within {DEADLINE:?}: {e}"));
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("server said {l:?}: {e}"))
    }

    /// The notifications received and not read yet, without waiting.
    fn drain(&self) -> Vec<String> {
        self.lines.as_ref().unwrap().try_iter().collect()
    }

    /// Stops the server and returns every notification it got that was not read yet.
    fn rest(mut self) -> Vec<Value> {
        drop(self.server.take());
        self.lines
            .take()
            .unwrap()
            .into_iter()
            .map(|l| serde_json::from_str(&l).unwrap_or(Value::String(l)))
            .collect()
    }
}

fn user(tag: &str) -> TestUser {
    TestUser::create(tag).expect("useradd failed")
}

fn build(root: &Root, name: &str, version: &str) -> PathBuf {
    let out = root.aux(&format!("{name}_{version}.snap"));
    tracking_snap(&out, name, version, false);
    out
}

fn install(r: &Path, file: &Path) {
    let out = ctl(r, &["install", file.to_str().unwrap()]);
    assert!(out.status.success(), "install: {}", text(&out.stderr));
}

/// Follows `refreshctl watch ID --json` (the daemon pushes every change) until `pred` holds
/// for a snapshot; `Err` with the last one seen if it does not within [`DEADLINE`] or the
/// change is ready first.
fn watch_for(r: &Path, id: u64, pred: impl Fn(&Value) -> bool) -> Result<Value, Value> {
    let (child, rx) = watch_lines(r, id);
    let _child = Proc(Some(child));
    let end = Instant::now() + DEADLINE;
    let mut last = Value::Null;
    while let Ok(l) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        let v: Value = serde_json::from_str(&l).unwrap();
        if pred(&v) {
            return Ok(v);
        }
        if v["ready"] == true {
            return Err(v);
        }
        last = v;
    }
    Err(last)
}

fn ready(r: &Path, id: u64) -> Value {
    watch_for(r, id, |c| c["ready"] == true)
        .unwrap_or_else(|c| panic!("change {id} not ready within {DEADLINE:?}: {c}"))
}

/// Starts the refresh to `file` and returns its change once wait-for-apps is parked.
fn refresh_until_waiting(r: &Path, file: &Path) -> u64 {
    let out = ctl(r, &["install", file.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "refresh: {}", text(&out.stderr));
    let id = newest_change(r);
    watch_for(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait")
        .unwrap_or_else(|c| panic!("the refresh does not wait for the app: {c}"));
    id
}

fn daemon(r: &Path, args: &[&str]) -> Daemon {
    Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
}

/// Polls the daemon's log (no event says a line was written) until it holds `needle`.
fn wait_for_log(d: &Daemon, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = d.log_text();
        if let Some(l) = text.lines().find(|l| l.contains(needle)) {
            return l.to_owned();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no {needle:?} in the daemon's log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_pending(n: &Value, user: &TestUser, name: &str, version: &str) {
    assert_eq!(
        n["summary"],
        format!("{name} will be updated when it is closed"),
        "{n}"
    );
    let body = n["body"].as_str().unwrap();
    assert!(body.contains(&format!("ersion {version} is ready")), "{n}");
    assert!(body.contains("1 process still runs"), "{n}");
    assert_eq!(n["app"], "refreshd", "{n}");
    // Sent as the user, never as root.
    assert_eq!(n["uid"], user.uid, "{n}");
}

#[test]
fn a_pending_refresh_is_told_once_and_its_end_once() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("notify-once");
    let r = root.path();
    let (alice, bob) = (user("na"), user("nb"));
    let session = Session::start(&root, &alice, true);
    // Bob is logged in without a desktop: a runtime directory, no bus.
    runtime_dir(r, &bob);
    user_home(r, &alice);
    let (b1, b2) = (build(&root, "told", "1.0"), build(&root, "told", "2.0"));
    let d = Daemon::start(r);
    install(r, &b1);
    let app = App::launch_as(r, "told.hold", Some((alice.uid, alice.gid)));

    let id = refresh_until_waiting(r, &b2);
    let first = session.next("that the refresh is pending");
    assert_pending(&first, &alice, "told", "2.0");
    assert_eq!(first["urgency"], 1, "{first}");

    // A restart while it waits: the task looks again, finds the record, tells no one again.
    assert!(d.stop().success());
    let d = Daemon::start(r);
    let again = watch_for(r, id, |c| {
        task_log(c, "wait-for-apps")
            .iter()
            .any(|l| l.contains("told already that told is pending: not again"))
    })
    .unwrap_or_else(|c| {
        panic!(
            "after the restart, wait-for-apps did not find its record ({c}); the server got {:?}",
            session.drain()
        )
    });
    assert!(
        task_log(&again, "wait-for-apps")
            .iter()
            .any(|l| l.contains(&format!("{} (uid {})", alice.name, alice.uid))),
        "{again}"
    );
    watch_for(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait")
        .unwrap_or_else(|c| panic!("not parked again after the restart: {c}"));

    app.release();
    let done = ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    let second = session.next("that the refresh is done");
    assert_eq!(second["summary"], "told was updated", "{second}");
    assert_eq!(
        second["body"], "told is now at version 2.0; it can be started again.",
        "{second}"
    );
    assert_eq!(second["uid"], alice.uid, "{second}");
    assert!(
        task_log(&done, "lift-inhibition")
            .iter()
            .any(|l| l.contains("telling") && l.contains(&alice.name)),
        "{done}"
    );

    // Nothing more, and nothing about Bob, who has no bus.
    assert!(d.stop().success());
    let rest = session.rest();
    assert!(rest.is_empty(), "more notifications than two: {rest:?}");
    let text = fs::read_to_string(r.parent().unwrap().join("refreshd.log")).unwrap();
    assert!(!text.contains(&bob.name), "bob was considered: {text}");
    assert!(!text.contains("cannot notify"), "{text}");
}

#[test]
fn hostile_or_broken_sessions_get_nothing_and_hold_up_nothing() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("notify-hostile");
    let r = root.path();
    let alice = user("ha");
    let session = Session::start(&root, &alice, true);
    user_home(r, &alice);

    // Mallory's bus is a link to a socket that is not Mallory's.
    let mallory = user("hm");
    let victim = UnixListener::bind(root.aux("victim.sock")).unwrap();
    victim.set_nonblocking(true).unwrap();
    // Anyone may connect: only refreshd's own checks stand in the way.
    fs::set_permissions(root.aux("victim.sock"), fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(
        root.aux("victim.sock"),
        runtime_dir(r, &mallory).join("bus"),
    )
    .unwrap();
    // Trudy's runtime directory holds a socket that belongs to root.
    let trudy = user("ht");
    let planted_at = runtime_dir(r, &trudy).join("bus");
    let planted = UnixListener::bind(&planted_at).unwrap();
    planted.set_nonblocking(true).unwrap();
    fs::set_permissions(&planted_at, fs::Permissions::from_mode(0o777)).unwrap();
    // Dave's session has a bus but no notification server.
    let dave = user("hd");
    let _dave = Session::start(&root, &dave, false);
    // Erin's bus accepts connections and never answers (a process of Erin's).
    let erin = user("he");
    let erin_dir = runtime_dir(r, &erin);
    let mut hang = as_user(&erin, PYTHON)
        .args([
            "-c",
            "import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(8)\nprint('ready',flush=True)\nc=s.accept()\ntime.sleep(3600)",
        ])
        .arg(erin_dir.join("bus"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut hang_out = BufReader::new(hang.stdout.take().unwrap()).lines();
    let _hang = Proc(Some(hang));
    assert_eq!(hang_out.next().unwrap().unwrap(), "ready");

    let (b1, b2) = (
        build(&root, "guarded", "1.0"),
        build(&root, "guarded", "2.0"),
    );
    let d = Daemon::start(r);
    install(r, &b1);
    let app = App::launch_as(r, "guarded.hold", Some((alice.uid, alice.gid)));
    let id = refresh_until_waiting(r, &b2);
    assert_pending(
        &session.next("that the refresh is pending"),
        &alice,
        "guarded",
        "2.0",
    );
    let pending = watch_for(r, id, |c| {
        task_log(c, "wait-for-apps")
            .iter()
            .any(|l| l.contains("telling"))
    })
    .unwrap_or_else(|c| panic!("no one was told: {c}"));
    let told = task_log(&pending, "wait-for-apps")
        .into_iter()
        .find(|l| l.contains("telling"))
        .unwrap_or_else(|| panic!("{pending}"));
    for u in [&alice, &dave, &erin] {
        assert!(told.contains(&format!("(uid {})", u.uid)), "{told}");
    }
    for u in [&mallory, &trudy] {
        assert!(!told.contains(&format!("(uid {})", u.uid)), "{told}");
    }
    // Dave's and Erin's failures are logged and nothing else.
    wait_for_log(
        &d,
        &format!(
            "cannot notify {} (uid {}): the notification server",
            dave.name, dave.uid
        ),
    );
    app.release();
    let done = ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(
        session.next("that the refresh is done")["summary"],
        "guarded was updated"
    );
    let line = wait_for_log(
        &d,
        &format!("cannot notify {} (uid {}): no answer", erin.name, erin.uid),
    );
    println!("{line}");
    assert!(d.stop().success());

    for (who, l) in [("mallory", &victim), ("trudy", &planted)] {
        match l.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("{who}'s socket was connected to: {other:?}"),
        }
    }
    assert!(session.rest().is_empty());
}

#[test]
fn notify_none_sends_nothing() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("notify-none");
    let r = root.path();
    let alice = user("oa");
    let session = Session::start(&root, &alice, true);
    user_home(r, &alice);
    let (b1, b2) = (build(&root, "quiet", "1.0"), build(&root, "quiet", "2.0"));
    let d = daemon(r, &["--notify", "none"]);
    install(r, &b1);
    let app = App::launch_as(r, "quiet.hold", Some((alice.uid, alice.gid)));
    let id = refresh_until_waiting(r, &b2);
    app.release();
    let done = ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    for kind in ["wait-for-apps", "lift-inhibition"] {
        assert!(
            !task_log(&done, kind).iter().any(|l| l.contains("telling")),
            "{done}"
        );
    }
    assert!(d.log_text().contains("notifications: off (--notify none)"));
    assert!(d.stop().success());
    let rest = session.rest();
    assert!(rest.is_empty(), "sent with --notify none: {rest:?}");
}

#[test]
fn a_reminder_comes_at_most_once_per_interval() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("notify-remind");
    let r = root.path();
    let alice = user("ra");
    let session = Session::start(&root, &alice, true);
    user_home(r, &alice);
    let (b1, b2) = (build(&root, "nudged", "1.0"), build(&root, "nudged", "2.0"));
    let d = daemon(r, &["--notify-reminder", "2s"]);
    install(r, &b1);
    let app = App::launch_as(r, "nudged.hold", Some((alice.uid, alice.gid)));
    let id = refresh_until_waiting(r, &b2);
    let first = session.next("that the refresh is pending");
    let t1 = Instant::now();
    assert_pending(&first, &alice, "nudged", "2.0");
    let second = session.next("reminding of the refresh");
    let gap = t1.elapsed();
    assert_eq!(
        second["summary"], "nudged will be updated when it is closed",
        "{second}"
    );
    assert!(
        second["body"]
            .as_str()
            .unwrap()
            .starts_with("Still waiting: version 2.0 is ready"),
        "{second}"
    );
    // Reminders are due 2 s after the last notice, on a 2 s grid: between 2 and 4 s (less what
    // delivery latency took off the first).
    assert!(
        gap >= Duration::from_millis(1500) && gap < Duration::from_secs(10),
        "{gap:?}"
    );
    app.release();
    let done = ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(
        session.next("that it is done")["summary"],
        "nudged was updated"
    );
    assert!(d.stop().success());
    let rest = session.rest();
    assert!(rest.is_empty(), "{rest:?}");
}

/// A refresh undone after it was said to be done (its post-refresh hook fails): those told it
/// was updated hear that it was not.
#[test]
fn an_update_undone_after_the_notice_is_taken_back() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("notify-undone");
    let r = root.path();
    let alice = user("ua");
    let session = Session::start(&root, &alice, true);
    user_home(r, &alice);
    let hold = "#!/bin/sh\necho \"started $$ $(date +%s%N) $SNAP_REVISION\"\nread line\necho \"exit $(date +%s%N)\"\n";
    let yaml = |v: &str| {
        format!("name: rolled\nversion: '{v}'\nsummary: Undo test\napps:\n  hold:\n    command: bin/hold\n")
    };
    let (b1, b2) = (root.aux("rolled_1.snap"), root.aux("rolled_2.snap"));
    SnapSrc::new(&yaml("1.0"))
        .file("bin/hold", hold, 0o755)
        .build(&b1);
    SnapSrc::new(&yaml("2.0"))
        .file("bin/hold", hold, 0o755)
        .file(
            "meta/hooks/post-refresh",
            "#!/bin/sh\necho 'migration failed' >&2\nexit 3\n",
            0o755,
        )
        .build(&b2);
    let d = Daemon::start(r);
    install(r, &b1);
    let app = App::launch_as(r, "rolled.hold", Some((alice.uid, alice.gid)));
    let id = refresh_until_waiting(r, &b2);
    assert_pending(&session.next("that it is pending"), &alice, "rolled", "2.0");
    app.release();
    let end = ready(r, id);
    assert_eq!(end["status"], "Error", "{end}");
    assert_eq!(
        session.next("that it is done")["summary"],
        "rolled was updated"
    );
    let back = session.next("that it was undone");
    assert_eq!(
        back["summary"], "rolled was not updated after all",
        "{back}"
    );
    assert_eq!(
        back["body"],
        "The update to version 2.0 failed and is being undone: rolled goes back to version 1.0.",
        "{back}"
    );
    assert_eq!(back["uid"], alice.uid, "{back}");
    assert!(d.stop().success());
    let rest = session.rest();
    assert!(rest.is_empty(), "{rest:?}");
}

/// Someone who logs in while a refresh already waits is told too (the daemon sees the new
/// session bus appear), once; the user told before is not told again.
#[test]
fn a_user_who_logs_in_later_is_told_too() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("notify-login");
    let r = root.path();
    let (alice, carol) = (user("la"), user("lc"));
    let first = Session::start(&root, &alice, true);
    user_home(r, &alice);
    // The directory logind keeps the runtime directories in exists before anyone logs in.
    fs::create_dir_all(r.join("run/user")).unwrap();
    let (b1, b2) = (build(&root, "late", "1.0"), build(&root, "late", "2.0"));
    let d = Daemon::start(r);
    install(r, &b1);
    let app = App::launch_as(r, "late.hold", Some((alice.uid, alice.gid)));
    let id = refresh_until_waiting(r, &b2);
    assert_pending(&first.next("to the first user"), &alice, "late", "2.0");

    let later = Session::start(&root, &carol, true);
    assert_pending(
        &later.next("to the user who logged in"),
        &carol,
        "late",
        "2.0",
    );
    app.release();
    let done = ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(first.next("that it is done")["summary"], "late was updated");
    assert_eq!(later.next("that it is done")["summary"], "late was updated");
    assert!(d.stop().success());
    let (a, c) = (first.rest(), later.rest());
    assert!(a.is_empty() && c.is_empty(), "{a:?} {c:?}");
}
