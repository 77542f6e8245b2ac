//! `remove` waits for a snap's running apps like a refresh, and keeps the snap's data (system
//! and every user's) as a snapshot that `refreshctl saved`, `restore` and `forget` manage and
//! that expires after `--snapshot-retention`: nothing a user wrote is lost by a remove they
//! regret.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use refreshd_tests::*;

fn prerequisites() -> bool {
    if !is_root() {
        skip("needs root (loop mounts, a real user)");
        return false;
    }
    if !mksquashfs_available() {
        skip("mksquashfs not installed (squashfs-tools)");
        return false;
    }
    true
}

/// A snap whose `write` app writes its argument to the caller's data (and, as root, to the
/// system's), `read` prints them back, and `hold` runs until told to exit.
fn keep_snap(out: &Path, name: &str, version: &str) {
    SnapSrc::new(&format!(
        "name: {name}\nversion: '{version}'\nsummary: Snapshot test\napps:\n  write:\n    command: bin/write\n  read:\n    command: bin/read\n  hold:\n    command: bin/hold\n"
    ))
    .file(
        "bin/write",
        "#!/bin/sh\nset -e\necho \"$1\" > \"$SNAP_USER_DATA/note\"\necho \"$1\" > \"$SNAP_USER_COMMON/note\"\nif [ \"$(id -u)\" = 0 ]; then echo \"$1\" > \"$SNAP_DATA/note\"; echo \"$1\" > \"$SNAP_COMMON/note\"; fi\n",
        0o755,
    )
    .file(
        "bin/read",
        "#!/bin/sh\ncat \"$SNAP_USER_DATA/note\" \"$SNAP_USER_COMMON/note\"\n",
        0o755,
    )
    .file(
        "bin/hold",
        "#!/bin/sh\necho \"started $$ $(date +%s%N) $SNAP_REVISION\"\nread line\necho \"exit $(date +%s%N)\"\n",
        0o755,
    )
    .build(out);
}

/// Runs app `app` of `name` as `user` (root when None) with `args`; its stdout.
fn run_app(r: &Path, name: &str, app: &str, user: Option<&TestUser>, args: &[&str]) -> String {
    let launcher = r.join(format!("snap/bin/{name}.{app}"));
    let out = match user {
        Some(u) => as_user(u, &launcher).args(args).output(),
        None => Command::new(&launcher).args(args).output(),
    }
    .unwrap();
    assert!(
        out.status.success(),
        "{name}.{app} {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn current(r: &Path, name: &str) -> String {
    find_in(&ctl_json(r, &["list", "--json"]), "name", name)["revision"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The whole story a regretted remove goes through, with a user's app running: the remove
/// waits for it and deletes nothing meanwhile; it keeps the system's and the user's data as a
/// snapshot; once the snap is installed again (at another revision), `restore` puts the data
/// back as the current revision's, keeping what it replaced as a snapshot of its own, which
/// `forget` deletes.
#[test]
fn a_remove_waits_for_a_running_app_and_keeps_everyones_data_for_a_restore() {
    if !prerequisites() {
        return;
    }
    let Some([user, later]) = TestUser::create_all(["snp", "snl"]) else {
        return;
    };
    let root = Root::new("snapshots");
    let r = root.path();
    let home = user_home(r, &user);
    user_home(r, &later);
    let name = "keepsnap";
    let (v1, v2) = (root.aux("keep1.snap"), root.aux("keep2.snap"));
    keep_snap(&v1, name, "1.0");
    keep_snap(&v2, name, "2.0");
    let _d = Daemon::start(r);
    ok(&ctl(r, &["install", v1.to_str().unwrap()]), "install");
    let rev1 = current(r, name);
    run_app(r, name, "write", Some(&user), &["the user's words"]);
    run_app(r, name, "write", None, &["root's words"]);
    let user_note = home.join(format!("snap/{name}/{rev1}/note"));
    let system_note = r.join(format!("var/snap/{name}/{rev1}/note"));
    assert!(user_note.exists() && system_note.exists());

    // The user's app runs: the remove waits for it, as a refresh does, and deletes nothing.
    let app = App::launch_as(r, &format!("{name}.hold"), Some((user.uid, user.gid)));
    let remove = Command::new(bin("refreshctl"))
        .arg("--root")
        .arg(r)
        .args(["remove", name])
        .env_remove("REFRESHD_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let remove = KillOnDrop(Some(remove));
    let id = wait_for_remove_change(r, name);
    let c = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(task(&c, "wait-for-apps")["status"], "Wait", "{c}");
    assert!(
        task(&c, "wait-for-apps")["wait"]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", app.pid)),
        "the wait names the app: {c}"
    );
    let metrics = raw_get(r, "/v1/metrics");
    assert!(
        metrics.contains("\nrefreshd_refreshes_pending 0\n"),
        "a remove that waits is no pending refresh: {metrics}"
    );
    assert!(user_note.exists(), "nothing is deleted under a running app");
    assert!(
        system_note.exists(),
        "nothing is deleted under a running app"
    );
    assert!(r.join(format!("snap/bin/{name}.read")).exists());

    // The app exits: the remove completes at once and says what it kept.
    app.release();
    let out = remove.wait_output();
    let said = ok(&out, "remove");
    assert!(
        said.contains(&format!("kept as snapshot {id}"))
            && said.contains(&format!("refreshctl restore {id}")),
        "remove says what it kept and how to restore it: {said}"
    );
    assert!(!r.join(format!("var/snap/{name}")).exists());
    assert!(!home.join(format!("snap/{name}")).exists());
    assert!(!r.join(format!("snap/bin/{name}.read")).exists());
    let saved = ctl_json(r, &["saved", "--json"]);
    let set = find_in(&saved, "set", id);
    assert_eq!(set["snap"], name, "{saved}");
    assert_eq!(set["revision"], rev1.as_str(), "{saved}");
    let users: Vec<&str> = set["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(users.contains(&user.name.as_str()), "{saved}");
    assert!(set["expires"].is_string(), "a snapshot expires: {saved}");
    let table = ok(&ctl(r, &["saved"]), "saved");
    assert!(
        table.starts_with("Set") && table.contains(name),
        "saved shows a table: {table}"
    );

    // A restore needs the snap installed, and says so.
    let out = ctl(r, &["restore", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("not installed") && err.contains("install it first"),
        "{err}"
    );

    // Installed again, at another revision, with fresh data of its own.
    ok(&ctl(r, &["install", v2.to_str().unwrap()]), "install again");
    ok(&ctl(r, &["install", v2.to_str().unwrap()]), "refresh");
    let rev2 = current(r, name);
    assert_ne!(rev1, rev2);
    run_app(r, name, "write", Some(&user), &["fresh words"]);
    // A user who came after the remove is not in the snapshot: their data stays theirs.
    run_app(r, name, "write", Some(&later), &["a newcomer's words"]);

    let out = ok(&ctl(r, &["restore", &id.to_string()]), "restore");
    let undo = newest_change(r);
    assert!(
        out.contains(&format!("snapshot {undo}")),
        "restore names the snapshot of what it replaced: {out}"
    );
    assert_eq!(
        run_app(r, name, "read", Some(&user), &[]),
        "the user's words\nthe user's words\n",
        "the user's data is back, as the current revision's"
    );
    assert_eq!(
        run_app(r, name, "read", Some(&later), &[]),
        "a newcomer's words\na newcomer's words\n",
        "a user not in the snapshot keeps their data"
    );
    assert_eq!(
        fs::read_to_string(r.join(format!("var/snap/{name}/{rev2}/note"))).unwrap(),
        "root's words\n"
    );
    assert_eq!(
        fs::read_to_string(r.join(format!("var/snap/{name}/common/note"))).unwrap(),
        "root's words\n"
    );
    let saved = ctl_json(r, &["saved", "--json"]);
    assert_eq!(saved.as_array().unwrap().len(), 1, "{saved}");
    assert_eq!(saved[0]["set"], undo, "{saved}");
    assert_eq!(saved[0]["revision"], rev2.as_str(), "{saved}");
    assert!(home.join(format!("snap/.saved-{undo}-{name}")).exists());

    // Forgotten: gone from the list and from every tree.
    ok(&ctl(r, &["forget", &undo.to_string()]), "forget");
    assert_eq!(ctl_json(r, &["saved", "--json"]), serde_json::json!([]));
    assert!(!home.join(format!("snap/.saved-{undo}-{name}")).exists());
    assert!(!r.join(format!("var/snap/.saved-{undo}-{name}")).exists());
    let out = ctl(r, &["forget", &undo.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("there is no snapshot {undo}")),
        "{}",
        text(&out.stderr)
    );
}

/// `--purge` keeps nothing; a snapshot survives a restart of the daemon and goes when it
/// expires; a user's tree that is a symlink is moved and deleted as a link, never followed.
#[test]
fn purge_keeps_nothing_and_snapshots_expire_without_following_a_users_links() {
    if !prerequisites() {
        return;
    }
    let Some([user]) = TestUser::create_all(["snq"]) else {
        return;
    };
    let root = Root::new("snapshots-expire");
    let r = root.path();
    let home = user_home(r, &user);
    let (a, b) = ("purgesnap", "expiresnap");
    let (fa, fb) = (root.aux("a.snap"), root.aux("b.snap"));
    keep_snap(&fa, a, "1.0");
    keep_snap(&fb, b, "1.0");
    let d = Daemon::start(r);
    ok(&ctl(r, &["install", fa.to_str().unwrap()]), "install");
    ok(&ctl(r, &["install", fb.to_str().unwrap()]), "install");
    run_app(r, a, "write", Some(&user), &["a"]);
    // The user's tree of b is a link to a directory of theirs that must survive everything.
    let elsewhere = home.join("elsewhere");
    fs::create_dir_all(elsewhere.join("x1")).unwrap();
    fs::write(elsewhere.join("x1/note"), "mine").unwrap();
    fs::create_dir_all(home.join("snap")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, home.join(format!("snap/{b}"))).unwrap();
    for p in [home.join("snap"), elsewhere.clone(), elsewhere.join("x1")] {
        std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid)).unwrap();
    }

    let said = ok(&ctl(r, &["remove", a, "--purge"]), "remove --purge");
    assert_eq!(said, format!("Removed {a}\n"));
    assert_eq!(ctl_json(r, &["saved", "--json"]), serde_json::json!([]));
    assert!(!home.join(format!("snap/{a}")).exists());
    let leftovers: Vec<_> = fs::read_dir(r.join("var/snap"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| n != a && !n.to_string_lossy().starts_with(".saved")),
        "{leftovers:?}"
    );

    ok(&ctl(r, &["remove", b]), "remove");
    let set = ctl_json(r, &["saved", "--json"])[0]["set"]
        .as_u64()
        .unwrap();
    let saved_link = home.join(format!("snap/.saved-{set}-{b}"));
    assert!(
        fs::symlink_metadata(&saved_link).unwrap().is_symlink(),
        "the user's link was moved as a link"
    );
    assert_eq!(
        fs::read_to_string(elsewhere.join("x1/note")).unwrap(),
        "mine"
    );

    // Kept across a restart; then, with a short retention, it expires and goes.
    d.stop();
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec!["--snapshot-retention".into(), "1s".into()],
            ..Default::default()
        },
    );
    assert_eq!(
        ctl_json(r, &["saved", "--json"])[0]["set"],
        set,
        "a snapshot survives a restart"
    );
    // Saved with the 31 days then in force: the new retention applies to new snapshots.
    ok(&ctl(r, &["install", fb.to_str().unwrap()]), "install again");
    ok(&ctl(r, &["remove", b]), "remove again");
    let sets = ctl_json(r, &["saved", "--json"]);
    assert_eq!(sets.as_array().unwrap().len(), 2, "{sets}");
    let short = sets[1]["set"].as_u64().unwrap();
    // Expiry is the daemon's own timer: nothing to wait on but the list.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while find_set(r, short) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!find_set(r, short), "the snapshot expired and went");
    assert!(find_set(r, set), "the one saved for 31 days stays");
    assert!(!r.join(format!("var/snap/.saved-{short}-{b}")).exists());

    ok(&ctl(r, &["forget", &set.to_string()]), "forget");
    assert!(
        fs::symlink_metadata(&saved_link).is_err(),
        "the link is gone"
    );
    assert_eq!(
        fs::read_to_string(elsewhere.join("x1/note")).unwrap(),
        "mine",
        "what the link pointed at is untouched"
    );
}

fn find_set(r: &Path, set: u64) -> bool {
    ctl_json(r, &["saved", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["set"] == set)
}

/// The remove change of `name`, once the command made it (the command's own output comes only
/// at the end).
fn wait_for_remove_change(r: &Path, name: &str) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let changes = ctl_json(r, &["changes", name, "--json"]);
        if let Some(c) = changes
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["kind"] == "remove")
        {
            return c["id"].as_u64().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no remove change");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A child killed if the test fails before it is waited for.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn wait_output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Killed in the middle of saving, then of restoring (the system's data moved, a user's tree put
/// back but not yet renamed to the current revision): the restarted daemon finishes each, and
/// nothing is lost or doubled.
#[test]
fn a_save_and_a_restore_killed_midway_are_finished_after_a_restart() {
    if !prerequisites() {
        return;
    }
    let Some([user]) = TestUser::create_all(["snr"]) else {
        return;
    };
    let root = Root::new("snapshots-crash");
    let r = root.path();
    let home = user_home(r, &user);
    let name = "crashsnap";
    let file = root.aux("c.snap");
    keep_snap(&file, name, "1.0");
    let d = Daemon::start(r);
    ok(&ctl(r, &["install", file.to_str().unwrap()]), "install");
    run_app(r, name, "write", Some(&user), &["user v1"]);
    run_app(r, name, "write", None, &["root v1"]);
    d.stop();

    let dying = |fp: &'static str| {
        Daemon::start_with(
            r,
            DaemonOpts {
                failpoints: Some(fp),
                ..Default::default()
            },
        )
    };
    let d = dying("mid-save:save-data");
    let _ = ctl(r, &["remove", name, "--no-wait"]);
    assert!(killed_by_sigkill(d.wait()), "the daemon died mid-save");
    let d = Daemon::start(r);
    let set = newest_change(r);
    let c = watch_until_ready(r, set);
    assert_eq!(c["status"], "Done", "{c}");
    assert!(find_set(r, set));
    assert!(home.join(format!("snap/.saved-{set}-{name}")).is_dir());
    assert!(!home.join(format!("snap/{name}")).exists());

    ok(
        &ctl(r, &["install", file.to_str().unwrap()]),
        "install again",
    );
    // At a revision other than the set's: the user's tree put back is renamed to it.
    ok(&ctl(r, &["install", file.to_str().unwrap()]), "refresh");
    run_app(r, name, "write", Some(&user), &["user v2"]);
    d.stop();
    let d = dying("mid-restore:restore-data");
    let out = ctl(r, &["restore", &set.to_string(), "--no-wait"]);
    let undo: u64 = text(&out.stdout).trim().parse().unwrap();
    assert!(killed_by_sigkill(d.wait()), "the daemon died mid-restore");
    // As if killed just after the user's tree was set aside and put back, before the tree's
    // own rename to the current revision: the next run finishes that too.
    let snapdir = home.join("snap");
    fs::rename(
        snapdir.join(name),
        snapdir.join(format!(".saved-{undo}-{name}")),
    )
    .unwrap();
    fs::rename(
        snapdir.join(format!(".saved-{set}-{name}")),
        snapdir.join(name),
    )
    .unwrap();
    let _d = Daemon::start(r);
    let c = watch_until_ready(r, undo);
    assert_eq!(c["status"], "Done", "{c}");
    assert_eq!(
        run_app(r, name, "read", Some(&user), &[]),
        "user v1\nuser v1\n",
        "the user's data of the set is back"
    );
    let rev = current(r, name);
    assert_eq!(
        fs::read_to_string(r.join(format!("var/snap/{name}/{rev}/note"))).unwrap(),
        "root v1\n"
    );
    // What the restore replaced is its own set, whole: the user's newer words are there.
    let sets = ctl_json(r, &["saved", "--json"]);
    assert_eq!(sets.as_array().unwrap().len(), 1, "{sets}");
    assert_eq!(sets[0]["set"], undo, "{sets}");
    let replaced = home.join(format!("snap/.saved-{undo}-{name}/{rev}/note"));
    assert_eq!(fs::read_to_string(&replaced).unwrap(), "user v2\n");
    assert!(!r.join(format!("var/snap/.saved-{set}-{name}")).exists());
}

/// The body of `GET PATH` on the daemon's socket, as text.
fn raw_get(r: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(r.join("run/refreshd.socket")).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    all.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(all)
}
