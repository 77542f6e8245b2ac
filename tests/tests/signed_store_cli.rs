//! A signed store with refreshctl alone, as its operator and a machine's admin meet it: `store
//! init` prints the root to pin, `publish --keys` signs each revision, refreshd installs and
//! refreshes over HTTP (nginx on 127.0.0.1) through the pinned root, `store resign` and `store
//! rotate-key` keep it going, and `store migrate` converts a store made by plain `publish`.
//! refreshd refuses an unsigned store unless told, and then `refreshctl status` says so on
//! every call. The attacks a signed store stops are in signed_store.rs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use refreshd_tests::*;

// The store crate's nginx harness, shared rather than copied.
#[path = "../../store/tests/common/nginx.rs"]
mod nginx;

const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// refreshctl's store commands: files only, no daemon.
fn refreshctl(args: &[&str]) -> Output {
    Command::new(bin("refreshctl"))
        .args(args)
        .env_remove("REFRESHD_SOCKET")
        .output()
        .expect("run refreshctl")
}

/// Its stdout, after asserting that it succeeded and warned of nothing.
fn succeeded(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The one line of a command that failed with `code`.
fn refused(out: &Output, code: i32, what: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout {} stderr {err}",
        text(&out.stdout)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The root `store init` (or `migrate`) tells the operator to install on every machine, and the
/// sha256 it gives to compare.
fn printed_root(stdout: &str) -> (PathBuf, String) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Install "))
        .unwrap_or_else(|| panic!("no root to install in: {stdout}"));
    let (path, rest) = line
        .strip_prefix("Install ")
        .and_then(|l| l.split_once(" on every machine as /etc/refreshd/store-root.json (sha256 "))
        .unwrap_or_else(|| panic!("{line}"));
    let sha = rest.strip_suffix(").").unwrap_or_else(|| panic!("{line}"));
    (PathBuf::from(path), sha.to_owned())
}

/// What an admin does with that root: ROOT/etc/refreshd/store-root.json, where refreshd looks.
fn pin(r: &Path, root_file: &Path) -> PathBuf {
    let dest = r.join("etc/refreshd/store-root.json");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::copy(root_file, &dest).unwrap();
    dest
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The key files directly in `dir` (not `retired/`).
fn key_files(dir: &Path) -> Vec<PathBuf> {
    let mut keys: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    keys.sort();
    keys
}

fn no_key_under(store: &Path) {
    let inside: Vec<String> = snapshot(store, &[])
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.ends_with(".pk8"))
        .collect();
    assert!(inside.is_empty(), "keys inside the store: {inside:?}");
}

/// A build of snap `name` at `version`, beside the root.
fn build(root: &Root, name: &str, version: &str) -> PathBuf {
    let out = root.aux(&format!("{name}-{version}.snap"));
    tracking_snap(&out, name, version, false);
    out
}

fn current(r: &Path, name: &str) -> PathBuf {
    fs::read_link(r.join(format!("snap/{name}/current"))).unwrap()
}

/// The operator makes a store and publishes; the admin pins the printed root and installs and
/// refreshes over HTTP; re-signing and a rotated timestamp key change nothing for them.
#[test]
fn signed_store_from_init_to_refresh_over_http() {
    if !root_with(
        "refreshd installs snaps as root",
        &[("nginx", "nginx"), ("sha256sum", "coreutils")],
    ) {
        return;
    }
    let root = Root::new("signed-cli");
    let r = root.path();
    let store = root.aux("store");
    let keys = root.aux("keys");
    let (st, k) = (s(&store), s(&keys));

    // The operator, on the machine that holds the store.
    let said = succeeded(
        &refreshctl(&["store", "init", "--store", st, "--keys", k]),
        "store init",
    );
    let (root_file, sum) = printed_root(&said);
    assert_eq!(root_file, store.join("tuf/1.root.json"), "{said}");
    assert_eq!(sum, sha256(&root_file), "the sha256 printed is the root's");
    assert!(
        said.contains(&format!(
            "Keep the root key(s) {k}/root-*.pk8 offline: only the targets, snapshot and timestamp keys are needed to publish"
        )),
        "{said}"
    );
    assert_eq!(mode(&keys), 0o700, "the key directory is its owner's alone");
    let made = key_files(&keys);
    assert_eq!(made.len(), 4, "{made:?}");
    for role in ROLES {
        let n = made
            .iter()
            .filter(|p| {
                let f = p.file_name().unwrap().to_str().unwrap();
                f.starts_with(&format!("{role}-")) && f.ends_with(".pk8")
            })
            .count();
        assert_eq!(n, 1, "one {role} key: {made:?}");
        assert!(
            said.contains(&format!("  {role:<10} {k}/{role}-")),
            "{said}"
        );
    }
    for f in &made {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    no_key_under(&store);

    let name = "signedcli";
    let publish = |version: &str, rev: u32| {
        let snap = build(&root, name, version);
        let out = refreshctl(&["publish", "--store", st, "--keys", k, s(&snap)]);
        let said = succeeded(&out, "publish --keys");
        assert_eq!(
            said,
            format!(
                "Published {name} {version} as revision {rev} in channel stable of {st} (signed)\n"
            )
        );
    };
    publish("1.0", 1);

    // The admin, on a fresh machine: the root pinned where refreshd looks, no other option.
    let pinned = pin(r, &root_file);
    let Some(server) = nginx::Nginx::start(&store, "") else {
        skip("nginx not installed");
        return;
    };
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec!["--store".into(), server.url()],
            ..Default::default()
        },
    );
    let out = ctl(r, &["install", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("Installed {name} 1\n"));
    let served = server.access_log();
    for file in [
        "/tuf/timestamp.json",
        ".snapshot.json",
        "/blobs/signedcli_1.snap",
    ] {
        assert!(served.contains(file), "{file} was not read: {served}");
    }
    let out = ctl(r, &["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(&format!(
            "{} (signed, root {})\n",
            server.url(),
            pinned.display()
        )),
        "{}",
        text(&out.stdout)
    );
    let info = ctl_json(r, &["status", "--json"]);
    assert_eq!(info["store"]["url"], server.url(), "{info}");
    assert_eq!(info["store"]["signed"], true, "{info}");
    assert_eq!(info["store"]["root"], s(&pinned), "{info}");
    let st_name = ctl(r, &["status", name, "--json"]);
    assert!(st_name.status.success(), "{}", text(&st_name.stderr));
    assert!(
        text(&st_name.stderr).is_empty(),
        "{}",
        text(&st_name.stderr)
    );
    let v: Value = serde_json::from_slice(&st_name.stdout).unwrap();
    assert_eq!(v["warning"], Value::Null, "{v}");

    // A revision published once the first is installed reaches the machine.
    publish("2.0", 2);
    let out = ctl(r, &["refresh", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("Refreshed {name} to 2\n"));
    assert_eq!(current(r, name), Path::new("2"));

    // The daily re-signing: the timestamp only, its new version and expiry said.
    let said = succeeded(
        &refreshctl(&["store", "resign", "--store", st, "--keys", k]),
        "store resign",
    );
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "{said}");
    assert_eq!(lines[0], format!("Re-signed {st}:"));
    assert!(
        lines[1].starts_with("  timestamp  version ") && lines[1].ends_with(" (in 7d)"),
        "{said}"
    );

    // A timestamp key replaced: a new root version the machine reaches by itself.
    let old_ts: Vec<PathBuf> = key_files(&keys)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("timestamp-")
        })
        .collect();
    let said = succeeded(
        &refreshctl(&[
            "store",
            "rotate-key",
            "timestamp",
            "--store",
            st,
            "--keys",
            k,
        ]),
        "store rotate-key timestamp",
    );
    assert!(
        said.contains("\n  root       version 2, expires "),
        "{said}"
    );
    assert!(
        said.contains("Machines reach root version 2 by themselves at their next look-up: nothing to install."),
        "{said}"
    );
    assert!(store.join("tuf/2.root.json").is_file());
    let retired = keys.join("retired").join(old_ts[0].file_name().unwrap());
    assert!(retired.is_file(), "{said}");
    assert!(!old_ts[0].exists());
    assert_eq!(key_files(&keys).len(), 4);
    for f in key_files(&keys) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&keys), 0o700);
    no_key_under(&store);

    publish("3.0", 3);
    let out = ctl(r, &["refresh", name]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        d.log_text()
    );
    assert_eq!(text(&out.stdout), format!("Refreshed {name} to 3\n"));
    assert_eq!(current(r, name), Path::new("3"));
}

/// A store made by plain `publish` is converted in place: its snaps are signed, plain `publish`
/// is refused from then on, and a machine that pins the printed root installs from it.
#[test]
fn migrate_signs_a_store_made_by_plain_publish() {
    if !root_with(
        "refreshd installs snaps as root",
        &[("sha256sum", "coreutils")],
    ) {
        return;
    }
    let root = Root::new("signed-migrate");
    let r = root.path();
    let store = root.aux("store");
    let keys = root.aux("keys");
    let (st, k) = (s(&store), s(&keys));
    fs::create_dir(&store).unwrap();
    for (name, version) in [("migr", "1.0"), ("migr", "2.0"), ("migrb", "1.0")] {
        let snap = build(&root, name, version);
        succeeded(
            &refreshctl(&["publish", "--store", st, s(&snap)]),
            "plain publish",
        );
    }
    // Keys for a store that is not signed: refused, nothing written.
    let snap = build(&root, "migr", "3.0");
    let out = refreshctl(&["publish", "--store", st, "--keys", k, s(&snap)]);
    let err = refused(&out, 1, "publish --keys to an unsigned store");
    assert!(
        err.contains("is not a signed store: publish without --keys, or convert it first (refreshctl store migrate)"),
        "{err}"
    );
    assert!(!keys.exists() && !store.join("blobs/migr_3.snap").exists());

    let said = succeeded(
        &refreshctl(&["store", "migrate", "--store", st, "--keys", k]),
        "store migrate",
    );
    assert!(
        said.starts_with(&format!(
            "Signed the 2 snaps of {st} (migr, migrb), with new keys in {k}"
        )),
        "{said}"
    );
    assert!(said.contains("--insecure-unsigned-store"), "{said}");
    let (root_file, sum) = printed_root(&said);
    assert_eq!(root_file, store.join("tuf/1.root.json"));
    assert_eq!(sum, sha256(&root_file));
    assert_eq!(mode(&keys), 0o700);
    for f in key_files(&keys) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    no_key_under(&store);

    // From now on a publish is signed or refused.
    let out = refreshctl(&["publish", "--store", st, s(&snap)]);
    let err = refused(&out, 1, "plain publish to a signed store");
    assert!(
        err.contains(&format!(
            "{st} is a signed store: give the key directory that signs it (--keys KEYDIR)"
        )),
        "{err}"
    );
    for again in ["init", "migrate"] {
        let out = refreshctl(&["store", again, "--store", st, "--keys", s(&root.aux("k2"))]);
        let err = refused(&out, 1, again);
        assert!(err.contains("is a signed store already"), "{again}: {err}");
    }

    pin(r, &root_file);
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec!["--store".into(), st.into()],
            ..Default::default()
        },
    );
    let out = ctl(r, &["install", "migr"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Installed migr 2\n");
    let said = succeeded(
        &refreshctl(&["publish", "--store", st, "--keys", k, s(&snap)]),
        "publish --keys after migrate",
    );
    assert!(said.ends_with(" (signed)\n"), "{said}");
    let out = ctl(r, &["refresh", "migr"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Refreshed migr to 3\n");
}

/// refreshd on an unsigned store: refused without a pinned root, refused with a pinned root and
/// the insecure option together; run with the option, every `status` and `status NAME` says on
/// stderr that the store is not verified.
#[test]
fn unsigned_store_is_refused_unless_told_and_then_status_warns_every_time() {
    if !root_with("refreshd installs snaps as root", &[]) {
        return;
    }
    let root = Root::new("signed-insecure");
    let r = root.path();
    let store = root.aux("store");
    fs::create_dir(&store).unwrap();
    let st = s(&store);
    let snap = build(&root, "warned", "1.0");
    succeeded(
        &refreshctl(&["publish", "--store", st, s(&snap)]),
        "publish",
    );

    // `--tracking none`: refused before serving, so nothing of the machine's is touched.
    let refreshd = |extra: &[&str]| {
        Command::new(bin("refreshd"))
            .arg("--root")
            .arg(r)
            .args(["--tracking", "none", "--store", st])
            .args(extra)
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    };
    let out = refreshd(&[]);
    let err = refused(&out, 1, "refreshd on an unsigned store");
    assert!(
        err.starts_with(&format!(
            "refreshd: the store {st} is not trusted: no pinned store root at {}",
            r.join("etc/refreshd/store-root.json").display()
        )),
        "{err}"
    );
    assert!(
        err.contains("(for development only: --insecure-unsigned-store)"),
        "{err}"
    );
    let elsewhere = root.aux("root.json");
    let out = refreshd(&["--store-root", s(&elsewhere), "--insecure-unsigned-store"]);
    let err = refused(&out, 1, "--store-root with --insecure-unsigned-store");
    assert!(
        err.contains(&format!(
            "--store-root {} and --insecure-unsigned-store contradict each other: give one",
            elsewhere.display()
        )),
        "{err}"
    );

    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec![
                "--insecure-unsigned-store".into(),
                "--store".into(),
                st.into(),
            ],
            ..Default::default()
        },
    );
    let out = ctl(r, &["install", "warned"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let warning = format!(
        "warning: the store {st} is not verified (refreshd --insecure-unsigned-store): whoever serves it chooses what is installed; pin its root instead (docs/store.md)\n"
    );
    for args in [
        &["status"][..],
        &["status"],
        &["status", "--json"],
        &["status", "warned"],
        &["status", "warned"],
        &["status", "warned", "--json"],
    ] {
        let out = ctl(r, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr), warning, "{args:?}");
    }
    let info = ctl_json(r, &["status", "--json"]);
    assert_eq!(info["store"]["signed"], false, "{info}");
    assert!(info["store"].get("root").is_none(), "{info}");
    let status = ctl_json(r, &["status", "warned", "--json"]);
    assert_eq!(
        status["warning"]
            .as_str()
            .map(|w| format!("warning: {w}\n")),
        Some(warning.clone()),
        "{status}"
    );
    let out = ctl(r, &["status"]);
    assert!(
        text(&out.stdout).contains(&format!("{st} (NOT VERIFIED: --insecure-unsigned-store)\n")),
        "{}",
        text(&out.stdout)
    );
}

/// Keys never go where the store is served from, nor into a directory others can read; what is
/// refused is said in one line, with nothing made.
#[test]
fn key_directory_rules_and_refusals_in_one_line() {
    let root = Root::new("signed-keys");
    let store = root.aux("store");
    let st = s(&store);

    let inside = store.join("keys");
    let out = refreshctl(&["store", "init", "--store", st, "--keys", s(&inside)]);
    let err = refused(&out, 1, "keys inside the store");
    assert!(
        err.contains("is inside the store") && err.contains("keep them elsewhere"),
        "{err}"
    );
    assert!(!store.join("tuf").exists(), "a store was made");
    no_key_under(&store);

    let open = root.aux("open-keys");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
    let out = refreshctl(&["store", "init", "--store", st, "--keys", s(&open)]);
    let err = refused(&out, 1, "a key directory open to others");
    assert!(
        err.contains("is open to others (mode 755): chmod 700 it"),
        "{err}"
    );
    assert!(key_files(&open).is_empty());

    let keys = root.aux("keys");
    let out = refreshctl(&["store", "init", "--store", st, "--keys", s(&keys), "--json"]);
    let v: Value = serde_json::from_str(&succeeded(&out, "store init --json")).unwrap();
    assert_eq!(v["root"], s(&store.join("tuf/1.root.json")), "{v}");
    assert_eq!(v["root-sha256"].as_str().unwrap().len(), 64, "{v}");
    assert_eq!(v["key-files"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(v["snaps"], serde_json::json!([]), "{v}");
    assert_eq!(v["expires"]["timestamp"], "7d", "{v}");
    assert_eq!(mode(&keys), 0o700);

    // Usage errors: exit 2, before anything is signed.
    for args in [
        &[
            "store",
            "resign",
            "--store",
            st,
            "--keys",
            s(&keys),
            "--expires",
            "root=30d",
        ][..],
        &[
            "store",
            "resign",
            "--store",
            st,
            "--keys",
            s(&keys),
            "--expires",
            "soon=1d",
        ],
        &[
            "store",
            "init",
            "--store",
            st,
            "--keys",
            s(&keys),
            "--root-keys",
            "0",
        ],
        &[
            "store",
            "rotate-key",
            "everything",
            "--store",
            st,
            "--keys",
            s(&keys),
        ],
    ] {
        let out = refreshctl(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = refreshctl(&[
        "store",
        "resign",
        "--store",
        st,
        "--keys",
        s(&keys),
        "--expires",
        "root=30d",
    ]);
    assert_eq!(
        text(&out.stderr),
        "error: --expires root=30d is for a role this command does not sign: add --role root to re-sign it\n"
    );
    // A threshold no key count can meet: the store's own line.
    let out = refreshctl(&[
        "store",
        "init",
        "--store",
        s(&root.aux("store2")),
        "--keys",
        s(&root.aux("keys2")),
        "--targets-threshold",
        "2",
    ]);
    let err = refused(&out, 1, "a threshold above the keys");
    assert!(
        err.contains("the targets role needs a threshold of 1 or more and at least as many keys"),
        "{err}"
    );
    // A key directory without the timestamp key cannot re-sign.
    let empty = root.aux("no-keys");
    fs::create_dir(&empty).unwrap();
    fs::set_permissions(&empty, fs::Permissions::from_mode(0o700)).unwrap();
    let out = refreshctl(&["store", "resign", "--store", st, "--keys", s(&empty)]);
    let err = refused(&out, 1, "resign without the keys");
    assert!(err.contains("timestamp"), "{err}");
}
