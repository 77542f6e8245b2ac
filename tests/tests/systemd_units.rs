//! refreshd's own units under a real systemd (PID 1 in throwaway namespaces), installed by
//! `make install`:
//! - the units pass `systemd-analyze verify`; `systemd-analyze security` gives the exposure
//!   recorded in docs/systemd.md; refreshd starts on the first request (socket activation),
//!   says READY and its status, runs in the host's mount namespace, and logs to the journal
//!   with SNAP, CHANGE and TASK fields; a refresh that waits for an app runs end to end; the
//!   installed man pages open with `man`;
//! - `systemctl restart refreshd` in the middle of a refresh that waits, and a stop with a
//!   launch while no daemon runs, lose nothing: the watch goes on, requests are answered, the
//!   launch is counted, the refresh completes when the last app exits;
//! - a refresh still waiting at shutdown is applied at the next boot by refreshd-boot.service,
//!   before user sessions are allowed and before the snap's service starts.

use std::path::Path;
use std::time::Duration;

use refreshd_tests::installed::{can_run, task_status, Installed, STORE};
use refreshd_tests::systemd::{BootOpts, RunningApp};
use refreshd_tests::*;

const SNAP: &str = "unitapp";
const SVC: &str = "snap.unitapp.svc.service";
/// Exposure that `systemd-analyze security` must not exceed (docs/systemd.md records the score).
const MAX_EXPOSURE: f64 = 5.5;

/// An interactive app (says it started, waits for a line, saves it) and a service.
fn unit_snap(out: &Path, version: &str) {
    SnapSrc::new(&format!(
        "name: {SNAP}\nversion: '{version}'\nsummary: units under systemd\napps:\n  \
         {SNAP}:\n    command: bin/app\n  \
         svc:\n    command: bin/svc\n    daemon: simple\n"
    ))
    .file(
        "bin/app",
        "#!/bin/sh\necho \"started $$\"\nread line\necho \"$line\" > \"$SNAP_DATA/note\"\n",
        0o755,
    )
    .file(
        "bin/svc",
        "#!/bin/sh\necho \"$SNAP_REVISION\" >> /results/svc.log\nexec sleep infinity\n",
        0o755,
    )
    .build(out);
}

fn publish(w: &Installed, version: &str) -> u32 {
    let blob = w.sd.dir().join(format!("{SNAP}-{version}.snap"));
    unit_snap(&blob, version);
    let rev = w.publish(&blob);
    std::fs::remove_file(&blob).unwrap();
    rev
}

fn opts() -> BootOpts {
    BootOpts::default()
}

fn boot() -> Installed {
    Installed::boot(
        opts(),
        &format!("--insecure-unsigned-store --store {STORE}"),
    )
}

fn current(w: &Installed) -> String {
    w.sd.run_ok(&["readlink", &format!("/snap/{SNAP}/current")])
        .trim()
        .to_owned()
}

fn waiting_for(pids: &[u32]) -> impl Fn(&serde_json::Value) -> bool + '_ {
    move |c| {
        c["tasks"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["kind"] == "wait-for-apps"))
            .is_some_and(|t| {
                let reason = t["wait"]["reason"].as_str().unwrap_or("");
                t["status"] == "Wait" && pids.iter().all(|p| reason.contains(&format!("pid {p} ")))
            })
    }
}

fn install(w: &Installed) {
    assert_eq!(publish(w, "1.0"), 1);
    let out = w.ctl_ok(&["install", SNAP]);
    assert_eq!(out.trim(), format!("Installed {SNAP} 1"));
    w.wait_prop(SVC, "ActiveState", "active", Duration::from_secs(20));
}

/// Starts a refresh to 1.1 and returns its id once it waits for `apps`.
fn refresh_waiting(w: &Installed, apps: &[u32]) -> u64 {
    assert_eq!(publish(w, "1.1"), 2);
    let id: u64 = w
        .ctl_ok(&["refresh", SNAP, "--no-wait"])
        .trim()
        .parse()
        .unwrap();
    let mut watch = w.watch(id);
    assert!(
        watch.until(waiting_for(apps)),
        "the refresh did not wait for {apps:?}: {}",
        watch.last
    );
    id
}

#[test]
fn units_verify_and_run_a_refresh_with_socket_activation() {
    if !can_run() {
        return;
    }
    let w = boot();
    let units = [
        "/usr/lib/systemd/system/refreshd.socket",
        "/usr/lib/systemd/system/refreshd.service",
        "/usr/lib/systemd/system/refreshd-boot.service",
    ];
    let mut verify = vec!["systemd-analyze", "verify"];
    verify.extend_from_slice(&units);
    let out = w.sd.run(&verify);
    let complaints: Vec<String> = text(&out.stderr)
        .lines()
        .filter(|l| l.contains("refreshd"))
        .map(str::to_owned)
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify ({}): {complaints:#?}\n{}",
        out.status,
        text(&out.stderr)
    );

    let sec = w.sd.run_ok(&[
        "systemd-analyze",
        "security",
        "--no-pager",
        "refreshd.service",
    ]);
    let overall = sec
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for refreshd.service:")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no overall exposure in:\n{sec}"))
        .trim()
        .to_owned();
    let score: f64 = overall.split_whitespace().next().unwrap().parse().unwrap();
    println!("systemd-analyze security refreshd.service: {overall}");
    std::fs::write(w.sd.results_dir().join("security.txt"), &sec).unwrap();
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {overall} is above {MAX_EXPOSURE}:\n{sec}"
    );

    // Enabled and listening, but not started: the first request starts it.
    assert_eq!(w.sd.show("refreshd.socket", "ActiveState"), "active");
    assert_eq!(w.sd.show("refreshd.service", "ActiveState"), "inactive");
    let status = w.ctl_ok(&["status"]);
    assert!(status.contains("refreshd"), "{status}");
    assert_eq!(w.sd.show("refreshd.service", "ActiveState"), "active");
    // Type=notify: active means READY=1 arrived; the status line came with it.
    let st = w.sd.show("refreshd.service", "StatusText");
    assert!(!st.is_empty(), "no STATUS= from refreshd");
    assert_eq!(w.sd.show("refreshd.service", "WatchdogUSec"), "3min");
    // Mounts it makes must be everyone's: the service shares the host's mount namespace.
    let pid = w.sd.show("refreshd.service", "MainPID");
    let ns = |p: &str| {
        w.sd.run_ok(&["readlink", &format!("/proc/{p}/ns/mnt")])
            .trim()
            .to_owned()
    };
    assert_eq!(
        ns(&pid),
        ns("1"),
        "refreshd runs in a mount namespace of its own"
    );

    install(&w);
    let app = RunningApp::launch(&w.sd, SNAP);
    let id = refresh_waiting(&w, &[app.pid]);
    let mut watch = w.watch(id);
    // STATUS= follows the change (at most a second later; systemd has no event for it).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !w
        .sd
        .show("refreshd.service", "StatusText")
        .contains("1 waiting for apps to close")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "StatusText: {}",
            w.sd.show("refreshd.service", "StatusText")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    app.release("kept");
    assert!(watch.until(|c| c["ready"] == true), "{}", watch.last);
    assert_eq!(watch.last["status"], "Done", "{}", watch.last);
    assert_eq!(current(&w), "2");
    assert_eq!(
        w.sd.run_ok(&["cat", &format!("/var/snap/{SNAP}/current/note")])
            .trim(),
        "kept"
    );

    // The journal has the change's story under structured fields.
    let j = w.sd.run_ok(&[
        "journalctl",
        "--no-pager",
        "-o",
        "json",
        "-u",
        "refreshd.service",
        &format!("SNAP={SNAP}"),
        &format!("CHANGE={id}"),
    ]);
    let entries: Vec<serde_json::Value> = j
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        entries.iter().any(|e| e["TASK"].is_string()
            && e["MESSAGE"]
                .as_str()
                .unwrap_or("")
                .contains("critical section entered")),
        "no journal entry with SNAP, CHANGE and TASK for the critical section: {j}"
    );

    // The installed man pages open where man looks by default.
    for page in [vec!["refreshctl"], vec!["8", "refreshd"]] {
        let mut cmd = vec!["man", "-P", "cat"];
        cmd.extend_from_slice(&page);
        let out = w.sd.run(&cmd);
        assert!(
            out.status.success() && text(&out.stdout).contains("refresh"),
            "man {page:?} ({}): {}",
            out.status,
            text(&out.stderr)
        );
    }
}

#[test]
fn restarting_refreshd_mid_refresh_loses_nothing() {
    if !can_run() {
        return;
    }
    let w = boot();
    install(&w);
    let first = RunningApp::launch(&w.sd, SNAP);
    let id = refresh_waiting(&w, &[first.pid]);
    let mut watch = w.watch(id);
    assert!(watch.until(waiting_for(&[first.pid])));

    // A restart while the refresh waits and a watch follows it.
    let before = w.sd.show("refreshd.service", "MainPID");
    w.sd.run_ok(&["systemctl", "restart", "refreshd.service"]);
    let after = w.sd.show("refreshd.service", "MainPID");
    assert_ne!(before, after, "refreshd was not restarted");
    // Requests right after are answered (they would wait in the socket's backlog). The new
    // daemon runs wait-for-apps again, which parks again: Doing for a moment, then Wait.
    let change = w.ctl_json(&["tasks", &id.to_string(), "--json"]);
    assert!(
        ["Do", "Doing", "Wait"].contains(&task_status(&change, "wait-for-apps").as_str())
            && change["ready"] != true,
        "{change}"
    );

    // Stopped: a launch now runs (no critical section yet) and must be counted by the next
    // daemon, which the watch's reconnection starts through the socket.
    w.sd.run_ok(&["systemctl", "stop", "refreshd.service"]);
    assert_eq!(w.sd.show("refreshd.socket", "ActiveState"), "active");
    let second = RunningApp::launch(&w.sd, SNAP);
    assert!(
        watch.until(|c| task_status(c, "wait-for-apps") == "Wait"),
        "after the restarts the refresh does not wait: {}",
        watch.last
    );
    assert!(watch.alive(), "the watch gave up during the restarts");
    w.wait_prop(
        "refreshd.service",
        "ActiveState",
        "active",
        Duration::from_secs(30),
    );

    // The first app's exit leaves the second: the refresh must go on waiting. The proof is
    // the data: the second app writes its note as it exits, and only a refresh that waited
    // for it carries that note to the new revision.
    first.release("one");
    let change = w.ctl_json(&["tasks", &id.to_string(), "--json"]);
    assert!(
        ["Do", "Doing", "Wait"].contains(&task_status(&change, "wait-for-apps").as_str()),
        "{change}"
    );
    second.release("two");
    assert!(watch.until(|c| c["ready"] == true), "{}", watch.last);
    assert_eq!(watch.last["status"], "Done", "{}", watch.last);
    let (status, err) = watch.finish();
    assert!(status.success(), "the watch failed: {err}");
    assert_eq!(current(&w), "2");
    assert_eq!(
        w.sd.run_ok(&["cat", &format!("/var/snap/{SNAP}/current/note")])
            .trim(),
        "two"
    );
    assert_eq!(w.sd.show("refreshd.service", "NRestarts"), "0");
    assert_eq!(w.sd.show("refreshd.service", "Result"), "success");
}

#[test]
fn a_pending_refresh_is_applied_at_boot_before_logins_and_services() {
    if !can_run() {
        return;
    }
    let disk = tempfile::Builder::new()
        .prefix("refreshd-disk-")
        .tempdir()
        .unwrap();
    let with_disk = || BootOpts {
        disk: Some(disk.path().to_owned()),
        ..opts()
    };
    let id = {
        let w = Installed::boot(
            with_disk(),
            &format!("--insecure-unsigned-store --store {STORE}"),
        );
        install(&w);
        let app = RunningApp::launch(&w.sd, SNAP);
        let id = refresh_waiting(&w, &[app.pid]);
        // The next boot must not need the store: the revision is downloaded.
        let change = w.ctl_json(&["tasks", &id.to_string(), "--json"]);
        assert_eq!(task_status(&change, "download"), "Done", "{change}");
        // The machine goes down with the app still open (the harness kills the instance).
        drop(app);
        w.sd.shutdown().expect("teardown of the first boot");
        id
    };

    let w = Installed::reboot(with_disk());
    let log = w.journal("refreshd-boot.service");
    assert_eq!(
        w.sd.show("refreshd-boot.service", "Result"),
        "success",
        "refreshd-boot.service said: {log}\n--- refreshd ---\n{}",
        w.journal("refreshd.service")
    );
    assert!(
        log.contains(&format!("{SNAP}: refreshed before login (change {id})")),
        "refreshd-boot.service said: {log}"
    );
    assert_eq!(current(&w), "2");
    // Ordered before logins are allowed and before the snap's service.
    let mono = |unit: &str, prop: &str| -> u64 { w.sd.show(unit, prop).parse().unwrap_or(0) };
    let boot_done = mono("refreshd-boot.service", "ExecMainExitTimestampMonotonic");
    let sessions = mono(
        "systemd-user-sessions.service",
        "ExecMainStartTimestampMonotonic",
    );
    assert!(
        boot_done > 0 && sessions > 0,
        "missing timestamps: {boot_done} {sessions}"
    );
    assert!(
        boot_done <= sessions,
        "user sessions were allowed ({sessions}) before the refresh finished ({boot_done})"
    );
    w.wait_prop(SVC, "ActiveState", "active", Duration::from_secs(30));
    let svc_start = mono(SVC, "ExecMainStartTimestampMonotonic");
    assert!(
        boot_done <= svc_start,
        "{SVC} started before refreshd-boot.service finished"
    );
    // The service came up from the new revision, once.
    let svc_log = std::fs::read_to_string(w.sd.results_dir().join("svc.log")).unwrap_or_default();
    assert_eq!(svc_log.trim(), "2", "service starts this boot: {svc_log:?}");
    let mut watch = w.watch(id);
    assert!(watch.until(|c| c["ready"] == true), "{}", watch.last);
    assert_eq!(watch.last["status"], "Done", "{}", watch.last);
}

#[test]
fn a_critical_section_delays_shutdown_through_logind() {
    if !can_run() {
        return;
    }
    let w = boot();
    let started = w.sd.run_timeout(
        &["systemctl", "start", "systemd-logind.service"],
        Duration::from_secs(30),
    );
    if !started.status.success() {
        skip(&format!(
            "systemd-logind does not start under the harness ({}): {}",
            started.status,
            text(&started.stderr)
        ));
        return;
    }
    install(&w);
    // From now on parked inside the critical section (after wait-for-apps and stop-services)
    // until aborted.
    w.sd.write_file(
        "/etc/default/refreshd",
        format!("REFRESHD_ARGS=\"--insecure-unsigned-store --store {STORE}\"\nREFRESHD_FAILPOINTS=park-do:setup-data\n"),
    );
    w.sd.run_ok(&["systemctl", "restart", "refreshd.service"]);
    assert_eq!(publish(&w, "1.1"), 2);
    let id: u64 = w
        .ctl_ok(&["refresh", SNAP, "--no-wait"])
        .trim()
        .parse()
        .unwrap();
    let mut watch = w.watch(id);
    assert!(
        watch.until(|c| task_status(c, "setup-data") == "Wait"),
        "{}",
        watch.last
    );
    let inhibitors = || {
        text(
            &w.sd
                .run_ok(&["systemd-inhibit", "--list", "--no-pager", "--mode=delay"])
                .into_bytes(),
        )
    };
    // logind is asked in the background as the section starts; it answers within moments.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !inhibitors().contains(&format!("Refreshing {SNAP}")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no delay inhibitor during the critical section:\n{}\n{}",
            inhibitors(),
            w.journal("refreshd.service")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let list = inhibitors();
    let line = list.lines().find(|l| l.contains("refreshd")).unwrap_or("");
    assert!(
        line.contains("shutdown") && line.contains("delay"),
        "{list}"
    );

    w.ctl_ok(&["abort", &id.to_string()]);
    assert!(watch.until(|c| c["ready"] == true), "{}", watch.last);
    assert_eq!(watch.last["status"], "Undone", "{}", watch.last);
    assert!(
        !inhibitors().contains(&format!("Refreshing {SNAP}")),
        "the inhibitor outlived the critical section:\n{}",
        inhibitors()
    );
    assert_eq!(current(&w), "1");
}
