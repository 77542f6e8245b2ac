//! Helpers for driving the real agent binaries against the real `/run/refreshd` paths.
//!
//! Every name a test puts in the shared registry is unique to that test and process, and every
//! change is undone by a guard's `Drop`, so tests run in parallel with each other and with other
//! crates' tests. `/run/refreshd/agent` and `/run/refreshd/runctl` are created (root, 0755) when
//! missing and left in place: they are the daemon's runtime directories, and removing them could
//! pull them from under another test.

#![allow(dead_code)] // Each test binary uses a different part.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use refreshd_runctl::{AGENT_REGISTRY, DEFAULT_RUNCTL};

/// Prints why a test did not run (and records it for `scripts/test.sh`).
pub fn skip(why: &str) {
    println!("SKIP: {why}");
    if let Some(p) = std::env::var_os("REFRESHD_TEST_SKIPS") {
        let test = std::thread::current().name().unwrap_or("?").to_owned();
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(p) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The binaries under test: the agent and its std twin as built for these tests, and
/// `REFRESH_RELEASE_AGENT_BIN` (e.g. the `agent`-profile no_std build) when set.
pub fn agents() -> Vec<PathBuf> {
    let mut v = vec![
        PathBuf::from(env!("CARGO_BIN_EXE_refresh-release-agent")),
        PathBuf::from(env!("CARGO_BIN_EXE_refresh-release-agent-std")),
    ];
    v.extend(extra_agent());
    v
}

/// `REFRESH_RELEASE_AGENT_BIN`, made absolute.
pub fn extra_agent() -> Option<PathBuf> {
    let p = std::env::var_os("REFRESH_RELEASE_AGENT_BIN")?;
    Some(fs::canonicalize(&p).unwrap_or_else(|e| panic!("REFRESH_RELEASE_AGENT_BIN={p:?}: {e}")))
}

/// The binary installed as the kernel's release agent: `REFRESH_RELEASE_AGENT_BIN` or the
/// test build of `refresh-release-agent`, copied where only root can write (the checkout may be
/// anywhere, /tmp included; the kernel runs it as root) — the same copy the daemons of the
/// integration tests register.
pub fn kernel_agent() -> PathBuf {
    let built =
        extra_agent().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_refresh-release-agent")));
    safe_agent::install_release_agent(&built)
        .unwrap_or_else(|e| panic!("installing {} for the kernel: {e}", built.display()))
}

#[path = "../../../tests/src/safe_agent.rs"]
mod safe_agent;

/// Runs `agent` the way the kernel does: `HOME=/`, the kernel's `PATH`, cwd `/`, no stdio.
pub fn run_agent<S: AsRef<OsStr>>(agent: &Path, args: &[S]) -> ExitStatus {
    Command::new(agent)
        .args(args)
        .env_clear()
        .env("HOME", "/")
        .env("PATH", "/sbin:/bin:/usr/sbin:/usr/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", agent.display()))
}

/// 16 lowercase hex digits unique to this test in this process.
pub fn unique_id(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = format!(
        "refresh-release-agent {} {test} {nanos}",
        std::process::id()
    );
    let id = refreshd_runctl::instance_id(seed.as_bytes()).unwrap();
    String::from_utf8(id.to_vec()).unwrap()
}

pub fn os(b: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(b.to_vec())
}

/// Makes `dir` (and its parents) if missing, root-owned, mode 0755; an existing one is left
/// as it is.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        if !parent.exists() {
            ensure_dir(parent)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The registry directory, made if missing; Err(why to skip) when it exists in a state the
/// agent refuses (which a test must not "fix" on a shared machine).
pub fn registry() -> Result<PathBuf, String> {
    let dir = PathBuf::from(AGENT_REGISTRY);
    ensure_dir(&dir).map_err(|e| format!("creating {AGENT_REGISTRY}: {e}"))?;
    let m = fs::symlink_metadata(&dir).map_err(|e| format!("{AGENT_REGISTRY}: {e}"))?;
    if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(format!(
            "{AGENT_REGISTRY} exists but is not a root-owned directory writable only by root \
             (mode {:o}, uid {})",
            m.mode(),
            m.uid()
        ));
    }
    Ok(dir)
}

/// The default runctl directory, made if missing; Err(why to skip) if it is not a root-owned
/// directory.
pub fn default_runctl() -> Result<PathBuf, String> {
    let dir = PathBuf::from(DEFAULT_RUNCTL);
    ensure_dir(&dir).map_err(|e| format!("creating {DEFAULT_RUNCTL}: {e}"))?;
    let m = fs::symlink_metadata(&dir).map_err(|e| format!("{DEFAULT_RUNCTL}: {e}"))?;
    if !m.is_dir() || m.uid() != 0 {
        return Err(format!("{DEFAULT_RUNCTL} is not a root-owned directory"));
    }
    Ok(dir)
}

/// `AGENT_REGISTRY/NAME -> target`, removed on drop (if it is still that symlink).
pub struct Registered {
    pub link: PathBuf,
    target: PathBuf,
}

impl Registered {
    pub fn new(name: &str, target: &Path) -> Registered {
        let link = PathBuf::from(AGENT_REGISTRY).join(name);
        symlink(target, &link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        Registered {
            link,
            target: target.to_owned(),
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if fs::read_link(&self.link).ok().as_deref() == Some(&self.target) {
            let _ = fs::remove_file(&self.link);
        }
    }
}

/// Files a test created in a shared directory, removed on drop.
#[derive(Default)]
pub struct Created(Vec<PathBuf>);

impl Created {
    pub fn file(&mut self, p: PathBuf) -> PathBuf {
        fs::write(&p, "").unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        self.0.push(p.clone());
        p
    }

    pub fn dir(&mut self, p: PathBuf) -> PathBuf {
        fs::create_dir(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        self.0.push(p.clone());
        p
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = fs::remove_file(p).or_else(|_| fs::remove_dir(p));
        }
    }
}

/// A scratch directory owned by root, mode 0755 (tempfile makes them 0700).
pub fn scratch() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("refresh-release-agent-test.")
        .tempdir()
        .unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// Makes `dir/rel` for each entry (a trailing `/` makes a directory) and returns their paths.
pub fn populate(dir: &Path, entries: &[&str]) -> Vec<PathBuf> {
    entries
        .iter()
        .map(|e| {
            let p = dir.join(e.trim_end_matches('/'));
            if e.ends_with('/') {
                fs::create_dir_all(&p).unwrap();
            } else {
                fs::write(&p, "").unwrap();
            }
            p
        })
        .collect()
}

pub fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// The paths of `paths` that are gone.
pub fn gone(paths: &[PathBuf]) -> Vec<&PathBuf> {
    paths.iter().filter(|p| !exists(p)).collect()
}

/// Panics naming every path of `paths` that is gone.
pub fn assert_all_exist(paths: &[PathBuf], after: &str) {
    let gone = gone(paths);
    assert!(gone.is_empty(), "after {after}: removed {gone:?}");
}

/// Collects failures so a test reports all of them, not only the first.
#[derive(Default)]
pub struct Failures(Vec<String>);

impl Failures {
    /// Records a failure if `status` is not 0 or any of `keep` is gone, then restores the
    /// gone files so later calls are judged on their own.
    pub fn check(&mut self, shown: &str, status: ExitStatus, keep: &[PathBuf]) {
        if status.code() != Some(0) {
            self.0.push(format!("{shown}: {status}"));
        }
        let gone = gone(keep);
        if !gone.is_empty() {
            self.0.push(format!("{shown}: removed {gone:?}"));
            for p in gone {
                let _ = fs::write(p, "");
            }
        }
    }

    pub fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} failures:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// Arguments for a failure message, long ones shortened.
pub fn show(args: &[OsString]) -> String {
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            let s = format!("{a:?}");
            if s.len() > 80 {
                format!("{}…({} bytes)", &s[..60], a.len())
            } else {
                s
            }
        })
        .collect();
    format!("[{}]", shown.join(", "))
}
