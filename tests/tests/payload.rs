//! A revision's payload against stale leftovers, hostile images and users, on the real system:
//! a mount or an extracted tree of another blob left at `snap/NAME/REV` (what a failed undo
//! leaves for a later change of the same revision) is replaced, never reused — by the `mount`
//! task and at start-up; an extracted image with world-writable directories, files of a user's,
//! setuid files, fifos and a user-owned hook ends up root's and unwritable, and a real
//! unprivileged user can neither change an app nor plant a hook; a hook or an app's program a
//! user could have written is refused — by refreshd before it runs a hook as root, and by
//! confine-hook before it starts an app — in one line.
//!
//! Each test prints `figures: fs-faults: injected=N handled=N` (stale leftovers) or
//! `figures: hostile: test=... attempts=N refused=N leaked=0` (users).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use refreshd_tests::*;

fn prerequisites() -> bool {
    root_with(
        "loop mounts, payloads owned by root, a real user",
        &[("setpriv", "util-linux"), ("unsquashfs", "squashfs-tools")],
    )
}

fn loop_devices() -> bool {
    if !Path::new("/dev/loop-control").exists() {
        skip("no loop devices (/dev/loop-control)");
        return false;
    }
    true
}

/// `NAME_VERSION.snap` beside the root whose app `NAME` prints `SAYS` and the revision.
fn says(root: &Root, name: &str, version: &str, word: &str) -> PathBuf {
    let out = root.aux(&format!("{name}_{version}.snap"));
    SnapSrc::new(&format!(
        "name: {name}\nversion: '{version}'\nsummary: Payload test\napps:\n  {name}:\n    command: bin/hello\n"
    ))
    .file(
        "bin/hello",
        &format!("#!/bin/sh\necho \"{word} $SNAP_REVISION\"\n"),
        0o755,
    )
    .file("word", word, 0o644)
    .build(&out);
    out
}

/// Installs (or refreshes to) `file` and waits for the change; returns it.
fn install(r: &Path, file: &Path) -> Value {
    let out = ctl(r, &["install", file.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "install: {}", text(&out.stderr));
    watch_until_ready(r, newest_change(r))
}

fn extract_opts<'a>() -> DaemonOpts<'a> {
    DaemonOpts {
        extra_args: vec!["--extract".into()],
        ..Default::default()
    }
}

/// What the snap's launcher prints (stdout, then stderr), and its exit code.
fn launch(r: &Path, launcher: &str) -> (String, Option<i32>) {
    let out = Command::new(r.join("snap/bin").join(launcher))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        format!("{}{}", text(&out.stdout).trim(), text(&out.stderr).trim()),
        out.status.code(),
    )
}

/// The blob's sha3-384 as the state recorded it for the revision.
fn recorded_sha3(r: &Path, name: &str, rev: &str) -> String {
    refreshd_state::State::open(&r.join("var/lib/refreshd/state.db"))
        .unwrap()
        .revision(name, rev)
        .unwrap()
        .unwrap()
        .sha3_384
}

/// The mounts exactly at `dir`.
fn mounts_at(dir: &Path) -> usize {
    refreshd_snap::mounts_under(dir)
        .unwrap()
        .iter()
        .filter(|m| m.as_path() == dir)
        .count()
}

/// A failed undo's leftover: `stale` mounted at `snap/NAME/REV` from the blob path the failed
/// change used, that file then deleted (as the change's undo deletes its blob) — so the path
/// names another file by the time the next change of the same revision comes.
fn leave_stale_mount(r: &Path, name: &str, rev: &str, stale: &Path) {
    let dir = r.join(format!("snap/{name}/{rev}"));
    fs::create_dir_all(&dir).unwrap();
    let blob = r.join(format!("var/lib/refreshd/blobs/{name}_{rev}.snap"));
    fs::copy(stale, &blob).unwrap();
    refreshd_snap::mount_squashfs(&blob, &dir).unwrap();
    fs::remove_file(&blob).unwrap();
}

#[test]
fn a_stale_mount_of_another_blob_is_replaced() {
    if !prerequisites() || !loop_devices() {
        return;
    }
    let root = Root::new("stale-mount");
    let r = root.path();
    let d = Daemon::start(r);
    let first = says(&root, "stale", "1.0", "first");
    let old = says(&root, "stale", "0.9", "stale");
    let new = says(&root, "stale", "2.0", "fresh");
    assert_eq!(install(r, &first)["status"], "Done");
    leave_stale_mount(r, "stale", "x2", &old);
    let x2 = r.join("snap/stale/x2");
    // ...with the launch descriptions of the failed change's blob, one for an app the next
    // blob does not have.
    let ghost = r.join("var/lib/refreshd/launch/stale/x2/ghost");
    fs::create_dir_all(ghost.parent().unwrap()).unwrap();
    fs::write(&ghost, "refreshd-launch 1\nrevision x2\ncommand word\n").unwrap();
    // Something still uses the stale payload: it must go lazily, not fail the change.
    let held = fs::File::open(x2.join("word")).unwrap();
    assert_eq!(fs::read_to_string(x2.join("word")).unwrap(), "stale");

    let ch = install(r, &new);
    assert_eq!(ch["status"], "Done", "{ch}");
    assert_eq!(
        fs::read_to_string(x2.join("word")).unwrap(),
        "fresh",
        "the installed revision shows the stale blob's files"
    );
    assert!(
        task_log(&ch, "mount")
            .iter()
            .any(|l| l.contains("showed another image")),
        "{:?}",
        task_log(&ch, "mount")
    );
    assert_eq!(launch(r, "stale"), ("fresh x2".into(), Some(0)));
    assert_eq!(mounts_at(&x2), 1);
    assert!(
        !ghost.exists(),
        "a stale launch description outlived its blob"
    );
    drop(held);

    // At start-up, too: a recorded revision with another image mounted at its place.
    drop(d);
    unmount_all_under(&x2);
    leave_stale_mount(r, "stale", "x2", &old);
    assert_eq!(fs::read_to_string(x2.join("word")).unwrap(), "stale");
    let new_blob = r.join("var/lib/refreshd/blobs/stale_x2.snap");
    fs::copy(&new, &new_blob).unwrap();
    let d = Daemon::start(r);
    assert_eq!(fs::read_to_string(x2.join("word")).unwrap(), "fresh");
    assert_eq!(launch(r, "stale"), ("fresh x2".into(), Some(0)));
    assert_eq!(mounts_at(&x2), 1);
    assert!(
        d.log_text().contains("showed another image"),
        "{}",
        d.log_text()
    );
    println!("figures: fs-faults: injected=2 handled=2");
}

#[test]
fn extract_mode_a_stale_tree_is_unpacked_again() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("stale-tree");
    let r = root.path();
    let d = Daemon::start_with(r, extract_opts());
    let first = says(&root, "tree", "1.0", "first");
    let old = says(&root, "tree", "0.9", "stale");
    let new = says(&root, "tree", "2.0", "fresh");
    assert_eq!(install(r, &first)["status"], "Done");
    // A complete-looking tree of another blob (meta/snap.yaml and all) at the next revision's
    // place, as a failed undo or an interrupted run leaves it.
    let x2 = r.join("snap/tree/x2");
    refreshd_snap::extract(&old, &x2).unwrap();
    assert!(x2.join("meta/snap.yaml").is_file());

    let ch = install(r, &new);
    assert_eq!(ch["status"], "Done", "{ch}");
    assert_eq!(
        fs::read_to_string(x2.join("word")).unwrap(),
        "fresh",
        "the installed revision shows the stale tree"
    );
    assert!(
        task_log(&ch, "mount")
            .iter()
            .any(|l| l.contains("unpacked again")),
        "{:?}",
        task_log(&ch, "mount")
    );
    assert_eq!(launch(r, "tree"), ("fresh x2".into(), Some(0)));
    let record = r.join("snap/tree/.x2.refreshd-payload");
    assert_eq!(
        fs::read_to_string(&record).unwrap().trim(),
        recorded_sha3(r, "tree", "x2")
    );

    // At start-up: a tree without its record (a crash between its rename and the record, or an
    // older refreshd), holding another blob's files, is unpacked again.
    drop(d);
    fs::remove_dir_all(&x2).unwrap();
    refreshd_snap::extract(&old, &x2).unwrap();
    fs::remove_file(&record).unwrap();
    let d = Daemon::start_with(r, extract_opts());
    assert_eq!(fs::read_to_string(x2.join("word")).unwrap(), "fresh");
    assert!(record.is_file());
    assert!(d.log_text().contains("unpacked again"), "{}", d.log_text());
    // And with a record naming another blob.
    drop(d);
    fs::write(&record, format!("{}\n", "0".repeat(96))).unwrap();
    fs::write(x2.join("word"), "tampered").unwrap();
    let _d = Daemon::start_with(r, extract_opts());
    assert_eq!(fs::read_to_string(x2.join("word")).unwrap(), "fresh");
    assert!(temporaries(r).is_empty(), "{:?}", temporaries(r));
    println!("figures: fs-faults: injected=3 handled=3");
}

/// Builds an image from `dir` keeping its owners and modes (no `-all-root`).
fn build_as_is(dir: &Path, out: &Path) {
    let st = Command::new("mksquashfs")
        .arg(dir)
        .arg(out)
        .args(["-noappend", "-comp", "gzip", "-no-progress", "-quiet"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "mksquashfs failed");
}

/// A snap whose image hands a user the keys: a world-writable root, `meta/hooks` and `open/`,
/// the app and the pre-refresh hook owned by `user`, a setuid-root and a setgid file, a fifo.
fn hostile_image(root: &Root, user: &TestUser, version: &str) -> PathBuf {
    let name = "wideopen";
    let src = SnapSrc::new(&format!(
        "name: {name}\nversion: '{version}'\nsummary: Hostile image\napps:\n  {name}:\n    command: bin/hello\n"
    ))
    .file(
        "bin/hello",
        "#!/bin/sh\necho \"image app $SNAP_REVISION\"\n",
        0o755,
    )
    .file("bin/suid", "#!/bin/sh\nid -u\n", 0o4755)
    .file("bin/sgid", "#!/bin/sh\nid -g\n", 0o2755)
    .file(
        "meta/hooks/pre-refresh",
        "#!/bin/sh\necho \"image hook $(id -u)\" > \"$SNAP_COMMON/hook-ran\"\n",
        0o755,
    );
    let t = src.dir.path();
    fs::create_dir(t.join("open")).unwrap();
    for (p, mode) in [
        ("", 0o777),
        ("meta/hooks", 0o777),
        ("open", 0o777),
        ("bin", 0o775),
    ] {
        fs::set_permissions(t.join(p), fs::Permissions::from_mode(mode)).unwrap();
    }
    for p in ["bin/hello", "meta/hooks/pre-refresh", "open", "bin"] {
        std::os::unix::fs::chown(t.join(p), Some(user.uid), Some(user.gid)).unwrap();
    }
    nix::unistd::mkfifo(
        &t.join("open/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .unwrap();
    let out = root.aux(&format!("{name}_{version}.snap"));
    build_as_is(t, &out);
    out
}

/// Runs `script` as the user (sh -c, the user's credentials and nothing else).
fn as_user(user: &TestUser, script: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// Every entry under `dir`: (path, uid, gid, mode, kind).
fn entries(dir: &Path) -> Vec<(PathBuf, u32, u32, u32, fs::FileType)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let md = fs::symlink_metadata(&d).unwrap();
        out.push((
            d.clone(),
            md.uid(),
            md.gid(),
            md.mode() & 0o7777,
            md.file_type(),
        ));
        if md.is_dir() {
            for e in fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// A real user tries to trojan the app, plant or replace a hook, and make room to do so in the
/// payload at `x1`; each attempt must fail. Returns (attempts, refused).
fn user_attempts(user: &TestUser, x1: &Path) -> (u32, u32) {
    let x = x1.display();
    let attempts = [
        format!("echo 'echo trojan' >> {x}/bin/hello"),
        format!("printf '#!/bin/sh\\necho planted\\n' > {x}/meta/hooks/post-refresh"),
        format!("rm -f {x}/meta/hooks/pre-refresh"),
        format!("mv {x}/meta/hooks {x}/meta/hooks.old"),
        format!("touch {x}/open/new"),
        format!("chmod 0777 {x}/bin/hello"),
        format!("ln -s /tmp {x}/open/link"),
        format!("touch {x}/planted"),
    ];
    let (mut tried, mut refused) = (0, 0);
    for a in &attempts {
        tried += 1;
        let (ok, out) = as_user(user, a);
        assert!(!ok, "the user managed: {a}");
        refused += 1;
        assert!(
            [
                "Permission denied",
                "Operation not permitted",
                "Read-only file system"
            ]
            .iter()
            .any(|w| out.contains(w)),
            "{a}: {out}"
        );
    }
    (tried, refused)
}

#[test]
fn extract_mode_payload_is_immutable_to_users() {
    if !prerequisites() {
        return;
    }
    let Some(user) = TestUser::create("pay") else {
        skip("useradd failed");
        return;
    };
    let root = Root::new("payload-users");
    let r = root.path();
    let _d = Daemon::start_with(r, extract_opts());
    let v1 = hostile_image(&root, &user, "1.0");
    let v2 = hostile_image(&root, &user, "2.0");
    assert_eq!(install(r, &v1)["status"], "Done");
    let x1 = r.join("snap/wideopen/x1");

    let all = entries(&x1);
    let (tried, refused) = user_attempts(&user, &x1);
    // The tree is root's and no one else may write it, whatever the image said.
    assert!(all.len() >= 9, "{all:?}");
    for (p, uid, gid, mode, kind) in &all {
        assert_eq!((*uid, *gid), (0, 0), "{} is not root's", p.display());
        if !kind.is_symlink() {
            assert_eq!(mode & 0o7022, 0, "{}: mode {mode:o}", p.display());
        }
        assert!(
            kind.is_dir() || kind.is_file() || kind.is_symlink(),
            "{}: {kind:?} left in the payload",
            p.display()
        );
    }
    for p in [&x1, &x1.parent().unwrap().to_owned(), &r.join("snap")] {
        let md = fs::symlink_metadata(p).unwrap();
        assert_eq!(md.uid(), 0, "{}", p.display());
        assert_eq!(md.mode() & 0o022, 0, "{}", p.display());
    }

    assert_eq!(entries(&x1).len(), all.len(), "the tree changed");
    assert_eq!(launch(r, "wideopen"), ("image app x1".into(), Some(0)));

    // The refresh runs the image's own pre-refresh hook, as root, from the root-owned file.
    let ch = install(r, &v2);
    assert_eq!(ch["status"], "Done", "{ch}");
    assert_eq!(
        fs::read_to_string(r.join("var/snap/wideopen/common/hook-ran")).unwrap(),
        "image hook 0\n"
    );
    println!(
        "figures: hostile: test=extract_mode_payload_is_immutable_to_users attempts={tried} refused={refused} leaked=0"
    );
}

/// The same image loop-mounted: the mount shows the image's owners and modes, and is read-only
/// to everyone — what an extracted payload must match.
#[test]
fn a_loop_mounted_payload_is_immutable_to_users() {
    if !prerequisites() || !loop_devices() {
        return;
    }
    let Some(user) = TestUser::create("lpy") else {
        skip("useradd failed");
        return;
    };
    let root = Root::new("payload-loop");
    let r = root.path();
    let _d = Daemon::start(r);
    let v1 = hostile_image(&root, &user, "1.0");
    assert_eq!(install(r, &v1)["status"], "Done");
    let x1 = r.join("snap/wideopen/x1");
    let (tried, refused) = user_attempts(&user, &x1);
    assert_eq!(launch(r, "wideopen"), ("image app x1".into(), Some(0)));
    println!(
        "figures: hostile: test=a_loop_mounted_payload_is_immutable_to_users attempts={tried} refused={refused} leaked=0"
    );
}

const RUNNER_HOOK: &str = "#!/bin/sh\necho \"ran as $(id -u)\" > \"$SNAP_COMMON/hook-ran\"\n";

/// `runner` VERSION: an app that says who runs it and a pre-refresh hook that records it ran.
fn runner(root: &Root, version: &str) -> PathBuf {
    let out = root.aux(&format!("runner_{version}.snap"));
    SnapSrc::new(&format!(
        "name: runner\nversion: '{version}'\nsummary: Payload test\napps:\n  runner:\n    command: bin/hello\n"
    ))
    .file("bin/hello", "#!/bin/sh\necho \"app $(id -u)\"\n", 0o755)
    .file("meta/hooks/pre-refresh", RUNNER_HOOK, 0o755)
    .build(&out);
    out
}

/// Makes `path` the user's (`owner`) or writable by everyone (`mode`); returns what to restore.
fn loosen(path: &Path, how: &str, user: &TestUser) -> u32 {
    let mode = fs::symlink_metadata(path).unwrap().mode() & 0o7777;
    match how {
        "owner" => std::os::unix::fs::chown(path, Some(user.uid), None).unwrap(),
        _ => fs::set_permissions(path, fs::Permissions::from_mode(0o777)).unwrap(),
    }
    mode
}

fn restore(path: &Path, mode: u32) {
    std::os::unix::fs::chown(path, Some(0), Some(0)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_hook_a_user_could_have_written_is_refused() {
    if !prerequisites() {
        return;
    }
    let Some(user) = TestUser::create("hk") else {
        skip("useradd failed");
        return;
    };
    let root = Root::new("payload-hook");
    let r = root.path();
    let _d = Daemon::start_with(r, extract_opts());
    let (v1, v2) = (runner(&root, "1.0"), runner(&root, "2.0"));
    assert_eq!(install(r, &v1)["status"], "Done");
    let x1 = r.join("snap/runner/x1");
    let ran = r.join("var/snap/runner/common/hook-ran");
    let owned = r.join("owned");
    let (mut tried, mut refused) = (0, 0);

    // The hook, then the directories holding it, made the user's or writable by others (an
    // extracted tree from before, an administrator's slip): the refresh is refused in one line
    // and undone, and nothing the user wrote runs.
    let hooks = x1.join("meta/hooks");
    let cases: [(PathBuf, &str); 5] = [
        (hooks.join("pre-refresh"), "owner"),
        (hooks.join("pre-refresh"), "mode"),
        (hooks.clone(), "mode"),
        (x1.join("meta"), "owner"),
        (x1.clone(), "mode"),
    ];
    for (path, how) in &cases {
        tried += 1;
        let before = loosen(path, how, &user);
        // What the user puts there, where they now can.
        let target = if path.is_file() {
            path.clone()
        } else {
            hooks.join("pre-refresh")
        };
        let line = format!("echo 'id > {}' >> {}", owned.display(), target.display());
        let (wrote, _) = as_user(&user, &line);
        assert_eq!(wrote, path.is_file(), "setup: {how} {}", path.display());
        let ch = install(r, &v2);
        assert!(
            !owned.exists(),
            "the user's line ran as root ({how} {}): {}",
            path.display(),
            fs::read_to_string(&owned).unwrap_or_default().trim()
        );
        assert_eq!(ch["status"], "Error", "{how} {}: {ch}", path.display());
        assert_eq!(task(&ch, "mount")["status"], "Undone", "{ch}");
        let err = ch["error"].as_str().unwrap_or_default().to_owned();
        let line = err
            .lines()
            .find(|l| l.contains("pre-refresh hook"))
            .unwrap_or_else(|| panic!("no hook error in {err:?}"));
        assert!(
            line.contains("refusing to run it")
                && (line.contains(&format!("is owned by uid {}", user.uid))
                    || line.contains("is writable by group or others")),
            "{line}"
        );
        assert!(!ran.exists(), "the hook ran");
        refused += 1;
        restore(path, before);
        fs::write(hooks.join("pre-refresh"), RUNNER_HOOK).unwrap();
    }
    // Put right, the refresh goes through and runs the hook as root.
    let ch = install(r, &v2);
    assert_eq!(ch["status"], "Done", "{ch}");
    assert_eq!(fs::read_to_string(&ran).unwrap(), "ran as 0\n");
    println!(
        "figures: hostile: test=a_hook_a_user_could_have_written_is_refused attempts={tried} refused={refused} leaked=0"
    );
}

#[test]
fn an_app_a_user_could_have_written_is_refused() {
    if !prerequisites() {
        return;
    }
    let Some(user) = TestUser::create("ap") else {
        skip("useradd failed");
        return;
    };
    let root = Root::new("payload-app");
    let r = root.path();
    let _d = Daemon::start_with(r, extract_opts());
    assert_eq!(install(r, &runner(&root, "1.0"))["status"], "Done");
    let x1 = r.join("snap/runner/x1");
    let owned = r.join("owned");
    let (mut tried, mut refused) = (0, 0);
    // confine-hook: the app's program, or a directory on the way, the user's or writable by
    // others — refused in one line, for root's launch as for anyone's.
    for (path, how) in [
        (x1.join("bin/hello"), "owner"),
        (x1.join("bin/hello"), "mode"),
        (x1.join("bin"), "owner"),
        (x1.clone(), "mode"),
    ] {
        tried += 1;
        let before = loosen(&path, how, &user);
        if path.is_file() {
            let line = format!("echo 'id > {}' >> {}", owned.display(), path.display());
            assert!(as_user(&user, &line).0, "setup: {}", path.display());
        }
        let (out, code) = launch(r, "runner");
        assert!(
            !owned.exists(),
            "the user's line ran as root ({how} {}): {out}",
            path.display()
        );
        assert_eq!(code, Some(1), "{how} {}: {out}", path.display());
        assert!(
            out.starts_with("confine-hook: refusing to run") && out.lines().count() == 1,
            "{out}"
        );
        refused += 1;
        restore(&path, before);
        if path.is_file() {
            fs::write(&path, "#!/bin/sh\necho \"app $(id -u)\"\n").unwrap();
        }
    }
    assert_eq!(launch(r, "runner"), ("app 0".into(), Some(0)));
    println!(
        "figures: hostile: test=an_app_a_user_could_have_written_is_refused attempts={tried} refused={refused} leaked=0"
    );
}
