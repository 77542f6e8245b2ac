//! Filesystem and state-store faults injected for real: a small filesystem on a loop device
//! under the test's root holds the directory concerned, and the kernel makes it fail — an XFS
//! shut down (`xfs_io -x -c shutdown`: EIO for everything), a full ext4 (ENOSPC), an immutable
//! file or directory (`chattr +i`: EPERM), a read-only remount (EROFS); the state database
//! garbled, truncated, or left with a WAL by a SIGKILL; a downloaded blob changed on disk while
//! its refresh waits. Each test says what must happen (docs/failure-modes.md): nothing is lost,
//! the caller is told why in one line, and the same change works once the fault is gone.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use refreshd_tests::*;

/// A filesystem image on a loop device of its own, mounted at a directory under a test root.
/// Unmounted and detached on drop (declare it after the `Root`, before any `Daemon`).
struct LoopFs {
    dev: String,
    at: PathBuf,
    mounted: bool,
}

impl LoopFs {
    fn new(root: &Root, tag: &str, fstype: &str, mb: u64, at: &Path) -> LoopFs {
        let img = root.aux(&format!("{tag}.img"));
        fs::File::create(&img).unwrap().set_len(mb << 20).unwrap();
        let mut mkfs = match fstype {
            "xfs" => {
                let mut c = Command::new("mkfs.xfs");
                c.args(["-q", "-f"]);
                c
            }
            _ => {
                let mut c = Command::new("mkfs.ext4");
                c.args(["-q", "-F", "-m", "0"]);
                c
            }
        };
        let st = mkfs.arg(&img).stdout(Stdio::null()).status().unwrap();
        assert!(st.success(), "mkfs {fstype}");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {}", text(&out.stderr));
        fs::create_dir_all(at).unwrap();
        let mut l = LoopFs {
            dev: text(&out.stdout).trim().to_owned(),
            at: at.to_owned(),
            mounted: false,
        };
        l.mount();
        l
    }

    fn mount(&mut self) {
        let st = Command::new("mount")
            .arg(&self.dev)
            .arg(&self.at)
            .status()
            .unwrap();
        assert!(st.success(), "mount {} at {}", self.dev, self.at.display());
        self.mounted = true;
    }

    fn unmount(&mut self) {
        let out = Command::new("umount").arg(&self.at).output().unwrap();
        assert!(out.status.success(), "umount: {}", text(&out.stderr));
        self.mounted = false;
    }

    /// XFS's own fault injection: from now on every operation on it fails with EIO.
    fn shut_down(&self) {
        let out = Command::new("xfs_io")
            .args(["-x", "-c", "shutdown"])
            .arg(&self.at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "xfs_io shutdown: {}",
            text(&out.stderr)
        );
    }

    fn remount(&self, opt: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.at)
            .status()
            .unwrap();
        assert!(st.success(), "remount {opt}");
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.at)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.at).status();
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// `chattr +i` on a path, undone on drop (or the root could not be deleted).
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: &Path) -> Option<Immutable> {
        let st = Command::new("chattr").arg("+i").arg(p).status().ok()?;
        st.success().then(|| Immutable(p.to_owned()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

fn prerequisites(programs: &[(&str, &str)]) -> bool {
    let mut all = vec![("losetup", "util-linux"), ("chattr", "e2fsprogs")];
    all.extend_from_slice(programs);
    if !root_with("loop-mounted filesystems", &all) {
        return false;
    }
    if !Path::new("/dev/loop-control").exists() {
        skip("no loop devices (/dev/loop-control)");
        return false;
    }
    true
}

const XFS: &[(&str, &str)] = &[("mkfs.xfs", "xfsprogs"), ("xfs_io", "xfsprogs")];
const EXT4: &[(&str, &str)] = &[("mkfs.ext4", "e2fsprogs")];

fn opts<'a>(store: &Path, failpoints: Option<&'a str>, extract: bool) -> DaemonOpts<'a> {
    let mut extra_args = vec![
        "--insecure-unsigned-store".into(),
        "--store".into(),
        store.to_str().unwrap().into(),
    ];
    if extract {
        // Payloads unpacked, not loop-mounted from blobs/: the filesystem holding blobs/ can
        // then be unmounted and mounted again under a running daemon.
        extra_args.push("--extract".into());
    }
    DaemonOpts {
        failpoints,
        extra_args,
        ..Default::default()
    }
}

/// A hello snap with `payload` incompressible bytes, so its download takes many chunks.
fn payload_snap(out: &Path, name: &str, version: &str, payload: usize) {
    let src = SnapSrc::new(&format!(
        "name: {name}\nversion: '{version}'\nsummary: Says hello\napps:\n  {name}:\n    command: bin/hello\n"
    ))
    .file(
        "bin/hello",
        "#!/bin/sh\necho \"hello from $SNAP_NAME $SNAP_REVISION\"\n",
        0o755,
    );
    let bytes = noise(payload, 0x9e3779b97f4a7c15u64 ^ version.len() as u64);
    fs::write(src.dir.path().join("payload"), bytes).unwrap();
    src.build(out);
}

/// Publishes `NAME` version `version` to the directory store.
fn publish(root: &Root, store: &Path, name: &str, version: &str, payload: usize) {
    let blob = root.aux(&format!("{name}-{version}.snap"));
    payload_snap(&blob, name, version, payload);
    refreshd_store::publish(store, &blob, "stable").unwrap();
}

fn new_store(root: &Root) -> PathBuf {
    let store = root.aux("store");
    fs::create_dir(&store).unwrap();
    store
}

/// The change's tasks, status and error.
fn change(r: &Path, id: u64) -> Value {
    ctl_json(r, &["tasks", &id.to_string(), "--json"])
}

fn current(r: &Path, name: &str) -> PathBuf {
    fs::read_link(r.join(format!("snap/{name}/current"))).unwrap()
}

/// What the snap's launcher prints: the revision that runs.
fn launch(r: &Path, name: &str) -> String {
    let out = Command::new(r.join("snap/bin").join(name))
        .output()
        .unwrap();
    format!("{}{}", text(&out.stdout).trim(), text(&out.stderr).trim())
}

/// Polls for a file a failpoint creates (no event to wait on), with a deadline.
fn wait_file(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn reached(go: &Path) -> PathBuf {
    PathBuf::from(format!("{}.reached", go.display()))
}

/// The daemon answers requests (and is still the same process).
fn answers(r: &Path, d: &Daemon) {
    let out = ctl(r, &["changes", "--all", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(alive(d), "refreshd died");
}

fn integrity(r: &Path) -> String {
    refreshd_state::State::open(&r.join("var/lib/refreshd/state.db"))
        .unwrap()
        .integrity_check()
        .unwrap()
}

/// The line of the change's error (one line per failed task) starting with `summary`.
fn failed_line(ch: &Value, summary: &str) -> String {
    let err = ch["error"].as_str().unwrap_or_default();
    let line = err
        .lines()
        .find(|l| l.starts_with(summary))
        .unwrap_or_else(|| panic!("no error of {summary:?} in {err:?}"))
        .to_owned();
    assert!(line.matches("(os error").count() <= 1, "said once: {line}");
    line
}

fn one_line(s: &str) -> bool {
    s.trim().lines().count() == 1
}

fn figures(n: u32) {
    println!("figures: fs-faults: injected={n} handled={n}");
}

/// A refresh that runs, waits for it and returns the change.
fn refresh_done(r: &Path, name: &str) -> Value {
    let out = ctl(r, &["refresh", name]);
    let ch = change(r, newest_change(r));
    assert!(out.status.success(), "{}: {ch}", text(&out.stderr));
    assert_eq!(ch["status"], "Done", "{ch}");
    ch
}

/// A scratch root named after `tag`, with an empty directory store.
fn root_with_store(tag: &str) -> (Root, PathBuf) {
    let root = Root::new(tag);
    let store = new_store(&root);
    (root, store)
}

/// Starts a daemon on `store`, installs `name` from it and stops the daemon.
fn install_from(r: &Path, store: &Path, name: &str, extract: bool) {
    let _d = Daemon::start_with(r, opts(store, None, extract));
    let out = ctl(r, &["install", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `name` 1.0 and 2.0 (tracking snaps) published to `store`, 1.0 installed.
fn tracking_installed(root: &Root, store: &Path, name: &str) {
    for v in ["1.0", "2.0"] {
        let blob = root.aux(&format!("{name}-{v}.snap"));
        tracking_snap(&blob, name, v, false);
        refreshd_store::publish(store, &blob, "stable").unwrap();
        if v == "1.0" {
            install_from(root.path(), store, name, false);
        }
    }
}

/// `name` 1.0 (a hello snap) installed from a file by the daemon returned.
fn hello_installed(root: &Root, name: &str) -> Daemon {
    let r = root.path();
    let file = root.aux(&format!("{name}.snap"));
    hello_snap(&file, name, "1.0");
    let d = Daemon::start(r);
    let out = ctl(r, &["install", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    d
}

/// Starts a daemon whose failpoint `point` pauses the work, asks it to refresh `name` and
/// returns once the refresh has reached the pause: the daemon, and the file that lets it go on.
fn refresh_paused_at(
    root: &Root,
    store: &Path,
    name: &str,
    point: &str,
    extract: bool,
) -> (Daemon, PathBuf) {
    let r = root.path();
    let go = root.aux("go");
    let fp = format!("pause:{point}={}", go.display());
    let d = Daemon::start_with(r, opts(store, Some(&fp), extract));
    let out = ctl(r, &["refresh", name, "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_file(&reached(&go));
    (d, go)
}

/// Launches `NAME.hold` and asks for a refresh of `name`; returns once the refresh waits for
/// the app.
fn refresh_waiting_for_app(r: &Path, name: &str) -> (App, u64) {
    let app = App::launch(r, &format!("{name}.hold"));
    let out = ctl(r, &["refresh", name, "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = newest_change(r);
    let ch = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(task(&ch, "wait-for-apps")["status"], "Wait", "{ch}");
    (app, id)
}

/// Follows change `id` to its end: it failed, in its task `kind`. Returns the change and its
/// error line of `summary`; `what` labels the printed error.
fn failed_in(r: &Path, id: u64, kind: &str, summary: &str, what: &str) -> (Value, String) {
    let ch = watch_until_ready(r, id);
    assert_eq!(ch["status"], "Error", "{what}: {ch}");
    assert_eq!(task(&ch, kind)["status"], "Error", "{ch}");
    println!("{what}: {}", ch["error"]);
    let err = failed_line(&ch, summary);
    (ch, err)
}

/// `rev` is current, and it is what the launcher runs.
fn runs(r: &Path, name: &str, rev: &str) {
    assert_eq!(current(r, name), Path::new(rev));
    assert_eq!(launch(r, name), format!("hello from {name} {rev}"));
}

fn not_inhibited(r: &Path, name: &str) {
    assert!(!r
        .join(format!("run/refreshd/runctl/snap.{name}.inhibited"))
        .exists());
}

/// A file of the revision's data.
fn precious(r: &Path, name: &str, rev: &str) -> PathBuf {
    r.join(format!("var/snap/{name}/{rev}/precious"))
}

fn alive(d: &Daemon) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid()), None).is_ok()
}

/// What the data file `f{i}` holds.
fn numbered(i: u32) -> String {
    format!("{i}").repeat(500)
}

/// The data files `f0`..`f99` in `dir` hold what was written.
fn files_intact(dir: &Path) {
    for i in 0..100 {
        assert_eq!(
            fs::read_to_string(dir.join(format!("f{i}"))).unwrap(),
            numbered(i)
        );
    }
}

/// EIO under the snap's data directory in the middle of copy-data (the XFS holding
/// `var/snap/NAME` is shut down): the refresh fails naming the path and the I/O error, the old
/// revision stays current and launches, the daemon answers; once the filesystem is mounted again
/// (its log replayed) the old data is all there and the refresh succeeds.
#[test]
fn eio_in_data_dir_during_copy_data() {
    if !prerequisites(XFS) {
        return;
    }
    let (root, store) = root_with_store("fsf-eio-data");
    let r = root.path();
    let name = "fsfdata";
    let mut xfs = LoopFs::new(&root, "data", "xfs", 320, &r.join("var/snap").join(name));
    publish(&root, &store, name, "1.0", 0);
    install_from(r, &store, name, false);
    let data = r.join(format!("var/snap/{name}/1"));
    for i in 0..100 {
        fs::write(data.join(format!("f{i}")), numbered(i)).unwrap();
    }
    nix::unistd::sync();
    publish(&root, &store, name, "2.0", 0);
    let (d, go) = refresh_paused_at(&root, &store, name, "mid-copy:setup-data", false);
    xfs.shut_down();
    fs::write(&go, "").unwrap();
    let (_, err) = failed_in(r, newest_change(r), "setup-data", "Set up data", "eio data");
    assert!(
        err.contains(&format!("var/snap/{name}")),
        "names the path: {err}"
    );
    assert!(err.contains("Input/output error"), "says EIO: {err}");
    runs(r, name, "1");
    not_inhibited(r, name);
    answers(r, &d);

    // The filesystem back: unmounted (nothing of refreshd holds it) and mounted again.
    xfs.unmount();
    xfs.mount();
    files_intact(&data);
    refresh_done(r, name);
    runs(r, name, "2");
    let new = r.join(format!("var/snap/{name}/2"));
    files_intact(&new);
    drop(d);
    assert_eq!(integrity(r), "ok");
    figures(1);
}

/// EIO in `var/lib/refreshd/blobs` in the middle of a download: the download fails naming the
/// partial file and the I/O error, nothing else changed, the daemon answers; once the
/// filesystem is back the same refresh downloads and completes.
#[test]
fn eio_in_blobs_dir_during_download() {
    if !prerequisites(XFS) {
        return;
    }
    let (root, store) = root_with_store("fsf-eio-blobs");
    let r = root.path();
    let name = "fsfblobs";
    let mut xfs = LoopFs::new(
        &root,
        "blobs",
        "xfs",
        320,
        &r.join("var/lib/refreshd/blobs"),
    );
    publish(&root, &store, name, "1.0", 0);
    install_from(r, &store, name, true);
    publish(&root, &store, name, "2.0", 2 << 20);
    let (d, go) = refresh_paused_at(&root, &store, name, "mid-download", true);
    xfs.shut_down();
    fs::write(&go, "").unwrap();
    let (ch, err) = failed_in(r, newest_change(r), "download", "Download", "eio blobs");
    assert!(
        err.contains(&format!("blobs/{name}_2.snap")),
        "names the file: {err}"
    );
    assert!(err.contains("Input/output error"), "says EIO: {err}");
    assert_eq!(
        task(&ch, "prepare")["status"],
        "Hold",
        "nothing after it ran"
    );
    runs(r, name, "1");
    answers(r, &d);

    xfs.unmount();
    xfs.mount();
    refresh_done(r, name);
    runs(r, name, "2");
    let left: Vec<_> = fs::read_dir(r.join("var/lib/refreshd/blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(d);
    assert_eq!(integrity(r), "ok");
    figures(1);
}

/// EIO under the state database while a change runs (the XFS holding `var/lib/refreshd` is
/// shut down during copy-data): the daemon stays up and answers every request with one line
/// saying the state database cannot be used; once stopped, the filesystem mounted again (XFS
/// replays its log) and the daemon started, state.db passes integrity_check and the change
/// carries on from its last commit to Done.
#[test]
fn eio_in_state_dir_while_a_change_runs() {
    if !prerequisites(XFS) {
        return;
    }
    let (root, store) = root_with_store("fsf-eio-state");
    let r = root.path();
    let name = "fsfstate";
    let mut xfs = LoopFs::new(&root, "state", "xfs", 320, &r.join("var/lib/refreshd"));
    publish(&root, &store, name, "1.0", 0);
    install_from(r, &store, name, true);
    fs::write(precious(r, name, "1"), "data").unwrap();
    publish(&root, &store, name, "2.0", 0);
    let (d, go) = refresh_paused_at(&root, &store, name, "mid-copy:setup-data", true);
    let id = newest_change(r);
    xfs.shut_down();
    fs::write(&go, "").unwrap();
    // The daemon is up; what must be written says it cannot be, in one line. (Reads may still
    // be answered from what SQLite has cached.)
    let id_s = id.to_string();
    for args in [&["abort", &id_s][..], &["refresh", "--hold", name]] {
        let out = ctl(r, args);
        let err = text(&out.stderr);
        println!("eio state: refreshctl {args:?}: {err}");
        assert!(
            !out.status.success(),
            "{args:?} succeeded on a dead state dir"
        );
        assert!(one_line(&err), "{err}");
        assert!(err.contains("state.db"), "names the file: {err}");
        assert!(err.contains("failing"), "says why: {err}");
    }
    let out = ctl(r, &["list"]);
    assert!(
        out.status.success() || one_line(&text(&out.stderr)),
        "{}",
        text(&out.stderr)
    );
    assert!(alive(&d), "refreshd died");
    let st = d.stop();
    assert!(st.success(), "an orderly stop: {st:?}");

    xfs.unmount();
    xfs.mount();
    assert_eq!(integrity(r), "ok");
    let d = Daemon::start_with(r, opts(&store, None, true));
    let ch = watch_until_ready(r, id);
    assert_eq!(ch["status"], "Done", "the change carries on: {ch}");
    runs(r, name, "2");
    assert_eq!(fs::read_to_string(precious(r, name, "2")).unwrap(), "data");
    drop(d);
    assert_eq!(integrity(r), "ok");
    figures(1);
}

/// Fills a filesystem: one file grown until ENOSPC. Returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let p = dir.join("filler");
    let mut f = fs::File::create(&p).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    let _ = f.sync_all();
    p
}

/// ENOSPC in `var/lib/refreshd/blobs` during a download: the change fails in one line naming
/// the partial file and the lack of space, its partial is removed by the undo (the space comes
/// back), the old revision stays; once space is freed the same refresh succeeds.
#[test]
fn enospc_in_blobs_dir_during_download() {
    if !prerequisites(EXT4) {
        return;
    }
    let (root, store) = root_with_store("fsf-enospc-blobs");
    let r = root.path();
    let name = "fsffull";
    let blobs = r.join("var/lib/refreshd/blobs");
    let _ext4 = LoopFs::new(&root, "blobs", "ext4", 16, &blobs);
    publish(&root, &store, name, "1.0", 0);
    let _d = Daemon::start_with(r, opts(&store, None, true));
    let out = ctl(r, &["install", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    publish(&root, &store, name, "2.0", 4 << 20);
    let filler = fill(&blobs);
    // Leave room for part of the download, not all of it.
    let len = fs::metadata(&filler).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len - (2 << 20))
        .unwrap();

    let out = ctl(r, &["refresh", name]);
    assert!(!out.status.success());
    let ch = change(r, newest_change(r));
    assert_eq!(task(&ch, "download")["status"], "Error", "{ch}");
    println!("enospc blobs: {}", ch["error"]);
    let err = failed_line(&ch, "Download");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(&format!("{name}_2.snap.partial")), "{err}");
    assert!(
        !blobs.join(format!("{name}_2.snap.partial")).exists(),
        "the partial is removed by the undo"
    );
    runs(r, name, "1");

    fs::remove_file(&filler).unwrap();
    refresh_done(r, name);
    runs(r, name, "2");
    figures(1);
}

/// ENOSPC under the state database: a request that must record something gets one line saying
/// the disk is full; reads still work, the daemon stays up, state.db is not damaged, and once
/// space is freed the same request works.
#[test]
fn enospc_in_state_dir() {
    if !prerequisites(EXT4) {
        return;
    }
    let (root, store) = root_with_store("fsf-enospc-state");
    let r = root.path();
    let name = "fsfstfull";
    let state = r.join("var/lib/refreshd");
    let _ext4 = LoopFs::new(&root, "state", "ext4", 16, &state);
    publish(&root, &store, name, "1.0", 0);
    let d = Daemon::start_with(r, opts(&store, None, true));
    let out = ctl(r, &["install", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    publish(&root, &store, name, "2.0", 0);
    let filler = fill(&state);

    // SQLite writes into the space its write-ahead log already has; the first write that needs
    // more fails.
    let mut tries = 0;
    let err = loop {
        tries += 1;
        assert!(tries < 3000, "every write succeeded on a full disk");
        let flag = if tries % 2 == 1 { "--hold" } else { "--unhold" };
        let out = ctl(r, &["refresh", flag, name]);
        if !out.status.success() {
            break text(&out.stderr);
        }
    };
    println!("enospc state: after {tries} writes: {err}");
    assert!(one_line(&err), "{err}");
    assert!(err.contains("state.db"), "names the file: {err}");
    assert!(err.contains("full"), "says why: {err}");
    let out = ctl(r, &["refresh", name]);
    assert!(!out.status.success(), "a refresh recorded on a full disk");
    assert!(one_line(&text(&out.stderr)), "{}", text(&out.stderr));
    let list = ctl(r, &["list"]);
    assert!(list.status.success(), "reads work: {}", text(&list.stderr));
    assert!(text(&list.stdout).contains(name));
    answers(r, &d);
    assert_eq!(current(r, name), Path::new("1"));

    fs::remove_file(&filler).unwrap();
    let out = ctl(r, &["refresh", "--unhold", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    refresh_done(r, name);
    assert_eq!(current(r, name), Path::new("2"));
    drop(d);
    assert_eq!(integrity(r), "ok");
    figures(1);
}

/// A file made immutable (`chattr +i`) in an old revision's data: the copy reads it, the refresh
/// completes, and the discard of that revision by the cleanup fails with EPERM — the refresh
/// stays done, the cleanup says what it left, and the next cleanup finishes it.
#[test]
fn immutable_file_in_old_data_keeps_the_refresh_and_cleanup_is_retried() {
    if !prerequisites(&[]) {
        return;
    }
    let root = Root::new("fsf-immutable");
    let r = root.path();
    let name = "fsfimm";
    let files: Vec<PathBuf> = (1..=4)
        .map(|i| {
            let p = root.aux(&format!("{name}_{i}.snap"));
            hello_snap(&p, name, &format!("{i}.0"));
            p
        })
        .collect();
    let install = |f: &Path| -> Value {
        let out = ctl(r, &["install", f.to_str().unwrap()]);
        let ch = change(r, newest_change(r));
        assert!(out.status.success(), "{}: {ch}", text(&out.stderr));
        assert_eq!(ch["status"], "Done", "{ch}");
        ch
    };
    let _d = Daemon::start(r);
    install(&files[0]);
    let locked = r.join(format!("var/snap/{name}/x1/locked"));
    fs::write(&locked, "cannot be removed").unwrap();
    let Some(guard) = Immutable::set(&locked) else {
        skip("chattr +i does not work on the test filesystem");
        return;
    };
    install(&files[1]);
    assert_eq!(
        fs::read_to_string(r.join(format!("var/snap/{name}/x2/locked"))).unwrap(),
        "cannot be removed",
        "copied"
    );
    let ch = install(&files[2]);
    let log = task_log(&ch, "cleanup").join("\n");
    println!("immutable: {log}");
    assert!(log.contains("left for the next cleanup"), "{log}");
    assert_eq!(log.matches("fsfimm/x1").count(), 1, "said once: {log}");
    runs(r, name, "x3");
    assert_eq!(fs::read_to_string(&locked).unwrap(), "cannot be removed");

    drop(guard);
    let ch = install(&files[3]);
    let log = task_log(&ch, "cleanup").join("\n");
    assert!(log.contains("discarded revision x1"), "{log}");
    assert!(!log.contains("left for the next cleanup"), "{log}");
    assert!(!r.join(format!("var/snap/{name}/x1")).exists());
    figures(1);
}

/// The snap's directory `snap/NAME` made immutable while a refresh copies its data: `link`
/// cannot make the new `current` (EPERM); the refresh is undone, the old revision stays current
/// and launches, and the error names the path.
#[test]
fn immutable_snap_dir_fails_link_and_is_undone() {
    if !prerequisites(&[]) {
        return;
    }
    let (root, store) = root_with_store("fsf-immutable-link");
    let r = root.path();
    let name = "fsflink";
    publish(&root, &store, name, "1.0", 0);
    install_from(r, &store, name, false);
    fs::write(precious(r, name, "1"), "data").unwrap();
    publish(&root, &store, name, "2.0", 0);
    let (d, go) = refresh_paused_at(&root, &store, name, "mid-copy:setup-data", false);
    let Some(guard) = Immutable::set(&r.join(format!("snap/{name}"))) else {
        skip("chattr +i does not work on the test filesystem");
        return;
    };
    fs::write(&go, "").unwrap();
    let ch = watch_until_ready(r, newest_change(r));
    assert_eq!(task(&ch, "link")["status"], "Error", "{ch}");
    println!("immutable link: {}", ch["error"]);
    let err = failed_line(&ch, "Make snap");
    assert!(err.contains(&format!("snap/{name}")), "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    runs(r, name, "1");
    assert_eq!(
        fs::read_link(r.join(format!("var/snap/{name}/current"))).unwrap(),
        Path::new("1")
    );
    not_inhibited(r, name);
    assert!(!r.join(format!("var/snap/{name}/2")).exists());
    answers(r, &d);

    drop(guard);
    refresh_done(r, name);
    assert_eq!(current(r, name), Path::new("2"));
    assert_eq!(fs::read_to_string(precious(r, name, "2")).unwrap(), "data");
    figures(1);
}

/// The data filesystem remounted read-only while a refresh waits for the app: setup-data fails
/// saying the filesystem is read-only, the refresh is undone (old revision current, the app
/// launches); remounted read-write, the refresh succeeds with the data carried over.
#[test]
fn read_only_data_fs_fails_setup_data_cleanly() {
    if !prerequisites(EXT4) {
        return;
    }
    let (root, store) = root_with_store("fsf-erofs");
    let r = root.path();
    let name = "fsfro";
    let ext4 = LoopFs::new(&root, "data", "ext4", 32, &r.join("var/snap").join(name));
    tracking_installed(&root, &store, name);
    fs::write(precious(r, name, "1"), "data").unwrap();
    let d = Daemon::start_with(r, opts(&store, None, false));
    let (app, id) = refresh_waiting_for_app(r, name);
    ext4.remount("ro");
    app.release();
    let (_, err) = failed_in(r, id, "setup-data", "Set up data", "erofs");
    assert!(err.contains("Read-only file system"), "{err}");
    runs(r, name, "1");
    not_inhibited(r, name);
    answers(r, &d);

    ext4.remount("rw");
    refresh_done(r, name);
    assert_eq!(current(r, name), Path::new("2"));
    assert_eq!(fs::read_to_string(precious(r, name, "2")).unwrap(), "data");
    let left: Vec<String> = snapshot(&r.join(format!("var/snap/{name}")), &[])
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.contains(".refreshd-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    figures(1);
}

/// Runs refreshd on `r` expecting it to refuse to start; returns its stderr. A daemon that does
/// start is killed at the deadline (and the caller's assertion fails).
fn refused(r: &Path) -> String {
    let mut child = Command::new(bin("refreshd"))
        .arg("--root")
        .arg(r)
        .env_remove("REFRESHD_FAILPOINTS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read as _;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(!st.success(), "refreshd exited 0: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("refreshd started on a damaged state database");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// state.db garbled (garbage over its pages) or truncated while the daemon is down: refreshd
/// refuses to start with one line naming the file and what to do, and leaves the file exactly
/// as it was (nothing overwritten, nothing deleted).
#[test]
fn damaged_state_db_refuses_start_and_is_left_alone() {
    if !prerequisites(&[]) {
        return;
    }
    let mut n = 0;
    for damage in ["garbage", "truncated"] {
        let root = Root::new("fsf-statedb");
        let r = root.path();
        drop(hello_installed(&root, "fsfdb"));
        let db = r.join("var/lib/refreshd/state.db");
        let mut bytes = fs::read(&db).unwrap();
        assert!(bytes.len() > 3 * 4096, "{}", bytes.len());
        match damage {
            "garbage" => {
                let len = bytes.len();
                for (i, b) in bytes[4096..len].iter_mut().enumerate() {
                    *b = (i * 31 + 7) as u8;
                }
            }
            _ => bytes.truncate(4096 + 1000),
        }
        fs::write(&db, &bytes).unwrap();
        let stderr = refused(r);
        // Log lines come first; the refusal is one line of its own.
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("refreshd: "))
            .collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        let err = lines[0];
        println!("state.db {damage}: {err}");
        assert!(
            err.contains(&db.display().to_string()),
            "names the file: {err}"
        );
        assert!(err.contains("backup"), "says what to do: {err}");
        assert_eq!(
            fs::read(&db).unwrap(),
            bytes,
            "{damage}: the file was changed"
        );
        n += 1;
    }
    figures(n);
}

/// A SIGKILL leaves the write-ahead log beside state.db with commits not yet copied into it:
/// the next start recovers them (the snap and its change are there) and the database is sound.
/// And the lock of the killed daemon dies with it: the next one starts at once.
#[test]
fn sigkill_leaves_wal_and_lock_and_both_recover() {
    if !prerequisites(&[]) {
        return;
    }
    let root = Root::new("fsf-wal");
    let r = root.path();
    let name = "fsfwal";
    let d = hello_installed(&root, name);
    let id = newest_change(r);
    assert!(killed_by_sigkill(d.kill()));
    let wal = r.join("var/lib/refreshd/state.db-wal");
    let wal_len = fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(wal_len > 0, "a SIGKILL leaves the WAL");
    let lock = r.join("run/refreshd/daemon.lock");
    assert!(lock.exists(), "the lock file stays; its lock does not");
    let started = Instant::now();
    let d = Daemon::start(r);
    println!(
        "wal: {wal_len} bytes recovered; next daemon up in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let list = ctl_json(r, &["list", "--json"]);
    assert!(list.to_string().contains(name), "{list}");
    assert_eq!(change(r, id)["status"], "Done");
    assert_eq!(launch(r, name), format!("hello from {name} x1"));
    drop(d);
    assert_eq!(integrity(r), "ok");
    figures(2);
}

/// A downloaded blob changed on disk while its refresh waits for an app (tampered with, or
/// truncated): when the app exits the refresh does not switch to it — wait-for-apps hashes the
/// blob again, the refresh is undone saying why, the old revision stays current; the next
/// refresh fetches the blob afresh and succeeds.
#[test]
fn blob_changed_while_waiting_is_refused() {
    if !prerequisites(&[]) {
        return;
    }
    let mut n = 0;
    for damage in ["tampered", "truncated"] {
        let (root, store) = root_with_store("fsf-blob");
        let r = root.path();
        let name = "fsfblob";
        tracking_installed(&root, &store, name);
        let d = Daemon::start_with(r, opts(&store, None, false));
        let (app, id) = refresh_waiting_for_app(r, name);
        let blob = r.join(format!("var/lib/refreshd/blobs/{name}_2.snap"));
        let mut bytes = fs::read(&blob).unwrap();
        match damage {
            "tampered" => {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0xff;
            }
            _ => bytes.truncate(bytes.len() / 2),
        }
        // In place, as a disk error or a hand would: the mounted revision reads this file.
        fs::OpenOptions::new()
            .write(true)
            .open(&blob)
            .unwrap()
            .set_len(bytes.len() as u64)
            .unwrap();
        {
            use std::os::unix::fs::FileExt as _;
            let f = fs::OpenOptions::new().write(true).open(&blob).unwrap();
            f.write_all_at(&bytes, 0).unwrap();
        }
        app.release();
        let what = format!("blob {damage}");
        let (_, err) = failed_in(r, id, "wait-for-apps", "Wait for the apps", &what);
        assert!(err.contains(&blob.display().to_string()), "{err}");
        assert!(err.contains("changed on disk"), "{err}");
        runs(r, name, "1");
        assert!(!blob.exists(), "the changed blob is removed by the undo");
        answers(r, &d);

        refresh_done(r, name);
        runs(r, name, "2");
        n += 1;
    }
    figures(n);
}
