//! `refreshctl status NAME` and `GET /v1/metrics` against a real daemon: a refresh that waits
//! for a running app is explained by the kernel's view of the app's process (pid, owner,
//! command line), and the metrics — scraped with curl over the Unix socket, as Prometheus would
//! through a proxy — count it pending, then done, with its wait and its critical section.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use refreshd_tests::*;

fn prerequisites() -> bool {
    root_with(
        "real users, cgroups and a setuid launcher",
        &[("curl", "curl")],
    )
}

fn user(tag: &str) -> TestUser {
    TestUser::create(tag).expect("useradd failed")
}

/// `cmd` run as `user` (uid, gid), with no supplementary groups, as a login would.
fn as_user(cmd: &Path, user: Option<(u32, u32)>) -> Command {
    match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(cmd);
            c
        }
        None => Command::new(cmd),
    }
}

/// A scrape of `GET /v1/metrics` with curl: the Content-Type, and every sample by its name with
/// labels (`refreshd_refreshes_total{kind="install",outcome="done"}`).
struct Scrape {
    content_type: String,
    samples: HashMap<String, f64>,
    text: String,
}

impl Scrape {
    fn get(&self, sample: &str) -> f64 {
        *self
            .samples
            .get(sample)
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{}", self.text))
    }
}

fn scrape(r: &Path, user: Option<(u32, u32)>) -> Scrape {
    let out = as_user(&find_program("curl").unwrap(), user)
        .args([
            "--silent",
            "--show-error",
            "--fail-with-body",
            "--dump-header",
            "-",
        ])
        .arg("--unix-socket")
        .arg(r.join("run/refreshd.socket"))
        .arg("http://localhost/v1/metrics")
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    let all = text(&out.stdout);
    let (head, body) = all.split_once("\r\n\r\n").expect("headers, then the body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample {l:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|e| panic!("sample {l:?}: {e}"));
            (name.to_owned(), value)
        })
        .collect();
    Scrape {
        content_type,
        samples,
        text: body.to_owned(),
    }
}

const DONE: &str = "refreshd_refreshes_total{kind=\"install\",outcome=\"done\"}";
const ABORTED: &str = "refreshd_refreshes_total{kind=\"install\",outcome=\"aborted\"}";

/// argv of `pid` as the kernel has it.
fn cmdline(pid: i32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    raw.strip_suffix(b"\0")
        .unwrap_or(&raw)
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn status_json(r: &Path, name: &str, user: Option<(u32, u32)>) -> Value {
    let out = ctl_as(r, &["status", name, "--json"], user);
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts a refresh of `file` without waiting and returns the change `install --json
/// --no-wait` printed.
fn refresh_no_wait(r: &Path, file: &Path) -> Value {
    let change = ctl_json(
        r,
        &["install", file.to_str().unwrap(), "--no-wait", "--json"],
    );
    assert_eq!(change["ready"], false, "{change}");
    assert!(
        change["tasks"].as_array().is_some_and(|t| !t.is_empty()),
        "{change}"
    );
    change
}

/// The single sample of a histogram family's count, sum.
fn histogram(s: &Scrape, family: &str) -> (f64, f64) {
    (
        s.get(&format!("{family}_count")),
        s.get(&format!("{family}_sum")),
    )
}

#[test]
fn status_names_what_blocks_a_refresh_and_metrics_count_it() {
    if !prerequisites() {
        return;
    }
    let root = Root::new(&format!("status-{}", std::process::id()));
    let r = root.path();
    let (alice, bob) = (user("sa"), user("sb"));
    user_home(r, &alice);
    let (b1, b2) = (root.aux("t1.snap"), root.aux("t2.snap"));
    tracking_snap(&b1, "tracked", "1.0", false);
    tracking_snap(&b2, "tracked", "2.0", false);
    let _d = Daemon::start(r);
    let info = ctl_json(r, &["status", "--json"]);
    if info["tracking"] == "none" {
        skip("no usable cgroup hierarchy: processes cannot be tracked");
        return;
    }
    let out = ctl(r, &["install", b1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Scraped by anyone, in Prometheus' text format; a first install is no refresh.
    let m = scrape(r, Some((bob.uid, bob.gid)));
    assert_eq!(m.content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(m.get(DONE), 0.0);
    assert_eq!(m.get("refreshd_refreshes_pending"), 0.0);
    assert_eq!(m.get("refreshd_snaps_installed"), 1.0);
    assert!(m.get("process_start_time_seconds") > 1.6e9, "{}", m.text);

    let app = App::launch_as(r, "tracked.hold", Some((alice.uid, alice.gid)));
    let argv = cmdline(app.pid);
    assert!(
        argv.iter().any(|a| a.ends_with("/bin/hold")),
        "the app runs its command: {argv:?}"
    );

    // Before any refresh: what one would wait for.
    let idle = status_json(r, "tracked", None);
    assert_eq!(idle["revision"], "x1", "{idle}");
    assert_eq!(idle["change"], Value::Null, "{idle}");
    assert_eq!(idle["processes"][0]["pid"], app.pid, "{idle}");
    let shown = text(&ctl(r, &["status", "tracked"]).stdout);
    assert!(
        shown.contains("A refresh would wait for these processes to exit"),
        "{shown}"
    );

    // A refresh that is aborted while it waits counts as aborted; its wait is no observation.
    let aborted = refresh_no_wait(r, &b2);
    let id = aborted["id"].as_u64().unwrap();
    let c = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(task(&c, "wait-for-apps")["status"], "Wait", "{c}");
    let m = scrape(r, None);
    assert_eq!(m.get("refreshd_refreshes_pending"), 1.0, "{}", m.text);
    assert_eq!(m.get("refreshd_changes_in_progress"), 1.0);
    let out = ctl(r, &["abort", &id.to_string(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let abort: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(abort["id"], id, "{abort}");
    let undone = watch_until_ready(r, id);
    assert_eq!(undone["status"], "Undone", "{undone}");
    let m = scrape(r, None);
    assert_eq!(m.get(ABORTED), 1.0, "{}", m.text);
    assert_eq!(m.get(DONE), 0.0);
    assert_eq!(m.get("refreshd_refreshes_pending"), 0.0);
    assert_eq!(histogram(&m, "refreshd_refresh_wait_seconds").0, 0.0);

    // The refresh that goes through, followed by `install --json` until it is ready.
    let started = Instant::now();
    let follower = Command::new(bin("refreshctl"))
        .arg("--root")
        .arg(r)
        .args(["install", b2.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let follower = Reaped(Some(follower));
    let id = wait_for_newer_change(r, id);
    let c = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(task(&c, "wait-for-apps")["status"], "Wait", "{c}");
    let seen_waiting = unix_ns();
    let waiting_task = task(&c, "wait-for-apps")["id"].as_u64().unwrap();

    // status NAME --json: the change, since when it waits, and the kernel's view of the app.
    let st = status_json(r, "tracked", None);
    assert_eq!(st["change"]["id"], id, "{st}");
    assert_eq!(st["change"]["status"], "Wait", "{st}");
    assert_eq!(st["waiting"]["task"], waiting_task, "{st}");
    assert!(st["waiting"]["reason"]
        .as_str()
        .unwrap()
        .contains(&format!("pid {}", app.pid)));
    let procs = st["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "one process: {st}");
    let p = &procs[0];
    assert_eq!(p["pid"], app.pid, "{st}");
    assert_eq!(p["uid"], alice.uid, "{st}");
    assert_eq!(p["user"], alice.name.as_str(), "{st}");
    assert_eq!(p["command"], serde_json::json!(argv), "{st}");
    assert!(p["started"].is_string(), "{st}");
    assert_eq!(st["inhibited"], false, "{st}");

    // The text names the pid, the owner and the command line.
    let out = ctl(r, &["status", "tracked"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("waiting:  for 1 process to exit, since "),
        "{shown}"
    );
    let row = shown
        .lines()
        .find(|l| l.starts_with(&format!("{} ", app.pid)))
        .unwrap_or_else(|| panic!("no row for pid {}: {shown}", app.pid));
    assert!(
        row.contains(&format!("{} ({})", alice.name, alice.uid)),
        "{row}"
    );
    assert!(row.ends_with(&argv.join(" ")), "{row}");
    assert!(
        !shown.contains('\x1b'),
        "no colour off a terminal: {shown:?}"
    );

    // Another user sees the owner, and the command line exactly when /proc shows it to them.
    let theirs = as_user(Path::new("cat"), Some((bob.uid, bob.gid)))
        .arg(format!("/proc/{}/cmdline", app.pid))
        .output()
        .unwrap();
    let visible = theirs.status.success() && !theirs.stdout.is_empty();
    let seen_by_bob = status_json(r, "tracked", Some((bob.uid, bob.gid)));
    let p = &seen_by_bob["processes"][0];
    assert_eq!(p["user"], alice.name.as_str(), "{seen_by_bob}");
    if visible {
        assert_eq!(p["command"], serde_json::json!(argv), "{seen_by_bob}");
    } else {
        assert_eq!(p["command"], Value::Null, "{seen_by_bob}");
    }
    // The owner always sees their own.
    let seen_by_alice = status_json(r, "tracked", Some((alice.uid, alice.gid)));
    assert_eq!(
        seen_by_alice["processes"][0]["command"],
        serde_json::json!(argv)
    );

    let m = scrape(r, None);
    assert_eq!(m.get("refreshd_refreshes_pending"), 1.0, "{}", m.text);
    assert!(m.get("refreshd_refresh_pending_longest_seconds") >= 0.0);

    let exited = app.release();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    let out = follower.wait();
    assert!(
        out.status.success(),
        "install --json: {}",
        text(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "install --json printed no JSON ({e}): {}",
            text(&out.stdout)
        )
    });
    assert_eq!(printed["id"], id, "{printed}");
    assert_eq!(printed["status"], "Done", "{printed}");
    assert_eq!(printed["ready"], true, "{printed}");

    let m = scrape(r, None);
    assert_eq!(m.get(DONE), 1.0, "{}", m.text);
    assert_eq!(m.get(ABORTED), 1.0, "{}", m.text);
    assert_eq!(m.get("refreshd_refreshes_pending"), 0.0, "{}", m.text);
    assert_eq!(m.get("refreshd_refresh_pending_longest_seconds"), 0.0);
    assert_eq!(m.get("refreshd_changes_in_progress"), 0.0);
    let (count, waited) = histogram(&m, "refreshd_refresh_wait_seconds");
    assert_eq!(count, 1.0, "{}", m.text);
    // It waited at least from when it was seen waiting to when the app exited (the daemon's
    // clock counts in whole ms), and no longer than since the refresh was asked for.
    let least = (exited - seen_waiting) as f64 / 1e9 - 0.002;
    assert!(waited >= least, "waited {waited}s, less than {least}s");
    let most = started.elapsed().as_secs_f64() + 0.002;
    assert!(waited <= most, "waited {waited}s, more than {most}s");
    assert_eq!(
        m.get("refreshd_refresh_wait_seconds_bucket{le=\"+Inf\"}"),
        1.0
    );
    let (count, critical) = histogram(&m, "refreshd_critical_section_seconds");
    assert_eq!(count, 1.0, "{}", m.text);
    let entered = logged_at(&done, "wait-for-apps", "critical section entered").unwrap();
    let left = logged_at(&done, "lift-inhibition", "critical section left").unwrap();
    let logged = (left - entered) as f64 / 1e9;
    assert!(
        (critical - logged).abs() < 1e-6,
        "critical section {critical}s, logged {logged}s"
    );

    // Refreshed, idle: nothing waits.
    let after = status_json(r, "tracked", None);
    assert_ne!(after["revision"], "x1", "{after}");
    assert_eq!(after["version"], "2.0", "{after}");
    assert_eq!(after["change"], Value::Null, "{after}");
    assert_eq!(after["processes"], serde_json::json!([]), "{after}");
}

/// Waits (following the change list: no event says a change was made by another process)
/// for a change newer than `than`.
fn wait_for_newer_change(r: &Path, than: u64) -> u64 {
    let start = Instant::now();
    loop {
        let id = newest_change(r);
        if id > than {
            return id;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no change after {than}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A child process killed (by its pid: it is ours) and reaped on drop, unless waited for.
struct Reaped(Option<std::process::Child>);

impl Reaped {
    fn wait(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn status_of_an_unknown_snap_says_so_in_one_line() {
    if !prerequisites() {
        return;
    }
    let root = Root::new(&format!("status-unknown-{}", std::process::id()));
    let r = root.path();
    let _d = Daemon::start(r);
    for name in ["nope", "../../etc", "NOPE"] {
        let out = ctl(r, &["status", name]);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert_eq!(
            err.trim_end(),
            format!("error: snap {name:?} is not installed; refreshctl list shows what is"),
            "{name}"
        );
        let out = ctl(r, &["status", name, "--json"]);
        assert_eq!(out.status.code(), Some(1), "{name} --json");
        assert!(
            out.stdout.is_empty(),
            "{name} --json: {}",
            text(&out.stdout)
        );
    }
}
