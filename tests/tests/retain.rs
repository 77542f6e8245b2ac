//! How many revisions a refresh keeps (`refreshd --retain N`, default 2): the oldest beyond
//! the count are discarded entirely — payload, mount and loop device, data of the system and of
//! every user, blob, launch descriptions, record — while the current one, the one before it
//! (revert's) and `common` stay; a user's planted symlinks are unlinked, never followed; a
//! crash or a failure in the middle is finished by the next run, never fails the refresh.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use refreshd_tests::*;

fn prerequisites() -> bool {
    if !is_root() {
        skip("needs root (loop mounts, a real user, a tmpfs)");
        return false;
    }
    if !mksquashfs_available() {
        skip("mksquashfs not installed (squashfs-tools)");
        return false;
    }
    true
}

/// `NAME_N.snap` for versions 1.0, 2.0, ... up to `n`, beside the root.
fn snaps(root: &Root, name: &str, n: usize) -> Vec<PathBuf> {
    (1..=n)
        .map(|i| {
            let p = root.aux(&format!("{name}_{i}.snap"));
            hello_snap(&p, name, &format!("{i}.0"));
            p
        })
        .collect()
}

/// Installs (or refreshes to) a file, waits for it, and returns the change.
fn install(r: &Path, file: &Path) -> Value {
    let out = ctl(r, &["install", file.to_str().unwrap()]);
    assert!(out.status.success(), "install: {}", text(&out.stderr));
    let ch = ctl_json(r, &["tasks", &newest_change(r).to_string(), "--json"]);
    assert_eq!(ch["status"], "Done", "{ch}");
    ch
}

/// The revisions on record, oldest first, and the current one.
fn revisions(r: &Path, name: &str) -> (Vec<String>, String) {
    let snap = find_in(&ctl_json(r, &["list", "--json"]), "name", name);
    let revs = snap["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    (revs, snap["revision"].as_str().unwrap().to_owned())
}

/// The device mounted at `dir`, from /proc/self/mountinfo.
fn mount_source(dir: &Path) -> Option<String> {
    let dir = fs::canonicalize(dir).ok()?;
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (Path::new(left.split(' ').nth(4)?) == dir)
            .then(|| right.split(' ').nth(1).map(str::to_owned))
            .flatten()
    })
}

/// Loop devices whose backing file is `blob` (deleted or not).
fn loops_backed_by(blob: &Path) -> Vec<String> {
    let mut out = vec![];
    for e in fs::read_dir("/sys/block").unwrap().flatten() {
        let backing = fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
        if backing.trim_end().starts_with(blob.to_str().unwrap()) {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// Every place a revision lives on disk (not its record).
fn places(r: &Path, homes: &[&Path], name: &str, rev: &str) -> Vec<PathBuf> {
    let mut p = vec![
        r.join(format!("snap/{name}/{rev}")),
        r.join(format!("var/snap/{name}/{rev}")),
        r.join(format!("var/lib/refreshd/blobs/{name}_{rev}.snap")),
        r.join(format!("var/lib/refreshd/launch/{name}/{rev}")),
    ];
    p.extend(homes.iter().map(|h| h.join(format!("snap/{name}/{rev}"))));
    p
}

fn assert_gone(r: &Path, homes: &[&Path], name: &str, rev: &str) {
    for p in places(r, homes, name, rev) {
        assert!(
            fs::symlink_metadata(&p).is_err(),
            "{} left after discarding {rev}",
            p.display()
        );
    }
    assert_eq!(
        mount_source(&r.join(format!("snap/{name}/{rev}"))),
        None,
        "{rev} still mounted"
    );
    let blob = r.join(format!("var/lib/refreshd/blobs/{name}_{rev}.snap"));
    assert_eq!(
        loops_backed_by(&blob),
        Vec::<String>::new(),
        "loop device of {rev}"
    );
}

fn assert_kept(r: &Path, homes: &[&Path], name: &str, rev: &str, loop_mode: bool) {
    for p in places(r, homes, name, rev) {
        assert!(p.exists(), "{} gone, but {rev} is kept", p.display());
    }
    assert!(r
        .join(format!("snap/{name}/{rev}/meta/snap.yaml"))
        .is_file());
    if loop_mode {
        assert!(mount_source(&r.join(format!("snap/{name}/{rev}"))).is_some());
    }
}

/// The log lines of the change's cleanup task.
fn cleanup_log(ch: &Value) -> String {
    task(ch, "cleanup")["log"].to_string()
}

/// A user whose home is under the root (owned by them), or None (skipped).
fn user_with_home(r: &Path, tag: &str) -> Option<(TestUser, PathBuf)> {
    let Some(user) = TestUser::create(tag) else {
        skip("useradd failed");
        return None;
    };
    let home = user_home(r, &user);
    Some((user, home))
}

/// Runs `script` with sh as `user` in `dir`.
fn as_user(user: &TestUser, dir: &Path, script: &str) {
    let st = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .args(["sh", "-c", script])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "as {}: {script}", user.name);
}

/// Default retain (2): after the third revision the first is gone entirely, the second kept
/// (and revert goes to it); `common` stays; a user's symlinks to files outside are unlinked
/// and their targets untouched.
#[test]
fn default_retain_discards_the_oldest_entirely() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("retain2");
    let r = root.path();
    let Some((user, home)) = user_with_home(r, "ret") else {
        return;
    };
    let name = "retained";
    let files = snaps(&root, name, 3);
    // Stand-ins for /etc/shadow and /etc, outside the root, root's own.
    let shadow = root.aux("shadow");
    fs::write(&shadow, "root:secret\n").unwrap();
    fs::set_permissions(&shadow, fs::Permissions::from_mode(0o644)).unwrap();
    let etc = root.aux("etc");
    fs::create_dir(&etc).unwrap();
    fs::write(etc.join("passwd"), "root:x:0:0\n").unwrap();
    let fingerprint = || {
        let md = fs::metadata(&shadow).unwrap();
        (
            fs::read(&shadow).unwrap(),
            md.mode(),
            md.mtime(),
            md.mtime_nsec(),
            snapshot(&etc, &[]),
        )
    };
    let before = fingerprint();

    let _d = Daemon::start(r);
    let loop_mode = ctl_json(r, &["status", "--json"])["mount-mode"] == "loop";
    install(r, &files[0]);
    fs::write(r.join(format!("var/snap/{name}/x1/state")), "x1").unwrap();
    fs::write(r.join(format!("var/snap/{name}/common/keep")), "shared").unwrap();
    as_user(
        &user,
        &home,
        &format!(
            "mkdir -p snap/{name}/x1/deep snap/{name}/common && echo mine > snap/{name}/x1/notes \
             && ln -s {} snap/{name}/x1/shadow && ln -s {} snap/{name}/x1/deep/etc \
             && echo ours > snap/{name}/common/keep",
            shadow.display(),
            etc.display()
        ),
    );
    let loop1 = mount_source(&r.join(format!("snap/{name}/x1")));
    assert_eq!(loop1.is_some(), loop_mode);
    let homes = [home.as_path()];

    // Two revisions: both within the count.
    let ch = install(r, &files[1]);
    assert_eq!(
        revisions(r, name),
        (vec!["x1".into(), "x2".into()], "x2".into())
    );
    assert!(!cleanup_log(&ch).contains("discarded"), "{ch}");
    assert_kept(r, &homes, name, "x1", loop_mode);

    // Three: the first goes, whole.
    let ch = install(r, &files[2]);
    assert!(
        cleanup_log(&ch).contains("discarded revision x1"),
        "{}",
        cleanup_log(&ch)
    );
    assert_eq!(
        revisions(r, name),
        (vec!["x2".into(), "x3".into()], "x3".into())
    );
    assert_gone(r, &homes, name, "x1");
    if let Some(dev) = loop1 {
        // The device itself was released (autoclear), not only the mount.
        let dev = dev.trim_start_matches("/dev/");
        let backing = fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file"));
        assert!(
            !backing
                .unwrap_or_default()
                .contains(&format!("{name}_x1.snap")),
            "{dev} still backed by x1's blob"
        );
    }
    assert_kept(r, &homes, name, "x2", loop_mode);
    assert_kept(r, &homes, name, "x3", loop_mode);
    assert_eq!(
        fs::read_to_string(home.join(format!("snap/{name}/x2/notes"))).unwrap(),
        "mine\n"
    );
    for common in [
        r.join(format!("var/snap/{name}/common/keep")),
        home.join(format!("snap/{name}/common/keep")),
    ] {
        assert!(common.is_file(), "{} gone", common.display());
    }
    // The symlinks' targets, untouched.
    assert_eq!(fingerprint(), before);
    assert_eq!(fs::read_to_string(&shadow).unwrap(), "root:secret\n");
    // Copies of the symlinks live on in x2 and x3, still symlinks.
    assert_eq!(
        fs::read_link(home.join(format!("snap/{name}/x3/shadow"))).unwrap(),
        shadow
    );

    // The revision before current is there for revert.
    let out = ctl(r, &["revert", name]);
    assert!(out.status.success(), "revert: {}", text(&out.stderr));
    assert_eq!(
        revisions(r, name),
        (vec!["x2".into(), "x3".into()], "x2".into())
    );
    let hello = Command::new(r.join(format!("snap/bin/{name}")))
        .output()
        .unwrap();
    assert_eq!(text(&hello.stdout).trim(), format!("hello from {name} x2"));
    assert_eq!(
        fs::read_to_string(r.join(format!("var/snap/{name}/x2/state"))).unwrap(),
        "x1"
    );
}

/// `--retain 3`: three revisions are kept; the fourth refresh discards the first only.
#[test]
fn retain_three_keeps_three() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("retain3");
    let r = root.path();
    let name = "retainthree";
    let files = snaps(&root, name, 4);
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec!["--retain".into(), "3".into()],
            ..Default::default()
        },
    );
    let loop_mode = ctl_json(r, &["status", "--json"])["mount-mode"] == "loop";
    for f in &files[..3] {
        install(r, f);
    }
    assert_eq!(
        revisions(r, name).0,
        ["x1", "x2", "x3"].map(String::from).to_vec()
    );
    for rev in ["x1", "x2", "x3"] {
        assert_kept(r, &[], name, rev, loop_mode);
    }
    let ch = install(r, &files[3]);
    assert!(cleanup_log(&ch).contains("discarded revision x1"), "{ch}");
    assert_eq!(
        revisions(r, name).0,
        ["x2", "x3", "x4"].map(String::from).to_vec()
    );
    assert_gone(r, &[], name, "x1");
    for rev in ["x2", "x3", "x4"] {
        assert_kept(r, &[], name, rev, loop_mode);
    }
    assert!(r.join(format!("var/snap/{name}/common")).is_dir());
}

/// Extracted payloads (no loop devices): the tree of the discarded revision goes.
#[test]
fn extracted_payload_is_removed() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("retainx");
    let r = root.path();
    let name = "retainextract";
    let files = snaps(&root, name, 3);
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec!["--extract".into()],
            ..Default::default()
        },
    );
    for f in &files {
        install(r, f);
    }
    assert_eq!(
        revisions(r, name).0,
        ["x2", "x3"].map(String::from).to_vec()
    );
    assert_gone(r, &[], name, "x1");
    assert_kept(r, &[], name, "x2", false);
    assert!(refreshd_snap::mounts_under(r).unwrap().is_empty());
}

/// SIGKILL right after the record of the discarded revision is deleted: the restarted daemon
/// runs the cleanup again and removes what was left — found on disk, not remembered.
#[test]
fn crash_mid_discard_is_finished_after_restart() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("retaincrash");
    let r = root.path();
    let name = "retaincrash";
    let files = snaps(&root, name, 3);
    {
        let _d = Daemon::start(r);
        install(r, &files[0]);
        install(r, &files[1]);
    }
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            failpoints: Some("mid-discard:cleanup"),
            ..Default::default()
        },
    );
    let loop_mode = ctl_json(r, &["status", "--json"])["mount-mode"] == "loop";
    let out = ctl(r, &["install", files[2].to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(killed_by_sigkill(d.wait()), "the failpoint was not reached");
    // Record gone (the failpoint is after it), files still there, the payload unmounted.
    let blob = r.join(format!("var/lib/refreshd/blobs/{name}_x1.snap"));
    assert!(blob.is_file());
    assert!(r.join(format!("var/snap/{name}/x1")).is_dir());
    assert_eq!(mount_source(&r.join(format!("snap/{name}/x1"))), None);

    let _d = Daemon::start(r);
    // Not on record: the start-up did not mount it again.
    assert_eq!(mount_source(&r.join(format!("snap/{name}/x1"))), None);
    let done = watch_until_ready(r, newest_change(r));
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(
        revisions(r, name),
        (vec!["x2".into(), "x3".into()], "x3".into())
    );
    assert_gone(r, &[], name, "x1");
    assert_kept(r, &[], name, "x2", loop_mode);
}

/// What cannot be removed (here: something mounted inside an old revision's data) does not fail
/// the refresh: it is logged, left alone — never deleted through the mount — and the next
/// refresh's cleanup removes it once it can.
#[test]
fn cleanup_failure_keeps_the_refresh_and_is_retried() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("retainfail");
    let r = root.path();
    let name = "retainfail";
    let files = snaps(&root, name, 4);
    let _d = Daemon::start(r);
    install(r, &files[0]);
    install(r, &files[1]);
    let busy = r.join(format!("var/snap/{name}/x1/busy"));
    fs::create_dir(&busy).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &busy,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    fs::write(busy.join("precious"), "mounted here").unwrap();

    let ch = install(r, &files[2]);
    let log = cleanup_log(&ch);
    assert!(log.contains("left for the next cleanup"), "{log}");
    assert!(log.contains("mounted inside it"), "{log}");
    assert_eq!(
        revisions(r, name),
        (vec!["x2".into(), "x3".into()], "x3".into())
    );
    assert_eq!(
        fs::read_to_string(busy.join("precious")).unwrap(),
        "mounted here"
    );
    // The rest of x1 went all the same.
    assert!(!r
        .join(format!("var/lib/refreshd/blobs/{name}_x1.snap"))
        .exists());
    assert!(!r.join(format!("snap/{name}/x1")).exists());

    refreshd_snap::unmount(&busy).unwrap();
    let ch = install(r, &files[3]);
    let log = cleanup_log(&ch);
    assert!(log.contains("discarded revision x1"), "{log}");
    assert!(log.contains("discarded revision x2"), "{log}");
    assert!(!log.contains("left for the next cleanup"), "{log}");
    assert_gone(r, &[], name, "x1");
    assert_gone(r, &[], name, "x2");
    assert_eq!(
        revisions(r, name),
        (vec!["x3".into(), "x4".into()], "x4".into())
    );
}

/// Removing a snap deletes every user's `~/snap/NAME`; a user who replaced `~/snap` with a
/// symlink does not get root to delete the directory it points at.
#[test]
fn remove_does_not_follow_a_planted_snap_symlink() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("retain-rm-planted");
    let r = root.path();
    let _d = Daemon::start(r);
    let files = snaps(&root, "plant", 1);
    install(r, &files[0]);
    // Elsewhere, a directory named like the snap: what a planted `snap` symlink points into.
    let victim = root.aux("victim");
    fs::create_dir_all(victim.join("plant")).unwrap();
    fs::write(victim.join("plant/keep"), "not the user's").unwrap();
    let home = r.join("home/mallory");
    fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink(&victim, home.join("snap")).unwrap();
    // An honest user's data goes.
    let honest = r.join("home/alice/snap/plant/x1");
    fs::create_dir_all(&honest).unwrap();
    fs::write(honest.join("f"), "x").unwrap();

    let out = ctl(r, &["remove", "plant"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(victim.join("plant/keep")).unwrap(),
        "not the user's"
    );
    assert!(fs::symlink_metadata(home.join("snap"))
        .unwrap()
        .is_symlink());
    assert!(!r.join("home/alice/snap/plant").exists());
}
