//! Harness for the integration tests: scratch roots, real daemons, real snaps, real users.
//!
//! Everything a test makes is owned by a guard that undoes it on drop — daemons are stopped,
//! mounts under the scratch root unmounted, users deleted — even when the test fails.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
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
        unmount_all_under(self.path());
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
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
}

impl Daemon {
    pub fn start(root: &Path) -> Daemon {
        Self::start_with(root, DaemonOpts::default())
    }

    /// Starts refreshd and returns once it listens (it says so on stderr: no polling).
    pub fn start_with(root: &Path, opts: DaemonOpts<'_>) -> Daemon {
        let log = root.parent().unwrap().join("refreshd.log");
        let mut cmd = Command::new(bin("refreshd"));
        cmd.arg("--root").arg(root).args(&opts.extra_args);
        cmd.env("RUST_LOG", "info")
            .env_remove("REFRESHD_FAILPOINTS");
        if let Some(fp) = opts.failpoints {
            cmd.env("REFRESHD_FAILPOINTS", fp);
        }
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

/// A real unprivileged user, deleted on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
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
