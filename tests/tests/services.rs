//! Services under a real systemd (PID 1 in throwaway namespaces, tests/src/systemd.rs), with
//! refreshd itself running there as a systemd service on root `/` of that world:
//! - a refresh from a directory store waits for a running app (status shows its pid),
//!   completes the moment it exits, carries the data it wrote, stops the snap's services
//!   before the copy (through their stop-command) and starts them from the new revision in
//!   their own units' cgroups; an `endure` service keeps running through it;
//! - a failure injected at every task of a refresh leaves the old revision current, its data
//!   intact, its services running and launches let in.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use refreshd_tests::systemd::{self, BootOpts, RunningApp, Systemd};
use refreshd_tests::*;
use serde_json::Value;

const REFRESHCTL: &str = "/usr/local/bin/refreshctl";
const SNAP: &str = "svcapp";
const SVC: &str = "snap.svcapp.svc.service";
const KEEPER: &str = "snap.svcapp.keeper.service";

fn can_run() -> bool {
    if !is_root() || !mksquashfs_available() {
        skip("needs root and mksquashfs");
        return false;
    }
    match systemd::can_run() {
        Ok(()) => true,
        Err(why) => {
            skip(&why);
            false
        }
    }
}

/// A snap with an interactive app and three services: `svc` (with a stop-command), `keeper`
/// (refresh-mode: endure), both long-running.
/// A `broken` revision's svc is a oneshot that fails: a service that will not start.
fn svc_snap(out: &Path, version: &str, broken: bool) {
    let svc = if broken {
        "svc:\n    command: bin/fail\n    daemon: oneshot\n  "
    } else {
        "svc:\n    command: bin/svc\n    daemon: simple\n    stop-command: bin/svc-stop\n    stop-timeout: 20s\n  "
    };
    SnapSrc::new(&format!(
        "name: {SNAP}\nversion: '{version}'\nsummary: services under systemd\napps:\n  \
         {SNAP}:\n    command: bin/app\n  \
         {svc}\
         keeper:\n    command: bin/keeper\n    daemon: simple\n    refresh-mode: endure\n"
    ))
    // The app says it runs, waits for a line, saves it and records when it exits.
    .file(
        "bin/app",
        "#!/bin/sh\necho \"started $$\"\nread line\necho \"$line\" > \"$SNAP_DATA/note\"\n\
         date +%s%N > /results/app.exit\n",
        0o755,
    )
    .file(
        "bin/svc",
        "#!/bin/sh\necho \"$SNAP_REVISION $$\" >> /results/svc.log\nexec sleep infinity\n",
        0o755,
    )
    .file(
        "bin/svc-stop",
        "#!/bin/sh\necho \"stop $SNAP_REVISION\" >> /results/stop.log\n",
        0o755,
    )
    .file("bin/keeper", "#!/bin/sh\nexec sleep infinity\n", 0o755)
    .file(
        "bin/fail",
        "#!/bin/sh\necho cannot start >&2\nexit 1\n",
        0o755,
    )
    .build(out);
}

/// A systemd world with refreshd installed and running as `refreshd.service` on root `/`,
/// following the directory store in the results directory.
struct World {
    sd: Systemd,
}

impl World {
    fn boot() -> World {
        let sd = Systemd::boot(BootOpts::default()).unwrap_or_else(|e| panic!("{e:#}"));
        // Copied in: the checkout may live where the overlay does not show it (/tmp).
        for (name, dest, mode) in [
            ("refreshd", "/usr/local/bin/refreshd", 0o755),
            ("refreshctl", REFRESHCTL, 0o755),
            ("confine-hook", "/usr/lib/refreshd/confine-hook", 0o4755),
        ] {
            sd.write_file_mode(dest, std::fs::read(bin(name)).unwrap(), mode);
        }
        std::fs::create_dir(sd.results_dir().join("store")).unwrap();
        sd.write_file(
            "/etc/systemd/system/refreshd.service",
            "[Unit]\nDescription=refreshd\n\n[Service]\n\
             ExecStart=/usr/local/bin/refreshd --root / --insecure-unsigned-store --store /results/store --services systemd\n",
        );
        sd.run_ok(&["systemctl", "daemon-reload"]);
        sd.run_ok(&["systemctl", "start", "refreshd.service"]);
        let w = World { sd };
        w.wait_ready();
        w
    }

    /// Until the socket answers. refreshd does not notify readiness yet, so this probes, with
    /// a deadline.
    fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.ctl(&["status"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < until,
                "refreshd did not come up: {}\n{}",
                text(&out.stderr),
                self.journal("refreshd.service")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn journal(&self, unit: &str) -> String {
        text(
            &self
                .sd
                .run(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])
                .stdout,
        )
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = vec![REFRESHCTL];
        cmd.extend_from_slice(args);
        self.sd.run(&cmd)
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "refreshctl {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn ctl_json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ctl_ok(args)).unwrap()
    }

    fn newest_change(&self) -> u64 {
        self.ctl_json(&["changes", "--all", "--json"])[0]["id"]
            .as_u64()
            .unwrap()
    }

    /// Follows `refreshctl watch ID --json` inside until `pred` holds or the change is ready.
    fn watch_until(&self, id: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let mut child = self
            .sd
            .command(&[
                "timeout",
                "120",
                REFRESHCTL,
                "watch",
                &id.to_string(),
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut last = Value::Null;
        for l in BufReader::new(child.stdout.take().unwrap()).lines() {
            let v: Value = serde_json::from_str(&l.unwrap()).unwrap();
            let stop = pred(&v) || v["ready"] == true;
            last = v;
            if stop {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        last
    }

    fn publish(&self, version: &str) -> u32 {
        self.publish_as(version, false)
    }

    fn publish_as(&self, version: &str, broken: bool) -> u32 {
        let blob = self.sd.dir().join(format!("{SNAP}-{version}.snap"));
        svc_snap(&blob, version, broken);
        let e =
            refreshd_store::publish(&self.sd.results_dir().join("store"), &blob, "stable").unwrap();
        std::fs::remove_file(&blob).unwrap();
        e.revision
    }

    fn current(&self) -> String {
        self.sd
            .run_ok(&["readlink", &format!("/snap/{SNAP}/current")])
            .trim()
            .to_owned()
    }

    fn main_pid(&self, unit: &str) -> u32 {
        self.sd.show(unit, "MainPID").parse().unwrap()
    }

    /// The revision a service's main process runs from, and its cgroup.
    ///
    /// A service restarted by an undo is started without waiting (its launch waits for the
    /// inhibition to go); until it has exec'd past confine-hook its environment has no
    /// SNAP_REVISION. systemd has no event for that with `Type=simple`, so this probes, with a
    /// deadline.
    fn service(&self, unit: &str) -> (String, String, u32) {
        let until = Instant::now() + Duration::from_secs(20);
        let (rev, pid) = loop {
            let state = self.sd.show(unit, "ActiveState");
            let pid = self.main_pid(unit);
            let environ = self
                .sd
                .read_file(&format!("/proc/{pid}/environ"))
                .unwrap_or_default();
            let rev = environ
                .split(|&b| b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok())
                .find_map(|kv| kv.strip_prefix("SNAP_REVISION="))
                .map(str::to_owned);
            if let (true, Some(rev)) = (state == "active", rev) {
                break (rev, pid);
            }
            assert!(
                Instant::now() < until,
                "{unit} is {state} (main pid {pid}), not running an app: {}",
                self.journal(unit)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let cg = text(
            &self
                .sd
                .read_file(&format!("/proc/{pid}/cgroup"))
                .unwrap_or_default(),
        );
        // The v2 line: systemd manages that hierarchy here (v1 ones show the namespace's root).
        let v2 = cg
            .lines()
            .find(|l| l.starts_with("0::"))
            .unwrap_or_default()
            .to_owned();
        (rev, v2, pid)
    }

    fn results(&self, name: &str) -> String {
        std::fs::read_to_string(self.sd.results_dir().join(name)).unwrap_or_default()
    }

    fn install(&self) {
        assert_eq!(self.publish("1.0"), 1);
        let out = self.ctl_ok(&["install", SNAP]);
        assert_eq!(out.trim(), format!("Installed {SNAP} 1"));
        for unit in [SVC, KEEPER] {
            let (rev, cg, _) = self.service(unit);
            assert_eq!(rev, "1", "{unit}");
            // confine-hook left the service in its unit's cgroup.
            assert_eq!(cg, format!("0::/system.slice/{unit}"), "{unit}");
        }
        assert_eq!(
            self.sd.show(SVC, "UnitFileState"),
            "enabled",
            "services are enabled at install"
        );
    }
}

#[test]
fn refresh_with_services_under_systemd() {
    if !can_run() {
        return;
    }
    let w = World::boot();
    let status = w.ctl_ok(&["status"]);
    assert!(
        status.contains("services:") && status.contains("systemd (systemd is PID 1)"),
        "{status}"
    );
    w.install();
    let (_, _, keeper_pid) = w.service(KEEPER);
    let (_, _, svc_pid) = w.service(SVC);

    let app = RunningApp::launch(&w.sd, SNAP);
    assert_eq!(w.publish("2.0"), 2);
    w.ctl_ok(&["refresh", SNAP, "--no-wait"]);
    let id = w.newest_change();
    let waiting = w.watch_until(id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    let reason = task(&waiting, "wait-for-apps")["wait"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains(&format!("pid {}", app.pid)), "{waiting}");
    // The service is not what blocks, and keeps running while the refresh waits.
    assert!(!reason.contains(&format!("pid {svc_pid}")), "{reason}");
    assert_eq!(w.service(SVC).2, svc_pid);
    let tasks = w.ctl_ok(&["tasks", &id.to_string()]);
    assert!(tasks.contains(&format!("pid {}", app.pid)), "{tasks}");
    assert_eq!(w.current(), "1");

    app.release("saved before exit");
    let exited: u128 = w.results("app.exit").trim().parse().unwrap();
    let done = w.watch_until(id, |_| false);
    assert_eq!(done["status"], "Done", "{done}");
    let entered = logged_at(&done, "wait-for-apps", "critical section entered").unwrap();
    let finished: u128 = done["ready-time"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_nanosecond() as u128)
        .unwrap_or(entered);
    println!(
        "services refresh under systemd: app exit -> critical section {:.3} ms, -> change done {:.3} ms",
        (entered.saturating_sub(exited)) as f64 / 1e6,
        (finished.saturating_sub(exited)) as f64 / 1e6
    );
    assert_eq!(w.current(), "2");
    assert_eq!(
        w.sd.read_file(&format!("/var/snap/{SNAP}/2/note"))
            .map(|b| text(&b)),
        Some("saved before exit\n".to_owned()),
        "the data the app wrote before exiting is in the new revision's"
    );
    // svc was stopped through its stop-command (from revision 1) and runs from revision 2,
    // in its own unit's cgroup.
    assert_eq!(w.results("stop.log"), "stop 1\n");
    let (rev, cg, pid) = w.service(SVC);
    assert_eq!(
        (rev.as_str(), cg.as_str()),
        ("2", &*format!("0::/system.slice/{SVC}"))
    );
    assert_ne!(pid, svc_pid);
    let log = w.results("svc.log");
    assert!(
        log.starts_with("1 ") && log.lines().last().unwrap().starts_with("2 "),
        "{log}"
    );
    // keeper endured: the same process, still revision 1's.
    assert_eq!(
        w.service(KEEPER),
        ("1".into(), format!("0::/system.slice/{KEEPER}"), keeper_pid)
    );
    // Stopped inside the critical section, started after launches were let in again.
    let kinds: Vec<&str> = done["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    let pos = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    assert!(pos("wait-for-apps") < pos("stop-services"));
    assert!(pos("stop-services") < pos("setup-data"));
    assert!(pos("lift-inhibition") < pos("start-services"));
    assert!(
        task(&done, "start-services")["log"]
            .to_string()
            .contains("keeps running through the refresh"),
        "{done}"
    );

    // Revert: back to revision 1, services with it.
    w.ctl_ok(&["revert", SNAP]);
    assert_eq!(w.current(), "1");
    assert_eq!(w.service(SVC).0, "1");
    assert_eq!(w.results("stop.log"), "stop 1\nstop 2\n");

    // Remove: services stopped and disabled, unit files gone.
    w.ctl_ok(&["remove", SNAP]);
    for unit in [SVC, KEEPER] {
        assert_eq!(w.sd.show(unit, "LoadState"), "not-found", "{unit}");
        assert!(w
            .sd
            .read_file(&format!("/etc/systemd/system/{unit}"))
            .is_none());
    }
    assert!(w
        .sd
        .run(&["ls", "/etc/systemd/system/multi-user.target.wants/"])
        .stdout
        .split(|&b| b == b'\n')
        .all(|l| !l.starts_with(b"snap.")));
}

#[test]
fn failed_refresh_leaves_services_running() {
    if !can_run() {
        return;
    }
    // A failpoint fires every time its task runs: one round per task, each with refreshd
    // restarted (by systemd) with that task's failpoint armed.
    let w = World::boot();
    w.install();
    w.sd.write_file(&format!("/var/snap/{SNAP}/1/state"), "precious");
    assert_eq!(w.publish("2.0"), 2);
    for kind in REFRESH_TASKS {
        w.sd.write_file(
            "/etc/systemd/system/refreshd.service.d/failpoint.conf",
            format!("[Service]\nEnvironment=REFRESHD_FAILPOINTS=fail-do:{kind}\n"),
        );
        w.sd.run_ok(&["systemctl", "daemon-reload"]);
        w.sd.run_ok(&["systemctl", "restart", "refreshd.service"]);
        w.wait_ready();
        let (_, _, before) = w.service(SVC);
        let out = w.ctl(&["refresh", SNAP]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{kind}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let change = w.ctl_json(&["tasks", &w.newest_change().to_string(), "--json"]);
        assert_eq!(change["status"], "Error", "{kind}: {change}");
        assert_eq!(task(&change, kind)["status"], "Error", "{kind}: {change}");
        assert_eq!(w.current(), "1", "{kind}");
        assert_eq!(
            w.sd.read_file(&format!("/var/snap/{SNAP}/current/state"))
                .map(|b| text(&b)),
            Some("precious".into()),
            "{kind}"
        );
        for unit in [SVC, KEEPER] {
            let (rev, cg, _) = w.service(unit);
            assert_eq!(rev, "1", "{kind}: {unit}");
            assert_eq!(cg, format!("0::/system.slice/{unit}"), "{kind}: {unit}");
        }
        // A service stopped by the refresh was started again by its undo.
        let (_, _, after) = w.service(SVC);
        let stopped = REFRESH_TASKS.iter().position(|k| k == kind)
            > REFRESH_TASKS.iter().position(|k| *k == "stop-services");
        assert_eq!(after != before, stopped, "{kind}: svc {before} -> {after}");
        assert!(
            w.sd.read_file(&format!("/run/refreshd/runctl/snap.{SNAP}.inhibited"))
                .is_none(),
            "{kind}: the inhibition was lifted"
        );
        // Launches work again.
        let app = RunningApp::launch(&w.sd, SNAP);
        app.release(kind);
        println!("failure at {kind}: undone, services running from revision 1");
    }

    // No failpoint: revision 3's service will not start. The refresh is undone, and the unit
    // file is revision 1's again.
    w.sd.run_ok(&[
        "rm",
        "/etc/systemd/system/refreshd.service.d/failpoint.conf",
    ]);
    w.sd.run_ok(&["systemctl", "daemon-reload"]);
    w.sd.run_ok(&["systemctl", "restart", "refreshd.service"]);
    w.wait_ready();
    let unit_before =
        w.sd.read_file(&format!("/etc/systemd/system/{SVC}"))
            .unwrap();
    assert_eq!(w.publish_as("3.0", true), 3);
    let out = w.ctl(&["refresh", SNAP]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let change = w.ctl_json(&["tasks", &w.newest_change().to_string(), "--json"]);
    assert_eq!(
        task(&change, "start-services")["status"],
        "Error",
        "{change}"
    );
    let err = change["error"].as_str().unwrap_or_default();
    assert!(err.contains(SVC) && err.contains("did not start"), "{err}");
    assert_eq!(w.current(), "1");
    assert_eq!(w.service(SVC).0, "1");
    assert_eq!(w.service(KEEPER).0, "1");
    assert_eq!(
        w.sd.read_file(&format!("/etc/systemd/system/{SVC}"))
            .unwrap(),
        unit_before
    );
    println!("a service that will not start: {err}");
}

/// Without systemd as PID 1 (this machine kind), unit files are written and removed with the
/// snap, nothing is started or stopped, and status says why.
#[test]
fn services_are_left_alone_without_systemd() {
    if !is_root() || !mksquashfs_available() {
        skip("needs root and mksquashfs");
        return;
    }
    if Path::new("/run/systemd/system").exists() {
        skip("systemd is PID 1 here: the services test under systemd covers this machine");
        return;
    }
    let root = Root::new("svc-alone");
    let r = root.path();
    let _d = Daemon::start(r);
    let status = text(&ctl(r, &["status"]).stdout);
    assert!(
        status.contains("services:") && status.contains("none (systemd is not PID 1"),
        "{status}"
    );
    let info = ctl_json(r, &["status", "--json"]);
    assert_eq!(info["services"], "none", "{info}");

    let blob = root.aux("svcapp.snap");
    svc_snap(&blob, "1.0", false);
    let out = ctl(r, &["install", blob.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let change = ctl_json(r, &["tasks", &newest_change(r).to_string(), "--json"]);
    assert_eq!(change["status"], "Done");
    assert!(
        task(&change, "start-services")["log"]
            .to_string()
            .contains("left alone"),
        "{change}"
    );
    let unit = std::fs::read_to_string(r.join(format!("etc/systemd/system/{SVC}"))).unwrap();
    assert!(
        unit.contains(&format!(
            "ExecStart=\"{}\"",
            r.join("snap/bin/svcapp.svc").display()
        )),
        "{unit}"
    );
    assert!(unit.contains("TimeoutStopSec=20000ms"), "{unit}");
    assert!(r.join(format!("etc/systemd/system/{KEEPER}")).exists());
    let out = ctl(r, &["remove", SNAP]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!r.join(format!("etc/systemd/system/{SVC}")).exists());
    assert!(!r.join(format!("etc/systemd/system/{KEEPER}")).exists());
}
