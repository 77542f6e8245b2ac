//! Faults of the kernel interfaces and of time, on the real kernel (docs/failure-modes.md): the
//! wall clock jumping, inotify's queue overflowing and its limits reached, the cgroup
//! filesystems missing or read-only, a foreign release agent, a lock holder that dies and
//! markers removed by hand. In every case no app is killed, no critical section is entered
//! while an app of the snap runs, and nothing waits for ever.
//!
//! Faults that would touch global kernel state (the freezer's `release_agent`, the cgroup mounts,
//! the inotify limits) are made in namespaces of the daemon's own (`DaemonOpts::wrapper`), so
//! tests running beside these see nothing of them.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use refreshd_tests::*;

fn prerequisites() -> bool {
    root_with(
        "cgroups, namespaces and a setuid launcher",
        &[("unshare", "util-linux"), ("nsenter", "util-linux")],
    )
}

const RUNCTL: &str = "run/refreshd/runctl";

/// `tracked` x1 installed by `d`, and the file of x2.
fn install_x1(root: &Root) -> PathBuf {
    let (b1, b2) = (root.aux("t1.snap"), root.aux("t2.snap"));
    tracking_snap(&b1, "tracked", "1.0", false);
    tracking_snap(&b2, "tracked", "2.0", false);
    let out = ctl(root.path(), &["install", b1.to_str().unwrap()]);
    assert!(out.status.success(), "install: {}", text(&out.stderr));
    b2
}

/// Asks for x2 and returns the change once `wait-for-apps` is parked waiting for the app.
fn refresh_parked(r: &Path, b2: &Path) -> u64 {
    let id = refresh_to(r, b2);
    let c = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(task(&c, "wait-for-apps")["status"], "Wait", "{c}");
    id
}

/// Asks for the revision in file `b` without waiting; returns the change.
fn refresh_to(r: &Path, b: &Path) -> u64 {
    let out = ctl(r, &["install", b.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "refresh: {}", text(&out.stderr));
    newest_change(r)
}

fn current(r: &Path) -> String {
    fs::read_link(r.join("snap/tracked/current"))
        .unwrap()
        .display()
        .to_string()
}

/// The change has not gone ahead: not ready, the old revision current, no inhibition.
fn assert_not_applied(r: &Path, id: u64, why: &str) {
    let c = find_in(&ctl_json(r, &["changes", "--all", "--json"]), "id", id);
    assert_eq!(c["ready"], false, "{why}: the refresh went ahead: {c}");
    assert_eq!(current(r), "x1", "{why}: current moved under the app");
}

/// Follows change `id` until it is ready; asserts it is Done within `bound`, and says how long.
/// A change that stalls fails the test at `bound`, with its last state.
fn done_within(r: &Path, id: u64, bound: Duration) -> Duration {
    let t0 = Instant::now();
    let (mut watch, rx) = watch_lines(r, id);
    let mut c = Value::Null;
    while let Ok(l) = rx.recv_timeout(bound.saturating_sub(t0.elapsed())) {
        c = serde_json::from_str(&l).unwrap();
        if c["ready"] == true {
            break;
        }
    }
    let took = t0.elapsed();
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(c["ready"], true, "not done within {bound:?}: {c}");
    assert_eq!(c["status"], "Done", "{c}");
    assert!(took < bound, "done after {took:?}, not within {bound:?}");
    assert_eq!(current(r), "x2");
    took
}

/// The tracking backend and why (`refreshctl status`).
fn tracking_of(r: &Path) -> (String, String) {
    let s = ctl_json(r, &["status", "--json"]);
    (
        s["tracking"].as_str().unwrap_or_default().to_owned(),
        s["tracking-reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// `unshare --mount` running `script` before it execs the daemon: a mount namespace of the
/// daemon's own, whose changes nobody else sees.
fn private_mounts(script: &str) -> Vec<String> {
    vec![
        "unshare".into(),
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        format!("{script} && exec \"$@\""),
        "sh".into(),
    ]
}

/// An app launched through `cmd` (a launcher, perhaps run in a namespace): the tracking snap's
/// `hold`, which says `started PID NS REV` and exits when told on its stdin.
struct Launched {
    child: Option<Child>,
    out: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Launched {
    fn spawn(mut cmd: Command) -> Launched {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("launch");
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        Launched {
            child: Some(child),
            out,
        }
    }

    /// The `started` line's fields: (pid, unix ns, revision), or the launcher's failure.
    fn started(&mut self) -> Result<(i32, u128, String), String> {
        match self.out.next() {
            Some(Ok(l)) => {
                let w: Vec<&str> = l.split_whitespace().collect();
                if w.len() == 4 && w[0] == "started" {
                    Ok((
                        w[1].parse().unwrap(),
                        w[2].parse().unwrap(),
                        w[3].to_owned(),
                    ))
                } else {
                    Err(l)
                }
            }
            _ => {
                let mut c = self.child.take().unwrap();
                Err(format!("exited {:?}", c.wait().unwrap()))
            }
        }
    }

    fn release(mut self) {
        let mut c = self.child.take().unwrap();
        let _ = writeln!(c.stdin.take().unwrap(), "go");
        let _ = self.out.next();
        let _ = c.wait();
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The launcher, to be run in the daemon's mount namespace.
fn launcher_in_ns_of(d: &Daemon, r: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg("--mount")
        .arg(format!("--target={}", d.pid()))
        .arg("--")
        .arg(r.join("snap/bin/tracked.hold"));
    cmd
}

/// The launcher run in the daemon's mount namespace.
fn launch_in_ns_of(d: &Daemon, r: &Path) -> Launched {
    Launched::spawn(launcher_in_ns_of(d, r))
}

/// Polls `cond` until it holds or `limit` passes (for states no event announces).
fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn figures(injected: u32, handled: u32) {
    println!("figures: kernel-faults: injected={injected} handled={handled}");
}

/// Sets libfaketime's offset (read on every clock call): written beside and renamed over, so
/// that the daemon never reads a half-written file (which would mean no offset at all).
fn set_offset(file: &Path, offset: &str) {
    let tmp = file.with_extension("tmp");
    fs::write(&tmp, offset).unwrap();
    fs::rename(&tmp, file).unwrap();
}

/// libfaketime's preload library (Debian package `faketime`).
fn libfaketime() -> Option<PathBuf> {
    let dirs = fs::read_dir("/usr/lib").ok()?;
    dirs.flatten()
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")])
        .find(|p| p.exists())
}

/// The environment that has libfaketime `lib` offset the wall clock (not the monotonic one) by
/// what file `offset` says.
fn faketime_env(lib: &Path, offset: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            offset.display().to_string(),
        ),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// The wall clock jumps a year forward, then two years back, while a refresh waits for an app
/// (with a deadline: `v1-poll`), while a hook runs under a timeout, and with a hold in place.
/// Timeouts and backoff are monotonic; deadlines stored in wall time move back with the clock.
#[test]
fn wall_clock_jumps_neither_expire_nor_stall_anything() {
    if !prerequisites() {
        return;
    }
    let Some(lib) = libfaketime() else {
        skip("libfaketime not installed (faketime)");
        return;
    };
    if cgroup_mounts().0.is_none() {
        skip("no cgroup v1 freezer hierarchy (the test needs v1-poll's timed waits)");
        return;
    }
    let root = Root::new("kf-clock");
    let r = root.path();
    let offset = root.aux("faketime");
    set_offset(&offset, "+0d\n");
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: [
                "--tracking",
                "v1-poll",
                "--poll-interval-ms",
                "300",
                "--hook-timeout",
                "30",
            ]
            .map(String::from)
            .to_vec(),
            env: faketime_env(&lib, &offset),
            ..Default::default()
        },
    );
    // The hook counts its runs and waits for the test's word: the jump comes while it runs.
    let hook = "#!/bin/sh\necho run >> \"$SNAP_COMMON/hook.runs\"\nwhile [ ! -e \"$SNAP_COMMON/hook.go\" ]; do sleep 0.05; done\n";
    let (b1, b2) = (root.aux("t1.snap"), root.aux("t2.snap"));
    for (b, v) in [(&b1, "1.0"), (&b2, "2.0")] {
        SnapSrc::new(&format!(
            "name: tracked\nversion: '{v}'\nsummary: Clock test\napps:\n  hold:\n    command: bin/hold\n"
        ))
        .file(
            "bin/hold",
            "#!/bin/sh\necho \"started $$ $(date +%s%N) $SNAP_REVISION\"\nread line\necho \"exit $(date +%s%N)\"\n",
            0o755,
        )
        .file("meta/hooks/pre-refresh", hook, 0o755)
        .build(b);
    }
    let out = ctl(r, &["install", b1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let install_id = newest_change(r);
    let out = ctl(r, &["refresh", "--hold=2h", "tracked"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hold_of = || find_in(&ctl_json(r, &["list", "--json"]), "name", "tracked")["hold"].clone();
    let hold = hold_of();
    assert!(hold.is_string(), "held: {hold}");

    let app = App::launch(r, "tracked.hold");
    let id = refresh_to(r, &b2);
    let common = r.join("var/snap/tracked/common");
    assert!(
        eventually(Duration::from_secs(30), || common
            .join("hook.runs")
            .exists()),
        "the pre-refresh hook did not start"
    );
    let mut injected = 0;
    let mut handled = 0;

    // A year forward, while the hook runs under a 30 s timeout.
    set_offset(&offset, "+365d\n");
    injected += 1;
    std::thread::sleep(Duration::from_millis(500));
    fs::write(common.join("hook.go"), "").unwrap();
    let c = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(
        task(&c, "pre-refresh-hook")["status"],
        "Done",
        "the hook was not stopped by a timeout the jump expired: {c}"
    );
    assert_eq!(task(&c, "wait-for-apps")["status"], "Wait", "{c}");
    // The refresh keeps waiting for the app: the clock does not expire it.
    std::thread::sleep(Duration::from_secs(2));
    assert_not_applied(r, id, "a year forward");
    // A hold is a wall-clock time (docs/api.md): a year on, it has passed.
    assert_eq!(hold_of(), Value::Null, "the hold outlived its time");
    // Pruning goes by the wall clock too: a finished change a year old goes, the running one
    // stays. The prune runs when a change becomes ready: a hold request makes none, so another
    // snap's install does.
    let other = root.aux("other.snap");
    hello_snap(&other, "other", "1.0");
    assert!(ctl(r, &["install", other.to_str().unwrap()])
        .status
        .success());
    let ids: Vec<u64> = ctl_json(r, &["changes", "--all", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert!(ids.contains(&id), "the running change was pruned: {ids:?}");
    assert!(
        !ids.contains(&install_id),
        "a change finished a year ago was kept: {ids:?}"
    );
    handled += 1;

    // Two years back (a year before the real time), while the refresh waits with a deadline
    // stored a year ahead: the deadline moves with the clock, so the exit is seen at once.
    set_offset(&offset, "-365d\n");
    injected += 1;
    std::thread::sleep(Duration::from_millis(500));
    assert_not_applied(r, id, "a year back");
    assert_eq!(hold_of(), hold, "back before its end, the hold holds again");
    app.release();
    let took = done_within(r, id, Duration::from_secs(10));
    handled += 1;
    println!("clock set back two years: the refresh finished {took:?} after the app exited");

    // Nothing ran twice: one hook run, one entry into the critical section.
    let runs = fs::read_to_string(common.join("hook.runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the hook ran {runs:?}");
    let done = watch_until_ready(r, id);
    let entered = task_log(&done, "wait-for-apps")
        .iter()
        .filter(|l| l.contains("critical section entered"))
        .count();
    assert_eq!(entered, 1, "{done}");
    assert!(
        d.log_text().contains("the wall clock was set back"),
        "{}",
        d.log_text()
    );
    figures(injected, handled);
}

/// The daemon is stopped while a refresh retries (a launcher holds the snap's lock) and comes
/// back with the wall clock a year earlier: the retry's stored time is a year ahead, and is
/// not waited for.
#[test]
fn clock_set_back_while_the_daemon_is_down_does_not_stall_retries() {
    if !prerequisites() {
        return;
    }
    let Some(lib) = libfaketime() else {
        skip("libfaketime not installed (faketime)");
        return;
    };
    let root = Root::new("kf-clock-down");
    let r = root.path();
    let b2 = {
        let _d = Daemon::start(r);
        install_x1(&root)
    };
    let lock = r.join(RUNCTL).join("snap.tracked.lock");
    let mut holder = hold_lock(&lock);
    let _reap = Reap(holder.id() as i32);
    let d = Daemon::start(r);
    let id = refresh_to(r, &b2);
    watch_until(r, id, |c| !task(c, "wait-for-apps")["retry"].is_null());
    assert!(d.stop().success());
    let offset = root.aux("faketime");
    set_offset(&offset, "-365d\n");
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            env: faketime_env(&lib, &offset),
            ..Default::default()
        },
    );
    kill(Pid::from_raw(holder.id() as i32), Signal::SIGKILL).unwrap();
    let _ = holder.wait();
    let took = done_within(r, id, Duration::from_secs(10));
    println!(
        "restarted a year back: the retried refresh finished {took:?} after the lock was free"
    );
    drop(d);
    figures(1, 1);
}

/// `flock --no-fork`: the holder is the process we kill, nothing inherits the lock. Returns once
/// the lock is taken.
fn hold_lock(lock: &Path) -> Child {
    let holder = Command::new("flock")
        .args(["--no-fork", "--exclusive"])
        .arg(lock)
        .args(["sleep", "1000"])
        .spawn()
        .expect("flock");
    assert!(eventually(Duration::from_secs(10), || {
        Command::new("flock")
            .args(["--nonblock", "--exclusive"])
            .arg(lock)
            .arg("true")
            .status()
            .is_ok_and(|s| !s.success())
    }));
    holder
}

/// SIGSTOP the daemon, overflow its inotify queue (more events than
/// `fs.inotify.max_queued_events`), let the app exit — its event is among the lost ones —
/// and SIGCONT: the daemon sees `IN_Q_OVERFLOW`, rescans the kernel and finishes the refresh at
/// once, not at its backstop (60 s).
#[test]
fn inotify_queue_overflow_is_rescanned_at_once() {
    if !prerequisites() {
        return;
    }
    let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384);
    let (v1, v2) = cgroup_mounts();
    let mut injected = 0;
    let mut handled = 0;
    for (backend, present) in [("v1", v1.is_some()), ("v2", v2.is_some())] {
        if !present {
            skip(&format!("no {backend} hierarchy"));
            continue;
        }
        let root = Root::new(&format!("kf-overflow-{backend}"));
        let r = root.path();
        let d = Daemon::start_with(
            r,
            DaemonOpts {
                extra_args: vec!["--tracking".into(), backend.into()],
                ..Default::default()
            },
        );
        let (kind, why) = tracking_of(r);
        if kind != backend {
            skip(&format!("{backend} tracking unavailable: {why}"));
            continue;
        }
        let b2 = install_x1(&root);
        let app = App::launch(r, "tracked.hold");
        let id = refresh_parked(r, &b2);
        let runctl = r.join(RUNCTL);
        // Where the watcher's events come from: runctl's unlinks (v1), the cgroup2 parent's
        // new entries (v2).
        let flood_dir = match backend {
            "v1" => runctl.clone(),
            _ => cgroup_parents(r)
                .into_iter()
                .find(|p| v2.as_ref().is_some_and(|m| p.starts_with(m)))
                .unwrap(),
        };
        let pid = Pid::from_raw(d.pid());
        kill(pid, Signal::SIGSTOP).unwrap();
        let _cont = Cont(pid);
        let n = max + 2048;
        for i in 0..n {
            let p = flood_dir.join(format!("flood.{i}"));
            if backend == "v1" {
                fs::write(&p, b"").unwrap();
                fs::remove_file(&p).unwrap();
            } else {
                fs::create_dir(&p).unwrap();
                fs::remove_dir(&p).unwrap();
            }
        }
        injected += 1;
        let exited = Instant::now();
        app.release();
        if backend == "v1" {
            // The agent's unlink: its event, too, found the queue full.
            assert!(eventually(Duration::from_secs(10), || !runctl
                .join("snap.tracked.running")
                .exists()));
        }
        kill(pid, Signal::SIGCONT).unwrap();
        let took = done_within(r, id, Duration::from_secs(20));
        assert!(
            d.log_text().contains("inotify queue overflowed"),
            "{backend}: {}",
            d.log_text()
        );
        assert!(
            !d.log_text().contains("but no event said so"),
            "{backend}: the backstop, not the overflow, woke the refresh"
        );
        handled += 1;
        println!(
            "{backend}: {n} events against a queue of {max}: refresh done {took:?} after SIGCONT ({:?} after the exit); backstop: {}s",
            exited.elapsed(),
            60
        );
    }
    figures(injected, handled);
}

/// SIGCONTs a stopped daemon even when the test fails.
struct Cont(Pid);

impl Drop for Cont {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// A user namespace (root mapped to root, so the daemon keeps its access) whose inotify limits
/// are the given values: EMFILE from `inotify_init`, or ENOSPC from `inotify_add_watch`, as when
/// another process of the same user has used them up. The global limits stay untouched.
///
/// The freezer's `release_agent` cannot be written from a user namespace (EPERM): the file
/// `agent_value` is bound over it in a mount namespace of the daemon's own, so the backend the
/// daemon picks does not depend on what the machine's value is.
fn inotify_limited(instances: u32, watches: u32, agent_value: &Path) -> Vec<String> {
    let bind = cgroup_mounts()
        .0
        .map(|f| {
            format!(
                "mount --bind '{}' '{}' && ",
                agent_value.display(),
                f.join("release_agent").display()
            )
        })
        .unwrap_or_default();
    vec![
        "unshare".into(),
        "--user".into(),
        "--map-root-user".into(),
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "{bind}echo {instances} > /proc/sys/user/max_inotify_instances && echo {watches} > /proc/sys/user/max_inotify_watches && exec \"$@\""
        ),
        "sh".into(),
    ]
}

fn user_namespaces_work() -> bool {
    Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The daemon gets no inotify instance (EMFILE) or no watch (ENOSPC): it polls instead, says
/// why in `status`, and a refresh still completes once the app exits.
#[test]
fn daemon_without_inotify_polls_and_says_why() {
    if !prerequisites() {
        return;
    }
    if !user_namespaces_work() {
        skip("cannot make a user namespace (unshare --user)");
        return;
    }
    let mut injected = 0;
    let mut handled = 0;
    for (tag, instances, watches, errno) in [
        ("emfile", 0, 8192, "Too many open files"),
        ("enospc", 16, 0, "No space left on device"),
    ] {
        let root = Root::new(&format!("kf-noino-{tag}"));
        let r = root.path();
        let agent_value = root.aux("release_agent");
        fs::write(&agent_value, "\n").unwrap();
        let d = Daemon::start_with(
            r,
            DaemonOpts {
                wrapper: inotify_limited(instances, watches, &agent_value),
                // Loop mounts need the initial user namespace; payloads are extracted.
                extra_args: ["--extract", "--poll-interval-ms", "200"]
                    .map(String::from)
                    .to_vec(),
                ..Default::default()
            },
        );
        injected += 1;
        let (kind, why) = tracking_of(r);
        println!("{tag}: tracking {kind}: {why}");
        assert!(
            why.contains("inotify unavailable") && why.contains(errno),
            "{tag}: status says why: {why}"
        );
        assert!(why.contains("polled every"), "{tag}: {why}");
        assert_ne!(kind, "none", "{tag}");
        let b2 = install_x1(&root);
        let app = App::launch(r, "tracked.hold");
        let id = refresh_parked(r, &b2);
        std::thread::sleep(Duration::from_millis(600));
        assert_not_applied(r, id, tag);
        app.release();
        let took = done_within(r, id, Duration::from_secs(10));
        handled += 1;
        println!("{tag}: polling noticed the exit; refresh done {took:?} after it");
        drop(d);
    }
    figures(injected, handled);
}

/// A root whose refresh of `tracked` (x1 → x2) is held inside its critical section: the
/// inhibition marker is written and `lift-inhibition` parked (failpoint).
fn section_held_open(tag: &str) -> (Root, Daemon, u64) {
    let root = Root::new(tag);
    let r = root.path();
    let b2 = {
        let _d = Daemon::start(r);
        install_x1(&root)
    };
    let (d, id) = refresh_held_in_section(r, "tracked", &b2);
    (root, d, id)
}

/// The launch waits — alive, without inotify, not in the snap's groups — through the critical
/// section; after the lift it starts the new revision. Returns how long after the lift.
fn waits_without_inotify_then_starts(
    r: &Path,
    d: Daemon,
    id: u64,
    launch: &mut Launched,
) -> Duration {
    let pid = launch.child.as_ref().unwrap().id();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        launch.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the launcher gave up instead of waiting"
    );
    let fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !fds.iter().any(|f| f.contains("inotify")),
        "the launcher got an inotify instance after all: {fds:?}"
    );
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert!(
        !cg.contains("snap.tracked"),
        "joined during the critical section: {cg}"
    );
    assert!(d.stop().success());
    let _d = Daemon::start(r);
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    let left = logged_at(&done, "lift-inhibition", "critical section left").unwrap();
    let (_, started, rev) = launch.started().expect("the launch went on after the lift");
    assert_eq!(rev, "x2");
    assert!(started >= left, "started {started} before the lift {left}");
    Duration::from_nanos((started - left) as u64)
}

/// A launch during the critical section that cannot get inotify (EMFILE: here a user namespace
/// whose limit is 0) still waits — looking every 250 ms — and starts only after the lift.
#[test]
fn launcher_without_inotify_still_waits_for_the_lift() {
    if !prerequisites() {
        return;
    }
    if !user_namespaces_work() {
        skip("cannot make a user namespace (unshare --user)");
        return;
    }
    let (root, d, id) = section_held_open("kf-hook-noino");
    let r = root.path();
    // A user namespace with every id mapped (so the launcher can drop to the caller's groups
    // as usual), mapped from here while it waits on a fifo.
    let fifo = root.aux("mapped");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "sh", "-c"])
        // Exec'd again once mapped: only then is it root in there, with the capabilities to
        // set the namespace's limit.
        .arg("read _ < \"$0\" && exec sh -c 'echo 0 > /proc/sys/user/max_inotify_instances && exec \"$@\"' sh \"$@\"")
        .arg(&fifo)
        .arg(r.join("snap/bin/tracked.hold"));
    let mut launch = Launched::spawn(cmd);
    let pid = launch.child.as_ref().unwrap().id();
    let own = fs::read_link("/proc/self/ns/user").unwrap();
    assert!(eventually(Duration::from_secs(10), || fs::read_link(
        format!("/proc/{pid}/ns/user")
    )
    .is_ok_and(|ns| ns != own)));
    for map in ["uid_map", "gid_map"] {
        fs::write(format!("/proc/{pid}/{map}"), "0 0 4294967295\n").unwrap();
    }
    fs::write(&fifo, "go\n").unwrap();
    let after = waits_without_inotify_then_starts(r, d, id, &mut launch);
    println!("launcher without inotify: started {after:?} after the lift");
    launch.release();
    figures(1, 1);
}

/// `prog` run as `user`, with no supplementary groups.
fn as_user(user: &TestUser, prog: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .arg(prog);
    cmd
}

/// A user who used up their own inotify instances (`fs.inotify.max_user_instances`, counted
/// per user) launches during the critical section: the setuid launcher makes its instance as
/// that user, not as root — so it cannot use up root's, which root's services need — finds
/// none left, and waits by looking instead.
#[test]
fn user_out_of_inotify_instances_waits_without_charging_root() {
    if !prerequisites() {
        return;
    }
    // The system's python (not a per-user shim the test user cannot run).
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        skip("/usr/bin/python3 not installed (python3)");
        return;
    }
    let Some(user) = TestUser::create("kfino") else {
        skip("useradd failed");
        return;
    };
    let (root, d, id) = section_held_open("kf-user-noino");
    let r = root.path();
    user_home(r, &user);
    // The user's own processes hold every instance the user may have.
    let mut hog = as_user(&user, python)
        .arg("-c")
        .arg(
            "import ctypes,sys\nl=ctypes.CDLL(None)\nfds=[]\nwhile True:\n fd=l.inotify_init1(0)\n if fd<0: break\n fds.append(fd)\nprint(len(fds),flush=True)\nsys.stdin.read()\n",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let _reap = Reap(hog.id() as i32);
    let mut line = String::new();
    BufReader::new(hog.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let held: u32 = line.trim().parse().expect("the user's instance count");
    assert!(held > 0, "the user could make no inotify instance at all");
    println!("the user holds {held} inotify instances, all it may have");
    let mut launch = Launched::spawn(as_user(&user, &r.join("snap/bin/tracked.hold")));
    let after = waits_without_inotify_then_starts(r, d, id, &mut launch);
    println!("user out of inotify instances: started {after:?} after the lift");
    launch.release();
    let _ = hog.kill();
    let _ = hog.wait();
    figures(1, 1);
}

/// A root whose daemon runs in a mount namespace of its own where `fault` (a shell command) was
/// done to each cgroup mount: its tracking is `environ`. Returns the root, the daemon and why.
fn environ_without(
    mounts: &[PathBuf],
    tag: &str,
    what: &str,
    fault: impl Fn(&Path) -> String,
) -> (Root, Daemon, String) {
    let root = Root::new(tag);
    let r = root.path();
    let script: Vec<String> = mounts.iter().map(|m| fault(m)).collect();
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            wrapper: private_mounts(&script.join(" && ")),
            extra_args: vec!["--extract".into()],
            ..Default::default()
        },
    );
    let (kind, why) = tracking_of(r);
    println!("{what}: tracking {kind}: {why}");
    assert_eq!(kind, "environ", "{why}");
    (root, d, why)
}

/// The daemon's namespace has no freezer and no cgroup2 mount: it says `environ` and why. A launch
/// there goes on untracked (confine-hook's `launches_untracked_when_no_hierarchy_is_mounted`),
/// and a refresh finds the running app by its environment and waits for it
/// (docs/runctl-protocol.md, `none`). With the hierarchies
/// read-only the daemon cannot make its groups: the same `environ`, and a launch in that
/// namespace is refused rather than run untracked.
#[test]
fn cgroup_fs_missing_or_read_only() {
    if !prerequisites() {
        return;
    }
    let (v1, v2) = cgroup_mounts();
    let mounts: Vec<PathBuf> = [v1, v2].into_iter().flatten().collect();
    if mounts.is_empty() {
        skip("no cgroup hierarchy to take away");
        return;
    }
    let mut injected = 0;
    let mut handled = 0;

    // Missing.
    let (root, d, why) = environ_without(&mounts, "kf-nocg", "missing", |m| {
        format!("umount -l '{}'", m.display())
    });
    let r = root.path();
    injected += 1;
    assert!(why.contains("no usable cgroup2 hierarchy"), "{why}");
    let b2 = install_x1(&root);
    let mut app = launch_in_ns_of(&d, r);
    let (pid, _, rev) = app.started().expect("an untracked launch goes on");
    assert_eq!(rev, "x1");
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(!cg.contains("snap.tracked"), "{cg}");
    let id = refresh_to(r, &b2);
    // No cgroup to read: the app is found by the SNAP variable confine-hook gave it, and the
    // refresh waits for it like any other.
    let waiting = watch_until(r, id, |ch| {
        task(ch, "wait-for-apps")["status"] == "Wait"
            && ch.to_string().contains(&format!("pid {pid}"))
    });
    assert_eq!(waiting["status"], "Wait", "{waiting}");
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("x1"),
        "nothing is switched while the app runs"
    );
    app.release();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    handled += 1;
    drop(d);
    drop(root);

    // Read-only.
    let (root, d, why) = environ_without(&mounts, "kf-rocg", "read-only", |m| {
        format!("mount -o remount,bind,ro '{}'", m.display())
    });
    let r = root.path();
    injected += 1;
    assert!(
        why.contains("Read-only file system"),
        "status says why: {why}"
    );
    install_x1(&root);
    let out = launcher_in_ns_of(&d, r)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    println!("read-only: launch refused: {}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !text(&out.stdout).contains("started"),
        "an untrackable launch ran"
    );
    assert!(err.contains("could not track it"), "{err}");
    handled += 1;
    figures(injected, handled);
}

/// Another program owns the freezer's `release_agent` (here: a file naming `/bin/true`, bound
/// over it in the daemon's mount namespace only). The daemon leaves it alone, polls instead and
/// says so; a refresh still waits for the app and finishes after it exits.
#[test]
fn foreign_release_agent_is_left_alone() {
    if !prerequisites() {
        return;
    }
    let Some(freezer) = cgroup_mounts().0 else {
        skip("no cgroup v1 freezer hierarchy");
        return;
    };
    let root = Root::new("kf-agent");
    let r = root.path();
    let foreign = root.aux("release_agent");
    fs::write(&foreign, "/bin/true\n").unwrap();
    fs::set_permissions(&foreign, fs::Permissions::from_mode(0o644)).unwrap();
    let agent = freezer.join("release_agent");
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            wrapper: private_mounts(&format!(
                "mount --bind '{}' '{}'",
                foreign.display(),
                agent.display()
            )),
            extra_args: ["--extract", "--poll-interval-ms", "200"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    );
    let (kind, why) = tracking_of(r);
    println!("tracking {kind}: {why}");
    assert_eq!(kind, "v1-poll", "{why}");
    assert!(
        why.contains("/bin/true") && why.contains("left alone"),
        "{why}"
    );
    assert_eq!(
        fs::read_to_string(&foreign).unwrap(),
        "/bin/true\n",
        "the foreign agent was overwritten"
    );
    let b2 = install_x1(&root);
    let app = App::launch(r, "tracked.hold");
    let id = refresh_parked(r, &b2);
    std::thread::sleep(Duration::from_millis(600));
    assert_not_applied(r, id, "foreign agent");
    app.release();
    let took = done_within(r, id, Duration::from_secs(10));
    println!("foreign agent: polling finished the refresh {took:?} after the exit");
    assert_eq!(fs::read_to_string(&foreign).unwrap(), "/bin/true\n");
    // Status says exactly what the kernel runs: not ours, safe.
    assert_eq!(
        status_agent(r),
        ("/bin/true".to_owned(), false, true, String::new())
    );
    let shown = text(&ctl(r, &["status"]).stdout);
    assert!(
        shown.contains("release agent:       /bin/true (not refreshd's, safe)"),
        "{shown}"
    );
    drop(_d);
    assert_eq!(
        fs::read_to_string(&foreign).unwrap(),
        "/bin/true\n",
        "a foreign agent was cleared at shutdown"
    );

    // A foreign agent anyone could replace: still someone else's, left alone; status and the
    // log say it is unsafe.
    let planted = root.aux("their-agent");
    fs::write(&planted, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&planted, fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(&foreign, format!("{}\n", planted.display())).unwrap();
    let d = agent_daemon(&root, &freezer, &foreign, "", &[]);
    let (kind, why) = tracking_of(r);
    assert_eq!(kind, "v1-poll", "{why}");
    assert!(
        why.contains("left alone") && why.contains("unsafe"),
        "{why}"
    );
    let (path, ours, safe, unsafe_why) = status_agent(r);
    assert_eq!(
        (path.as_str(), ours, safe),
        (planted.to_str().unwrap(), false, false)
    );
    assert!(unsafe_why.contains("writable by everyone"), "{unsafe_why}");
    println!("an unsafe foreign agent: {unsafe_why}");
    assert!(d.log_text().contains("is not ours and is unsafe"));
    d.stop();
    assert_eq!(value_of(&foreign), planted.to_str().unwrap());
    figures(2, 2);
}

/// A daemon in a mount namespace of its own where the freezer's `release_agent` is the file
/// `value` (bound over it: what the daemon reads and writes, never the kernel's) and
/// /run/refreshd a tmpfs (an agent registry and lock of its own: daemons elsewhere on the
/// machine are not seen); `script` (shell) runs there first.
fn agent_daemon(root: &Root, freezer: &Path, value: &Path, script: &str, extra: &[&str]) -> Daemon {
    fs::create_dir_all("/run/refreshd").unwrap();
    let mut setup = format!(
        "mount --bind '{}' '{}' && mount -t tmpfs -o mode=0755 tmpfs /run/refreshd",
        value.display(),
        freezer.join("release_agent").display()
    );
    if !script.is_empty() {
        setup = format!("{setup} && {script}");
    }
    let mut args: Vec<String> = ["--extract", "--poll-interval-ms", "200"]
        .map(String::from)
        .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    Daemon::start_with(
        root.path(),
        DaemonOpts {
            wrapper: private_mounts(&setup),
            extra_args: args,
            ..Default::default()
        },
    )
}

/// A directory under /run/refreshd-tests (root's, 0755 on the way: safe), removed on drop.
struct SafeDir(PathBuf);

impl SafeDir {
    fn new(tag: &str) -> SafeDir {
        let base = Path::new(safe_agent::SAFE_AGENT_DIR);
        fs::create_dir_all(base).unwrap();
        let d = tempfile::Builder::new()
            .prefix(&format!("kf-{tag}-"))
            .tempdir_in(base)
            .unwrap()
            .keep();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        SafeDir(d)
    }
}

impl Drop for SafeDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A copy of the agent binary at `dest`, root's, mode 0755 (and its directory made).
fn agent_copy(dest: &Path) -> PathBuf {
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::copy(bin("refresh-release-agent"), dest).unwrap();
    std::os::unix::fs::chown(dest, Some(0), Some(0)).unwrap();
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755)).unwrap();
    dest.to_owned()
}

/// What `refreshctl status` says the kernel runs: (path, ours, safe, why).
fn status_agent(r: &Path) -> (String, bool, bool, String) {
    let a = &ctl_json(r, &["status", "--json"])["release-agent"];
    (
        a["path"].as_str().unwrap_or_default().to_owned(),
        a["ours"] == true,
        a["safe"] == true,
        a["why"].as_str().unwrap_or_default().to_owned(),
    )
}

fn value_of(file: &Path) -> String {
    fs::read_to_string(file).unwrap().trim().to_owned()
}

/// An agent where a user could put another binary — under a world-writable directory (a build
/// tree in /tmp), owned by a user, or reached through a link into /tmp — is never registered:
/// tracking falls back to v1-poll and says why in one line; `release_agent` stays as it was.
#[test]
fn an_agent_users_could_replace_is_refused() {
    if !prerequisites() {
        return;
    }
    let Some(freezer) = cgroup_mounts().0 else {
        skip("no cgroup v1 freezer hierarchy");
        return;
    };
    let root = Root::new("kf-agent-unsafe");
    let value = root.aux("release_agent");
    // Under /tmp: the scratch root's own directory is root's 0755, /tmp is 1777.
    let in_tmp = agent_copy(&root.aux("build/refresh-release-agent"));
    let safe = SafeDir::new("unsafe");
    let users = agent_copy(&safe.0.join("users/refresh-release-agent"));
    std::os::unix::fs::chown(&users, Some(65534), None).unwrap();
    let link_dir = safe.0.join("linked");
    fs::create_dir(&link_dir).unwrap();
    std::os::unix::fs::symlink(root.aux("build"), link_dir.join("bin")).unwrap();
    let cases: [(&str, PathBuf, &str); 3] = [
        ("under /tmp", in_tmp, "/tmp is writable by everyone"),
        ("owned by a user", users, "belongs to uid 65534"),
        (
            "through a link into /tmp",
            link_dir.join("bin/refresh-release-agent"),
            "/tmp is writable by everyone",
        ),
    ];
    let mut injected = 0;
    let mut handled = 0;
    for (what, agent, why) in cases {
        fs::write(&value, "\n").unwrap();
        injected += 1;
        let d = agent_daemon(
            &root,
            &freezer,
            &value,
            "",
            &["--release-agent", agent.to_str().unwrap()],
        );
        let (kind, reason) = tracking_of(root.path());
        println!("{what}: tracking {kind}: {reason}");
        assert_eq!(kind, "v1-poll", "{what}: {reason}");
        assert!(
            reason.contains("refusing to register") && reason.contains(why),
            "{what}: {reason}"
        );
        assert_eq!(value_of(&value), "", "{what}: registered anyway");
        let (path, _, _, _) = status_agent(root.path());
        assert_eq!(path, "", "{what}: status says the kernel runs nothing");
        d.stop();
        assert_eq!(value_of(&value), "", "{what}");
        handled += 1;
    }
    figures(injected, handled);
}

/// A registered value that is ours by name but stale — naming nothing under /tmp (a deleted
/// build tree: anyone may create it), an existing build under /tmp, a same-named file without
/// the agent protocol's marker — is replaced by the daemon's own safe agent, and the log says
/// so; status shows what the kernel runs now. At an orderly shutdown, with no other daemon
/// running, the value is cleared; with another daemon running (its lock held), it is kept.
#[test]
fn a_stale_agent_of_ours_is_replaced_and_ours_unregistered_when_unused() {
    if !prerequisites() {
        return;
    }
    let Some(freezer) = cgroup_mounts().0 else {
        skip("no cgroup v1 freezer hierarchy");
        return;
    };
    let root = Root::new("kf-agent-stale");
    let r = root.path();
    let value = root.aux("release_agent");
    let ours = safe_agent::install_release_agent(&bin("refresh-release-agent")).unwrap();
    let safe = SafeDir::new("stale");
    let unmarked = safe.0.join("old/refresh-release-agent");
    fs::create_dir_all(unmarked.parent().unwrap()).unwrap();
    fs::write(&unmarked, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&unmarked, fs::Permissions::from_mode(0o755)).unwrap();
    let cases: [(&str, PathBuf, &str); 3] = [
        (
            "a deleted build under /tmp",
            root.aux("gone/refresh-release-agent"),
            "it names nothing",
        ),
        (
            "a build under /tmp",
            agent_copy(&root.aux("build/refresh-release-agent")),
            "/tmp is writable by everyone",
        ),
        ("a file without the marker", unmarked, "marker"),
    ];
    let mut injected = 0;
    let mut handled = 0;
    for (what, stale, why) in cases {
        fs::write(&value, format!("{}\n", stale.display())).unwrap();
        injected += 1;
        // The log file is the root's, appended to by each daemon: this one's part.
        let from = fs::read_to_string(root.aux("refreshd.log"))
            .unwrap_or_default()
            .len();
        let d = agent_daemon(&root, &freezer, &value, "", &[]);
        let (kind, reason) = tracking_of(r);
        println!("{what}: tracking {kind}: {reason}");
        assert_eq!(kind, "v1", "{what}: {reason}");
        assert_eq!(
            value_of(&value),
            ours.to_str().unwrap(),
            "{what}: not replaced"
        );
        let log = d.log_text();
        let line = log[from..]
            .lines()
            .find(|l| l.contains("replacing the registered release agent"))
            .unwrap_or_else(|| panic!("{what}: the log does not say so: {log}"));
        assert!(
            line.contains(stale.to_str().unwrap()) && line.contains(why),
            "{what}: {line}"
        );
        println!("{what}: {line}");
        assert_eq!(
            status_agent(r),
            (ours.to_str().unwrap().to_owned(), true, true, String::new()),
            "{what}: status"
        );
        let text = text(&ctl(r, &["status"]).stdout);
        assert!(
            text.contains(&format!(
                "release agent:       {} (refreshd's, safe)",
                ours.display()
            )),
            "{text}"
        );
        // Alone on the machine (as the namespace shows it): cleared at an orderly shutdown.
        d.stop();
        assert_eq!(value_of(&value), "", "{what}: not unregistered at shutdown");
        handled += 1;
    }

    // Another daemon running (its root registered, its lock held): the agent stays.
    let other = root.aux("other-root");
    fs::create_dir_all(other.join(RUNCTL)).unwrap();
    let other_lock = fs::File::create(other.join("run/refreshd/daemon.lock")).unwrap();
    let held = nix::fcntl::Flock::lock(other_lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    fs::write(&value, "\n").unwrap();
    let entry = format!(
        "mkdir -p /run/refreshd/agent && ln -s '{}' /run/refreshd/agent/00000000000000aa",
        other.join(RUNCTL).display()
    );
    let d = agent_daemon(&root, &freezer, &value, &entry, &[]);
    assert_eq!(value_of(&value), ours.to_str().unwrap());
    d.stop();
    assert_eq!(
        value_of(&value),
        ours.to_str().unwrap(),
        "unregistered while another daemon runs"
    );
    drop(held);
    figures(injected, handled);
}

/// A process holds the snap's lock (as a launcher stopped in its join would) and then dies by
/// SIGKILL: while it holds the lock the refresh retries and says why, never failing; once the
/// kernel drops the lock it goes on at once.
#[test]
fn lock_holder_that_dies_releases_the_refresh() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("kf-lock");
    let r = root.path();
    let _d = Daemon::start(r);
    let b2 = install_x1(&root);
    let lock = r.join(RUNCTL).join("snap.tracked.lock");
    let mut holder = hold_lock(&lock);
    let _reap = Reap(holder.id() as i32);
    let id = refresh_to(r, &b2);
    let c = watch_until(r, id, |c| {
        task(c, "wait-for-apps")["retry"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("holds the snap's lock"))
    });
    let t = task(&c, "wait-for-apps");
    assert!(
        t["retry"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("holds the snap's lock")),
        "the refresh says why it waits: {t}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_not_applied(r, id, "lock held");
    kill(Pid::from_raw(holder.id() as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let _ = holder.wait();
    let took = done_within(r, id, Duration::from_secs(10));
    println!(
        "lock holder killed: refresh done {took:?} later ({:?} since the kill)",
        killed.elapsed()
    );
    figures(1, 1);
}

/// Kills a process the test started, if it still runs.
struct Reap(i32);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// Root removes `snap.NAME.running` while the app runs and a refresh waits: the marker is a
/// hint, the cgroup the truth; the refresh looks again, finds the app, puts the marker back and
/// keeps waiting. Then the inhibition marker is removed by hand in the critical section (the
/// daemon stopped there): a launch slips in — documented, the guarantee is void for it — and
/// the next critical task re-enters the section: it waits for that app before it switches
/// anything, with launches allowed meanwhile (the snap's `allow` behaviour: no launch waits on a
/// marker the daemon cannot get past), and restores the marker once the snap is empty.
#[test]
fn markers_removed_by_hand() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("kf-markers");
    let r = root.path();
    let runctl = r.join(RUNCTL);
    let mut injected = 0;
    let mut handled = 0;
    {
        let _d = Daemon::start(r);
        let b2 = install_x1(&root);
        let app = App::launch(r, "tracked.hold");
        let id = refresh_parked(r, &b2);
        let running = runctl.join("snap.tracked.running");
        for _ in 0..3 {
            fs::remove_file(&running).unwrap();
            injected += 1;
            // The watcher sees the unlink and the refresh looks again: the marker comes back.
            assert!(
                eventually(Duration::from_secs(10), || running.exists()),
                "the running marker was not restored"
            );
            assert_not_applied(r, id, "running marker removed");
            handled += 1;
        }
        let c = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
        assert_eq!(task(&c, "wait-for-apps")["status"], "Wait");
        app.release();
        done_within(r, id, Duration::from_secs(20));
    }

    // The inhibition marker, in the critical section.
    let b3 = root.aux("t3.snap");
    tracking_snap(&b3, "tracked", "3.0", false);
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            failpoints: Some("park-do:link"),
            ..Default::default()
        },
    );
    let id = refresh_to(r, &b3);
    watch_until(r, id, |c| task(c, "link")["status"] == "Wait");
    let inhibited = runctl.join("snap.tracked.inhibited");
    assert!(inhibited.exists());
    fs::remove_file(&inhibited).unwrap();
    injected += 1;
    let app = App::launch(r, "tracked.hold");
    assert_eq!(
        app.revision, "x2",
        "the launch slipped in with the old revision"
    );
    assert!(d.stop().success());
    let _d = Daemon::start(r);
    let pid = format!("pid {}", app.pid);
    let c = watch_until(r, id, |c| {
        task(c, "link")["wait"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains(&pid))
    });
    assert_eq!(task(&c, "link")["status"], "Wait", "{c}");
    assert!(
        !inhibited.exists(),
        "the critical task restored the inhibition while an app runs (allow behaviour)"
    );
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("x2")
    );
    let exited = app.release();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    let left = logged_at(&done, "lift-inhibition", "critical section left").unwrap();
    assert!(left > exited);
    assert!(
        task_log(&done, "link")
            .iter()
            .any(|l| l.contains("re-entered the critical section")),
        "{done}"
    );
    handled += 1;
    figures(injected, handled);
}
