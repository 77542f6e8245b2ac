//! Harness for the integration tests: scratch roots, real daemons, real snaps, real users.
//!
//! Everything a test makes is owned by a guard that undoes it on drop — daemons are stopped,
//! mounts under the scratch root unmounted, users deleted — even when the test fails.
pub mod installed;
pub mod safe_agent;
pub mod store;
pub mod systemd;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub use serde_json::Value;

/// Where cargo put the binaries: next to the directory holding this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Prints why a test is skipped, and records it where the test command counts skips.
pub fn skip(why: &str) {
    println!("SKIP: {why}");
    if let Some(p) = std::env::var_os("REFRESHD_TEST_SKIPS") {
        let test = std::thread::current().name().unwrap_or("?").to_owned();
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(p) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// The usual prerequisites of a test that builds snaps as root: mksquashfs, root (`why` says
/// what root is for) and each `(program, Debian package)`. False, with a skip saying what is
/// missing, when one is not there.
pub fn root_with(why: &str, programs: &[(&str, &str)]) -> bool {
    if !mksquashfs_available() {
        skip("mksquashfs not installed (squashfs-tools)");
        return false;
    }
    if !is_root() {
        skip(&format!("needs root: {why}"));
        return false;
    }
    for (program, package) in programs {
        if find_program(program).is_none() {
            skip(&format!("{program} not installed ({package})"));
            return false;
        }
    }
    true
}

/// A scratch root directory (`DIR/root`) with room beside it for the test's own files (logs,
/// snap files). Unmounts whatever is mounted below it before deleting it.
pub struct Root {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
}

impl Root {
    pub fn new(tag: &str) -> Root {
        let dir = tempfile::Builder::new()
            .prefix(&format!("refreshd-test-{tag}-"))
            .tempdir()
            .expect("tempdir");
        // Unprivileged test users must be able to reach the socket and the launchers.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        Root {
            dir: Some(dir),
            root,
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A path beside the root, for the test's own files.
    pub fn aux(&self, name: &str) -> PathBuf {
        self.dir.as_ref().unwrap().path().join(name)
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        remove_cgroups(&self.root);
        unmount_all_under(self.path());
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

/// The cgroup hierarchies' mount points: (v1 freezer, cgroup2).
pub fn cgroup_mounts() -> (Option<PathBuf>, Option<PathBuf>) {
    let text = fs::read("/proc/self/mountinfo").unwrap_or_default();
    let m = refreshd_runctl::cgroup_mounts(&text);
    let path = |raw: &[u8]| {
        let mut v = vec![];
        refreshd_runctl::unescape(raw, |b| v.push(b));
        PathBuf::from(std::ffi::OsString::from_vec(v))
    };
    (m.freezer.map(path), m.unified.map(path))
}

/// This root's cgroup parent directories (`refreshd.ID`) in each hierarchy.
pub fn cgroup_parents(root: &Path) -> Vec<PathBuf> {
    let mut buf = [0u8; 26];
    let parent = String::from_utf8_lossy(refreshd_runctl::cgroup_parent(
        root.as_os_str().as_encoded_bytes(),
        &mut buf,
    ))
    .into_owned();
    let (v1, v2) = cgroup_mounts();
    [v1, v2]
        .into_iter()
        .flatten()
        .map(|m| m.join(&parent))
        .collect()
}

/// Removes what a test root left in the cgroup hierarchies and the release agent's registry.
/// Processes still in its groups were started by the test (they run the test's snaps): they
/// are killed first.
fn remove_cgroups(root: &Path) {
    for parent in cgroup_parents(root) {
        let Ok(rd) = fs::read_dir(&parent) else {
            continue;
        };
        for e in rd.flatten().filter(|e| e.path().is_dir()) {
            let group = e.path();
            for _ in 0..200 {
                let procs = fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if fs::remove_dir(&group).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = fs::remove_dir(&parent);
    }
    if let Some(id) = refreshd_runctl::instance_id(root.as_os_str().as_encoded_bytes()) {
        let _ = fs::remove_file(
            Path::new(refreshd_runctl::AGENT_REGISTRY).join(&*String::from_utf8_lossy(&id)),
        );
    }
}

/// Installs confine-hook into the root the way a package would: setuid root at
/// `usr/lib/refreshd/confine-hook`. Also makes root's home, which apps run by root use.
pub fn install_hook(root: &Path) {
    let dst = root.join(refreshd_runctl::HOOK_PATH);
    if dst.exists() {
        return;
    }
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    for d in ["usr", "usr/lib", "usr/lib/refreshd"] {
        fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let tmp = dst.with_extension("tmp");
    fs::copy(bin("confine-hook"), &tmp).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&tmp, Some(0), Some(0)).unwrap();
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o4755)).unwrap();
    fs::rename(&tmp, &dst).unwrap();
    let home = root.join("root");
    fs::create_dir_all(&home).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
}

/// Unmounts every mount below `dir`, deepest first.
pub fn unmount_all_under(dir: &Path) {
    if let Ok(mounts) = refreshd_snap::mounts_under(dir) {
        for m in mounts {
            let _ = refreshd_snap::unmount(&m);
        }
    }
}

/// A running refreshd on a scratch root. Stopped (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    pub root: PathBuf,
    child: Option<Child>,
    pub log: PathBuf,
}

#[derive(Default)]
pub struct DaemonOpts<'a> {
    pub failpoints: Option<&'a str>,
    pub extra_args: Vec<String>,
    /// A command the daemon runs under, which must exec its arguments (`unshare -m ...`,
    /// `faketime ...`): the pid stays the daemon's.
    pub wrapper: Vec<String>,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
}

impl Daemon {
    pub fn start(root: &Path) -> Daemon {
        Self::start_with(root, DaemonOpts::default())
    }

    /// refreshd as [`Daemon::start_with`] runs it: the hook installed in the root, the release
    /// agent registered from where no user could replace it, the failpoints given.
    fn command(root: &Path, opts: &DaemonOpts<'_>) -> Command {
        install_hook(root);
        let mut cmd = match opts.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("refreshd"));
                c
            }
            None => Command::new(bin("refreshd")),
        };
        cmd.arg("--root").arg(root).args(&opts.extra_args);
        if is_root() && !opts.extra_args.iter().any(|a| a == "--release-agent") {
            // Never where cargo built it: the checkout may be anywhere (under /tmp, say), and
            // refreshd registers only an agent no user could replace (safe_agent.rs).
            let agent = safe_agent::install_release_agent(&bin("refresh-release-agent"))
                .unwrap_or_else(|e| panic!("cannot install the release agent for tests: {e}"));
            cmd.arg("--release-agent").arg(agent);
        }
        cmd.env("RUST_LOG", "info")
            .env_remove("REFRESHD_FAILPOINTS")
            .envs(opts.env.iter().map(|(k, v)| (k, v)));
        if let Some(fp) = opts.failpoints {
            cmd.env("REFRESHD_FAILPOINTS", fp);
        }
        cmd
    }

    /// Starts refreshd and returns once it listens (it says so on stderr: no polling).
    pub fn start_with(root: &Path, opts: DaemonOpts<'_>) -> Daemon {
        let log = root.parent().unwrap().join("refreshd.log");
        let mut cmd = Self::command(root, &opts);
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
        let mut child = cmd.spawn().expect("spawn refreshd");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut out = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap();
            let mut told = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(out, "{line}");
                if !told && line.contains("listening") {
                    let _ = tx.send(());
                    told = true;
                }
            }
        });
        let mut d = Daemon {
            root: root.to_owned(),
            child: Some(child),
            log,
        };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = d.child.as_mut().unwrap().try_wait().ok().flatten();
            panic!(
                "refreshd did not start (exit: {status:?}); log:\n{}",
                fs::read_to_string(&d.log).unwrap_or_default()
            );
        }
        d
    }

    /// Runs refreshd where it must refuse to start, and returns how it exited. One that starts
    /// after all is killed (its pid) once it says it listens, and the test fails.
    pub fn refused_start(root: &Path, opts: DaemonOpts<'_>) -> Output {
        let mut child = Self::command(root, &opts)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn refreshd");
        let mut err = String::new();
        let mut listening = false;
        for line in BufReader::new(child.stderr.take().unwrap())
            .lines()
            .map_while(Result::ok)
        {
            err.push_str(&line);
            err.push('\n');
            if line.contains("listening") {
                listening = true;
                break;
            }
        }
        if listening {
            let _ = child.kill();
        }
        let status = child.wait().expect("wait refreshd");
        assert!(!listening, "refreshd started when it must not:\n{err}");
        Output {
            status,
            stdout: Vec::new(),
            stderr: err.into_bytes(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Waits for the daemon to exit by itself (a failpoint's SIGKILL, say).
    pub fn wait(mut self) -> ExitStatus {
        self.child.take().unwrap().wait().expect("wait refreshd")
    }

    /// SIGTERM and wait: the orderly shutdown.
    pub fn stop(mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        c.wait().expect("wait refreshd")
    }

    /// SIGKILL and wait.
    pub fn kill(mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        c.wait().expect("wait refreshd")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            // Bounded: a daemon that does not stop in time is killed.
            for _ in 0..100 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn killed_by_sigkill(st: ExitStatus) -> bool {
    st.signal() == Some(libc::SIGKILL)
}

/// Runs refreshctl against `root`.
pub fn ctl(root: &Path, args: &[&str]) -> Output {
    ctl_as(root, args, None)
}

/// Runs refreshctl as `user` (uid, gid) when given.
pub fn ctl_as(root: &Path, args: &[&str], user: Option<(u32, u32)>) -> Output {
    // setpriv (util-linux) drops to the user with no supplementary groups, as a login would.
    let mut cmd = match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(bin("refreshctl"));
            c
        }
        None => Command::new(bin("refreshctl")),
    };
    cmd.arg("--root").arg(root).args(args);
    cmd.env_remove("REFRESHD_SOCKET");
    cmd.output().expect("run refreshctl")
}

/// Parses refreshctl's stdout as JSON, failing with its stderr on error.
pub fn ctl_json(root: &Path, args: &[&str]) -> Value {
    let out = ctl(root, args);
    assert!(
        out.status.success(),
        "refreshctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "refreshctl {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A minimal HTTP/1.1 request over the daemon's socket, for what refreshctl hides (headers).
/// Returns (status, body).
pub fn http(
    root: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let mut s = UnixStream::connect(root.join("run/refreshd.socket")).expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, rest) = resp.split_once("\r\n\r\n").expect("http response");
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A snap source tree: meta/snap.yaml plus executables.
pub struct SnapSrc {
    pub dir: tempfile::TempDir,
}

impl SnapSrc {
    pub fn new(yaml: &str) -> SnapSrc {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("meta")).unwrap();
        fs::write(dir.path().join("meta/snap.yaml"), yaml).unwrap();
        SnapSrc { dir }
    }

    pub fn file(self, rel: &str, content: &str, mode: u32) -> SnapSrc {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// Builds the .snap with mksquashfs directly (no validation: tests build bad snaps too).
    pub fn build(&self, out: &Path) {
        let st = Command::new("mksquashfs")
            .arg(self.dir.path())
            .arg(out)
            .args([
                "-noappend",
                "-comp",
                "gzip",
                "-no-progress",
                "-all-root",
                "-quiet",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("mksquashfs (install squashfs-tools)");
        assert!(st.success(), "mksquashfs failed");
    }
}

/// The sample snap the tests install: one app that prints where it runs from.
pub fn hello_snap(out: &Path, name: &str, version: &str) {
    SnapSrc::new(&format!(
        "name: {name}\nversion: '{version}'\nsummary: Says hello\napps:\n  {name}:\n    command: bin/hello\n  env:\n    command: bin/env\n"
    ))
    .file("bin/hello", "#!/bin/sh\necho \"hello from $SNAP_NAME $SNAP_REVISION\"\n", 0o755)
    .file("bin/env", "#!/bin/sh\nenv\n", 0o755)
    .build(out);
}

/// Finds a program in `PATH` or the sbin directories (where Debian puts nginx).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A scratch directory of its own (a server's configuration, logs and pid file), removed on
/// drop.
pub fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("refreshd-test-{tag}-"))
        .tempdir()
        .expect("tempdir")
}

pub fn mksquashfs_available() -> bool {
    Command::new("mksquashfs")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Every path under `dir` (not crossing into mounts) with a fingerprint of what it is, so a
/// test can assert that an operation left the tree exactly as it was.
pub fn snapshot(dir: &Path, skip: &[&str]) -> Vec<(String, String)> {
    let mut out = vec![];
    let mounts = refreshd_snap::mounts_under(dir).unwrap_or_default();
    walk(dir, dir, skip, &mounts, &mut out);
    out.sort();
    out
}

fn walk(
    base: &Path,
    dir: &Path,
    skip: &[&str],
    mounts: &[PathBuf],
    out: &mut Vec<(String, String)>,
) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
        if skip.iter().any(|s| rel.starts_with(s)) {
            continue;
        }
        let md = fs::symlink_metadata(&p).unwrap();
        let kind = if md.file_type().is_symlink() {
            format!("link->{}", fs::read_link(&p).unwrap().display())
        } else if md.is_dir() {
            format!("dir {:o}", md.permissions().mode())
        } else {
            let bytes = fs::read(&p).unwrap_or_default();
            format!(
                "file {:o} {} {:x}",
                md.permissions().mode(),
                bytes.len(),
                fxhash(&bytes)
            )
        };
        out.push((rel, kind));
        if md.is_dir() && !mounts.contains(&p) {
            walk(base, &p, skip, mounts, out);
        }
    }
}

fn fxhash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

/// Paths under `dir` whose name marks them as refreshd temporaries.
pub fn temporaries(dir: &Path) -> Vec<String> {
    snapshot(dir, &[])
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.contains(".refreshd-tmp") || p.contains("uploads/"))
        .collect()
}

/// A command run as `user` through setpriv: their uid and gid, no supplementary groups (as a
/// login would have none here).
pub fn as_user(user: &TestUser, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("/usr/bin/setpriv");
    c.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .arg(program);
    c
}

/// Builds the C program `source` with gcc beside the root as `name`, readable and runnable by
/// everyone (a hostile user's tools).
pub fn build_c(root: &Root, name: &str, source: &str) -> PathBuf {
    let src = root.aux(&format!("{name}.c"));
    let bin = root.aux(name);
    fs::write(&src, source).unwrap();
    let out = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("gcc");
    assert!(out.status.success(), "gcc: {}", text(&out.stderr));
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A real unprivileged user, deleted on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    /// One real user per tag; None (after saying why) when useradd fails for any.
    pub fn create_all<const N: usize>(tags: [&str; N]) -> Option<[TestUser; N]> {
        let users = tags.map(TestUser::create);
        if users.iter().any(Option::is_none) {
            skip("useradd failed");
            return None;
        }
        Some(users.map(Option::unwrap))
    }

    pub fn create(tag: &str) -> Option<TestUser> {
        let name = format!("rfd{}{}", tag, std::process::id() % 100000);
        let st = Command::new("useradd")
            .args([
                "--no-create-home",
                "--shell",
                "/bin/sh",
                "--user-group",
                &name,
            ])
            .status()
            .ok()?;
        if !st.success() {
            return None;
        }
        let u = nix::unistd::User::from_name(&name).ok()??;
        Some(TestUser {
            name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// Waits (event-driven: the watch stream) until change `id` is ready; returns the last change
/// object.
pub fn watch_until_ready(root: &Path, id: u64) -> Value {
    let out = ctl(root, &["watch", &id.to_string(), "--json"]);
    let last = text(&out.stdout)
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("watch {id} printed nothing: {}", text(&out.stderr)));
    let v: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(
        v["ready"], true,
        "watch ended before the change was ready: {v}"
    );
    v
}

/// A snap for the tracking tests: `hold` runs until told to exit on its stdin and reports its
/// start and exit times (unix ns); `hello` says hello.
pub fn tracking_snap(out: &Path, name: &str, version: &str, block: bool) {
    let behaviour = if block {
        "refresh-pending-behavior: block\n"
    } else {
        ""
    };
    SnapSrc::new(&format!(
        "name: {name}\nversion: '{version}'\nsummary: Tracking test\n{behaviour}apps:\n  {name}:\n    command: bin/hello\n  hold:\n    command: bin/hold\n"
    ))
    .file("bin/hello", "#!/bin/sh\necho \"hello from $SNAP_NAME $SNAP_REVISION\"\n", 0o755)
    .file(
        "bin/hold",
        "#!/bin/sh\necho \"started $$ $(date +%s%N) $SNAP_REVISION\"\nread line\necho \"exit $(date +%s%N)\"\n",
        0o755,
    )
    .build(out);
}

/// An app started through its launcher, talking over pipes.
pub struct App {
    child: Option<Child>,
    out: std::io::Lines<BufReader<std::process::ChildStdout>>,
    pub pid: i32,
    pub started_ns: u128,
    pub revision: String,
}

impl App {
    /// Launches `snap/bin/LAUNCHER` and waits (reading its first line) until it runs.
    pub fn launch(root: &Path, launcher: &str) -> App {
        Self::launch_as(root, launcher, None)
    }

    pub fn launch_as(root: &Path, launcher: &str, user: Option<(u32, u32)>) -> App {
        let path = root.join("snap/bin").join(launcher);
        let mut cmd = match user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot launch {}: {e}", path.display()));
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = out
            .next()
            .unwrap_or_else(|| panic!("{launcher} printed nothing"))
            .unwrap();
        let mut w = first.split_whitespace();
        assert_eq!(w.next(), Some("started"), "{launcher}: {first}");
        let pid = w.next().unwrap().parse().unwrap();
        let started_ns = w.next().unwrap().parse().unwrap();
        let revision = w.next().unwrap_or_default().to_owned();
        App {
            child: Some(child),
            out,
            pid,
            started_ns,
            revision,
        }
    }

    /// Tells the app to exit; returns the time (unix ns) it reported just before exiting.
    pub fn release(mut self) -> u128 {
        let mut child = self.child.take().unwrap();
        {
            let mut stdin = child.stdin.take().unwrap();
            let _ = writeln!(stdin, "go");
        }
        let line = self.out.next().expect("exit line").unwrap();
        let ns = line
            .strip_prefix("exit ")
            .expect("exit line")
            .trim()
            .parse()
            .unwrap();
        let st = child.wait().unwrap();
        assert!(st.success(), "app exited {st:?}");
        ns
    }

    /// The cgroups the app's process is in (/proc/PID/cgroup).
    pub fn cgroups(&self) -> String {
        fs::read_to_string(format!("/proc/{}/cgroup", self.pid)).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Unix time in nanoseconds.
pub fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The `at=NS` value in a task's log line containing `needle`.
pub fn logged_at(change: &Value, kind: &str, needle: &str) -> Option<u128> {
    change["tasks"]
        .as_array()?
        .iter()
        .filter(|t| t["kind"] == kind)
        .flat_map(|t| t["log"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l.as_str().map(str::to_owned))
        .filter(|l| l.contains(needle))
        .find_map(|l| {
            l.split("at=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// Follows `refreshctl watch ID --json` until `pred` holds for a change snapshot (or the change
/// is ready); returns that snapshot. Event-driven: the daemon pushes every state change.
pub fn watch_until(root: &Path, id: u64, pred: impl Fn(&Value) -> bool) -> Value {
    // Read on a thread of its own: a state that never comes ends the wait at the deadline with
    // the last state seen (for the caller's assertion), not at the test runner's timeout, where
    // no guard would run.
    let (mut child, rx) = watch_lines(root, id);
    let deadline = std::time::Instant::now() + WATCH_LIMIT;
    let mut last = Value::Null;
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let v: Value = serde_json::from_str(&l).unwrap();
        let stop = pred(&v) || v["ready"] == true;
        last = v;
        if stop {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    last
}

/// Starts `refreshctl watch ID --json` (the daemon pushes every state of the change) and returns
/// it with its lines, read on a thread of their own so that the caller can wait for one with a
/// deadline. The caller kills the child.
pub fn watch_lines(root: &Path, id: u64) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(bin("refreshctl"))
        .arg("--root")
        .arg(root)
        .args(["watch", &id.to_string(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Starts a daemon that parks a refresh in its critical section (the inhibition marker written,
/// `lift-inhibition` parked by a failpoint), asks it for the revision of snap `name` in file
/// `b`, and returns once the refresh is parked there: the daemon and the change.
pub fn refresh_held_in_section(root: &Path, name: &str, b: &Path) -> (Daemon, u64) {
    let d = Daemon::start_with(
        root,
        DaemonOpts {
            failpoints: Some("park-do:lift-inhibition"),
            ..Default::default()
        },
    );
    let out = ctl(root, &["install", b.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "refresh: {}", text(&out.stderr));
    let id = newest_change(root);
    watch_until(root, id, |c| task(c, "lift-inhibition")["status"] == "Wait");
    assert!(root
        .join(format!("run/refreshd/runctl/snap.{name}.inhibited"))
        .exists());
    (d, id)
}

/// The element of the JSON array `list` whose `key` is `want`; panics, showing the list, when
/// there is none.
pub fn find_in<T: std::fmt::Display>(list: &Value, key: &str, want: T) -> Value
where
    Value: PartialEq<T>,
{
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e[key] == want)
        .unwrap_or_else(|| panic!("no {key} {want} in {list}"))
        .clone()
}

/// `len` bytes of xorshift64 noise from state `x` (not 0): incompressible, reproducible.
pub fn noise(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Makes `user`'s home inside the root (where the app's per-user data goes), owned by the user,
/// under a parent others may enter; returns it.
pub fn user_home(root: &Path, user: &TestUser) -> PathBuf {
    let home = nix::unistd::User::from_name(&user.name)
        .unwrap()
        .unwrap()
        .dir;
    let home = root.join(home.strip_prefix("/").unwrap());
    fs::create_dir_all(&home).unwrap();
    fs::set_permissions(home.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
    home
}

/// How long [`watch_until`] waits for the state it is asked for.
pub const WATCH_LIMIT: std::time::Duration = std::time::Duration::from_secs(150);

/// The log lines of the task of `kind` in a change snapshot.
pub fn task_log(change: &Value, kind: &str) -> Vec<String> {
    task(change, kind)["log"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The task of `kind` in a change snapshot.
pub fn task<'a>(change: &'a Value, kind: &str) -> &'a Value {
    change["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["kind"] == kind))
        .unwrap_or_else(|| panic!("no {kind} task in {change}"))
}

/// The id of the newest change.
pub fn newest_change(root: &Path) -> u64 {
    ctl_json(root, &["changes", "--all", "--json"])[0]["id"]
        .as_u64()
        .unwrap()
}

/// Every task of a store refresh, in order (the change's chain: refreshd/src/tasks/mod.rs).
pub const REFRESH_TASKS: &[&str] = &[
    "download",
    "prepare",
    "mount",
    "pre-refresh-hook",
    "precopy-data",
    "wait-for-apps",
    "stop-services",
    "setup-data",
    "link",
    "launchers",
    "lift-inhibition",
    "start-services",
    "post-refresh-hook",
    "user-data",
    "cleanup",
];

/// Counts a hostile test's attempts, how many were refused (rather than run safely as the user)
/// and how many got through; prints the `figures: hostile:` line that scripts/figures.sh counts
/// for docs/reliability.md, unless the test failed.
pub struct Tally {
    pub test: &'static str,
    pub attempts: usize,
    pub refused: usize,
    pub leaked: usize,
    /// More ` key=value` figures for the line.
    pub extra: String,
}

impl Tally {
    pub fn new(test: &'static str) -> Tally {
        Tally {
            test,
            attempts: 0,
            refused: 0,
            leaked: 0,
            extra: String::new(),
        }
    }

    /// One attempt; `refused`: it was turned down.
    pub fn attempt(&mut self, refused: bool) {
        self.attempts += 1;
        self.refused += usize::from(refused);
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            println!(
                "figures: hostile: test={} attempts={} refused={} leaked={}{}",
                self.test, self.attempts, self.refused, self.leaked, self.extra
            );
        }
    }
}
