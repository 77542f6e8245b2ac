//! Knowing exactly when an app's processes are gone, on the real kernel: an app launched
//! through confine-hook is in its snap's cgroups; a refresh of it waits; the exit is noticed
//! through the release agent (v1), cgroup.events (v2) or polling; and launches wait out the
//! critical section.

use std::fs;
use std::path::Path;

use refreshd_tests::*;

fn prerequisites() -> bool {
    root_with("cgroups and a setuid launcher", &[])
}

/// Installs x1 of the `tracked` snap in `root` (with a daemon that is stopped again) and returns
/// a file of its next version.
fn installed_with_update(root: &Root) -> std::path::PathBuf {
    let (b1, b2) = (root.aux("t1.snap"), root.aux("t2.snap"));
    tracking_snap(&b1, "tracked", "1.0", false);
    tracking_snap(&b2, "tracked", "2.0", false);
    let _d = Daemon::start(root.path());
    let out = ctl(root.path(), &["install", b1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    b2
}

/// Installs x1 of `name`, starts `hold`, asks for x2 and checks the refresh waits for the app,
/// then lets the app exit and returns (backend, latency from exit to the critical section).
fn refresh_waits_for_the_app(tag: &str, args: &[&str]) -> Option<(String, u128)> {
    let root = Root::new(tag);
    let r = root.path();
    let (b1, b2) = (root.aux("t1.snap"), root.aux("t2.snap"));
    tracking_snap(&b1, "tracked", "1.0", false);
    tracking_snap(&b2, "tracked", "2.0", false);
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    );
    let status = ctl_json(r, &["status", "--json"]);
    let backend = status["tracking"].as_str().unwrap().to_owned();
    println!("{tag}: tracking {backend}: {}", status["tracking-reason"]);
    let out = ctl(r, &["install", b1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let app = App::launch(r, "tracked.hold");
    assert_eq!(app.revision, "x1");
    // The app is in the snap's group of every hierarchy present.
    let groups = app.cgroups();
    let mut buf = [0u8; 26];
    let parent = String::from_utf8_lossy(refreshd_runctl::cgroup_parent(
        r.as_os_str().as_encoded_bytes(),
        &mut buf,
    ))
    .into_owned();
    let want = format!("/{parent}/snap.tracked");
    let (v1, v2) = cgroup_mounts();
    if v1.is_some() {
        assert!(
            groups
                .lines()
                .any(|l| l.contains(":freezer:") && l.ends_with(&want)),
            "{groups}"
        );
    }
    if v2.is_some() {
        assert!(
            groups
                .lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&want)),
            "{groups}"
        );
    }
    assert!(r.join("run/refreshd/runctl/snap.tracked.running").exists());

    let out = ctl(r, &["install", b2.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = newest_change(r);
    let waiting = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    let reason = task(&waiting, "wait-for-apps")["wait"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains(&format!("pid {}", app.pid)),
        "the blocking pid is shown: {reason}"
    );
    assert!(reason.contains("user root"), "{reason}");
    // Never forced: the app keeps running, and the old revision stays current.
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("x1")
    );
    let status = ctl_json(r, &["changes", "--json"]);
    assert_eq!(status[0]["status"], "Wait", "{status}");

    let exited = app.release();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    let entered = logged_at(&done, "wait-for-apps", "critical section entered")
        .expect("wait-for-apps logs when it entered the critical section");
    let left = logged_at(&done, "lift-inhibition", "critical section left").unwrap();
    assert!(
        entered >= exited,
        "entered {entered} before the app exited {exited}"
    );
    assert!(left >= entered);
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("x2")
    );
    assert!(
        !r.join("run/refreshd/runctl/snap.tracked.inhibited")
            .exists(),
        "inhibition lifted"
    );
    assert!(
        !r.join("run/refreshd/runctl/snap.tracked.running").exists(),
        "no process left"
    );
    let latency = entered - exited;
    println!(
        "{tag}: app exit -> critical section: {:.3} ms; critical section: {:.3} ms",
        latency as f64 / 1e6,
        (left - entered) as f64 / 1e6
    );
    Some((backend, latency))
}

#[test]
fn v1_exit_is_noticed_through_the_release_agent() {
    if !prerequisites() {
        return;
    }
    if cgroup_mounts().0.is_none() {
        skip("no cgroup v1 freezer hierarchy");
        return;
    }
    let freezer = cgroup_mounts().0.unwrap();
    let agent = fs::read_to_string(freezer.join("release_agent")).unwrap_or_default();
    let agent = Path::new(agent.trim());
    if agent.exists() && agent.file_name() != bin("refresh-release-agent").file_name() {
        skip("the freezer hierarchy has a foreign release agent");
        return;
    }
    let (backend, _) = refresh_waits_for_the_app("v1", &["--tracking", "v1"]).unwrap();
    assert_eq!(backend, "v1");
}

#[test]
fn v2_exit_is_noticed_through_cgroup_events() {
    if !prerequisites() {
        return;
    }
    if cgroup_mounts().1.is_none() {
        skip("no cgroup2 hierarchy");
        return;
    }
    let (backend, _) = refresh_waits_for_the_app("v2", &["--tracking", "v2"]).unwrap();
    assert_eq!(backend, "v2");
}

#[test]
fn v1_poll_fallback_notices_the_exit() {
    if !prerequisites() {
        return;
    }
    if cgroup_mounts().0.is_none() {
        skip("no cgroup v1 freezer hierarchy");
        return;
    }
    let (backend, latency) = refresh_waits_for_the_app(
        "poll",
        &["--tracking", "v1-poll", "--poll-interval-ms", "200"],
    )
    .unwrap();
    assert_eq!(backend, "v1-poll");
    assert!(
        latency < 5_000_000_000,
        "polling every 200 ms noticed after {latency} ns"
    );
}

/// A launch during the critical section blocks, and starts as soon as the inhibition is lifted.
#[test]
fn launch_during_inhibition_waits_for_the_lift() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("inhibit");
    let r = root.path();
    let b2 = installed_with_update(&root);
    // Hold the critical section open: the refresh parks just before lifting the inhibition.
    let (d, id) = refresh_held_in_section(r, "tracked", &b2);

    // The launcher tells a terminal it waits: give it one, and read that line — the event
    // that it is blocked.
    let pty = nix::pty::openpty(None, None).unwrap();
    let launched = std::thread::spawn({
        let r = r.to_owned();
        let slave = pty.slave;
        move || {
            let mut child = std::process::Command::new(r.join("snap/bin/tracked.hold"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::from(slave))
                .spawn()
                .unwrap();
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            drop(child.stdin.take());
            let _ = child.wait();
            line
        }
    });
    let mut master = fs::File::from(pty.master);
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&seen).contains("is being refreshed") {
        let n = std::io::Read::read(&mut master, &mut buf).unwrap();
        assert!(
            n > 0,
            "the launcher closed its terminal without saying it waits"
        );
        seen.extend_from_slice(&buf[..n]);
    }
    println!("launcher said: {}", String::from_utf8_lossy(&seen).trim());
    assert!(
        !launched.is_finished(),
        "the app must not start during the critical section"
    );

    // A restart without the failpoint finishes the refresh and lifts the inhibition.
    assert!(d.stop().success());
    let _d = Daemon::start(r);
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    let left = logged_at(&done, "lift-inhibition", "critical section left").unwrap();
    let line = launched.join().unwrap();
    let mut w = line.split_whitespace();
    assert_eq!(w.next(), Some("started"), "{line}");
    let started: u128 = w.nth(1).unwrap().parse().unwrap();
    assert_eq!(w.next(), Some("x2"), "the launch runs the new revision");
    assert!(started >= left);
    println!(
        "inhibition lifted -> blocked app running: {:.3} ms",
        (started - left) as f64 / 1e6
    );
}

/// An exit whose event is lost (outside the protocol: the release agent could not run, a watch
/// could not be added) is caught by the daemon's one backstop timer, which looks at the kernel
/// for the snaps refreshes wait for. Waiting refreshes have no timers of their own.
#[test]
fn lost_exit_events_are_caught_by_the_backstop() {
    if !prerequisites() {
        return;
    }
    let (v1, v2) = cgroup_mounts();
    for (backend, present) in [("v1", v1.is_some()), ("v2", v2.is_some())] {
        if !present {
            skip(&format!("no {backend} hierarchy"));
            continue;
        }
        let root = Root::new(&format!("backstop-{backend}"));
        let r = root.path();
        let (b1, b2) = (root.aux("t1.snap"), root.aux("t2.snap"));
        tracking_snap(&b1, "tracked", "1.0", false);
        tracking_snap(&b2, "tracked", "2.0", false);
        let d = Daemon::start_with(
            r,
            DaemonOpts {
                failpoints: Some("lose-events"),
                extra_args: vec!["--tracking".into(), backend.into()],
                ..Default::default()
            },
        );
        let status = ctl_json(r, &["status", "--json"]);
        if status["tracking"] != backend {
            skip(&format!(
                "{backend} tracking unavailable: {}",
                status["tracking-reason"]
            ));
            continue;
        }
        assert!(ctl(r, &["install", b1.to_str().unwrap()]).status.success());
        let app = App::launch(r, "tracked.hold");
        assert!(ctl(r, &["install", b2.to_str().unwrap(), "--no-wait"])
            .status
            .success());
        let id = newest_change(r);
        let waiting = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
        assert!(
            task(&waiting, "wait-for-apps")["wait"]["until"].is_null(),
            "{backend}: an event-driven wait has no deadline of its own: {}",
            task(&waiting, "wait-for-apps")
        );
        app.release();
        let done = watch_until_ready(r, id);
        assert_eq!(done["status"], "Done", "{backend}: {done}");
        assert!(
            d.log_text().contains("but no event said so"),
            "{backend}: the backstop, not an event, woke the refresh:\n{}",
            d.log_text()
        );
    }
}

/// With refreshd stopped, launches proceed and are tracked; the daemon picks them up.
#[test]
fn launches_without_the_daemon_are_tracked() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("nodaemon");
    let r = root.path();
    let b2 = installed_with_update(&root);
    let app = App::launch(r, "tracked.hold");
    assert!(app.cgroups().contains("snap.tracked"), "{}", app.cgroups());
    assert!(r.join("run/refreshd/runctl/snap.tracked.running").exists());
    let hello = std::process::Command::new(r.join("snap/bin/tracked"))
        .output()
        .unwrap();
    assert_eq!(text(&hello.stdout).trim(), "hello from tracked x1");

    let _d = Daemon::start(r);
    assert!(ctl(r, &["install", b2.to_str().unwrap(), "--no-wait"])
        .status
        .success());
    let id = newest_change(r);
    let waiting = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    let reason = task(&waiting, "wait-for-apps")["wait"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains(&format!("pid {}", app.pid)), "{reason}");
    app.release();
    assert_eq!(watch_until_ready(r, id)["status"], "Done");
}

/// A real unprivileged user launches apps, runs as itself, and cannot touch the markers.
#[test]
fn unprivileged_user_launches_but_cannot_touch_markers() {
    if !prerequisites() {
        return;
    }
    let Some(user) = TestUser::create("app") else {
        skip("useradd failed");
        return;
    };
    let root = Root::new("userapp");
    let r = root.path();
    let b1 = root.aux("t1.snap");
    tracking_snap(&b1, "tracked", "1.0", false);
    let _d = Daemon::start(r);
    assert!(ctl(r, &["install", b1.to_str().unwrap()]).status.success());
    let home = user_home(r, &user);

    let app = App::launch_as(r, "tracked.hold", Some((user.uid, user.gid)));
    let status = fs::read_to_string(format!("/proc/{}/status", app.pid)).unwrap();
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_owned();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == user.uid.to_string()),
        "{uid_line}"
    );
    assert!(app.cgroups().contains("snap.tracked"));
    let data = home.join("snap/tracked/x1");
    assert!(data.is_dir(), "the user's data dir was made");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&data).unwrap().uid(), user.uid);

    // The markers are root's: the user can neither remove nor write them.
    let runctl = r.join("run/refreshd/runctl");
    for (what, args) in [
        ("remove", vec!["rm", "-f", "snap.tracked.running"]),
        ("create", vec!["touch", "snap.tracked.inhibited"]),
        ("write", vec!["sh", "-c", "echo x > snap.tracked.lock"]),
    ] {
        let out = std::process::Command::new("setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--clear-groups")
            .args(&args)
            .current_dir(&runctl)
            .output()
            .unwrap();
        assert!(!out.status.success(), "the user could {what} a marker");
    }
    assert!(runctl.join("snap.tracked.running").exists());
    assert!(!runctl.join("snap.tracked.inhibited").exists());
    app.release();
}

/// A reboot inside the critical section empties /run: apps may start before refreshd is back.
/// The next critical task re-enters the section: it waits for them (with launches allowed, as
/// the snap's `allow` behaviour asks, so no launch waits on the daemon) and restores the
/// inhibition once none is left, before it switches anything.
#[test]
fn critical_section_is_reentered_after_a_reboot() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("reenter");
    let r = root.path();
    let b2 = installed_with_update(&root);
    // Die inside the critical section, just before the switch.
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            failpoints: Some("before-do:link"),
            ..Default::default()
        },
    );
    let _ = ctl(r, &["install", b2.to_str().unwrap(), "--no-wait"]);
    assert!(killed_by_sigkill(d.wait()));
    let marker = r.join("run/refreshd/runctl/snap.tracked.inhibited");
    assert!(marker.exists(), "died inside the critical section");
    // The "reboot": the runtime dir's markers are gone, and an app starts before refreshd.
    fs::remove_file(&marker).unwrap();
    let app = App::launch(r, "tracked.hold");
    assert_eq!(app.revision, "x1");

    let _d = Daemon::start(r);
    let id = newest_change(r);
    let waiting = watch_until(r, id, |c| task(c, "link")["status"] == "Wait");
    assert_eq!(task(&waiting, "link")["status"], "Wait", "{waiting}");
    assert!(
        !marker.exists(),
        "the inhibition is restored while apps run (allow behaviour)"
    );
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("x1")
    );
    let exited = app.release();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    let left = logged_at(&done, "lift-inhibition", "critical section left").unwrap();
    assert!(left > exited);
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("x2")
    );
    assert!(!marker.exists());
}

/// A refresh carries every user's data to the new revision, and what a user planted there
/// (a symlink to /etc/shadow, a fifo) is copied as what it is, never followed or opened.
#[test]
fn user_data_is_carried_over_safely() {
    if !prerequisites() {
        return;
    }
    let Some(user) = TestUser::create("dat") else {
        skip("useradd failed");
        return;
    };
    let root = Root::new("userdata");
    let r = root.path();
    let b2 = installed_with_update(&root);
    let home = nix::unistd::User::from_name(&user.name)
        .unwrap()
        .unwrap()
        .dir;
    let home = r.join(home.strip_prefix("/").unwrap());
    fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
    let as_user = Some((user.uid, user.gid));
    App::launch_as(r, "tracked.hold", as_user).release();
    let data = home.join("snap/tracked/x1");
    let plant = std::process::Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .args([
            "sh",
            "-c",
            "echo mine > notes && ln -s /etc/shadow shadow && mkfifo pipe",
        ])
        .current_dir(&data)
        .status()
        .unwrap();
    assert!(plant.success());

    let _d = Daemon::start(r);
    let out = ctl(r, &["install", b2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let new = home.join("snap/tracked/x2");
    assert_eq!(fs::read_to_string(new.join("notes")).unwrap(), "mine\n");
    assert_eq!(
        fs::read_link(new.join("shadow")).unwrap(),
        Path::new("/etc/shadow")
    );
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(fs::symlink_metadata(new.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    for f in ["notes", "shadow", "pipe"] {
        assert_eq!(
            fs::symlink_metadata(new.join(f)).unwrap().uid(),
            user.uid,
            "{f}"
        );
    }
    assert_eq!(fs::metadata(&new).unwrap().uid(), user.uid);
}

/// `refreshctl revert` returns to the previous revision and its own data, untouched since it
/// was left, after waiting for running apps like a refresh.
#[test]
fn revert_returns_to_the_previous_revision_and_its_data() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("revert");
    let r = root.path();
    let b2 = installed_with_update(&root);
    let _d = Daemon::start(r);
    fs::write(r.join("var/snap/tracked/x1/state"), "as in x1").unwrap();
    let out = ctl(r, &["install", b2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(r.join("var/snap/tracked/x2/state")).unwrap(),
        "as in x1"
    );
    fs::write(r.join("var/snap/tracked/x2/state"), "changed in x2").unwrap();

    let app = App::launch(r, "tracked.hold");
    assert_eq!(app.revision, "x2");
    let out = ctl(r, &["revert", "tracked", "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = newest_change(r);
    let waiting = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(waiting["kind"], "revert");
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("x2")
    );
    app.release();
    assert_eq!(watch_until_ready(r, id)["status"], "Done");
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("x1")
    );
    assert_eq!(
        fs::read_link(r.join("var/snap/tracked/current")).unwrap(),
        Path::new("x1")
    );
    assert_eq!(
        fs::read_to_string(r.join("var/snap/tracked/x1/state")).unwrap(),
        "as in x1"
    );
    assert_eq!(
        fs::read_to_string(r.join("var/snap/tracked/x2/state")).unwrap(),
        "changed in x2"
    );
    let hello = std::process::Command::new(r.join("snap/bin/tracked"))
        .output()
        .unwrap();
    assert_eq!(text(&hello.stdout).trim(), "hello from tracked x1");
    assert!(!r
        .join("run/refreshd/runctl/snap.tracked.inhibited")
        .exists());
    // Nothing before x1: a clear refusal.
    let out = ctl(r, &["revert", "tracked"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no revision before x1"),
        "{}",
        text(&out.stderr)
    );
}

/// An orderly stop leaves no cgroup of its root behind: the snaps' groups no process is in, then
/// the root's own parent group; never a group an app still runs in. A root that is not there is
/// refused in one line, and nothing is made in its place.
#[test]
fn a_stopped_daemon_leaves_no_unused_cgroup_and_a_missing_root_is_refused() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("leaves");
    let r = root.path();
    let (b1, b2) = (root.aux("l1.snap"), root.aux("l2.snap"));
    tracking_snap(&b1, "left", "1.0", false);
    tracking_snap(&b2, "kept", "1.0", false);
    let d = Daemon::start(r);
    for b in [&b1, &b2] {
        let out = ctl(r, &["install", b.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // `left` ran and exited; an app of `kept` runs on.
    let out = std::process::Command::new(r.join("snap/bin/left"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let app = App::launch(r, "kept.hold");
    let parents = cgroup_parents(r);
    assert!(!parents.is_empty(), "no cgroup hierarchy");
    for p in &parents {
        assert!(p.join("snap.left").is_dir(), "{}", p.display());
    }

    assert!(d.stop().success());
    for p in &parents {
        assert!(
            !p.join("snap.left").exists(),
            "{}/snap.left outlived the daemon",
            p.display()
        );
        assert!(
            p.join("snap.kept").is_dir(),
            "the group an app runs in went: {}",
            p.display()
        );
    }
    app.release();
    // Started and stopped again with nothing running: nothing of the root is left.
    let d = Daemon::start(r);
    let log = d.log_text();
    let st = d.stop();
    assert!(st.success(), "{st:?}: {log}");
    for p in &parents {
        assert!(!p.exists(), "{} outlived the daemon", p.display());
    }

    let missing = root.aux("not-there");
    let out = std::process::Command::new(bin("refreshd"))
        .arg("--root")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is not a directory; create it first"), "{err}");
    assert!(!missing.exists(), "a missing root was made");
}
