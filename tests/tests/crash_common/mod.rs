//! What the crash tests share: the one invariant checker, the data trees it checks against, and
//! the seeded generator that makes them and picks the cut points (docs/crash-matrix.md).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use refreshd_tests::*;

/// xorshift64*: small, seeded, good enough to pick cut points and file contents.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Never zero (xorshift's fixed point), and nearby seeds start far apart.
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64().is_multiple_of(n)
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.range(0, v.len() as u64 - 1) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 32) as u8).collect()
    }
}

/// Every entry below a directory with its type, mode, size and checksum (the harness's
/// `snapshot`).
pub type Tree = Vec<(String, String)>;

/// A snap's data as it must be: the revision's system data directory, root's home data
/// directory of that revision (`None`: must not exist), and `common`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Data {
    pub system: Tree,
    pub home: Option<Tree>,
    pub common: Tree,
}

pub fn system_dir(root: &Path, snap: &str, rev: &str) -> PathBuf {
    root.join("var/snap").join(snap).join(rev)
}

/// `~/snap/NAME/REV` of root, whose home is `ROOT/root`.
pub fn home_dir(root: &Path, snap: &str, rev: &str) -> PathBuf {
    root.join("root/snap").join(snap).join(rev)
}

/// What the data of `rev` is now.
pub fn data_now(root: &Path, snap: &str, rev: &str) -> Data {
    let home = home_dir(root, snap, rev);
    Data {
        system: snapshot(&system_dir(root, snap, rev), &[]),
        home: home.is_dir().then(|| snapshot(&home, &[])),
        common: snapshot(&root.join("var/snap").join(snap).join("common"), &[]),
    }
}

/// Fills `dir` (made if missing) with `files` files of random sizes in a nested tree (up to four
/// levels), plus an empty directory, a private file and a symlink: a data directory worth
/// cutting a copy of in the middle.
pub fn fill(dir: &Path, rng: &mut Rng, files: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        let depth = rng.range(0, 3);
        let mut p = dir.to_owned();
        for d in 0..depth {
            p.push(format!("d{}", rng.range(0, 2) + 3 * d));
        }
        fs::create_dir_all(&p).unwrap();
        let size = rng.range(0, 6000) as usize;
        fs::write(p.join(format!("f{i}")), rng.bytes(size)).unwrap();
    }
    fs::create_dir_all(dir.join("empty/dir")).unwrap();
    let private = dir.join("private");
    fs::write(&private, rng.bytes(100)).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    let _ = fs::remove_file(dir.join("link"));
    std::os::unix::fs::symlink("private", dir.join("link")).unwrap();
}

/// Changes a data directory the way an app does between refreshes: rewrites a file (same
/// size: only its times and contents tell), adds one, and deletes one.
pub fn mutate(dir: &Path, rng: &mut Rng, tag: &str) {
    let files: Vec<String> = snapshot(dir, &[])
        .into_iter()
        .filter(|(p, k)| k.starts_with("file ") && p != "private")
        .map(|(p, _)| p)
        .collect();
    if !files.is_empty() {
        let f = dir.join(rng.pick(&files));
        let len = fs::metadata(&f).unwrap().len() as usize;
        fs::write(&f, rng.bytes(len)).unwrap();
    }
    if files.len() > 2 {
        let gone = dir.join(rng.pick(&files));
        let _ = fs::remove_file(gone);
    }
    let size = rng.range(1, 3000) as usize;
    fs::write(dir.join(format!("new-{tag}")), rng.bytes(size)).unwrap();
}

/// The state a snap must be in once no change of it is running.
pub enum Want<'a> {
    Installed {
        /// The revision `current` must name, when the test knows it (a file install's `xN`
        /// is the daemon's to choose).
        rev: Option<&'a str>,
        /// The tree the revision was built from (`SnapSrc`): the payload must match it.
        payload: &'a Path,
        data: &'a Data,
    },
    Removed,
}

/// The invariants after a change of `snap` is ready (Done, or Error with everything undone),
/// with its daemon running:
///
/// - installed: `current` of payload and data name the same revision, whose payload matches
///   the tree it was built from, file by file, and whose data (system, root's home, common)
///   matches the expected trees by checksum; its blob is there; the state records it as
///   current; the launcher runs it and prints its revision;
/// - removed: nothing of the snap is left (payload, mounts, data, home data, launchers,
///   launch descriptions, blobs, state);
/// - always: no temporary, staging, partial or upload file anywhere under the root; no
///   inhibition marker; no change still in progress; no logind inhibitor left by refreshd
///   (where logind is reachable); `PRAGMA integrity_check` of state.db says ok.
///
/// Returns what is wrong, so the caller can say which seed and cut led there.
pub fn check(root: &Path, snap: &str, want: &Want) -> Result<(), String> {
    let mut bad: Vec<String> = vec![];
    let list = ctl(root, &["list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap_or(Value::Null);
    let listed = list
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == snap))
        .cloned();
    match want {
        Want::Installed { rev, payload, data } => {
            match installed(root, snap, *rev, payload, data, listed.as_ref()) {
                Ok(()) => {}
                Err(e) => bad.push(e),
            }
        }
        Want::Removed => bad.extend(removed(root, snap, listed.as_ref())),
    }
    let left = leftovers(root);
    if !left.is_empty() {
        bad.push(format!("temporaries left behind: {left:?}"));
    }
    let marker = root.join(format!("run/refreshd/runctl/snap.{snap}.inhibited"));
    if marker.exists() {
        bad.push(format!(
            "inhibition marker left with no change in its critical section: {}",
            fs::read_to_string(&marker).unwrap_or_default().trim()
        ));
    }
    let running = ctl(root, &["changes", "--json"]);
    let running: Value = serde_json::from_slice(&running.stdout).unwrap_or(Value::Null);
    if running.as_array().is_none_or(|a| !a.is_empty()) {
        bad.push(format!("changes still in progress: {running}"));
    }
    if let Some(l) = logind_inhibitors() {
        if l.contains("refreshd") {
            bad.push(format!("a logind inhibitor of refreshd is left: {l}"));
        }
    }
    match refreshd_state::State::open(&root.join("var/lib/refreshd/state.db"))
        .map_err(|e| e.to_string())
        .and_then(|db| db.integrity_check().map_err(|e| e.to_string()))
    {
        Ok(s) if s == "ok" => {}
        other => bad.push(format!("state.db integrity_check: {other:?}")),
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n"))
    }
}

fn installed(
    root: &Path,
    snap: &str,
    want_rev: Option<&str>,
    payload: &Path,
    data: &Data,
    listed: Option<&Value>,
) -> Result<(), String> {
    let link = |p: PathBuf| {
        fs::read_link(&p)
            .map(|r| r.to_string_lossy().into_owned())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let rev = link(root.join("snap").join(snap).join("current"))?;
    let data_rev = link(root.join("var/snap").join(snap).join("current"))?;
    if data_rev != rev {
        return Err(format!(
            "payload current -> {rev} but data current -> {data_rev}"
        ));
    }
    if let Some(w) = want_rev {
        if w != rev {
            return Err(format!("current -> {rev}, expected {w}"));
        }
    }
    let got = snapshot(&root.join("snap").join(snap).join(&rev), &[]);
    diff("payload", &got, &snapshot(payload, &[]))?;
    let sys = system_dir(root, snap, &rev);
    if !sys.is_dir() {
        return Err(format!("{} is missing", sys.display()));
    }
    diff("system data", &snapshot(&sys, &[]), &data.system)?;
    let home = home_dir(root, snap, &rev);
    match &data.home {
        Some(t) if home.is_dir() => diff("home data", &snapshot(&home, &[]), t)?,
        Some(_) => return Err(format!("{} is missing", home.display())),
        None if home.exists() => return Err(format!("{} should not exist", home.display())),
        None => {}
    }
    let common = root.join("var/snap").join(snap).join("common");
    diff("common data", &snapshot(&common, &[]), &data.common)?;
    let blob = root.join(format!("var/lib/refreshd/blobs/{snap}_{rev}.snap"));
    if !blob.is_file() {
        return Err(format!("{} is missing", blob.display()));
    }
    match listed {
        Some(s) if s["revision"] == rev.as_str() => {}
        other => return Err(format!("the state says {other:?}, current -> {rev}")),
    }
    let out = Command::new(root.join("snap/bin").join(snap))
        .output()
        .map_err(|e| format!("launcher: {e}"))?;
    let said = text(&out.stdout);
    if said.trim() != format!("hello from {snap} {rev}") {
        return Err(format!(
            "the launcher said {said:?} ({}), expected revision {rev}",
            text(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn removed(root: &Path, snap: &str, listed: Option<&Value>) -> Vec<String> {
    let mut bad = vec![];
    for p in [
        format!("snap/{snap}"),
        format!("var/snap/{snap}"),
        format!("root/snap/{snap}"),
        format!("snap/bin/{snap}"),
        format!("var/lib/refreshd/launch/{snap}"),
    ] {
        if fs::symlink_metadata(root.join(&p)).is_ok() {
            bad.push(format!("{p} left after the snap is gone"));
        }
    }
    for dir in ["snap/bin", "var/lib/refreshd/blobs"] {
        for e in fs::read_dir(root.join(dir)).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("{snap}.")) || n.starts_with(&format!("{snap}_")) {
                bad.push(format!("{dir}/{n} left after the snap is gone"));
            }
        }
    }
    let mounts = refreshd_snap::mounts_under(&root.join("snap")).unwrap_or_default();
    if !mounts.is_empty() {
        bad.push(format!("mounts left: {mounts:?}"));
    }
    if let Some(s) = listed {
        bad.push(format!("the state still lists it: {s}"));
    }
    bad
}

/// Compares two trees; on a difference says which entries differ (a few of them).
pub fn diff(what: &str, got: &Tree, want: &Tree) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let missing: Vec<_> = want.iter().filter(|e| !got.contains(e)).take(5).collect();
    let extra: Vec<_> = got.iter().filter(|e| !want.contains(e)).take(5).collect();
    Err(format!(
        "{what} differs from what it must be ({} entries, expected {}): missing or different {missing:?}; unexpected {extra:?}",
        got.len(),
        want.len()
    ))
}

/// Paths under `root` that only an unfinished operation may leave: refreshd's temporaries
/// (`.refreshd-tmp`), pre-copy staging directories (`.refreshd-staging`), partial downloads
/// (`.partial`) and uploads. Does not descend into the read-only payload mounts.
pub fn leftovers(root: &Path) -> Vec<String> {
    let mounts = refreshd_snap::mounts_under(&root.join("snap")).unwrap_or_default();
    let mut out = vec![];
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if name.contains(".refreshd-tmp")
                || name.contains(".refreshd-staging")
                || name.ends_with(".partial")
                || rel.starts_with("var/lib/refreshd/uploads/")
            {
                out.push(rel);
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) && !mounts.contains(&p) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// logind's inhibitors, where logind is reachable (`systemd-inhibit --list`). refreshd takes a
/// delay inhibitor only on the root `/` and holds it as a descriptor, so its death releases it;
/// on a scratch root this finds nothing, and it says so only where it can look.
fn logind_inhibitors() -> Option<String> {
    let out = Command::new("systemd-inhibit")
        .args(["--list", "--no-pager", "--no-legend"])
        .output()
        .ok()?;
    out.status.success().then(|| text(&out.stdout))
}

/// The id of the newest change, if any.
pub fn newest_change_id(root: &Path) -> Option<u64> {
    let all = ctl_json(root, &["changes", "--all", "--json"]);
    all.as_array()?
        .iter()
        .filter_map(|c| c["id"].as_u64())
        .max()
}

/// The one change of `kind` in the root.
pub fn the_change(root: &Path, kind: &str) -> u64 {
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

/// The kinds of a change's tasks, in order.
pub fn task_kinds(change: &Value) -> Vec<String> {
    change["tasks"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Daemon options with a store.
pub fn store_opts<'a>(store: &str, failpoints: Option<&'a str>) -> DaemonOpts<'a> {
    DaemonOpts {
        failpoints,
        extra_args: vec![
            "--insecure-unsigned-store".into(),
            "--store".into(),
            store.into(),
        ],
        ..Default::default()
    }
}

/// The source tree of a small test snap `name` at `version`: an app that prints its revision,
/// and a few nested payload files that say which version they belong to.
pub fn snap_src(name: &str, version: &str) -> SnapSrc {
    SnapSrc::new(&format!(
        "name: {name}\nversion: '{version}'\nsummary: Crash test\napps:\n  {name}:\n    command: bin/hello\n"
    ))
    .file(
        "bin/hello",
        "#!/bin/sh\necho \"hello from $SNAP_NAME $SNAP_REVISION\"\n",
        0o755,
    )
    .file("share/version", version, 0o644)
    .file("lib/a/b/deep", &format!("{name} {version}\n"), 0o644)
}
