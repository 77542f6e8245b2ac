//! The foundation end to end, on the real system: install and remove a real snap, parallel
//! daemons, a real unprivileged user, bad input, idempotent retries, and the daemon's rules.

use std::fs;
use std::path::Path;
use std::process::Command;

use refreshd_tests::*;

fn prerequisites() -> bool {
    if !mksquashfs_available() {
        skip("mksquashfs not installed (squashfs-tools)");
        return false;
    }
    true
}

fn install(root: &Path, blob: &Path) {
    let out = ctl(root, &["install", blob.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "install failed: {}",
        text(&out.stderr)
    );
}

#[test]
fn install_list_run_remove() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("e2e");
    let blob = root.aux("hello.snap");
    hello_snap(&blob, "hello", "1.0");
    let d = Daemon::start(root.path());
    let r = root.path();

    let out = ctl(r, &["install", blob.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("hello"), "{}", text(&out.stdout));

    let list = ctl_json(r, &["list", "--json"]);
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(list[0]["revision"], "x1");
    assert_eq!(list[0]["version"], "1.0");
    let status = ctl_json(r, &["status", "--json"]);
    assert_eq!(status["snaps"], 1);
    assert_eq!(status["changes-in-progress"], 0);
    let mode = status["mount-mode"].as_str().unwrap().to_owned();
    assert_eq!(mode, if is_root() { "loop" } else { "extract" });
    if mode == "loop" {
        assert!(refreshd_snap::is_mountpoint(&r.join("snap/hello/x1")).unwrap());
    }

    // The layout snapd's snaps expect.
    assert_eq!(
        fs::read_link(r.join("snap/hello/current")).unwrap(),
        Path::new("x1")
    );
    assert_eq!(
        fs::read_link(r.join("var/snap/hello/current")).unwrap(),
        Path::new("x1")
    );
    assert!(r.join("var/snap/hello/common").is_dir());
    assert!(r.join("var/lib/refreshd/blobs/hello_x1.snap").is_file());
    let out = Command::new(r.join("snap/bin/hello")).output().unwrap();
    assert_eq!(text(&out.stdout).trim(), "hello from hello x1");
    let env = text(
        &Command::new(r.join("snap/bin/hello.env"))
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        env.contains(&format!(
            "SNAP_DATA={}",
            r.join("var/snap/hello/x1").display()
        )),
        "{env}"
    );

    // The change is on record with its tasks.
    let changes = ctl_json(r, &["changes", "--all", "--json"]);
    let id = changes[0]["id"].as_u64().unwrap();
    let ch = ctl_json(r, &["tasks", &id.to_string(), "--json"]);
    let kinds: Vec<&str> = ch["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "prepare",
            "mount",
            "setup-data",
            "link",
            "launchers",
            "start-services"
        ]
    );
    assert_eq!(ch["status"], "Done");

    // Reachable with curl, as documented.
    let curl = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(r.join("run/refreshd.socket"))
        .arg("http://localhost/v1/snaps/hello")
        .output();
    match curl {
        Ok(o) if o.status.success() => {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["name"], "hello");
        }
        _ => skip("curl not installed; API checked through refreshctl only"),
    }

    let out = ctl(r, &["remove", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ctl_json(r, &["list", "--json"]), Value::Array(vec![]));
    for gone in [
        "snap/hello",
        "var/snap/hello",
        "snap/bin/hello",
        "snap/bin/hello.env",
        "var/lib/refreshd/blobs/hello_x1.snap",
    ] {
        assert!(!r.join(gone).exists(), "{gone} left after remove");
    }
    assert!(refreshd_snap::mounts_under(r).unwrap().is_empty());

    // SIGTERM: an orderly exit with status 0.
    let st = d.stop();
    assert!(st.success(), "refreshd exited with {st:?} on SIGTERM");
    assert!(!r.join("run/refreshd.socket").exists());
}

#[test]
fn two_daemons_side_by_side() {
    if !prerequisites() {
        return;
    }
    let (a, b) = (Root::new("par-a"), Root::new("par-b"));
    let (blob_a, blob_b) = (a.aux("one.snap"), b.aux("two.snap"));
    hello_snap(&blob_a, "one", "1.0");
    hello_snap(&blob_b, "two", "2.0");
    let _da = Daemon::start(a.path());
    let _db = Daemon::start(b.path());
    // Install in both at once.
    let (ra, rb) = (a.path().to_owned(), b.path().to_owned());
    let ta = std::thread::spawn(move || install(&ra, &blob_a));
    let tb = std::thread::spawn(move || install(&rb, &blob_b));
    ta.join().unwrap();
    tb.join().unwrap();
    let la = ctl_json(a.path(), &["list", "--json"]);
    let lb = ctl_json(b.path(), &["list", "--json"]);
    assert_eq!(la.as_array().unwrap().len(), 1);
    assert_eq!(lb.as_array().unwrap().len(), 1);
    assert_eq!(la[0]["name"], "one");
    assert_eq!(lb[0]["name"], "two");
    assert!(!a.path().join("snap/two").exists() && !b.path().join("snap/one").exists());
    assert_eq!(
        ctl_json(a.path(), &["status", "--json"])["root"],
        a.path().to_str().unwrap()
    );
    assert_eq!(
        ctl_json(b.path(), &["status", "--json"])["root"],
        b.path().to_str().unwrap()
    );
}

#[test]
fn one_daemon_per_root_and_never_on_snapds() {
    let root = Root::new("lock");
    let _d = Daemon::start(root.path());
    let out = Command::new(bin("refreshd"))
        .arg("--root")
        .arg(root.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("another refreshd") && err.contains("already running"),
        "{err}"
    );

    let snapd = Root::new("snapd");
    fs::create_dir_all(snapd.path().join("var/lib/snapd")).unwrap();
    fs::write(snapd.path().join("var/lib/snapd/state.json"), "{}").unwrap();
    let before = snapshot(snapd.path(), &[]);
    let out = Command::new(bin("refreshd"))
        .arg("--root")
        .arg(snapd.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("managed by snapd"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(
        snapshot(snapd.path(), &[]),
        before,
        "refused start must touch nothing"
    );
}

#[test]
fn unprivileged_user_reads_but_cannot_change() {
    if !prerequisites() {
        return;
    }
    if !is_root() {
        skip("needs root to create a user");
        return;
    }
    let Some(user) = TestUser::create("ro") else {
        skip("useradd failed");
        return;
    };
    let root = Root::new("unpriv");
    let blob = root.aux("hello.snap");
    hello_snap(&blob, "hello", "1.0");
    fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let _d = Daemon::start(root.path());
    install(root.path(), &blob);
    let as_user = Some((user.uid, user.gid));

    for args in [
        &["status"][..],
        &["list"],
        &["changes", "--all"],
        &["list", "--json"],
    ] {
        let out = ctl_as(root.path(), args, as_user);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?} as {}: {}",
            user.name,
            text(&out.stderr)
        );
    }
    let list: Value =
        serde_json::from_slice(&ctl_as(root.path(), &["list", "--json"], as_user).stdout).unwrap();
    assert_eq!(list[0]["name"], "hello");

    let before = snapshot(root.path(), &["var/lib/refreshd/state.db"]);
    for args in [
        vec!["install", blob.to_str().unwrap()],
        vec!["remove", "hello"],
        vec!["abort", "1"],
    ] {
        let out = ctl_as(root.path(), &args, as_user);
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?} as {}: {err}",
            user.name
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("requires root"), "{err}");
    }
    assert_eq!(
        snapshot(root.path(), &["var/lib/refreshd/state.db"]),
        before
    );
    assert_eq!(
        ctl_json(root.path(), &["list", "--json"])[0]["name"],
        "hello"
    );
}

/// Bad input: a one-line error, and the root left exactly as it was.
#[test]
fn bad_snaps_are_refused_and_leave_no_trace() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("bad");
    let _d = Daemon::start(root.path());
    let r = root.path();
    let good = root.aux("good.snap");
    hello_snap(&good, "good", "1.0");

    let mut cases: Vec<(String, std::path::PathBuf, Vec<String>, &str)> = vec![];
    let yaml_cases: [(&str, &str, &str); 7] = [
        ("yaml-syntax", "name: [unclosed\nversion: 1\n", "snap.yaml"),
        ("yaml-type", "name: x1\nversion: 1.0\napps: 7\n", "apps"),
        ("no-version", "name: nover\n", "version"),
        ("upper", "name: Hello\nversion: '1'\n", "Hello"),
        ("dotdot", "name: '..'\nversion: '1'\n", "invalid snap name"),
        (
            "long",
            "name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nversion: '1'\n",
            "invalid snap name",
        ),
        ("empty-name", "name: ''\nversion: '1'\n", "name"),
    ];
    for (tag, yaml, needle) in yaml_cases {
        let p = root.aux(&format!("{tag}.snap"));
        SnapSrc::new(yaml).build(&p);
        cases.push((tag.into(), p, vec![], needle));
    }
    // Bad instance names given on the command line.
    for (tag, name) in [
        ("arg-upper", "Good"),
        ("arg-dotdot", "../good"),
        ("arg-long", &"g".repeat(41)[..]),
        ("arg-empty", ""),
    ] {
        cases.push((
            tag.into(),
            good.clone(),
            vec!["--name".into(), name.into()],
            "name",
        ));
    }
    // A corrupt image: the superblock is fine, the contents are garbage.
    let corrupt = root.aux("corrupt.snap");
    let mut bytes = fs::read(&good).unwrap();
    for b in bytes.iter_mut().skip(96) {
        *b ^= 0x5a;
    }
    fs::write(&corrupt, &bytes).unwrap();
    cases.push(("corrupt".into(), corrupt, vec![], "snap"));
    // A truncated blob.
    let truncated = root.aux("truncated.snap");
    let bytes = fs::read(&good).unwrap();
    // Cut inside the image proper, not just its padding: bytes_used is at offset 40.
    let used = u64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize;
    fs::write(&truncated, &bytes[..used / 2]).unwrap();
    cases.push(("truncated".into(), truncated, vec![], "truncated"));
    // Not a squashfs at all, and an empty file.
    let junk = root.aux("junk.snap");
    fs::write(&junk, b"#!/bin/sh\necho not a snap\n").unwrap();
    cases.push(("junk".into(), junk, vec![], "squashfs"));
    let empty = root.aux("empty.snap");
    fs::write(&empty, b"").unwrap();
    cases.push(("empty".into(), empty, vec![], "empty"));

    let before = snapshot(r, &["var/lib/refreshd/state.db"]);
    let changes_before = ctl_json(r, &["changes", "--all", "--json"]);
    for (tag, path, extra, needle) in &cases {
        let mut args = vec!["install", path.to_str().unwrap()];
        args.extend(extra.iter().map(String::as_str));
        let out = ctl(r, &args);
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{tag}: exit {:?}: {err}",
            out.status.code()
        );
        assert_eq!(err.trim().lines().count(), 1, "{tag}: not one line: {err}");
        assert!(
            err.contains(needle),
            "{tag}: {err:?} should mention {needle:?}"
        );
        assert_eq!(
            snapshot(r, &["var/lib/refreshd/state.db"]),
            before,
            "{tag} changed the root"
        );
        println!("{tag}: {}", err.trim());
    }
    assert_eq!(ctl_json(r, &["changes", "--all", "--json"]), changes_before);
    assert_eq!(ctl_json(r, &["list", "--json"]), Value::Array(vec![]));
    // And the daemon is still fine.
    install(r, &good);
}

#[test]
fn retried_request_with_the_same_key_yields_the_same_change() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("idem");
    let r = root.path();
    let blob = root.aux("hello.snap");
    hello_snap(&blob, "hello", "1.0");
    let bytes = fs::read(&blob).unwrap();
    let d = Daemon::start(r);

    let hdr = [
        ("Idempotency-Key", "key-install-1"),
        ("Content-Type", "application/octet-stream"),
    ];
    let (s1, v1) = http(r, "POST", "/v1/snaps", &hdr, &bytes);
    assert_eq!(s1, 202, "{v1}");
    let (s2, v2) = http(r, "POST", "/v1/snaps", &hdr, &bytes);
    assert_eq!(s2, 202, "{v2}");
    assert_eq!(v1["change"], v2["change"], "same key, same change");
    let id = v1["change"].as_u64().unwrap();
    watch_until_ready(r, id);
    assert_eq!(
        ctl_json(r, &["changes", "--all", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Across a restart too.
    drop(d);
    let _d = Daemon::start(r);
    let (s3, v3) = http(r, "POST", "/v1/snaps", &hdr, &bytes);
    assert_eq!((s3, v3["change"].as_u64()), (202, Some(id)));

    // Remove: same key, same change; a key reused for another request is refused.
    let rm = [("Idempotency-Key", "key-remove-1")];
    let (s4, v4) = http(r, "POST", "/v1/snaps/hello", &rm, br#"{"action":"remove"}"#);
    let (s5, v5) = http(r, "POST", "/v1/snaps/hello", &rm, br#"{"action":"remove"}"#);
    assert_eq!((s4, s5), (202, 202), "{v4} {v5}");
    assert_eq!(v4["change"], v5["change"]);
    assert_ne!(v4["change"], v1["change"]);
    let (s6, v6) = http(
        r,
        "POST",
        "/v1/snaps",
        &[("Idempotency-Key", "key-remove-1")],
        &bytes,
    );
    assert_eq!(s6, 409, "{v6}");
    assert_eq!(v6["error"]["kind"], "conflict");

    // Without a key, a second remove while one is in progress (or done) is not a duplicate.
    watch_until_ready(r, v4["change"].as_u64().unwrap());
    let (s7, v7) = http(r, "POST", "/v1/snaps/hello", &[], br#"{"action":"remove"}"#);
    assert_eq!(s7, 404, "already removed: {v7}");
}

/// A second change for a snap with one in progress gets exit 5 and the change's id; abort
/// undoes the first and leaves the root as it was.
#[test]
fn conflict_then_abort() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("conflict");
    let r = root.path();
    let blob = root.aux("hello.snap");
    hello_snap(&blob, "hello", "1.0");
    // The install parks at link (a test failpoint) until aborted.
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            failpoints: Some("park-do:link"),
            ..Default::default()
        },
    );
    let before = snapshot(r, &["var/lib/refreshd/state.db", "run/"]);
    let out = ctl(r, &["install", blob.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = ctl_json(r, &["changes", "--json"])[0]["id"]
        .as_u64()
        .unwrap();

    let out = ctl(r, &["install", blob.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "conflict exits 5: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("change {id}")),
        "names the change: {err}"
    );
    let out = ctl(r, &["remove", "hello"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));

    let out = ctl(r, &["abort", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ch = watch_until_ready(r, id);
    assert_eq!(ch["status"], "Undone", "{ch}");
    assert_eq!(
        snapshot(r, &["var/lib/refreshd/state.db", "run/"]),
        before,
        "abort restores the root"
    );
    // Not a conflict (nothing is in progress): a plain failure, in one line.
    let out = ctl(r, &["abort", &id.to_string()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a finished change cannot be aborted: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("already finished; there is nothing to abort"));
}

/// Members of the configured admin group may change state; others still may not.
#[test]
fn admin_group_members_may_install() {
    if !prerequisites() {
        return;
    }
    if !is_root() {
        skip("needs root to create users and groups");
        return;
    }
    let (Some(admin), Some(other)) = (TestUser::create("adm"), TestUser::create("oth")) else {
        skip("useradd failed");
        return;
    };
    let root = Root::new("admin");
    let blob = root.aux("hello.snap");
    hello_snap(&blob, "hello", "1.0");
    fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // The admin user's own group is the admin group.
    let _d = Daemon::start_with(
        root.path(),
        DaemonOpts {
            extra_args: vec!["--admin-group".into(), admin.name.clone()],
            ..Default::default()
        },
    );
    let out = ctl_as(
        root.path(),
        &["install", blob.to_str().unwrap()],
        Some((other.uid, other.gid)),
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("membership of group {}", admin.name)),
        "{}",
        text(&out.stderr)
    );
    let out = ctl_as(
        root.path(),
        &["install", blob.to_str().unwrap()],
        Some((admin.uid, admin.gid)),
    );
    assert!(
        out.status.success(),
        "admin group member: {}",
        text(&out.stderr)
    );
    assert_eq!(
        ctl_json(root.path(), &["list", "--json"])[0]["name"],
        "hello"
    );
}

/// Without loop mounts (here forced with --extract) payloads are unpacked; parallel instances
/// of one snap live side by side.
#[test]
fn extract_mode_and_parallel_instances() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("extract");
    let r = root.path();
    let blob = root.aux("hello.snap");
    hello_snap(&blob, "hello", "1.0");
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec!["--extract".into()],
            ..Default::default()
        },
    );
    assert!(
        d.log_text().contains("extracted"),
        "the log says which mode: {}",
        d.log_text()
    );
    assert_eq!(ctl_json(r, &["status", "--json"])["mount-mode"], "extract");
    install(r, &blob);
    let out = ctl(
        r,
        &["install", blob.to_str().unwrap(), "--name", "hello_work"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        refreshd_snap::mounts_under(r).unwrap().is_empty(),
        "extract mode mounts nothing"
    );
    assert!(r.join("snap/hello/x1/meta/snap.yaml").is_file());
    assert!(r.join("snap/hello_work/x1/meta/snap.yaml").is_file());
    let run = |l: &str| {
        text(
            &Command::new(r.join("snap/bin").join(l))
                .output()
                .unwrap()
                .stdout,
        )
    };
    assert_eq!(run("hello").trim(), "hello from hello x1");
    assert_eq!(run("hello_work").trim(), "hello from hello x1");
    assert!(run("hello_work.env").contains("SNAP_INSTANCE_NAME=hello_work"));
    let names: Vec<String> = ctl_json(r, &["list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["hello", "hello_work"]);
    // A key that does not belong to the snap is refused.
    let out = ctl(
        r,
        &["install", blob.to_str().unwrap(), "--name", "other_work"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(ctl(r, &["remove", "hello_work"]).status.success());
    assert!(!r.join("snap/hello_work").exists() && !r.join("snap/bin/hello_work").exists());
    assert_eq!(
        run("hello").trim(),
        "hello from hello x1",
        "the other instance is untouched"
    );
}
