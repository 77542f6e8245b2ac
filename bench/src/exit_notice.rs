//! Section 2, exit-to-notice latency: from the moment the last process of an app exits to
//! the moment refreshd's parked `wait-for-apps` has woken, found the snap empty under its lock
//! and entered the critical section — for each tracking backend: cgroup v1 (the release
//! agent), cgroup v2 (`cgroup.events`) and the polling fallback. Against one exec of a static
//! no-op, the floor (the v1 path itself includes one exec: the kernel runs the release agent).
//!
//! Also the helpers section 3 shares: the bench snap (a static C app that reports its own
//! clock), a change follower that keeps one `refreshctl watch` stream open, and an inotify
//! recorder of a directory's events.

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Lines};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use refreshd_tests::{
    bin, cgroup_mounts, ctl, ctl_json, logged_at, task, text, unix_ns, App, Daemon, DaemonOpts,
    Root, SnapSrc, Value,
};

use crate::report::{Figure, Section, Stats};
use crate::util::{self, Ctx};

/// The snap both sections install.
pub(crate) const SNAP: &str = "benchhold";
/// Its launcher: `snap/bin/benchhold.hold`.
pub(crate) const LAUNCHER: &str = "benchhold.hold";

/// The app of the bench snap, in C, linked statically (no /bin/sh, no dynamic loader in the
/// figures): prints `started PID NS REV` with its CLOCK_REALTIME as the first thing `main`
/// does, then blocks reading stdin; on any input or end of file it reads the clock again,
/// prints `exit NS` and calls `_exit` at once. The line format is the one
/// `refreshd_tests::App` speaks.
const HOLD_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>

static long long now(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(void) {
    long long t0 = now();
    char buf[160];
    const char *rev = getenv("SNAP_REVISION");
    int n = snprintf(buf, sizeof buf, "started %d %lld %s\n", (int)getpid(), t0, rev ? rev : "-");
    if (write(1, buf, n) != n) _exit(2);
    char c[64];
    while (read(0, c, sizeof c) < 0 && errno == EINTR) {}
    long long t1 = now();
    n = snprintf(buf, sizeof buf, "exit %lld\n", t1);
    if (write(1, buf, n) != n) _exit(2);
    _exit(0);
}
"#;

/// Compiles the bench app into `dir/hold`.
pub(crate) fn hold_app(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let src = dir.join("hold.c");
    let out = dir.join("hold");
    fs::write(&src, HOLD_C)?;
    util::run(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&out)
            .arg(&src),
    )?;
    Ok(out)
}

/// Builds the bench snap (`benchhold`, app `hold`: the C app above) into `out`.
pub(crate) fn bench_snap(out: &Path, app: &Path) -> anyhow::Result<()> {
    let src = SnapSrc::new(&format!(
        "name: {SNAP}\nversion: '1.0'\nsummary: Benchmark app that reports its own clock\napps:\n  hold:\n    command: bin/hold\n"
    ));
    let dst = src.dir.path().join("bin/hold");
    fs::create_dir_all(dst.parent().unwrap())?;
    fs::copy(app, &dst)?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))?;
    src.build(out);
    Ok(())
}

/// Runs refreshctl against `root`; fails with its stderr. Returns its stdout.
pub(crate) fn ctl_ok(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = ctl(root, args);
    if !out.status.success() {
        bail!(
            "refreshctl {args:?} failed ({}): {}",
            out.status,
            text(&out.stderr).trim()
        );
    }
    Ok(text(&out.stdout))
}

/// Starts a change with `--no-wait` and returns its id (what refreshctl prints).
pub(crate) fn start_change(root: &Path, args: &[&str]) -> anyhow::Result<u64> {
    let out = ctl_ok(root, args)?;
    out.trim()
        .parse()
        .with_context(|| format!("refreshctl {args:?} printed no change id: {out:?}"))
}

/// One `refreshctl watch ID --json` stream, kept open for the life of a sample so that nothing
/// is spawned while a latency is being measured. Killed on drop.
pub(crate) struct Watch {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    id: u64,
}

impl Watch {
    pub(crate) fn start(root: &Path, id: u64) -> anyhow::Result<Watch> {
        let mut child = Command::new(bin("refreshctl"))
            .arg("--root")
            .arg(root)
            .args(["watch", &id.to_string(), "--json"])
            .env_remove("REFRESHD_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run refreshctl watch")?;
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Ok(Watch { child, lines, id })
    }

    /// The first snapshot for which `pred` holds; an error if the change becomes ready first
    /// (or the stream ends).
    pub(crate) fn until(
        &mut self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        for l in self.lines.by_ref() {
            let v: Value = serde_json::from_str(&l?).context("refreshctl watch printed no JSON")?;
            if pred(&v) {
                return Ok(v);
            }
            if v["ready"] == true {
                bail!("change {} became ready before {what}: {v}", self.id);
            }
        }
        bail!("the watch of change {} ended before {what}", self.id)
    }

    /// The snapshot in which the change is ready; it must have succeeded.
    pub(crate) fn until_done(&mut self) -> anyhow::Result<Value> {
        let mut last = Value::Null;
        for l in self.lines.by_ref() {
            let v: Value = serde_json::from_str(&l?).context("refreshctl watch printed no JSON")?;
            if v["ready"] == true {
                last = v;
                break;
            }
            last = v;
        }
        if last["ready"] != true {
            bail!(
                "the watch of change {} ended before it was ready: {last}",
                self.id
            );
        }
        if last["status"] != "Done" {
            bail!("change {} did not succeed: {last}", self.id);
        }
        Ok(last)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records the inotify events of one directory (`IN_DELETE`), each with the wall clock (unix
/// ns) at which this recorder's `poll` returned — to find when a marker went, independently of
/// refreshd. Stopped on drop.
pub(crate) struct DirEvents {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    seen: Arc<Mutex<Vec<(String, u128)>>>,
}

impl DirEvents {
    pub(crate) fn start(dir: &Path) -> anyhow::Result<DirEvents> {
        // SAFETY: plain flags; the result is checked and owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_init1");
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = CString::new(dir.as_os_str().as_encoded_bytes())?;
        // SAFETY: a live inotify fd and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_DELETE) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot watch {}", dir.display()));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(vec![]));
        let thread = std::thread::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            move || record(fd, &stop, &seen)
        });
        Ok(DirEvents {
            stop,
            thread: Some(thread),
            seen,
        })
    }

    /// When `name` was first seen deleted at or after `after` (unix ns).
    pub(crate) fn deleted_after(&self, name: &str, after: u128) -> Option<u128> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, t)| n == name && *t >= after)
            .map(|(_, t)| *t)
            .min()
    }

    /// Waits (bounded) until `name` has been seen deleted at or after `after`.
    pub(crate) fn wait_deleted_after(
        &self,
        name: &str,
        after: u128,
        limit: Duration,
    ) -> Option<u128> {
        let t = Instant::now();
        loop {
            if let Some(x) = self.deleted_after(name, after) {
                return Some(x);
            }
            if t.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for DirEvents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn record(fd: OwnedFd, stop: &AtomicBool, seen: &Mutex<Vec<(String, u128)>>) {
    let mut buf = vec![0u8; 8192];
    while !stop.load(Ordering::Relaxed) {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, 100) };
        if r <= 0 {
            continue;
        }
        let at = unix_ns();
        // SAFETY: reads into our own buffer, within its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let mut off = 0usize;
        let n = n as usize;
        // struct inotify_event { int wd; uint32_t mask, cookie, len; char name[len]; }
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
            let name = &buf[off + 16..(off + 16 + len).min(n)];
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            seen.lock()
                .unwrap()
                .push((String::from_utf8_lossy(name).into_owned(), at));
            off += 16 + len;
        }
    }
}

/// The `i`-th of `n` phases spread evenly over [0, 1), in a shuffled order (so that a drift of
/// the machine over the run does not line up with the phase).
pub(crate) fn phase(i: usize, n: usize) -> f64 {
    let k = if n.is_multiple_of(5) { i } else { (i * 5) % n };
    (k as f64 + 0.5) / n as f64
}

fn ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// What one backend's run produced.
struct Backend {
    /// Exit → critical section entered, ms.
    latency: Vec<f64>,
    /// Exit → the running marker's removal seen by our own inotify recorder, ms.
    to_marker: Vec<f64>,
    /// Marker removal seen → critical section entered, ms.
    marker_to_entered: Vec<f64>,
}

/// One scratch root and daemon with `--tracking ARGS`; `n` samples: launch the app, start the
/// next revision (alternately a local install and a revert: both wait for apps), follow the
/// change until `wait-for-apps` is parked, let the app exit (after `delay(i)`), and read when
/// the critical section was entered. `Err(skip reason)` inside `Ok` when the daemon chose
/// another backend than `want`.
fn backend(
    tag: &str,
    args: &[&str],
    want: &str,
    n: usize,
    snap: &Path,
    delay: impl Fn(usize) -> Duration,
) -> anyhow::Result<Result<Backend, String>> {
    let root = Root::new(&format!("bench-exit-{tag}-{}", std::process::id()));
    let r = root.path();
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    );
    let status = ctl_json(r, &["status", "--json"]);
    let kind = status["tracking"].as_str().unwrap_or_default().to_owned();
    if kind != want {
        return Ok(Err(format!(
            "refreshd chose `{kind}` with `{}`: {}",
            args.join(" "),
            status["tracking-reason"].as_str().unwrap_or_default()
        )));
    }
    let file = snap.to_str().context("snap path")?;
    ctl_ok(r, &["install", file])?;
    let runctl = r.join("run/refreshd/runctl");
    let marker = format!("snap.{SNAP}.running");
    let events = DirEvents::start(&runctl)?;
    let mut out = Backend {
        latency: vec![],
        to_marker: vec![],
        marker_to_entered: vec![],
    };
    let mut can_revert = false;
    for i in 0..n {
        let app = App::launch(r, LAUNCHER);
        let id = if can_revert {
            start_change(r, &["revert", SNAP, "--no-wait"])?
        } else {
            start_change(r, &["install", file, "--no-wait"])?
        };
        can_revert = !can_revert;
        let mut w = Watch::start(r, id)?;
        w.until("wait-for-apps parked", |c| {
            task(c, "wait-for-apps")["status"] == "Wait"
        })?;
        std::thread::sleep(delay(i));
        let exited = app.release();
        let done = w.until_done()?;
        let entered = logged_at(&done, "wait-for-apps", "critical section entered")
            .context("wait-for-apps logged no entry into the critical section")?;
        if entered < exited {
            bail!("the critical section was entered ({entered}) before the app exited ({exited})");
        }
        out.latency.push(ms(entered - exited));
        let gone = events.wait_deleted_after(&marker, exited, Duration::from_secs(1));
        let part = match gone {
            Some(g) if g <= entered => {
                out.to_marker.push(ms(g - exited));
                out.marker_to_entered.push(ms(entered - g));
                format!("marker gone after {:.3} ms", ms(g - exited))
            }
            Some(g) => format!("marker gone {:.3} ms after the entry", ms(g - entered)),
            None => "no removal of the marker seen".to_owned(),
        };
        println!(
            "    {tag} #{i}: {:.3} ms ({}; {part})",
            ms(entered - exited),
            done["kind"].as_str().unwrap_or("?")
        );
    }
    Ok(Ok(out))
}

/// refreshd's default `--poll-interval-ms`, from its `--help`.
fn default_poll_interval_ms() -> anyhow::Result<u64> {
    let out = util::run(Command::new(bin("refreshd")).arg("--help"))?;
    let help = text(&out.stdout);
    let after = help
        .split("--poll-interval-ms")
        .nth(1)
        .context("refreshd --help names no --poll-interval-ms")?;
    after
        .split("[default: ")
        .nth(1)
        .and_then(|d| d.split(']').next())
        .and_then(|d| d.trim().parse().ok())
        .context("refreshd --help gives no default for --poll-interval-ms")
}

/// The release agent the freezer hierarchy has registered (empty: none).
fn registered_agent(freezer: &Path) -> String {
    fs::read_to_string(freezer.join("release_agent"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A backend's latency, and its two parts when the marker's removal was seen.
fn push_backend(
    s: &mut Section,
    title: &str,
    short: &str,
    remover: &str,
    b: &Backend,
    exec_name: &str,
    exec: &Stats,
) {
    let fig = |name: String, v: &[f64]| {
        Figure::new(name, "ms", Stats::of(v)).against(exec_name, exec.clone())
    };
    s.push(fig(
        format!("{title}: app exit → wait-for-apps in the critical section"),
        &b.latency,
    ));
    if !b.to_marker.is_empty() {
        s.push(fig(
            format!("{short}, part 1: app exit → {remover} removed snap.NAME.running"),
            &b.to_marker,
        ));
        s.push(fig(
            format!("{short}, part 2: marker removed → wait-for-apps in the critical section"),
            &b.marker_to_entered,
        ));
    }
}

pub fn run(ctx: &Ctx, s: &mut Section) -> anyhow::Result<()> {
    let dir = ctx.work.join("exit-notice");
    fs::create_dir_all(&dir)?;
    let noop = util::static_noop(&dir)?;
    let app = hold_app(&dir)?;
    let snap = dir.join("benchhold.snap");
    bench_snap(&snap, &app)?;

    let (freezer, unified) = cgroup_mounts();
    let agent_before = freezer.as_deref().map(registered_agent);

    // The floor, measured here so the ratio is within the section.
    println!("    timing one exec of a static no-op");
    let exec = util::hyperfine(
        ctx,
        &[("static no-op", noop.display().to_string())],
        ctx.n(300, 30),
        20,
        None,
    )?
    .remove(0);
    let exec_name = "exec of a static no-op (fork + exec + wait)";

    let n = ctx.n(30, 2);
    let n_poll = ctx.n(8, 1);
    let no_delay = |_| Duration::ZERO;

    // v1: the release agent.
    let mut v1_note = String::new();
    match (&freezer, &agent_before) {
        (None, _) => v1_note = "v1: skipped: no cgroup v1 freezer hierarchy is mounted".into(),
        (Some(_), Some(a))
            if !a.is_empty()
                && Path::new(a).exists()
                && Path::new(a).file_name()
                    != Some(std::ffi::OsStr::new("refresh-release-agent")) =>
        {
            v1_note = format!(
                "v1: skipped: the freezer hierarchy's release agent is `{a}`, not refreshd's (a \
                 foreign agent is never replaced; refreshd would use the polling fallback)"
            )
        }
        (Some(_), _) => {
            println!("    v1 (release agent): {n} samples");
            match backend("v1", &["--tracking", "v1"], "v1", n, &snap, no_delay)? {
                Err(why) => v1_note = format!("v1: skipped: {why}"),
                Ok(b) => push_backend(
                    s,
                    "v1 (release agent)",
                    "v1",
                    "the release agent",
                    &b,
                    exec_name,
                    &exec,
                ),
            }
        }
    }
    // The agent's own exec, the part of the v1 path that is a whole process: the registered
    // one (read after the v1 run, which registers ours when none is), and the one refreshd
    // ships beside itself when that is another file.
    let agent_after = freezer.as_deref().map(registered_agent);
    let mut agents: Vec<(String, PathBuf)> = vec![];
    if let Some(a) = agent_after.as_deref().filter(|a| Path::new(a).is_file()) {
        agents.push(("the registered release agent".into(), PathBuf::from(a)));
    }
    let shipped = bin("refresh-release-agent");
    let agent_profile = shipped
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("agent/refresh-release-agent"));
    for (what, p) in [
        ("the release build beside refreshd", Some(shipped)),
        ("the `agent`-profile build (no_std)", agent_profile),
    ] {
        if let Some(p) = p.filter(|p| p.is_file()) {
            let same = agents
                .iter()
                .any(|(_, q)| fs::canonicalize(q).ok() == fs::canonicalize(&p).ok());
            if !same {
                agents.push((what.into(), p));
            }
        }
    }
    if !agents.is_empty() {
        println!("    timing one exec of the release agent(s)");
        // An argument that is no refreshd group: the agent parses it and touches nothing.
        let cmds: Vec<(&str, String)> = agents
            .iter()
            .map(|(w, p)| {
                (
                    w.as_str(),
                    format!("{} /refreshd-bench-not-a-snap-group", p.display()),
                )
            })
            .collect();
        let t = util::hyperfine(ctx, &cmds, ctx.n(300, 30), 20, None)?;
        for ((what, p), st) in agents.iter().zip(t) {
            s.push(
                Figure::new(format!("exec of {what} (an argument it ignores)"), "ms", st)
                    .against(exec_name, exec.clone())
                    .note(format!(
                        "`{}`, {} bytes",
                        p.display(),
                        fs::metadata(p).map(|m| m.len()).unwrap_or(0)
                    )),
            );
        }
    }

    // v2: cgroup.events.
    let mut v2_note = String::new();
    if unified.is_none() {
        v2_note = "v2: skipped: no cgroup2 hierarchy is mounted".into();
    } else {
        println!("    v2 (cgroup.events): {n} samples");
        match backend("v2", &["--tracking", "v2"], "v2", n, &snap, no_delay)? {
            Err(why) => v2_note = format!("v2: skipped: {why}"),
            Ok(b) => push_backend(
                s,
                "v2 (cgroup.events)",
                "v2",
                "refreshd's cgroup.events watcher",
                &b,
                exec_name,
                &exec,
            ),
        }
    }

    // The polling fallback, at refreshd's default interval.
    let interval = Duration::from_millis(default_poll_interval_ms()?);
    let poll_note;
    if freezer.is_none() {
        poll_note = "v1-poll: skipped: no cgroup v1 freezer hierarchy is mounted".to_owned();
    } else {
        println!(
            "    v1-poll (every {} ms): {n_poll} samples",
            interval.as_millis()
        );
        let delay = |i| interval.mul_f64(phase(i, n_poll));
        match backend(
            "poll",
            &["--tracking", "v1-poll"],
            "v1-poll",
            n_poll,
            &snap,
            delay,
        )? {
            Err(why) => poll_note = format!("v1-poll: skipped: {why}"),
            Ok(b) => {
                poll_note = format!(
                    "v1-poll: mean {:.0} ms over {} samples (expected: half the interval, {} ms).",
                    mean(&b.latency),
                    b.latency.len(),
                    interval.as_millis() / 2
                );
                s.push(
                    Figure::new(
                        format!(
                            "v1-poll (every {} ms, the default): app exit → wait-for-apps in the critical section",
                            interval.as_millis()
                        ),
                        "ms",
                        Stats::of(&b.latency),
                    )
                    .against(exec_name, exec.clone())
                    .note(format!(
                        "mean {:.0} ms; expected mean: half the interval ({} ms)",
                        mean(&b.latency),
                        interval.as_millis() / 2
                    )),
                );
            }
        }
    }

    let show = |a: &Option<String>| match a.as_deref() {
        None => "(no freezer hierarchy)".to_owned(),
        Some("") => "(none)".to_owned(),
        Some(a) => format!("`{a}`"),
    };
    let agents = if agent_before == agent_after {
        format!("{} (unchanged by the run)", show(&agent_after))
    } else {
        format!(
            "{} before the run, {} after",
            show(&agent_before),
            show(&agent_after)
        )
    };
    s.note(
        "**What is measured.** One scratch root and one daemon per backend (`refreshd \
         --tracking v1|v2|v1-poll`), the bench snap `benchhold` installed. Each sample launches \
         its app through confine-hook (`snap/bin/benchhold.hold`), asks for the next revision \
         — alternately `refreshctl install FILE --no-wait` (a new local revision) and \
         `refreshctl revert --no-wait` (both run the same `wait-for-apps`) — follows the change \
         with one `refreshctl watch --json` stream until `wait-for-apps` is parked in `Wait`, \
         then closes the app's stdin. **T0** is the app's own `CLOCK_REALTIME`, read right \
         after its `read(0)` returns: the app (a static C program, no shell) then only writes \
         one line to a pipe and calls `_exit`, so T0 precedes the exit by a few µs. **T1** is \
         the `at=` unix time refreshd logs in `wait-for-apps` (\"critical section entered\"): \
         taken after the woken handler took the snap's lock and read an empty `cgroup.procs` in \
         every hierarchy, just before it removes the running marker and writes the inhibition. \
         The figure is T1 − T0: the kernel's notice, refreshd's watcher, the engine's wake-up \
         of the parked task, and the handler's check. Nothing is spawned by the benchmark \
         between T0 and T1: the watch stream is already open (as it is for a `refreshctl install` \
         that waits), and the daemon pushes it each state change.",
    );
    s.note(format!(
        "**Parts.** A recorder of our own (inotify on the runctl directory, `IN_DELETE`, \
         timestamped when its `poll` returns) sees `snap.benchhold.running` go. In v1 the \
         release agent removes it (the kernel queues the agent when the freezer group empties \
         and execs it from a work queue; the agent unlinks the marker; refreshd's inotify sees \
         that): part 1 is exit → the agent's unlink, so it holds one exec of the agent (whose \
         cost alone is the `exec of … release agent` figure); part 2 is the daemon's share. \
         In v2 refreshd's own `cgroup.events` watcher removes the marker when it reads \
         `populated 0`: part 1 is the kernel's event and the daemon's watcher, part 2 the \
         engine and the handler. The app is in both hierarchies whatever the backend (the \
         launcher joins every hierarchy present), so with v2 the kernel still runs the release \
         agent for the freezer group at the same time, on the same 2 cores (it finds no \
         registry entry for this root and does nothing). **The daemon's share** (part 2; \
         `strace -f -T` of the daemon over such samples, taken while writing this benchmark): \
         after the inotify read, the engine commits the parked task's wake-up and then the \
         task as `Doing` — two SQLite transactions, each ending in an fsync of the WAL \
         (0.2–0.3 ms each on this VM's disk) — then the handler runs on a blocking thread: \
         `flock`, the running marker re-armed, `cgroup.procs` read in both hierarchies. \
         **Release agent** registered on the freezer hierarchy: {agents}. refreshd keeps \
         an installed agent of the same file name (every build speaks the same protocol), so \
         one registered by an earlier run — a debug build from `cargo test`, say — stays, and \
         the v1 figures include its exec (the agents' own exec figures show what another \
         build would change). {}",
        if v1_note.is_empty() {
            String::new()
        } else {
            v1_note.clone() + "."
        },
    ));
    s.note(format!(
        "**Polling.** `v1-poll` re-reads `cgroup.procs` when the parked task's deadline comes, \
         the poll interval ({} ms, refreshd's default, `--poll-interval-ms`) after it parked. \
         Each sample releases the app at a phase spread evenly over the interval after the \
         task parked, so the latency is uniform over the interval and its expected mean is \
         half of it. {poll_note}",
        interval.as_millis()
    ));
    if !v2_note.is_empty() {
        s.note(v2_note);
    }
    Ok(())
}
