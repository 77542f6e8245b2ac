//! The launcher started by a real unprivileged user: it runs the app as that user with a clean
//! environment, and gives the user no way to touch the markers or to point the launcher
//! outside its root.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::*;

#[test]
fn user_launches_as_itself_with_its_own_dirs() {
    skip_unless!(cannot_run_as_user());
    let s = Scratch::new();
    let u = User::new(&s);
    let vars = [
        ("LD_PRELOAD", "/nonexistent/evil.so"),
        ("LD_LIBRARY_PATH", "/tmp/evil"),
        ("PATH", "/tmp/evil"),
        ("IFS", "/"),
        ("HOME", "/tmp/evil-home"),
        ("TERM", "dumb"),
    ];
    let out = s.path("tmp/report");
    let run = u
        .command(s.path("snap/bin/hello"), &vars)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r = Report::parse(&fs::read_to_string(&out).unwrap());
    assert_eq!(r.args, ["--from-launch", "--out", out.to_str().unwrap()]);
    assert_eq!(r.uid, u.uid);
    assert_eq!(r.gid, u.gid);
    assert_eq!(
        r.groups,
        [u.gid],
        "no supplementary groups beyond the user's own"
    );
    let home = s.path(&format!("home/{}", u.name));
    let data = home.join("snap/hello/x1");
    assert_eq!(r.var("HOME"), data.to_str());
    assert_eq!(r.var("SNAP_USER_DATA"), data.to_str());
    assert_eq!(
        r.var("SNAP_USER_COMMON"),
        home.join("snap/hello/common").to_str()
    );
    assert_eq!(r.var("USER"), Some(u.name.as_str()));
    assert_eq!(r.var("LOGNAME"), Some(u.name.as_str()));
    assert_eq!(r.var("TERM"), Some("dumb"));
    for bad in ["LD_PRELOAD", "LD_LIBRARY_PATH", "IFS"] {
        assert_eq!(r.var(bad), None, "{bad}");
    }
    assert_eq!(
        r.var("PATH"),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    );
    for d in ["snap", "snap/hello", "snap/hello/x1", "snap/hello/common"] {
        let m = fs::metadata(home.join(d)).unwrap();
        assert_eq!((m.uid(), m.gid()), (u.uid, u.gid), "{d} owned by the user");
        assert_eq!(m.mode() & 0o777, 0o755, "{d}");
    }
    assert!(r
        .cgroups
        .iter()
        .any(|l| l.ends_with(&format!("/{}/snap.hello", s.parent))));
    assert!(s.runctl("snap.hello.running").exists());
}

#[test]
fn user_cannot_touch_markers() {
    skip_unless!(cannot_run_as_user());
    let s = Scratch::new();
    let u = User::new(&s);
    launch_ok(&mut u.command(s.path("snap/bin/hello"), &[]));
    let running = s.runctl("snap.hello.running");
    let lock = s.runctl("snap.hello.lock");
    let inhibited = s.runctl("snap.hello.inhibited");
    let shell = |script: &str, args: &[&std::path::Path]| {
        let out = u
            .command("/bin/sh", &[("PATH", "/usr/bin:/bin")])
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let attempts: &[(&str, &std::path::Path)] = &[
        ("rm -f \"$1\"", &running),
        ("echo x >> \"$1\"", &running),
        ("mv \"$1\" \"$1.x\"", &running),
        ("echo x > \"$1\"", &inhibited),
        ("ln -s /tmp \"$1\"", &inhibited),
        ("cat \"$1\"", &lock),
        ("rm -f \"$1\"", &lock),
    ];
    for (script, path) in attempts {
        let (ok, err) = shell(script, &[path]);
        assert!(
            !ok && err.contains("Permission denied"),
            "{script} {}: {err}",
            path.display()
        );
    }
    assert!(running.exists() && lock.exists() && !inhibited.exists());

    // And a refresh in progress holds the user's launch until it ends.
    fs::write(&inhibited, "reason=refresh\n").unwrap();
    let out = s.path("tmp/report");
    let mut bg = spawn(
        u.command(s.path("snap/bin/hello"), &[])
            .arg("--out")
            .arg(&out),
    );
    // setpriv execs the launcher in the same process.
    let pid = bg.0.id();
    wait_until("the inotify watch", Duration::from_secs(10), || {
        has_inotify_watch(pid)
    });
    let (ok, err) = shell("rm -f \"$1\"", &[&inhibited]);
    assert!(!ok && err.contains("Permission denied"), "{err}");
    assert!(!out.exists());
    fs::remove_file(&inhibited).unwrap();
    assert!(bg.0.wait().unwrap().success());
    assert_eq!(Report::parse(&fs::read_to_string(&out).unwrap()).uid, u.uid);
}

#[test]
fn user_cannot_move_the_launcher_out_of_its_root() {
    skip_unless!(cannot_run_as_user());
    let s = Scratch::new();
    let u = User::new(&s);
    // A tree the user owns, laid out like a root, with a snap "hello" that would run anything.
    let evil = std::path::PathBuf::from(format!("{}-evil", s.root.display()));
    let _cleanup = RemoveOnDrop(evil.clone());
    for d in [
        "usr/lib/refreshd",
        "snap/hello/x1/bin",
        "var/lib/refreshd/launch/hello/x1",
        "run/refreshd/runctl",
    ] {
        mkdir(&evil.join(d), 0o755);
    }
    install(
        &s.path("app.src"),
        &evil.join("snap/hello/x1/bin/app"),
        0o755,
    );
    std::os::unix::fs::symlink("x1", evil.join("snap/hello/current")).unwrap();
    write(
        &evil.join("var/lib/refreshd/launch/hello/x1/hello"),
        LAUNCH,
        0o644,
    );
    let chown_r = Command("chown")
        .args(["-hR", &format!("{}:{}", u.uid, u.gid)])
        .arg(&evil)
        .status()
        .unwrap();
    assert!(chown_r.success());

    // 1. A hard link of the setuid launcher inside the user's tree (what a user could make
    //    with fs.protected_hardlinks=0): the derived root is the user's, so it refuses.
    let link = evil.join("usr/lib/refreshd/confine-hook");
    fs::hard_link(s.hook(), &link).unwrap();
    assert_eq!(fs::metadata(&link).unwrap().mode() & 0o4000, 0o4000);
    let err = launch_refused(u.command(&link, &[]).arg("hello"), 1);
    assert!(
        err.contains("refusing to use") && err.contains("not root"),
        "{err}"
    );
    fs::remove_file(&link).unwrap();

    // 2. A copy the user made (not setuid, so not root): refused.
    let copy = u
        .command("/bin/cp", &[])
        .arg(s.hook())
        .arg(&link)
        .status()
        .unwrap();
    assert!(copy.success());
    let err = launch_refused(u.command(&link, &[]).arg("hello"), 1);
    assert!(err.contains("not running as root"), "{err}");

    // 3. A symlink to the real launcher from the user's tree resolves to the real root: it
    //    launches the real root's app, never the user's tree.
    let sym = evil.join("hello");
    std::os::unix::fs::symlink(s.hook(), &sym).unwrap();
    let r = launch_ok(&mut u.command(&sym, &[]));
    assert_eq!(r.var("SNAP"), s.path("snap/hello/x1").to_str());

    // 4. argv[0] tricks through the real launcher.
    let cases: &[(&str, &[&str], &str)] = &[
        ("../../etc/passwd", &[], "\"..\""),
        ("hello/../../x", &[], "\"..\""),
        ("/snap/bin/..", &[], "\"..\""),
        ("/snap/bin/", &[], "not a valid app name"),
        ("", &[], "not a valid app name"),
        (
            "confine-hook",
            &["../../hello", "--"],
            "not a valid app name",
        ),
        ("confine-hook", &["/tmp/x"], "not a valid app name"),
    ];
    for (argv0, args, want) in cases {
        let err = launch_refused(u.direct(s.hook()).arg0(argv0).args(*args), 1);
        assert!(err.contains(want), "{argv0:?}: {err}");
    }

    // 5. `current` pointing outside the root: rejected.
    let current = s.path("snap/hello/current");
    fs::remove_file(&current).unwrap();
    std::os::unix::fs::symlink(evil.join("snap/hello/x1"), &current).unwrap();
    let err = launch_refused(&mut u.command(s.path("snap/bin/hello"), &[]), 1);
    assert!(err.contains("not a revision"), "{err}");
}

#[test]
fn user_without_a_home_gets_a_clear_error() {
    skip_unless!(cannot_run_as_user());
    let s = Scratch::new();
    let u = User::new(&s);
    fs::remove_dir(s.path(&format!("home/{}", u.name))).unwrap();
    let err = launch_refused(&mut u.command(s.path("snap/bin/hello"), &[]), 1);
    assert!(
        err.contains("does not exist") && err.contains(&u.name),
        "{err}"
    );
    // The home exists but is not the user's to write: the snap dirs cannot be created.
    let home = s.path(&format!("home/{}", u.name));
    mkdir(&home, 0o755);
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
    let err = launch_refused(&mut u.command(s.path("snap/bin/hello"), &[]), 1);
    assert!(
        err.contains("cannot create") && err.contains("Permission denied"),
        "{err}"
    );
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[allow(non_snake_case)]
fn Command(p: &str) -> std::process::Command {
    std::process::Command::new(p)
}
