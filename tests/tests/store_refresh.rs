//! Refreshes from a store, end to end on the real kernel: install by name, a refresh that waits
//! for a running app and completes the moment it exits, data carried over, an up-to-date snap
//! left alone, and a tampered blob refused with everything as it was.

use std::fs;
use std::path::Path;

use refreshd_tests::*;

/// A scratch root with a directory store beside it, whose builds of snap `name` (a tracking
/// snap: `NAME.hold` runs until released) are published with [`StoreRoot::publish`], and a
/// daemon refreshing from it. None (after saying why) when the machine cannot.
struct StoreRoot {
    root: Root,
    store: std::path::PathBuf,
    name: &'static str,
    _daemon: Daemon,
}

impl StoreRoot {
    fn new(tag: &str, name: &'static str) -> Option<StoreRoot> {
        if !mksquashfs_available() || !is_root() {
            skip("needs root and mksquashfs");
            return None;
        }
        let root = Root::new(tag);
        let store = root.aux("store");
        fs::create_dir(&store).unwrap();
        let daemon = Daemon::start_with(
            root.path(),
            DaemonOpts {
                extra_args: vec![
                    "--insecure-unsigned-store".into(),
                    "--store".into(),
                    store.to_str().unwrap().into(),
                ],
                ..Default::default()
            },
        );
        Some(StoreRoot {
            root,
            store,
            name,
            _daemon: daemon,
        })
    }

    fn r(&self) -> &Path {
        self.root.path()
    }

    /// Publishes a build of the snap at `version` to `stable`.
    fn publish(&self, version: &str) -> refreshd_store::Entry {
        let blob = self.root.aux(&format!("{}-{version}.snap", self.name));
        tracking_snap(&blob, self.name, version, false);
        refreshd_store::publish(&self.store, &blob, "stable").unwrap()
    }
}

#[test]
fn refresh_from_a_directory_store_waits_for_the_app() {
    let Some(w) = StoreRoot::new("store", "tracked") else {
        return;
    };
    let (r, store) = (w.r(), &w.store);
    let publish = |version: &str| w.publish(version);
    assert_eq!(publish("1.0").revision, 1);
    let out = ctl(r, &["install", "tracked"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "Installed tracked 1");
    let list = ctl_json(r, &["list", "--json"]);
    assert_eq!(
        (list[0]["revision"].as_str(), list[0]["channel"].as_str()),
        (Some("1"), Some("stable"))
    );
    fs::write(r.join("var/snap/tracked/1/state"), "precious").unwrap();

    // Nothing newer: said, and no failure (as `snap refresh NAME`).
    let out = ctl(r, &["refresh", "tracked"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "snap tracked has no updates available (revision 1 is the newest in channel stable)\n"
    );

    let app = App::launch(r, "tracked.hold");
    assert_eq!(publish("2.0").revision, 2);
    let out = ctl(r, &["refresh", "tracked", "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = newest_change(r);
    let waiting = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(
        task(&waiting, "download")["status"],
        "Done",
        "downloaded before waiting"
    );
    let reason = task(&waiting, "wait-for-apps")["wait"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains(&format!("pid {}", app.pid)), "{reason}");
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("1")
    );

    let exited = app.release();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(done["kind"], "refresh");
    let entered = logged_at(&done, "wait-for-apps", "critical section entered").unwrap();
    println!(
        "store refresh: app exit -> critical section {:.3} ms",
        (entered - exited) as f64 / 1e6
    );
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("2")
    );
    assert_eq!(
        fs::read_to_string(r.join("var/snap/tracked/2/state")).unwrap(),
        "precious"
    );
    let hello = std::process::Command::new(r.join("snap/bin/tracked"))
        .output()
        .unwrap();
    assert_eq!(text(&hello.stdout).trim(), "hello from tracked 2");

    // A tampered blob: refused at download; nothing else happened.
    let e3 = publish("3.0");
    let blob = store.join(&e3.path);
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    let out = ctl(r, &["refresh", "tracked"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let failed = ctl_json(r, &["tasks", &newest_change(r).to_string(), "--json"]);
    assert_eq!(task(&failed, "download")["status"], "Error", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("sha3-384"),
        "{failed}"
    );
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("2")
    );
    assert!(!r.join("var/lib/refreshd/blobs/tracked_3.snap").exists());
    assert!(temporaries(r).is_empty(), "{:?}", temporaries(r));
}

/// A publisher's tools: `refreshctl pack` builds a snap from a directory, `refreshctl publish`
/// adds it to a directory store as the next revision; bad input is refused in one line.
#[test]
fn pack_and_publish_from_the_command_line() {
    if !mksquashfs_available() {
        skip("mksquashfs not installed (squashfs-tools)");
        return;
    }
    let root = Root::new("publish");
    let store = root.aux("store");
    fs::create_dir(&store).unwrap();
    let src =
        SnapSrc::new("name: packed\nversion: '2.5'\napps:\n  packed:\n    command: bin/run\n")
            .file("bin/run", "#!/bin/sh\necho packed\n", 0o755);
    let out_file = root.aux("packed.snap");
    let run = |args: &[&str]| {
        std::process::Command::new(bin("refreshctl"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "pack",
        src.dir.path().to_str().unwrap(),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&[
        "publish",
        "--store",
        store.to_str().unwrap(),
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("as revision 1 in channel stable"),
        "{}",
        text(&out.stdout)
    );
    let out = run(&[
        "publish",
        "--store",
        store.to_str().unwrap(),
        "--channel",
        "beta",
        out_file.to_str().unwrap(),
    ]);
    assert!(
        text(&out.stdout).contains("as revision 2 in channel beta"),
        "{}",
        text(&out.stdout)
    );
    let index = refreshd_store::Store::open(store.to_str().unwrap())
        .unwrap()
        .snap("packed")
        .unwrap()
        .unwrap();
    assert_eq!(index.channel("stable").unwrap().revision, 1);
    assert_eq!(index.channel("beta").unwrap().revision, 2);
    // --json: a revision is a string, as everywhere in the API.
    let out = run(&[
        "publish",
        "--store",
        store.to_str().unwrap(),
        "--json",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let published: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(published["revision"], "3", "{published}");

    // Not a snap: refused, the store unchanged.
    let junk = root.aux("junk.snap");
    fs::write(&junk, "junk").unwrap();
    let before = snapshot(&store, &[]);
    let out = run(&[
        "publish",
        "--store",
        store.to_str().unwrap(),
        junk.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim().lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    assert_eq!(snapshot(&store, &[]), before);
}

/// What `refreshctl` says and exits with, as a user meets it: no update is no failure (and the
/// same JSON shape as several names), only a change in progress is a conflict (exit 5), and
/// installing what is installed or aborting what is finished fails plainly (exit 1).
#[test]
fn exit_codes_say_conflict_only_for_a_change_in_progress() {
    let Some(w) = StoreRoot::new("exit-codes", "ec") else {
        return;
    };
    let r = w.r();
    let publish = |version: &str| w.publish(version);
    publish("1.0");
    assert!(ctl(r, &["install", "ec"]).status.success());

    one_error(
        &ctl(r, &["install", "ec"]),
        1,
        "already installed; refresh it with",
    );

    let out = ctl(r, &["refresh", "ec"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "snap ec has no updates available (revision 1 is the newest in channel stable)\n"
    );
    let json = ctl_json(r, &["refresh", "ec", "--json"]);
    assert_eq!(json["changes"], serde_json::json!([]), "{json}");
    assert_eq!(json["notes"][0]["kind"], "up-to-date", "{json}");
    // The snap's own endpoint is the same refresh; with nothing made, its note is the error.
    let refresh_ec = || http(r, "POST", "/v1/snaps/ec", &[], br#"{"action": "refresh"}"#);
    let (status, body) = refresh_ec();
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has no updates available"),
        "{body}"
    );

    // A refresh waiting for the app: a second one conflicts with it.
    publish("2.0");
    let app = App::launch(r, "ec.hold");
    let out = ctl(r, &["refresh", "ec", "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = newest_change(r);
    one_error(
        &ctl(r, &["refresh", "ec"]),
        5,
        &format!("change {id} is in progress"),
    );
    let (status, body) = refresh_ec();
    assert_eq!(
        (status, body["error"]["change"].as_u64()),
        (409, Some(id)),
        "{body}"
    );
    one_error(
        &ctl(r, &["remove", "ec"]),
        5,
        &format!("change {id} in progress"),
    );

    app.release();
    assert_eq!(watch_until_ready(r, id)["status"], "Done");
    one_error(
        &ctl(r, &["abort", &id.to_string()]),
        1,
        "already finished; there is nothing to abort",
    );
}

/// `install X` reads X as `snap install` does: a path (a `/` in it) or a name ending in `.snap`
/// is a file, and anything else a snap in the store, even beside a file of that name. What is
/// wrong with a file is said in one line naming it.
#[test]
fn install_reads_its_argument_as_snap_does() {
    let Some(w) = StoreRoot::new("install-arg", "word") else {
        return;
    };
    let r = w.r();
    w.publish("1.0");
    let cwd = w.root.aux("cwd");
    fs::create_dir(&cwd).unwrap();
    // A file named like the snap, and a snap's source directory.
    fs::write(cwd.join("word"), "not a snap").unwrap();
    fs::create_dir_all(cwd.join("src/meta")).unwrap();
    fs::write(cwd.join("src/meta/snap.yaml"), "name: word\nversion: '1'\n").unwrap();
    fs::write(cwd.join("junk.snap"), "not squashfs").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(bin("refreshctl"))
            .arg("--root")
            .arg(r)
            .args(args)
            .current_dir(&cwd)
            .env_remove("REFRESHD_SOCKET")
            .output()
            .unwrap()
    };

    let out = run(&["install", "word"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Installed word 1\n");

    one_error(
        &run(&["install", "./src"]),
        1,
        "./src is a directory; pack it first: refreshctl pack ./src",
    );
    one_error(
        &run(&["install", "missing.snap"]),
        1,
        "cannot read the snap file missing.snap",
    );
    one_error(
        &run(&["install", "./junk.snap"]),
        1,
        "cannot install ./junk.snap: ",
    );
    one_error(
        &run(&["install", "word", "--name", "word_x"]),
        2,
        "--name goes with a FILE",
    );
    one_error(
        &run(&["install", "./junk.snap", "--channel", "beta"]),
        2,
        "--channel goes with a store NAME",
    );
    assert_eq!(
        ctl_json(r, &["list", "--json"]).as_array().unwrap().len(),
        1
    );
}

/// Asserts that refreshctl exited with `code` and said one error line, holding `needle`.
fn one_error(out: &std::process::Output, code: i32, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(
        lines.len() == 1 && lines[0].contains(needle),
        "one error line with {needle:?}: {err}"
    );
}

/// A revert sticks: the snap is held from refreshes that do not name it (`refresh` without
/// names, auto-refresh) until one names it or its hold is lifted; `list` says so. `revert
/// --revision REV` goes to any kept revision.
#[test]
fn a_revert_sticks_until_a_refresh_names_the_snap() {
    let Some(w) = StoreRoot::new("revert-sticks", "rv") else {
        return;
    };
    let r = w.r();
    let current = || ctl_json(r, &["list", "--json"])[0]["revision"].clone();
    let hold = || ctl_json(r, &["list", "--json"])[0]["hold"].clone();
    w.publish("1.0");
    assert!(ctl(r, &["install", "rv"]).status.success());
    w.publish("2.0");
    assert!(ctl(r, &["refresh", "rv"]).status.success());
    assert_eq!(current(), "2");

    let out = ctl(r, &["revert", "rv"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!((current(), hold()), ("1".into(), "reverted".into()));
    for args in [&["list"][..], &["status", "rv"]] {
        let out = text(&ctl(r, args).stdout);
        assert!(out.contains("held since its revert"), "{args:?}: {out}");
    }

    // Refreshing every snap leaves it, and says why.
    w.publish("3.0");
    let out = ctl(r, &["refresh"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("rv: refreshes are held since its revert; skipped revision 3"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(current(), "1");

    // Any kept revision; one that is not kept is refused, naming those that are.
    let out = ctl(r, &["revert", "rv", "--revision", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(current(), "2");
    one_error(
        &ctl(r, &["revert", "rv", "--revision", "9"]),
        1,
        "revision 9 of rv is not kept here (kept besides the current 2: 1)",
    );

    // Naming it refreshes it and ends the hold.
    let out = ctl(r, &["refresh", "rv"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!((current(), hold()), ("3".into(), serde_json::Value::Null));
}
