//! SIGKILL at every task boundary of an install and of a remove — and at every boundary of an
//! install's undo — then restart: the change completes or is cleanly undone, `current` always
//! names a complete revision, and no half-written file is left.

use std::fs;
use std::path::Path;

use refreshd_tests::*;

const INSTALL_TASKS: [&str; 6] = [
    "prepare",
    "mount",
    "setup-data",
    "link",
    "launchers",
    "start-services",
];
const REMOVE_TASKS: [&str; 4] = ["stop-services", "unlink", "unmount", "discard"];

fn prerequisites() -> bool {
    if !mksquashfs_available() {
        skip("mksquashfs not installed (squashfs-tools)");
        return false;
    }
    true
}

/// The invariants that must hold whenever the daemon is not in the middle of a change.
fn check_invariants(root: &Path, snap: &str, expect_installed: bool) {
    let current = root.join(format!("snap/{snap}/current"));
    match fs::read_link(&current) {
        Ok(rev) => {
            assert!(
                expect_installed,
                "{snap} should be gone, but current -> {}",
                rev.display()
            );
            let dir = root.join(format!("snap/{snap}")).join(&rev);
            assert!(
                dir.join("meta/snap.yaml").is_file(),
                "current -> {} which is not a complete revision",
                rev.display()
            );
            let data = fs::read_link(root.join(format!("var/snap/{snap}/current"))).unwrap();
            assert_eq!(data, rev, "data current and payload current disagree");
            assert!(root.join(format!("var/snap/{snap}")).join(&rev).is_dir());
            let launcher = root.join(format!("snap/bin/{snap}"));
            let out = std::process::Command::new(&launcher).output().unwrap();
            assert_eq!(
                text(&out.stdout).trim(),
                format!("hello from {snap} {}", rev.display())
            );
        }
        Err(_) => {
            assert!(
                !expect_installed,
                "{snap} should be installed but has no current link"
            );
            assert!(
                !root.join(format!("snap/bin/{snap}")).exists(),
                "launcher left behind"
            );
            assert!(
                !root.join(format!("var/snap/{snap}")).exists(),
                "data dir left behind"
            );
            assert!(
                refreshd_snap::mounts_under(&root.join("snap"))
                    .unwrap()
                    .is_empty(),
                "mount left behind"
            );
        }
    }
    let tmp = temporaries(root);
    assert!(tmp.is_empty(), "half-written files left: {tmp:?}");
    let db = refreshd_state::State::open(&root.join("var/lib/refreshd/state.db")).unwrap();
    assert_eq!(db.integrity_check().unwrap(), "ok");
}

/// The one change of `kind` in the root.
fn the_change(root: &Path, kind: &str) -> u64 {
    let all = ctl_json(root, &["changes", "--all", "--json"]);
    let ids: Vec<u64> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == kind)
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "expected one {kind} change: {all}");
    ids[0]
}

/// Starts a daemon armed with `failpoints`, runs `refreshctl args`, expects the daemon to die
/// by SIGKILL, restarts it unarmed, and returns the final state of the change of `kind`.
fn crash_and_resume(root: &Root, failpoints: &str, args: &[&str], kind: &str) -> Value {
    let d = Daemon::start_with(
        root.path(),
        DaemonOpts {
            failpoints: Some(failpoints),
            ..Default::default()
        },
    );
    // The request may or may not get its answer before the daemon dies: either is fine, the
    // change was committed before any task ran.
    let _ = ctl(root.path(), args);
    let log = d.log_text();
    let st = d.wait();
    assert!(
        killed_by_sigkill(st),
        "refreshd should have died at {failpoints}, got {st:?}; log:\n{log}"
    );
    let _d = Daemon::start(root.path());
    let id = the_change(root.path(), kind);
    watch_until_ready(root.path(), id)
}

#[test]
fn sigkill_at_every_install_boundary() {
    if !prerequisites() {
        return;
    }
    let mut runs = 0;
    for task in INSTALL_TASKS {
        for when in ["before-do", "after-do"] {
            let root = Root::new("crash-inst");
            let blob = root.aux("crashy.snap");
            hello_snap(&blob, "crashy", "1.0");
            let fp = format!("{when}:{task}");
            let ch = crash_and_resume(
                &root,
                &fp,
                &["install", blob.to_str().unwrap(), "--no-wait"],
                "install",
            );
            assert_eq!(ch["status"], "Done", "install after a crash at {fp}: {ch}");
            check_invariants(root.path(), "crashy", true);
            runs += 1;
        }
    }
    println!("install: {runs} SIGKILLs survived");
}

#[test]
fn sigkill_at_every_remove_boundary() {
    if !prerequisites() {
        return;
    }
    let mut runs = 0;
    for task in REMOVE_TASKS {
        for when in ["before-do", "after-do"] {
            let root = Root::new("crash-rm");
            let blob = root.aux("crashy.snap");
            hello_snap(&blob, "crashy", "1.0");
            {
                let _d = Daemon::start(root.path());
                let out = ctl(root.path(), &["install", blob.to_str().unwrap()]);
                assert!(out.status.success(), "install: {}", text(&out.stderr));
            }
            let fp = format!("{when}:{task}");
            let ch = crash_and_resume(&root, &fp, &["remove", "crashy", "--no-wait"], "remove");
            assert_eq!(ch["status"], "Done", "remove after a crash at {fp}: {ch}");
            check_invariants(root.path(), "crashy", false);
            assert!(!root
                .path()
                .join("var/lib/refreshd/blobs/crashy_x1.snap")
                .exists());
            runs += 1;
        }
    }
    println!("remove: {runs} SIGKILLs survived");
}

/// An install that fails at its last task is undone; a SIGKILL at every boundary of that undo
/// still ends with everything as it was before the install.
#[test]
fn sigkill_at_every_undo_boundary() {
    if !prerequisites() {
        return;
    }
    let mut runs = 0;
    for task in ["prepare", "mount", "setup-data", "link", "launchers"] {
        for when in ["before-undo", "after-undo"] {
            let root = Root::new("crash-undo");
            let blob = root.aux("crashy.snap");
            hello_snap(&blob, "crashy", "1.0");
            let fp = format!("fail-do:start-services,{when}:{task}");
            let d = Daemon::start_with(
                root.path(),
                DaemonOpts {
                    failpoints: Some(&fp),
                    ..Default::default()
                },
            );
            let _ = ctl(
                root.path(),
                &["install", blob.to_str().unwrap(), "--no-wait"],
            );
            let st = d.wait();
            assert!(killed_by_sigkill(st), "should have died at {fp}: {st:?}");
            let _d = Daemon::start(root.path());
            let id = the_change(root.path(), "install");
            let ch = watch_until_ready(root.path(), id);
            assert_eq!(ch["status"], "Error", "{fp}: {ch}");
            let statuses: Vec<&str> = ch["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["status"].as_str().unwrap())
                .collect();
            assert_eq!(
                statuses,
                ["Undone", "Undone", "Undone", "Undone", "Undone", "Error"],
                "{fp}"
            );
            check_invariants(root.path(), "crashy", false);
            let list = ctl_json(root.path(), &["list", "--json"]);
            assert_eq!(
                list,
                Value::Array(vec![]),
                "nothing installed after the undo"
            );
            runs += 1;
        }
    }
    println!("undo: {runs} SIGKILLs survived");
}

/// A failed refresh of an installed snap (x1 → x2) is undone back to x1, data intact.
#[test]
fn failed_reinstall_returns_to_the_previous_revision() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("reinstall");
    let blob = root.aux("crashy.snap");
    hello_snap(&blob, "again", "1.0");
    {
        let _d = Daemon::start(root.path());
        assert!(ctl(root.path(), &["install", blob.to_str().unwrap()])
            .status
            .success());
        fs::write(root.path().join("var/snap/again/x1/state"), "precious").unwrap();
    }
    let blob2 = root.aux("again2.snap");
    hello_snap(&blob2, "again", "2.0");
    let d = Daemon::start_with(
        root.path(),
        DaemonOpts {
            failpoints: Some("fail-do:launchers"),
            ..Default::default()
        },
    );
    let out = ctl(root.path(), &["install", blob2.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed change exits 1: {}",
        text(&out.stderr)
    );
    check_invariants(root.path(), "again", true);
    assert_eq!(
        fs::read_link(root.path().join("snap/again/current")).unwrap(),
        Path::new("x1")
    );
    assert_eq!(
        fs::read_to_string(root.path().join("var/snap/again/x1/state")).unwrap(),
        "precious"
    );
    assert!(!root.path().join("var/snap/again/x2").exists());
    drop(d);

    // And without the failure, x2 becomes current with x1's data copied.
    let _d = Daemon::start(root.path());
    let out = ctl(root.path(), &["install", blob2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        fs::read_link(root.path().join("snap/again/current")).unwrap(),
        Path::new("x2")
    );
    assert_eq!(
        fs::read_to_string(root.path().join("var/snap/again/x2/state")).unwrap(),
        "precious"
    );
    check_invariants(root.path(), "again", true);
}

/// A root with `crashy` revision 1 installed from a directory store, data written, and
/// revision 2 published. Returns (root, store).
fn refreshable() -> (Root, std::path::PathBuf) {
    let root = Root::new("crash-refresh");
    let store = root.aux("store");
    fs::create_dir(&store).unwrap();
    for v in ["1.0", "2.0"] {
        let blob = root.aux(&format!("crashy-{v}.snap"));
        hello_snap(&blob, "crashy", v);
        refreshd_store::publish(&store, &blob, "stable").unwrap();
        if v == "1.0" {
            let _d = Daemon::start_with(root.path(), store_opts(&store, None));
            let out = ctl(root.path(), &["install", "crashy"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            fs::write(root.path().join("var/snap/crashy/1/precious"), "data").unwrap();
            // Enough files that a copy can be cut in the middle.
            let many = root.path().join("var/snap/crashy/1/many");
            fs::create_dir(&many).unwrap();
            for i in 0..200 {
                fs::write(many.join(format!("f{i}")), format!("{i}").repeat(1000)).unwrap();
            }
        }
    }
    (root, store)
}

fn store_opts<'a>(store: &Path, failpoints: Option<&'a str>) -> DaemonOpts<'a> {
    DaemonOpts {
        failpoints,
        extra_args: vec!["--store".into(), store.to_str().unwrap().into()],
        ..Default::default()
    }
}

/// After a refresh ended: `current` names a complete revision (`want`) whose data holds what
/// revision 1 had; nothing temporary, staged or inhibited is left.
fn check_refresh(root: &Path, want: &str) {
    let rev = fs::read_link(root.join("snap/crashy/current")).unwrap();
    assert_eq!(rev, Path::new(want));
    assert!(root
        .join("snap/crashy")
        .join(want)
        .join("meta/snap.yaml")
        .is_file());
    assert_eq!(
        fs::read_link(root.join("var/snap/crashy/current")).unwrap(),
        Path::new(want)
    );
    let data = root.join("var/snap/crashy").join(want);
    assert_eq!(fs::read_to_string(data.join("precious")).unwrap(), "data");
    for i in 0..200 {
        let f = data.join(format!("many/f{i}"));
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            format!("{i}").repeat(1000),
            "{}",
            f.display()
        );
    }
    let out = std::process::Command::new(root.join("snap/bin/crashy"))
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        format!("hello from crashy {want}")
    );
    let left: Vec<String> = snapshot(root, &[])
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| {
            p.contains(".refreshd-tmp")
                || p.contains(".refreshd-staging")
                || p.contains("uploads/")
                || p.ends_with(".partial")
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        !root
            .join("run/refreshd/runctl/snap.crashy.inhibited")
            .exists(),
        "inhibition left"
    );
    let db = refreshd_state::State::open(&root.join("var/lib/refreshd/state.db")).unwrap();
    assert_eq!(db.integrity_check().unwrap(), "ok");
}

#[test]
fn sigkill_at_every_refresh_boundary() {
    if !prerequisites() || !is_root() {
        return;
    }
    let mut runs = 0;
    for task in REFRESH_TASKS {
        for when in ["before-do", "after-do"] {
            let (root, store) = refreshable();
            let fp = format!("{when}:{task}");
            let d = Daemon::start_with(root.path(), store_opts(&store, Some(&fp)));
            let _ = ctl(root.path(), &["refresh", "crashy", "--no-wait"]);
            let st = d.wait();
            assert!(killed_by_sigkill(st), "should have died at {fp}: {st:?}");
            let _d = Daemon::start_with(root.path(), store_opts(&store, None));
            let id = the_change(root.path(), "refresh");
            let ch = watch_until_ready(root.path(), id);
            assert_eq!(ch["status"], "Done", "refresh after a crash at {fp}: {ch}");
            // Every task of the chain is in the matrix.
            let kinds: Vec<&str> = ch["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["kind"].as_str().unwrap())
                .collect();
            assert_eq!(kinds, REFRESH_TASKS, "{fp}");
            check_refresh(root.path(), "2");
            runs += 1;
        }
    }
    // And in the middle of the data copies (the pre-copy, and the one in the critical section).
    for fp in ["mid-copy:precopy-data", "mid-copy:setup-data"] {
        let (root, store) = refreshable();
        let d = Daemon::start_with(root.path(), store_opts(&store, Some(fp)));
        let _ = ctl(root.path(), &["refresh", "crashy", "--no-wait"]);
        let st = d.wait();
        assert!(killed_by_sigkill(st), "should have died at {fp}: {st:?}");
        assert!(
            !root.path().join("var/snap/crashy/2").exists(),
            "{fp}: a half-copied data dir must never stand under its final name"
        );
        let _d = Daemon::start_with(root.path(), store_opts(&store, None));
        let ch = watch_until_ready(root.path(), the_change(root.path(), "refresh"));
        assert_eq!(ch["status"], "Done", "refresh after a crash at {fp}: {ch}");
        check_refresh(root.path(), "2");
        runs += 1;
    }
    println!("refresh: {runs} SIGKILLs survived");
}

/// A failure at any task of a refresh undoes it: revision 1 current, its data intact, the
/// inhibition lifted, nothing of revision 2 left.
#[test]
fn failure_at_every_refresh_task_is_undone() {
    if !prerequisites() || !is_root() {
        return;
    }
    for task in REFRESH_TASKS {
        let (root, store) = refreshable();
        let fp = format!("fail-do:{task}");
        let _d = Daemon::start_with(root.path(), store_opts(&store, Some(&fp)));
        let out = ctl(root.path(), &["refresh", "crashy"]);
        assert_eq!(out.status.code(), Some(1), "{fp}: {}", text(&out.stderr));
        let id = the_change(root.path(), "refresh");
        let ch = ctl_json(root.path(), &["tasks", &id.to_string(), "--json"]);
        assert_eq!(ch["status"], "Error", "{fp}: {ch}");
        check_refresh(root.path(), "1");
        for gone in [
            "snap/crashy/2",
            "var/snap/crashy/2",
            "var/lib/refreshd/blobs/crashy_2.snap",
        ] {
            assert!(!root.path().join(gone).exists(), "{fp}: {gone} left");
        }
    }
}

/// A refresh whose data copy runs out of space (a small loop-mounted ext4 holding the snap's
/// data) fails and is undone: revision 1 current, its data intact, the inhibition lifted, and
/// nothing of the failed copy left taking space.
#[test]
fn enospc_during_copy_data_is_undone() {
    if !prerequisites() || !is_root() {
        return;
    }
    if std::process::Command::new("mkfs.ext4")
        .arg("-V")
        .output()
        .is_err()
    {
        skip("mkfs.ext4 not installed (e2fsprogs)");
        return;
    }
    let root = Root::new("enospc");
    let r = root.path();
    let store = root.aux("store");
    fs::create_dir(&store).unwrap();
    let img = root.aux("data.img");
    fs::File::create(&img).unwrap().set_len(24 << 20).unwrap();
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0"])
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    let data = r.join("var/snap/crashy");
    fs::create_dir_all(&data).unwrap();
    // Unmounted by the Root guard on drop, like every mount under the root.
    let st = std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success(), "mount the small filesystem");

    for v in ["1.0", "2.0"] {
        let blob = root.aux(&format!("crashy-{v}.snap"));
        hello_snap(&blob, "crashy", v);
        refreshd_store::publish(&store, &blob, "stable").unwrap();
    }
    let _d = Daemon::start_with(r, store_opts(&store, None));
    // Installs the channel's newest (revision 2); revision 3 comes later as the update.
    let out = ctl(r, &["install", "crashy"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let current = fs::read_link(r.join("snap/crashy/current")).unwrap();
    let big: Vec<u8> = (0..14u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    fs::write(data.join(&current).join("big"), &big).unwrap();
    let blob = root.aux("crashy-3.0.snap");
    hello_snap(&blob, "crashy", "3.0");
    refreshd_store::publish(&store, &blob, "stable").unwrap();

    let out = ctl(r, &["refresh", "crashy"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let ch = ctl_json(
        r,
        &["tasks", &the_change(r, "refresh").to_string(), "--json"],
    );
    assert_eq!(task(&ch, "setup-data")["status"], "Error", "{ch}");
    let err = ch["error"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("space"), "the error says why: {err}");
    println!("enospc: {err}");
    assert_eq!(
        fs::read_link(r.join("snap/crashy/current")).unwrap(),
        current
    );
    assert_eq!(
        fs::read(data.join(&current).join("big")).unwrap(),
        big,
        "data intact"
    );
    assert!(
        !r.join("run/refreshd/runctl/snap.crashy.inhibited").exists(),
        "inhibition lifted"
    );
    let left: Vec<String> = snapshot(&data, &[])
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.contains(".refreshd-") || p.starts_with("3"))
        .collect();
    assert!(left.is_empty(), "the failed copy is gone: {left:?}");
    let out = std::process::Command::new(r.join("snap/bin/crashy"))
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        format!("hello from crashy {}", current.display())
    );
}
