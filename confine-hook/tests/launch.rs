//! The launcher on the real kernel, started by root: tracking, environment, waiting for a
//! refresh, and refusals. Each test builds its own scratch root (see `common`).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const HOSTILE: &[(&str, &str)] = &[
    ("LD_PRELOAD", "/nonexistent/evil.so"),
    ("LD_LIBRARY_PATH", "/tmp/evil"),
    ("LD_AUDIT", "/nonexistent/audit.so"),
    ("PATH", "/tmp/evil:/usr/bin:/bin"),
    ("IFS", "/"),
    ("HOME", "/tmp/evil-home"),
    ("BASH_ENV", "/tmp/evil.sh"),
    ("ENV", "/tmp/evil.sh"),
    ("SNAP", "/tmp/evil-snap"),
    ("TERM", "xterm-256color"),
    ("LANG", "C.UTF-8"),
    ("LC_ALL", "C"),
    ("XDG_RUNTIME_DIR", "/run/user/0"),
];

#[test]
fn root_launch_is_tracked_marked_and_env_is_allowlisted() {
    skip_unless!(cannot_run());
    let s = Scratch::new();
    // As after a reboot: no run/ at all yet.
    assert!(!s.path("run").exists());
    let r = launch_ok(
        s.command(s.path("snap/bin/hello"), HOSTILE)
            .args(["one", "two words"]),
    );

    assert_eq!(r.uid, 0);
    assert_eq!(r.args, ["--from-launch", "one", "two words"]);
    // Exactly the allowlist and the snap's variables.
    let mut want = vec![
        "COMBINED",
        "GREETING",
        "HOME",
        "LANG",
        "LC_ALL",
        "LOGNAME",
        "PATH",
        "SNAP",
        "SNAP_COMMON",
        "SNAP_DATA",
        "SNAP_INSTANCE_NAME",
        "SNAP_NAME",
        "SNAP_REVISION",
        "SNAP_USER_COMMON",
        "SNAP_USER_DATA",
        "SNAP_VERSION",
        "TERM",
        "USER",
        "XDG_RUNTIME_DIR",
    ];
    want.sort_unstable();
    assert_eq!(r.names(), want, "{:?}", r.env);
    let root = s.root.to_str().unwrap();
    let expect = [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("USER", "root".into()),
        ("LOGNAME", "root".into()),
        ("TERM", "xterm-256color".into()),
        ("SNAP", format!("{root}/snap/hello/x1")),
        ("SNAP_NAME", "hello".into()),
        ("SNAP_INSTANCE_NAME", "hello".into()),
        ("SNAP_REVISION", "x1".into()),
        ("SNAP_VERSION", "1.0".into()),
        ("SNAP_DATA", format!("{root}/var/snap/hello/x1")),
        ("SNAP_COMMON", format!("{root}/var/snap/hello/common")),
        ("SNAP_USER_DATA", format!("{root}/root/snap/hello/x1")),
        ("SNAP_USER_COMMON", format!("{root}/root/snap/hello/common")),
        ("HOME", format!("{root}/root/snap/hello/x1")),
        ("GREETING", "hi from hello".into()),
        ("COMBINED", "hi from hello!".into()),
    ];
    for (k, v) in expect {
        assert_eq!(r.var(k), Some(v.as_str()), "{k}");
    }
    assert!(s.path("root/snap/hello/x1").is_dir() && s.path("root/snap/hello/common").is_dir());

    // Tracked in both hierarchies, under this root's parent.
    let (v1, v2) = cgroup_mounts();
    let want_path = format!("/{}/snap.hello", s.parent);
    if let Some(v1) = &v1 {
        assert!(
            r.cgroups
                .iter()
                .any(|l| l.contains(":freezer:") && l.ends_with(&want_path)),
            "{:?}",
            r.cgroups
        );
        let parent = v1.join(&s.parent);
        for d in [parent.clone(), parent.join("snap.hello")] {
            assert_eq!(
                fs::read_to_string(d.join("notify_on_release"))
                    .unwrap()
                    .trim(),
                "1"
            );
        }
    }
    if v2.is_some() {
        assert!(
            r.cgroups
                .iter()
                .any(|l| l.starts_with("0::") && l.ends_with(&want_path)),
            "{:?}",
            r.cgroups
        );
    }
    println!("cgroups of the app: {:?}", r.cgroups);

    // The running marker exists; runctl was created root-owned 0755.
    assert!(s.runctl("snap.hello.running").is_file());
    for d in ["run", "run/refreshd", "run/refreshd/runctl"] {
        let m = fs::symlink_metadata(s.path(d)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755), "{d}");
    }
    let m = fs::metadata(s.runctl("snap.hello.running")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o644));
    let m = fs::metadata(s.runctl("snap.hello.lock")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600));
}

#[test]
fn explicit_form_named_apps_and_instances() {
    skip_unless!(cannot_run());
    let s = Scratch::new();
    // `confine-hook hello -- ARGS`.
    let r = launch_ok(s.command(s.hook(), &[]).args(["hello", "--", "--", "x"]));
    assert_eq!(r.args, ["--from-launch", "--", "x"]);
    // A second app, through `snap/bin/hello.world` and explicitly.
    fs::write(
        s.path("var/lib/refreshd/launch/hello/x1/world"),
        "refreshd-launch 1\ncommand bin/app\narg --world\n",
    )
    .unwrap();
    let r = launch_ok(&mut s.command(s.add_launcher("hello.world"), &[]));
    assert_eq!(r.args, ["--world"]);
    let r = launch_ok(s.command(s.hook(), &[]).arg("hello.world"));
    assert_eq!(r.args, ["--world"]);
    // A parallel instance `hello_k1` (app named like the snap: `hello`).
    fs::create_dir_all(s.path("snap/hello_k1/x1/bin")).unwrap();
    install(
        &s.path("app.src"),
        &s.path("snap/hello_k1/x1/bin/app"),
        0o755,
    );
    std::os::unix::fs::symlink("x1", s.path("snap/hello_k1/current")).unwrap();
    fs::create_dir_all(s.path("var/lib/refreshd/launch/hello_k1/x1")).unwrap();
    fs::write(s.path("var/lib/refreshd/launch/hello_k1/x1/hello"), LAUNCH).unwrap();
    let r = launch_ok(&mut s.command(s.add_launcher("hello_k1"), &[]));
    assert_eq!(r.var("SNAP_NAME"), Some("hello"));
    assert_eq!(r.var("SNAP_INSTANCE_NAME"), Some("hello_k1"));
    assert_eq!(r.var("SNAP_INSTANCE_KEY"), Some("k1"));
    assert!(r
        .cgroups
        .iter()
        .any(|l| l.ends_with(&format!("/{}/snap.hello_k1", s.parent))));
    assert!(s.runctl("snap.hello_k1.running").exists());
}

#[test]
fn launch_waits_while_inhibited_and_resumes_within_milliseconds() {
    skip_unless!(cannot_run());
    let s = Scratch::new();
    launch_ok(&mut s.command(s.path("snap/bin/hello"), &[])); // creates runctl
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let marker = s.runctl("snap.hello.inhibited");
    fs::write(
        &marker,
        format!(
            "reason=refresh\nchange=7\npid={}\nboot-id={}\n",
            std::process::id(),
            boot_id.trim()
        ),
    )
    .unwrap();
    let out = s.path("tmp/report");
    let mut bg = spawn(
        s.command(s.path("snap/bin/hello"), &[])
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let pid = bg.0.id();
    // Deterministic: the launcher has its inotify watch and sleeps; the app has not run.
    wait_until("the inotify watch", Duration::from_secs(10), || {
        has_inotify_watch(pid)
    });
    wait_until("the launcher to sleep", Duration::from_secs(10), || {
        proc_state(pid) == Some('S')
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        bg.0.try_wait().unwrap(),
        None,
        "the launcher exited while inhibited"
    );
    assert_eq!(proc_state(pid), Some('S'));
    assert!(!out.exists(), "the app ran while the snap was inhibited");
    // The lock is free while waiting (the daemon could take it).
    let lock = fs::File::open(s.runctl("snap.hello.lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        },
        0,
        "the waiting launcher holds the lock"
    );
    drop(lock);

    let removed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    fs::remove_file(&marker).unwrap();
    let status = bg.0.wait().unwrap();
    let stderr = std::io::read_to_string(bg.0.stderr.take().unwrap()).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    // Not a terminal: no message on stderr.
    assert_eq!(stderr, "");
    let r = Report::parse(&fs::read_to_string(&out).unwrap());
    let latency_ms = (r.start_ns.saturating_sub(removed)) as f64 / 1e6;
    // For comparison: a launch that never waited, from spawn to the app's first line.
    let spawned = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let plain = launch_ok(&mut s.command(s.path("snap/bin/hello"), &[]));
    let plain_ms = (plain.start_ns.saturating_sub(spawned)) as f64 / 1e6;
    println!(
        "marker removal to app start: {latency_ms:.2} ms; an uninhibited launch, spawn to app \
         start: {plain_ms:.2} ms (both include /bin/sh and date start-up and the kernel's RCU \
         grace period for joining a cgroup)"
    );
    assert!(
        r.start_ns >= removed,
        "the app started before the marker was removed"
    );
    assert!(latency_ms < 500.0, "resumed too slowly: {latency_ms} ms");
}

#[test]
fn waiting_message_only_on_a_terminal() {
    skip_unless!(cannot_run());
    let script = "/usr/bin/script";
    if !std::path::Path::new(script).exists() {
        println!("SKIP: needs {script} (util-linux) for a pseudo-terminal");
        return;
    }
    let s = Scratch::new();
    launch_ok(&mut s.command(s.path("snap/bin/hello"), &[]));
    let marker = s.runctl("snap.hello.inhibited");
    // Written during another boot: its daemon is gone.
    fs::write(
        &marker,
        "reason=refresh\nchange=9\npid=1\nboot-id=another-boot\n",
    )
    .unwrap();
    let log = s.path("tmp/terminal");
    let mut bg = spawn(
        s.command(script, &[("TERM", "dumb")])
            .args(["-qec"])
            .arg(s.path("snap/bin/hello"))
            .arg("/dev/null")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap()),
    );
    wait_until("the message", Duration::from_secs(10), || {
        fs::read_to_string(&log).is_ok_and(|t| t.contains("refresh completes"))
    });
    fs::remove_file(&marker).unwrap();
    assert!(bg.0.wait().unwrap().success());
    let text = fs::read_to_string(&log).unwrap().replace('\r', "");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("hello is being refreshed; it will start when the refresh completes")
    );
    assert_eq!(
        lines.next(),
        Some(
            "refreshd is not running; hello will start once refreshd is back and has finished \
             the interrupted refresh"
        )
    );
    assert!(lines.next().unwrap().starts_with("start="), "{text}");
}

#[test]
fn ctrl_c_ends_a_waiting_launch() {
    skip_unless!(cannot_run());
    let s = Scratch::new();
    launch_ok(&mut s.command(s.path("snap/bin/hello"), &[]));
    // A marker whose writer is gone (another boot): the launch still waits.
    fs::write(
        s.runctl("snap.hello.inhibited"),
        "reason=refresh\nchange=8\npid=1\nboot-id=00000000-0000-0000-0000-000000000000\n",
    )
    .unwrap();
    let out = s.path("tmp/report");
    let mut bg = spawn(
        s.command(s.path("snap/bin/hello"), &[])
            .arg("--out")
            .arg(&out)
            .stderr(Stdio::null()),
    );
    let pid = bg.0.id();
    wait_until("the inotify watch", Duration::from_secs(10), || {
        has_inotify_watch(pid)
    });
    // SAFETY: signalling the process this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) }, 0);
    let status = bg.0.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status}");
    assert!(!out.exists());
}

#[test]
fn refuses_untrusted_directories() {
    skip_unless!(cannot_run());
    let s = Scratch::new();
    launch_ok(&mut s.command(s.path("snap/bin/hello"), &[]));
    let cases: &[(&str, u32, u32, &str)] = &[
        // (path, uid, mode, expected message part)
        (
            "run/refreshd/runctl",
            0,
            0o777,
            "writable by group or others",
        ),
        ("run/refreshd", 0, 0o775, "writable by group or others"),
        ("run/refreshd/runctl", 1, 0o755, "owned by uid 1"),
        ("snap/hello", 1, 0o755, "owned by uid 1"),
        ("snap", 0, 0o757, "writable by group or others"),
        (
            "var/lib/refreshd/launch/hello/x1",
            1,
            0o755,
            "owned by uid 1",
        ),
        (
            "var/lib/refreshd/launch",
            0,
            0o775,
            "writable by group or others",
        ),
        ("usr/lib/refreshd", 0, 0o777, "writable by group or others"),
        (".", 1, 0o755, "owned by uid 1"),
        (".", 0, 0o1777, "writable by group or others"),
    ];
    for (rel, uid, mode, want) in cases {
        let p = s.path(rel);
        let m = fs::metadata(&p).unwrap();
        chown(&p, *uid, 0);
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
        let err = launch_refused(&mut s.command(s.path("snap/bin/hello"), &[]), 1);
        assert!(
            err.contains(want) && err.contains("refusing"),
            "{rel}: {err}"
        );
        chown(&p, m.uid(), m.gid());
        fs::set_permissions(&p, fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
    }
    // A symlinked directory inside the root is not followed.
    fs::rename(
        s.path("run/refreshd/runctl"),
        s.path("run/refreshd/elsewhere"),
    )
    .unwrap();
    std::os::unix::fs::symlink("elsewhere", s.path("run/refreshd/runctl")).unwrap();
    let err = launch_refused(&mut s.command(s.path("snap/bin/hello"), &[]), 1);
    assert!(err.contains("symbolic links are not followed"), "{err}");
    fs::remove_file(s.path("run/refreshd/runctl")).unwrap();
    fs::rename(
        s.path("run/refreshd/elsewhere"),
        s.path("run/refreshd/runctl"),
    )
    .unwrap();
    // A writable launch description is refused too.
    let desc = s.path("var/lib/refreshd/launch/hello/x1/hello");
    fs::set_permissions(&desc, fs::Permissions::from_mode(0o666)).unwrap();
    let err = launch_refused(&mut s.command(s.path("snap/bin/hello"), &[]), 1);
    assert!(err.contains("must be owned by root"), "{err}");
    fs::set_permissions(&desc, fs::Permissions::from_mode(0o644)).unwrap();
    launch_ok(&mut s.command(s.path("snap/bin/hello"), &[]));
}

#[test]
fn refuses_bad_current_links() {
    skip_unless!(cannot_run());
    let s = Scratch::new();
    // A revision "outside" that would otherwise work.
    fs::create_dir_all(s.path("evil/bin")).unwrap();
    install(&s.path("app.src"), &s.path("evil/bin/app"), 0o755);
    let current = s.path("snap/hello/current");
    let outside = s.path("evil");
    let targets: &[&str] = &[
        outside.to_str().unwrap(),
        "../../evil",
        "x1/../../../evil",
        "x1/",
        "/tmp",
        "x01",
        "0",
        "",
    ];
    for t in targets {
        fs::remove_file(&current).unwrap();
        if t.is_empty() {
            // Not a symlink at all.
            fs::create_dir(&current).unwrap();
        } else {
            std::os::unix::fs::symlink(t, &current).unwrap();
        }
        let err = launch_refused(&mut s.command(s.path("snap/bin/hello"), &[]), 1);
        assert!(err.contains("current"), "{t}: {err}");
        if t.is_empty() {
            fs::remove_dir(&current).unwrap();
            std::os::unix::fs::symlink("x1", &current).unwrap();
        }
    }
    fs::remove_file(&current).unwrap();
    let err = launch_refused(&mut s.command(s.path("snap/bin/hello"), &[]), 1);
    assert!(err.contains("no current revision"), "{err}");
}

#[test]
fn refuses_bad_names_and_argv0_tricks() {
    skip_unless!(cannot_run());
    let s = Scratch::new();
    let hook = s.hook();
    let cases: &[(&str, &[&str], &str)] = &[
        // (argv[0], args, expected message part)
        ("snap.x/../../etc", &[], "\"..\""),
        ("../../etc/hello", &[], "\"..\""),
        ("Hello", &[], "not a valid app name"),
        ("hello.", &[], "not a valid app name"),
        ("hello.world/x", &[], "not a valid app name"),
        (
            "confine-hook",
            &["snap.x/../../etc", "--"],
            "not a valid app name",
        ),
        ("confine-hook", &["../hello"], "not a valid app name"),
        ("confine-hook", &["hello", "x"], "expected \"--\""),
        ("confine-hook", &[], "no app named"),
        ("nosuch", &[], "snap nosuch is not installed"),
        ("hello.nosuch", &[], "has no app \"nosuch\""),
    ];
    for (argv0, args, want) in cases {
        let err = launch_refused(s.command(&hook, &[]).arg0(argv0).args(*args), 1);
        assert!(err.contains(want), "{argv0} {args:?}: {err}");
    }
    let long = "a".repeat(5000);
    let err = launch_refused(s.command(&hook, &[]).arg0(&long), 1);
    assert!(
        err.contains("not a valid app name") && err.len() < 400,
        "{err}"
    );
    // Refusals before the lock leave nothing behind for snaps that are not installed.
    assert!(!s.runctl("snap.nosuch.running").exists());
    assert!(!s.runctl("snap.nosuch.lock").exists());
}

#[test]
fn refuses_bad_launch_descriptions_and_missing_programs() {
    skip_unless!(cannot_run());
    let s = Scratch::new();
    let desc = s.path("var/lib/refreshd/launch/hello/x1/hello");
    let cases: &[(&str, &str)] = &[
        (
            "refreshd-launch 2\ncommand bin/app\n",
            "format version \"2\"",
        ),
        ("#!/bin/sh\n", "does not start with"),
        ("refreshd-launch 1\nsnap-name hello\n", "names no command"),
        (
            "refreshd-launch 1\ncommand ../../../bin/sh\n",
            "invalid command",
        ),
        (
            "refreshd-launch 1\nsnap-name other\ncommand bin/app\n",
            "describes snap \"other\"",
        ),
        (
            "refreshd-launch 1\nrevision 5\ncommand bin/app\n",
            "revision \"5\"",
        ),
    ];
    for (text, want) in cases {
        fs::write(&desc, text).unwrap();
        let err = launch_refused(&mut s.command(s.path("snap/bin/hello"), &[]), 1);
        assert!(err.contains(want), "{text:?}: {err}");
    }
    let big = format!("{LAUNCH}{}", "arg x\n".repeat(12_000));
    fs::write(&desc, big).unwrap();
    let err = launch_refused(&mut s.command(s.path("snap/bin/hello"), &[]), 1);
    assert!(err.contains("larger than"), "{err}");
    // A program that does not exist: 127, as a shell would say.
    fs::write(&desc, "refreshd-launch 1\ncommand bin/missing\n").unwrap();
    let err = launch_refused(&mut s.command(s.path("snap/bin/hello"), &[]), 127);
    assert!(
        err.contains("bin/missing") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn refuses_to_run_unless_installed_setuid_in_a_root() {
    skip_unless!(cannot_run_as_user());
    let s = Scratch::new();
    // A copy elsewhere (still setuid-root, as root may make one): not at ROOT/HOOK_PATH.
    let stray = s.path("tmp/confine-hook");
    install(&s.hook(), &stray, 0o4755);
    let err = launch_refused(s.command(&stray, &[]).arg("hello"), 1);
    assert!(err.contains("refusing to run from"), "{err}");
    // Installed in another (root-owned) tree: that tree is the root, not ours.
    fs::create_dir_all(s.path("tmp/other/usr/lib/refreshd")).unwrap();
    let other = s.path("tmp/other/usr/lib/refreshd/confine-hook");
    install(&s.hook(), &other, 0o4755);
    let err = launch_refused(s.command(&other, &[]).arg("hello"), 1);
    let want = format!("there is no {}/tmp/other/snap/hello", s.root.display());
    assert!(err.contains(&want), "{err}");
    // Not setuid: refused before touching anything.
    fs::set_permissions(s.hook(), fs::Permissions::from_mode(0o755)).unwrap();
    let u = User::new(&s);
    let err = launch_refused(&mut u.command(s.path("snap/bin/hello"), &[]), 1);
    assert!(err.contains("not running as root"), "{err}");
}

#[test]
fn launches_untracked_when_no_hierarchy_is_mounted() {
    skip_unless!(cannot_run());
    let (v1, v2) = cgroup_mounts();
    let unshare = "/usr/bin/unshare";
    if !std::path::Path::new(unshare).exists() {
        println!("SKIP: needs {unshare} (util-linux) for a private mount namespace");
        return;
    }
    let s = Scratch::new();
    // In a private mount namespace without the freezer and cgroup2 mounts.
    let umounts: String = [v1, v2]
        .into_iter()
        .flatten()
        .map(|m| format!("umount -l '{}' && ", m.display()))
        .collect();
    let script = format!("{umounts}exec \"$0\" \"$@\"");
    let out = output(
        s.command(unshare, &[("PATH", "/usr/bin:/bin")])
            .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
            .arg(script)
            .arg(s.path("snap/bin/hello")),
    );
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unshare") {
        println!(
            "SKIP: cannot make a mount namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = Report::parse(&String::from_utf8(out.stdout).unwrap());
    assert!(
        !r.cgroups.iter().any(|l| l.contains(&s.parent)),
        "{:?}",
        r.cgroups
    );
    // Still marked running, so the daemon knows the snap may be in use.
    assert!(s.runctl("snap.hello.running").exists());
}
