//! Refreshing several snaps at once, holds, and auto-refresh, end to end on the real kernel
//! with a directory store: `refreshctl refresh` without names refreshes exactly the snaps with
//! an update, `--list` shows them and changes nothing, held snaps are skipped unless named, and
//! `refreshd --auto-refresh` does the same by itself, keeping its schedule across a restart.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use refreshd_tests::*;

/// A root with a directory store beside it.
struct Setup {
    root: Root,
    store: std::path::PathBuf,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let root = Root::new(tag);
        let store = root.aux("store");
        fs::create_dir(&store).unwrap();
        Setup { root, store }
    }

    fn r(&self) -> &Path {
        self.root.path()
    }

    /// Publishes NAME VERSION to the store's stable channel; returns its revision.
    fn publish(&self, name: &str, version: &str) -> u32 {
        let blob = self.root.aux(&format!("{name}_{version}.snap"));
        hello_snap(&blob, name, version);
        refreshd_store::publish(&self.store, &blob, "stable")
            .unwrap()
            .revision
    }

    fn daemon(&self, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--insecure-unsigned-store".to_owned(),
            "--store".to_owned(),
            self.store.to_str().unwrap().to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Daemon::start_with(
            self.r(),
            DaemonOpts {
                extra_args: args,
                ..Default::default()
            },
        )
    }

    /// Installs NAME from the store, or from a file when `file` is set.
    fn install(&self, name: &str, file: bool) {
        let what = if file {
            let blob = self.root.aux(&format!("{name}-local.snap"));
            hello_snap(&blob, name, "0.9");
            blob.to_str().unwrap().to_owned()
        } else {
            name.to_owned()
        };
        let out = ctl(self.r(), &["install", &what]);
        assert!(
            out.status.success(),
            "install {name}: {}",
            text(&out.stderr)
        );
    }

    /// The current revision of every installed snap, by name.
    fn revisions(&self) -> Vec<(String, String)> {
        ctl_json(self.r(), &["list", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_owned(),
                    s["revision"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    fn snap(&self, name: &str) -> Value {
        ctl_json(self.r(), &["list", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not installed"))
    }

    fn changes(&self, snap: Option<&str>) -> Vec<Value> {
        let mut args = vec!["changes", "--all", "--json"];
        if let Some(s) = snap {
            args.extend(["--snap", s]);
        }
        ctl_json(self.r(), &args).as_array().unwrap().clone()
    }

    fn refresh_changes(&self, snap: &str) -> Vec<Value> {
        self.changes(Some(snap))
            .into_iter()
            .filter(|c| c["kind"] == "refresh")
            .collect()
    }
}

fn can_run() -> bool {
    if !mksquashfs_available() || !is_root() {
        skip("needs root and mksquashfs");
        return false;
    }
    true
}

fn names(v: &Value, list: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Seconds since the epoch of an RFC 3339 time (coreutils `date` reads it).
fn epoch(t: &str) -> i64 {
    let out = std::process::Command::new("date")
        .args(["-d", t, "+%s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "date -d {t}: {}", text(&out.stderr));
    text(&out.stdout).trim().parse().unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn refresh_without_names_refreshes_exactly_the_snaps_with_updates() {
    if !can_run() {
        return;
    }
    let s = Setup::new("rall");
    let r = s.r();
    for name in ["alpha", "beta", "gamma"] {
        assert_eq!(s.publish(name, "1.0"), 1);
    }
    let _d = s.daemon(&[]);
    for name in ["alpha", "beta", "gamma"] {
        s.install(name, false);
    }
    // delta comes from a file: it follows no channel, so refreshing all leaves it alone.
    s.install("delta", true);
    assert_eq!(s.publish("alpha", "2.0"), 2);
    assert_eq!(s.publish("beta", "2.0"), 2);

    // --list: exactly the two, from the current revision to the store's; nothing changes.
    let before = s.changes(None).len();
    let out = ctl(r, &["refresh", "--list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(
        rows[0].starts_with("alpha") && rows[0].contains("1.0 (rev 1)  →  2.0 (rev 2)"),
        "{listed}"
    );
    assert!(rows[0].contains("stable"), "{listed}");
    assert!(rows[1].starts_with("beta"), "{listed}");
    let plan = ctl_json(r, &["refresh", "--list", "--json"]);
    assert_eq!(names(&plan, "updates"), ["alpha", "beta"], "{plan}");
    let alpha = &plan["updates"][0];
    assert_eq!(
        (
            &alpha["revision"],
            &alpha["version"],
            &alpha["store-revision"],
            &alpha["store-version"],
            &alpha["channel"]
        ),
        (
            &Value::from("1"),
            &Value::from("1.0"),
            &Value::from("2"),
            &Value::from("2.0"),
            &Value::from("stable")
        )
    );
    let kinds: Vec<(&str, &str)> = plan["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["snap"].as_str().unwrap(), n["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("delta", "not-from-store"), ("gamma", "up-to-date")],
        "{plan}"
    );
    assert_eq!(s.changes(None).len(), before, "--list changed nothing");

    // An unknown name fails the whole request before anything is made.
    let out = ctl(r, &["refresh", "alpha", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("\"nope\" is not installed; nothing was done"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(s.changes(None).len(), before);

    // refresh: two changes, both complete.
    let out = ctl(r, &["refresh"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "Refreshed alpha to 2\nRefreshed beta to 2\n",
        "{}",
        text(&out.stderr)
    );
    for name in ["alpha", "beta"] {
        let made = s.refresh_changes(name);
        assert_eq!(made.len(), 1, "{made:?}");
        assert_eq!(made[0]["status"], "Done", "{made:?}");
    }
    assert_eq!(s.changes(None).len(), before + 2);
    assert_eq!(
        s.revisions(),
        pairs(&[
            ("alpha", "2"),
            ("beta", "2"),
            ("delta", "x1"),
            ("gamma", "1")
        ])
    );
    let hello = std::process::Command::new(r.join("snap/bin/beta"))
        .output()
        .unwrap();
    assert_eq!(text(&hello.stdout).trim(), "hello from beta 2");

    // Afterwards nothing is listed, and refreshing says so (success: nothing was wrong), and
    // which snap was not looked at, and why: "up to date" never covers a snap from a file.
    let skipped = "delta: installed from a file, it follows no store channel; skipped\n";
    let out = ctl(r, &["refresh", "--list"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        format!("{skipped}All snaps from the store are up to date.\n")
    );
    assert!(names(&ctl_json(r, &["refresh", "--list", "--json"]), "updates").is_empty());
    let out = ctl(r, &["refresh"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "All snaps from the store are up to date.\n"
    );
    assert_eq!(text(&out.stderr), skipped);
    // `list` says what each snap follows: its channel, or nothing (local).
    let list = text(&ctl(r, &["list"]).stdout);
    let row = |name: &str| -> Vec<String> {
        let line = list
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default();
        line.split_whitespace().map(str::to_owned).collect()
    };
    assert_eq!(row("alpha")[3], "stable", "{list}");
    assert_eq!(row("delta")[3], "local", "{list}");
    assert_eq!(s.changes(None).len(), before + 2);

    // A retried request (same Idempotency-Key) answers with the changes the first made and
    // makes no more.
    assert_eq!(s.publish("gamma", "2.0"), 2);
    let body = br#"{"action": "refresh"}"#;
    let key = [("Idempotency-Key", "refresh-all-1")];
    let (status, first) = http(r, "POST", "/v1/refresh", &key, body);
    assert_eq!(status, 202, "{first}");
    let ids = first["changes"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 1, "{first}");
    let (status, again) = http(r, "POST", "/v1/refresh", &key, body);
    assert_eq!(
        (status, &again["changes"]),
        (202, &first["changes"]),
        "{again}"
    );
    assert_eq!(s.changes(None).len(), before + 3);
    let done = watch_until_ready(r, ids[0].as_u64().unwrap());
    assert_eq!(done["status"], "Done", "{done}");
    // The same key for another kind of request is refused.
    let (status, reused) = http(
        r,
        "POST",
        "/v1/snaps/gamma",
        &key,
        br#"{"action": "remove"}"#,
    );
    assert_eq!(status, 409, "{reused}");
    assert!(temporaries(r).is_empty(), "{:?}", temporaries(r));
}

#[test]
fn held_snaps_are_skipped_unless_named() {
    if !can_run() {
        return;
    }
    let Some(user) = TestUser::create("hold") else {
        skip("useradd failed");
        return;
    };
    let s = Setup::new("hold");
    let r = s.r();
    s.publish("alpha", "1.0");
    s.publish("beta", "1.0");
    let _d = s.daemon(&[]);
    s.install("alpha", false);
    s.install("beta", false);
    s.publish("alpha", "2.0");
    s.publish("beta", "2.0");

    let out = ctl(r, &["refresh", "--hold=forever", "alpha"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Refreshes of alpha are held forever\n");
    let list = text(&ctl(r, &["list"]).stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with("alpha") && l.ends_with("held forever")),
        "{list}"
    );
    let listed = text(&ctl(r, &["refresh", "--list"]).stdout);
    assert!(listed.contains("held forever"), "{listed}");

    // Refreshing all skips alpha, and says so.
    let out = ctl(r, &["refresh"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Refreshed beta to 2\n");
    assert!(
        text(&out.stderr).contains("alpha: refreshes are held forever; skipped"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(s.revisions(), pairs(&[("alpha", "1"), ("beta", "2")]));
    assert!(s.refresh_changes("alpha").is_empty());

    // Unheld, it is refreshed with the rest.
    let out = ctl(r, &["refresh", "--unhold", "alpha"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(s.snap("alpha")["hold"], Value::Null);
    let out = ctl(r, &["refresh"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Refreshed alpha to 2\n");

    // A hold for a while shows until when.
    s.publish("alpha", "3.0");
    let out = ctl(r, &["refresh", "--hold=1h", "alpha"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("Refreshes of alpha are held until "),
        "{}",
        text(&out.stdout)
    );
    let hold = s.snap("alpha")["hold"].as_str().unwrap().to_owned();
    let left = epoch(&hold) - now();
    assert!((3500..=3600).contains(&left), "held until {hold}: {left}s");
    let list = text(&ctl(r, &["list"]).stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with("alpha") && l.contains("held until ")),
        "{list}"
    );
    let out = ctl(r, &["refresh"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Nothing was refreshed.\n");
    assert!(
        text(&out.stderr).contains(&format!("alpha: refreshes are held until {hold}; skipped")),
        "{}",
        text(&out.stderr)
    );

    // Named, a held snap is refreshed, with a note; the hold stays.
    let out = ctl(r, &["refresh", "alpha"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Refreshed alpha to 3\n");
    assert!(
        text(&out.stderr).contains(&format!("it is held until {hold}, but was named")),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(s.snap("alpha")["hold"], Value::from(hold.as_str()));

    // Bad input changes nothing: a bad duration is a usage error in one line; an unknown name
    // fails the whole hold.
    let before = ctl_json(r, &["list", "--json"]);
    let out = ctl(r, &["refresh", "--hold=2x", "beta"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: ") && first.contains("invalid duration \"2x\": unknown unit"),
        "{err}"
    );
    let out = ctl(r, &["refresh", "--hold=2h", "beta", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).trim().lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    // `--hold 2h` (with a space) reads 2h as a snap: said, with how to write it.
    let out = ctl(r, &["refresh", "--hold", "2h", "beta"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.lines().count() == 1 && err.contains("write --hold=2h"),
        "{err}"
    );
    assert_eq!(ctl_json(r, &["list", "--json"]), before);

    // `changes NAME` is `changes --snap NAME`.
    let by_name = ctl_json(r, &["changes", "alpha", "--all", "--json"]);
    assert!(!by_name.as_array().unwrap().is_empty());
    assert_eq!(
        by_name,
        ctl_json(r, &["changes", "--snap", "alpha", "--all", "--json"])
    );

    // Reading is for everyone; holding and refreshing need admin.
    let as_user = |args: &[&str]| ctl_as(r, args, Some((user.uid, user.gid)));
    let out = as_user(&["refresh", "--list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for args in [
        &["refresh", "--hold", "beta"][..],
        &["refresh", "--unhold", "alpha"],
        &["refresh"],
    ] {
        let out = as_user(args);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(ctl_json(r, &["list", "--json"]), before);

    // Without names, --hold holds every installed snap, and --unhold lifts every hold.
    let out = ctl(r, &["refresh", "--hold"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "Refreshes of alpha are held forever\nRefreshes of beta are held forever\n"
    );
    // Held snaps without an update are simply up to date.
    let out = ctl(r, &["refresh"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "All snaps are up to date.\n");
    assert_eq!(text(&out.stderr), "");
    let out = ctl(r, &["refresh", "--unhold"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for name in ["alpha", "beta"] {
        assert_eq!(s.snap(name)["hold"], Value::Null);
    }
}

/// Polls the changes of `snap` until one of kind refresh appears: no event announces a new
/// change, so this asks the API every 100 ms, within a deadline.
fn wait_for_refresh_change(s: &Setup, snap: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(c) = s.refresh_changes(snap).into_iter().next() {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no refresh change for {snap} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a line of the daemon's log, which reaches the file through a pipe and a thread:
/// polled, within a deadline.
fn wait_for_log(d: &Daemon, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn auto_refresh_refreshes_by_itself_skips_held_snaps_and_keeps_its_schedule() {
    if !can_run() {
        return;
    }
    let s = Setup::new("auto");
    let r = s.r();
    s.publish("alpha", "1.0");
    s.publish("beta", "1.0");
    let d = s.daemon(&["--auto-refresh", "1s"]);
    s.install("alpha", false);
    s.install("beta", false);
    let out = ctl(r, &["refresh", "--hold", "beta"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // beta's update first: any run that sees alpha's sees beta's too.
    s.publish("beta", "2.0");
    s.publish("alpha", "2.0");

    let change = wait_for_refresh_change(&s, "alpha", Duration::from_secs(60));
    let done = watch_until_ready(r, change["id"].as_u64().unwrap());
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(s.snap("alpha")["revision"], "2");
    // The run that refreshed alpha skipped beta, which was held.
    assert!(s.refresh_changes("beta").is_empty());
    assert_eq!(s.snap("beta")["revision"], "1");
    wait_for_log(
        &d,
        "auto-refresh: beta: refreshes are held forever; skipped revision 2",
    );
    assert!(d.log_text().contains("auto-refresh every 1s"));

    let info = ctl_json(r, &["status", "--json"]);
    assert_eq!(info["auto-refresh"], "1s", "{info}");
    assert!(info["next-auto-refresh"].is_string(), "{info}");
    assert!(info["last-auto-refresh"].is_string(), "{info}");
    let status = text(&ctl(r, &["status"]).stdout);
    assert!(
        status.contains("auto-refresh:") && status.contains("every 1s, next "),
        "{status}"
    );

    // A restart keeps the time of the last run: with an hour between runs, the next is an
    // hour after it, not now.
    assert!(d.stop().success());
    let _d = s.daemon(&["--auto-refresh", "1h"]);
    let info = ctl_json(r, &["status", "--json"]);
    let last = epoch(info["last-auto-refresh"].as_str().unwrap());
    let next = epoch(info["next-auto-refresh"].as_str().unwrap());
    assert_eq!(info["auto-refresh"], "1h", "{info}");
    assert_eq!(next - last, 3600, "{info}");
    assert!(last <= now() && now() - last < 600, "{info}");
}

#[test]
fn without_auto_refresh_nothing_refreshes_by_itself() {
    if !can_run() {
        return;
    }
    let s = Setup::new("noauto");
    let r = s.r();
    s.publish("alpha", "1.0");
    let d = s.daemon(&[]);
    s.install("alpha", false);
    s.publish("alpha", "2.0");
    wait_for_log(&d, "auto-refresh is off");
    let info = ctl_json(r, &["status", "--json"]);
    assert!(info.get("auto-refresh").is_none(), "{info}");
    assert!(text(&ctl(r, &["status"]).stdout).contains("auto-refresh:        off"));

    // Nothing happening cannot be waited for by an event: watch a bounded window, twice what
    // the auto-refresh test needs to see a refresh made, and check that none was.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert!(s.refresh_changes("alpha").is_empty());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s.snap("alpha")["revision"], "1");
    // The update is there to be had: a refresh by hand takes it.
    let out = ctl(r, &["refresh"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Refreshed alpha to 2\n");
}
