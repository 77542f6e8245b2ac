//! Tracking in the systemd world: systemd is PID 1 with a pure cgroup2 tree (the harness's
//! throwaway instance), refreshd installed by `make install`, a user logged in through PAM
//! (logind, user@UID.service). A launch goes into a transient scope of its user's manager (root's
//! and a session-less one's: of the system manager), recorded in `runctl/units`; a refresh waits
//! for it and completes as soon as it exits; nothing of refreshd's is made in systemd's tree.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use refreshd_tests::installed::{can_run, Installed, Watcher, STORE};
use refreshd_tests::systemd::{self, BootOpts, Systemd};
use refreshd_tests::*;

const SNAP: &str = "sdapp";
const SVC: &str = "snap.sdapp.svc.service";

/// An app that says its pid, waits for a line and exits, and a service.
fn sd_snap(out: &Path, version: &str) {
    SnapSrc::new(&format!(
        "name: {SNAP}\nversion: '{version}'\nsummary: tracked under systemd\napps:\n  \
         {SNAP}:\n    command: bin/app\n  \
         svc:\n    command: bin/svc\n    daemon: simple\n"
    ))
    .file(
        "bin/app",
        "#!/bin/sh\necho \"started $$\"\nread line\necho \"exit $(date +%s%N)\"\n",
        0o755,
    )
    .file("bin/svc", "#!/bin/sh\nexec sleep infinity\n", 0o755)
    .build(out);
}

fn publish(w: &Installed, version: &str) -> u32 {
    let blob = w.sd.dir().join(format!("{SNAP}-{version}.snap"));
    sd_snap(&blob, version);
    let rev = w.publish(&blob);
    std::fs::remove_file(&blob).unwrap();
    rev
}

/// An app started inside, from a user's session or as root; it exits when released.
struct App {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    pid: u32,
}

impl App {
    fn start(mut cmd: std::process::Command) -> App {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let pid = line
            .strip_prefix("started ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the app said {line:?}"));
        App { child, out, pid }
    }

    /// Lets it exit; returns when it did (the realtime clock, in ns, as the app last read it).
    fn release(mut self) -> u128 {
        let mut stdin = self.child.stdin.take().unwrap();
        writeln!(stdin).unwrap();
        drop(stdin);
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert!(self.child.wait().unwrap().success());
        line.strip_prefix("exit ")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("the app said {line:?}"))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The cgroup2 path of a process inside.
fn cgroup(sd: &Systemd, pid: u32) -> String {
    let text = sd.run_ok(&["cat", &format!("/proc/{pid}/cgroup")]);
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup2 line in {text}"))
        .to_owned()
}

/// Nothing of refreshd's in systemd's tree: every cgroup inside is a unit's (or below a
/// delegated one), none is refreshd's own group.
fn nothing_outside_systemds_tree(sd: &Systemd) {
    let ours = sd.run_ok(&[
        "find",
        "/sys/fs/cgroup",
        "-type",
        "d",
        "(",
        "-name",
        "refreshd*",
        "-o",
        "-name",
        "snap.*",
        ")",
        "!",
        "-name",
        "*.scope",
        "!",
        "-name",
        "*.service",
    ]);
    assert!(
        ours.trim().is_empty(),
        "groups made outside systemd's units:\n{ours}"
    );
}

/// Refreshes to the next revision and returns the change once it waits for `pid`.
fn refresh_waiting(w: &Installed, pid: u32) -> Watcher {
    let id: u64 = w
        .ctl_ok(&["refresh", SNAP, "--no-wait"])
        .trim()
        .parse()
        .unwrap();
    let mut watch = w.watch(id);
    assert!(
        watch.until(|c| {
            c["tasks"]
                .as_array()
                .and_then(|ts| ts.iter().find(|t| t["kind"] == "wait-for-apps"))
                .is_some_and(|t| {
                    t["status"] == "Wait"
                        && t["wait"]["reason"]
                            .as_str()
                            .unwrap_or("")
                            .contains(&format!("pid {pid} "))
                })
        }),
        "the refresh did not wait for pid {pid}: {}",
        watch.last
    );
    watch
}

/// Releases the app and returns how long after its exit the critical section was entered
/// (the change's log says when).
fn release_and_complete(app: App, mut watch: Watcher) -> f64 {
    let exited = app.release();
    assert!(watch.until(|c| c["ready"] == true), "{}", watch.last);
    assert_eq!(watch.last["status"], "Done", "{}", watch.last);
    let entered = logged_at(&watch.last, "wait-for-apps", "critical section entered")
        .expect("the change logs when the section was entered");
    assert!(
        entered >= exited,
        "entered {entered} before the app exited {exited}"
    );
    (entered - exited) as f64 / 1e6
}

#[test]
fn apps_are_in_their_managers_units_and_refreshes_wait_for_them() {
    if !can_run() {
        return;
    }
    let w = Installed::boot(
        BootOpts::default(),
        &format!("--insecure-unsigned-store --store {STORE}"),
    );
    let alice = w.sd.login("rfd-alice");
    assert_eq!(publish(&w, "1.0"), 1);
    w.ctl_ok(&["install", SNAP]);
    w.wait_prop(SVC, "ActiveState", "active", Duration::from_secs(20));
    let status = w.ctl_json(&["status", "--json"]);
    assert_eq!(status["tracking"], "systemd", "{status}");

    // A user's app, started from their session: in a scope of their own manager.
    let app = App::start(w.sd.user_command(&alice, &format!("exec /snap/bin/{SNAP}")));
    let cg = cgroup(&w.sd, app.pid);
    let user_tree = format!(
        "/user.slice/user-{uid}.slice/user@{uid}.service/app.slice/snap.{SNAP}.{SNAP}.refreshd-",
        uid = alice.uid
    );
    assert!(cg.starts_with(&user_tree) && cg.ends_with(".scope"), "{cg}");
    let unit = cg.rsplit('/').next().unwrap().to_owned();
    let shown =
        w.sd.user_systemctl(&alice, &["status", "--no-pager", &unit]);
    let shown = text(&shown.stdout);
    assert!(
        shown.contains(&unit) && shown.contains(&app.pid.to_string()),
        "systemctl --user status {unit}:\n{shown}"
    );
    let st = w.ctl_json(&["status", SNAP, "--json"]);
    let procs = st["processes"].as_array().unwrap();
    assert!(
        procs
            .iter()
            .any(|p| p["pid"] == app.pid && p["unit"] == unit.as_str()),
        "status lists the app with its unit: {st}"
    );
    assert!(
        !procs.iter().any(|p| p["unit"] == SVC),
        "the service is not waited for: {st}"
    );
    // Its service's processes are listed apart, with their unit: the refresh stops them.
    let main: u32 = w.sd.show(SVC, "MainPID").parse().unwrap();
    assert!(
        st["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|p| p["pid"] == main && p["unit"] == SVC)),
        "status lists the service with its unit: {st}"
    );
    let listed = w.ctl_ok(&["status", SNAP]);
    assert!(
        listed.contains(&unit) && listed.contains(SVC) && listed.contains("Its services"),
        "{listed}"
    );
    nothing_outside_systemds_tree(&w.sd);

    assert_eq!(publish(&w, "1.1"), 2);
    let watch = refresh_waiting(&w, app.pid);
    let user_ms = release_and_complete(app, watch);
    // The scope is systemd's: it goes when its last process exits.
    let gone = w.sd.user_systemctl(&alice, &["is-active", &unit]);
    assert!(!gone.status.success(), "{unit} is still active");

    // Root's app (no session): a scope of the system manager.
    let app = App::start(w.sd.command(&[&format!("/snap/bin/{SNAP}")]));
    let cg = cgroup(&w.sd, app.pid);
    assert!(
        cg.starts_with(&format!("/system.slice/snap.{SNAP}.{SNAP}.refreshd-"))
            && cg.ends_with(".scope"),
        "{cg}"
    );
    let unit = cg.rsplit('/').next().unwrap().to_owned();
    let shown = text(&w.sd.systemctl(&["status", &unit]).stdout);
    assert!(shown.contains(&app.pid.to_string()), "{shown}");
    assert_eq!(publish(&w, "1.2"), 3);
    let watch = refresh_waiting(&w, app.pid);
    let root_ms = release_and_complete(app, watch);

    // The service stays in its own unit, and the refreshes stopped and started it there.
    let main = w.sd.show(SVC, "MainPID");
    assert_eq!(
        cgroup(&w.sd, main.parse().unwrap()),
        format!("/system.slice/{SVC}")
    );
    assert_eq!(
        w.sd.run_ok(&["readlink", &format!("/snap/{SNAP}/current")])
            .trim(),
        "3"
    );
    nothing_outside_systemds_tree(&w.sd);
    let left = w.sd.run_ok(&["ls", "-A", "/run/refreshd/runctl/units"]);
    assert!(left.trim().is_empty(), "units left in the registry: {left}");
    println!("exit to critical section: user's app {user_ms:.1} ms, root's app {root_ms:.1} ms");
    assert!(
        user_ms < 1000.0 && root_ms < 1000.0,
        "the exits were noticed late: {user_ms:.1} ms, {root_ms:.1} ms"
    );
}

/// The race test of tests/tests/race.rs in the systemd world: a user's launches (from their
/// session, into their manager's scopes) and root's (into the system manager's) against
/// repeated refreshes; no app lifetime may overlap a critical section, nothing may deadlock.
/// `REFRESHD_RACE_SECS` sets the duration (default 20 s).
#[test]
fn no_app_overlaps_a_critical_section_under_systemd() {
    if !can_run() {
        return;
    }
    let secs: u64 = std::env::var("REFRESHD_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let overlaps = race(secs, "");
    assert_eq!(overlaps, 0, "apps alive in a critical section");
}

/// The check is not vacuous in this world either: untracked (`--tracking none`), the same run
/// finds apps alive in critical sections.
#[test]
fn overlaps_are_caught_under_systemd_without_tracking() {
    if !can_run() {
        return;
    }
    let overlaps = race(8, " --tracking none");
    assert!(
        overlaps > 0,
        "an untracked refresh must overlap running apps"
    );
}

/// Launches against refreshes for `secs`; returns how many app lifetimes overlapped a critical
/// section.
fn race(secs: u64, args: &str) -> usize {
    let w = Installed::boot(
        BootOpts::default(),
        &format!("--insecure-unsigned-store --store {STORE}{args}"),
    );
    let alice = w.sd.login("rfd-racer");
    for i in 0..2 {
        SnapSrc::new(&format!(
            "name: racer\nversion: '1.{i}'\nsummary: Race stress\nrefresh-pending-behavior: block\napps:\n  run:\n    command: bin/run\n"
        ))
        .file(
            "bin/run",
            // Root writes its lives to SNAP_COMMON; a user, who cannot, to SNAP_USER_COMMON.
            "#!/bin/sh\nstart=$(date +%s%N)\nsleep \"$1\"\nend=$(date +%s%N)\nd=$SNAP_COMMON\n[ -w \"$d\" ] || d=$SNAP_USER_COMMON\necho \"$start $end $SNAP_REVISION\" > \"$d/life.$$.$start\"\n",
            0o755,
        )
        .build(&w.sd.results_dir().join(format!("racer{i}.snap")));
    }
    w.ctl_ok(&["install", "/results/racer0.snap"]);

    // Each loop prints a line per launch and stops when /tmp/race-stop appears.
    let script = |i: usize| {
        format!(
            "n=0; while [ ! -e /tmp/race-stop ]; do n=$((n+1)); \
             if [ $(( (n+{i}) % 5 )) = 0 ]; then t=0.$((1 + (n*7+{i}) % 4)); else t=0.0$(( (n*3+{i}) % 4 )); fi; \
             /snap/bin/racer.run $t || exit 1; echo launched; done"
        )
    };
    let mut loops: Vec<Child> = (0..4)
        .map(|i| {
            let mut cmd = if i % 2 == 0 {
                w.sd.user_command(&alice, &script(i))
            } else {
                w.sd.command(&["sh", "-c", &script(i)])
            };
            cmd.stdout(Stdio::piped()).spawn().unwrap()
        })
        .collect();

    let t0 = std::time::Instant::now();
    let mut changes = vec![];
    let mut k = 1;
    while t0.elapsed() < Duration::from_secs(secs) {
        let id: u64 = w
            .ctl_ok(&[
                "install",
                &format!("/results/racer{}.snap", k % 2),
                "--no-wait",
            ])
            .trim()
            .parse()
            .unwrap();
        let mut watch = w.watch(id);
        assert!(watch.until(|c| c["ready"] == true), "{}", watch.last);
        assert_eq!(watch.last["status"], "Done", "refresh {k}: {}", watch.last);
        changes.push(watch.last.clone());
        k += 1;
    }
    w.sd.run_ok(&["touch", "/tmp/race-stop"]);
    let mut launches = 0;
    for l in loops.drain(..) {
        let out = l.wait_with_output().unwrap();
        assert!(out.status.success(), "a launch failed: {:?}", out.status);
        launches += text(&out.stdout)
            .lines()
            .filter(|l| *l == "launched")
            .count();
    }

    let sections: Vec<(u128, u128)> = changes
        .iter()
        .map(|c| {
            (
                logged_at(c, "wait-for-apps", "critical section entered").unwrap(),
                logged_at(c, "lift-inhibition", "critical section left").unwrap(),
            )
        })
        .collect();
    let lives_text = w.sd.run_ok(&[
        "sh",
        "-c",
        "cat /var/snap/racer/common/life.* /home/rfd-racer/snap/racer/common/life.* 2>/dev/null; true",
    ]);
    let lives: Vec<(u128, u128)> = lives_text
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u128>().unwrap_or(0));
            (f.next().unwrap(), f.next().unwrap())
        })
        .collect();
    let overlaps: Vec<_> = lives
        .iter()
        .filter(|&&(s, e)| sections.iter().any(|&(a, b)| s < b && a < e))
        .collect();
    let users = text(
        &w.sd
            .run(&["sh", "-c", "ls /home/rfd-racer/snap/racer/common | wc -l"])
            .stdout,
    );
    println!(
        "systemd world: {secs} s, {launches} launches ({} by the user), {} critical sections, {} overlaps",
        users.trim(),
        sections.len(),
        overlaps.len()
    );
    assert_eq!(lives.len(), launches, "every launch recorded its life");
    assert!(
        users.trim().parse::<usize>().unwrap_or(0) > 0,
        "the user launched"
    );
    assert!(
        sections.len() >= 3,
        "too few critical sections to mean anything"
    );
    for (s, e) in overlaps.iter().take(5) {
        eprintln!("an app lived {s}..{e}, overlapping a critical section");
    }
    nothing_outside_systemds_tree(&w.sd);
    overlaps.len()
}

/// Where the user's manager cannot take a launch — the user has no manager (no session), or
/// what listens on their manager's socket (it is theirs to replace) hangs up or does not answer
/// before the request is made — the launch goes into a scope of the system manager: tracked,
/// never silently untracked. A request made and not answered, or answered with a lie, fails the
/// launch.
#[test]
fn without_the_users_manager_a_launch_goes_to_the_system_manager() {
    if !can_run() {
        return;
    }
    let w = Installed::boot(
        BootOpts::default(),
        &format!("--insecure-unsigned-store --store {STORE}"),
    );
    assert_eq!(publish(&w, "1.0"), 1);
    w.ctl_ok(&["install", SNAP]);
    let in_system_manager = |app: &App| {
        let cg = cgroup(&w.sd, app.pid);
        assert!(
            cg.starts_with(&format!("/system.slice/snap.{SNAP}.{SNAP}.refreshd-")),
            "{cg}"
        );
        let st = w.ctl_json(&["status", SNAP, "--json"]);
        assert!(
            st["processes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["pid"] == app.pid),
            "the app is tracked: {st}"
        );
    };

    // No session, so no manager: `runuser -u` opens no logind session.
    w.sd.run_ok(&["useradd", "-m", "rfd-nosession"]);
    let app = App::start(w.sd.command(&[
        "runuser",
        "-u",
        "rfd-nosession",
        "--",
        &format!("/snap/bin/{SNAP}"),
    ]));
    in_system_manager(&app);
    app.release();

    // A logged-in user puts their own listener on their manager's socket.
    let mallory = w.sd.login("rfd-mallory");
    let sock = format!("/run/user/{}/systemd/private", mallory.uid);
    for (what, behaviour) in [
        ("hangs up", "c.close()"),
        ("never answers", "time.sleep(60)"),
    ] {
        let fake = format!(
            "import os, socket, time\n\
             p = '{sock}'\n\
             os.unlink(p)\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.bind(p); s.listen(8)\n\
             print('listening', flush=True)\n\
             while True:\n    c, _ = s.accept()\n    {behaviour}\n"
        );
        let mut listener =
            w.sd.user_command(
                &mallory,
                &format!("exec python3 -c \"{}\"", fake.replace('"', "\\\"")),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(listener.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening", "the fake manager did not start");
        let t = std::time::Instant::now();
        let app = App::start(w.sd.user_command(&mallory, &format!("exec /snap/bin/{SNAP}")));
        println!("a manager that {what}: the launch took {:.2?}", t.elapsed());
        in_system_manager(&app);
        app.release();
        let _ = listener.kill();
        let _ = listener.wait();
    }

    // A listener that answers like a manager — the scope's job is "done" — but moves nothing:
    // the kernel says the launch is not in the unit, so it is refused, and nothing is recorded.
    // One that takes the request and never answers may still act on it later (R13): the launch
    // is not started either, rather than sent to the system manager.
    for (mode, says) in [("lie", "systemd said"), ("mute", "did not put")] {
        let program = format!("{LIAR}\nserve('{sock}', '{mode}')\n");
        let mut liar = spawn_listener(&w, &mallory, &program);
        let out =
            w.sd.user_command(&mallory, &format!("/snap/bin/{SNAP} </dev/null"))
                .output()
                .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mode}: {err}");
        assert!(
            !text(&out.stdout).contains("started"),
            "{mode}: the app ran"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains(says) && err.contains("was not"),
            "{mode}: {err}"
        );
        let _ = liar.kill();
        let _ = liar.wait();
    }
    let left = w.sd.run_ok(&["ls", "-A", "/run/refreshd/runctl/units"]);
    assert!(left.trim().is_empty(), "units left in the registry: {left}");
}

/// Runs a Python listener as `login`, from their session, once it says it listens.
fn spawn_listener(w: &Installed, login: &systemd::Login, program: &str) -> Child {
    let path = format!("/tmp/listener-{}.py", login.name);
    w.sd.write_file(&path, program);
    let mut c =
        w.sd.user_command(login, &format!("exec python3 {path}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening", "the listener did not start");
    c
}

/// A fake manager: answers StartTransientUnit with a job and says the job is done, without
/// moving anything (D-Bus messages made by hand, little-endian).
const LIAR: &str = r#"
import os, re, socket, struct, time

def pad(b, a, base=0):
    return b + b'\0' * ((-(base + len(b))) % a)

def s_(x):
    x = x.encode()
    return struct.pack('<I', len(x)) + x + b'\0'

def g_(x):
    x = x.encode()
    return bytes([len(x)]) + x + b'\0'

def msg(mtype, serial, fields, body):
    arr = b''
    for code, sig, val in fields:
        arr = pad(arr, 8, 16)
        arr += bytes([code]) + g_(sig)
        if sig == 'g':
            arr += g_(val)
        elif sig == 'u':
            arr = pad(arr, 4, 16) + struct.pack('<I', val)
        else:
            arr = pad(arr, 4, 16) + s_(val)
    head = b'l' + bytes([mtype, 0, 1]) + struct.pack('<III', len(body), serial, len(arr)) + arr
    return pad(head, 8) + body

def serve(path, mode):
    os.unlink(path)
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(8)
    print('listening', flush=True)
    while True:
        c, _ = s.accept()
        data = b''
        while b'BEGIN\r\n' not in data:
            more = c.recv(4096)
            if not more:
                break
            data += more
            if b'AUTH' in data and b'\r\n' in data and b'OK' not in data:
                c.sendall(b'OK 0123456789abcdef0123456789abcdef\r\n')
                data += b'OK'
        call = data.split(b'BEGIN\r\n', 1)[-1]
        while not re.search(rb'snap\.[^\0]*\.scope', call):
            call += c.recv(4096)
        if mode == 'mute':
            time.sleep(60)
        serial = struct.unpack('<I', call[8:12])[0]
        unit = re.search(rb'snap\.[^\0]*\.scope', call).group().decode()
        c.sendall(msg(2, 1, [(5, 'u', serial), (8, 'g', 'o')], s_('/job/1')))
        body = struct.pack('<I', 1) + s_('/job/1')
        body = pad(body, 4) + s_(unit)
        body = pad(body, 4) + s_('done')
        c.sendall(msg(4, 2, [(1, 'o', '/org/freedesktop/systemd1'),
                             (2, 's', 'org.freedesktop.systemd1.Manager'),
                             (3, 's', 'JobRemoved'), (8, 'g', 'uoss')], body))
"#;

/// A user's launch during a critical section waits (and says so in the journal, through
/// syslog), joins nothing meanwhile, and starts in a scope of its user's manager, with the new
/// revision, once the section is left.
#[test]
fn a_launch_in_a_critical_section_waits_then_lands_in_its_users_scope() {
    if !can_run() {
        return;
    }
    let w = Installed::boot(
        BootOpts::default(),
        &format!("--insecure-unsigned-store --store {STORE}"),
    );
    let alice = w.sd.login("rfd-waiter");
    assert_eq!(publish(&w, "1.0"), 1);
    w.ctl_ok(&["install", SNAP]);
    // From now on a refresh parks just before it lifts the inhibition, until restarted.
    w.sd.write_file(
        "/etc/default/refreshd",
        format!(
            "REFRESHD_ARGS=\"--insecure-unsigned-store --store {STORE}\"\n\
             REFRESHD_FAILPOINTS=park-do:lift-inhibition\n"
        ),
    );
    w.sd.run_ok(&["systemctl", "restart", "refreshd.service"]);
    assert_eq!(publish(&w, "1.1"), 2);
    let id = w.ctl_ok(&["refresh", SNAP, "--no-wait"]).trim().to_owned();
    let mut watch = w.watch(id.parse().unwrap());
    assert!(
        watch.until(|c| {
            c["tasks"].as_array().is_some_and(|ts| {
                ts.iter()
                    .any(|t| t["kind"] == "lift-inhibition" && t["status"] == "Wait")
            })
        }),
        "{}",
        watch.last
    );

    let launch = std::thread::spawn({
        let cmd = w.sd.user_command(&alice, &format!("exec /snap/bin/{SNAP}"));
        move || App::start(cmd)
    });
    // The launcher's syslog line is the event that it waits (journald reads /dev/log).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let said = loop {
        let j = text(
            &w.sd
                .run(&[
                    "journalctl",
                    "--no-pager",
                    "-o",
                    "cat",
                    "-t",
                    "confine-hook",
                ])
                .stdout,
        );
        if let Some(l) = j.lines().find(|l| l.contains("waits for refresh")) {
            break l.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no wait line: {j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("confine-hook: {said}");
    assert!(
        !launch.is_finished(),
        "the app started in a critical section"
    );
    let units = w.sd.run_ok(&["ls", "-A", "/run/refreshd/runctl/units"]);
    assert!(units.trim().is_empty(), "a waiting launch joined: {units}");

    // Without the failpoint the refresh finishes and lifts the inhibition.
    w.sd.write_file(
        "/etc/default/refreshd",
        format!("REFRESHD_ARGS=\"--insecure-unsigned-store --store {STORE}\"\n"),
    );
    w.sd.run_ok(&["systemctl", "restart", "refreshd.service"]);
    let mut watch = w.watch(id.parse().unwrap());
    assert!(watch.until(|c| c["ready"] == true), "{}", watch.last);
    assert_eq!(watch.last["status"], "Done", "{}", watch.last);
    let app = launch.join().unwrap();
    let cg = cgroup(&w.sd, app.pid);
    assert!(
        cg.contains(&format!(
            "/user@{}.service/app.slice/snap.{SNAP}.{SNAP}.refreshd-",
            alice.uid
        )),
        "{cg}"
    );
    let rev = w.sd.run_ok(&[
        "sh",
        "-c",
        &format!(
            "tr '\\0' '\\n' < /proc/{}/environ | grep ^SNAP_REVISION=",
            app.pid
        ),
    ]);
    assert_eq!(
        rev.trim(),
        "SNAP_REVISION=2",
        "the launch runs the new revision"
    );
    app.release();
}
