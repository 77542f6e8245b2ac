//! Scratch roots, users and cgroup clean-up for the integration tests. Everything a test
//! creates is owned by a guard that removes it on drop; only processes the test started are
//! ever killed.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Why a privileged test cannot run here, if it cannot.
pub fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (a setuid-root launcher, cgroups, chown)".into());
    }
    None
}

/// Why a test that needs a real user cannot run here, if it cannot.
pub fn cannot_run_as_user() -> Option<String> {
    cannot_run().or_else(|| {
        ["/usr/sbin/useradd", "/usr/sbin/userdel", "/usr/bin/setpriv"]
            .iter()
            .find(|p| !Path::new(p).exists())
            .map(|p| format!("needs {p}"))
    })
}

/// `if let Some(why) = ... { println!("SKIP: ..."); return; }`
#[macro_export]
macro_rules! skip_unless {
    ($why:expr) => {
        if let Some(why) = $why {
            println!("SKIP: {why}");
            return;
        }
    };
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    format!(
        "{tag}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The app every scratch root has: prints when it started (CLOCK_REALTIME ns), who it runs
/// as, its arguments, its exact initial environment and its cgroups; with `--out FILE` it
/// writes that to FILE (atomically) instead of stdout.
const APP: &str = r#"#!/bin/sh
start=$(date +%s%N)
out=
prev=
for a in "$@"; do
  if [ "$prev" = --out ]; then out=$a; fi
  prev=$a
done
report() {
  echo "start=$start"
  echo "uid=$(id -u)"
  echo "gid=$(id -g)"
  echo "groups=$(id -G)"
  for a in "$@"; do echo "arg=$a"; done
  tr '\0' '\n' < /proc/$$/environ | sed 's/^/env=/'
  sed 's/^/cgroup=/' /proc/$$/cgroup
}
if [ -n "$out" ]; then
  report "$@" > "$out.tmp" && mv "$out.tmp" "$out"
else
  report "$@"
fi
"#;

/// The launch description of the app above.
pub const LAUNCH: &str = "refreshd-launch 1
snap-name hello
version 1.0
revision x1
command bin/app
arg --from-launch
some-future-key is ignored
env GREETING=hi from $SNAP_NAME
env COMBINED=${GREETING}!
";

pub fn mkdir(p: &Path, mode: u32) {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
        .unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn write(p: &Path, text: &str, mode: u32) {
    fs::write(p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Copies an executable with `install` in a child process: a file the test process itself
/// wrote could still be open for writing in a child another test thread just forked (before
/// its exec closes it), and exec'ing it would then fail with ETXTBSY.
pub fn install(src: &Path, dst: &Path, mode: u32) {
    let st = Command::new("/usr/bin/install")
        .arg(format!("--mode={mode:o}"))
        .args(["--owner=root", "--group=root"])
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "install {} {}", src.display(), dst.display());
}

pub fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// Mount points of the freezer (v1) and cgroup2 hierarchies.
pub fn cgroup_mounts() -> (Option<PathBuf>, Option<PathBuf>) {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let (mut v1, mut v2) = (None, None);
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mnt = PathBuf::from(pre.split(' ').nth(4).unwrap().replace("\\040", " "));
        let post: Vec<&str> = post.split(' ').collect();
        if post[0] == "cgroup" && v1.is_none() && post[2].split(',').any(|o| o == "freezer") {
            v1 = Some(mnt);
        } else if post[0] == "cgroup2" && v2.is_none() {
            v2 = Some(mnt);
        }
    }
    (v1, v2)
}

/// A scratch root under /tmp (root-owned, 0755) laid out as the daemon would leave it, with
/// the freshly built launcher installed setuid-root.
pub struct Scratch {
    pub root: PathBuf,
    /// `refreshd.ID` for this root.
    pub parent: String,
}

impl Scratch {
    pub fn new() -> Scratch {
        let root = PathBuf::from(format!("/tmp/confine-hook-test.{}", unique("r")));
        mkdir(&root, 0o755);
        let mut buf = [0u8; 26];
        let parent = String::from_utf8(
            refreshd_runctl::cgroup_parent(root.as_os_str().as_bytes(), &mut buf).to_vec(),
        )
        .unwrap();
        let s = Scratch { root, parent };
        // The launcher.
        mkdir(&s.path("usr/lib/refreshd"), 0o755);
        install(
            Path::new(env!("CARGO_BIN_EXE_confine-hook")),
            &s.hook(),
            0o4755,
        );
        // What install, mount, setup-data, link and launchers would have made.
        mkdir(&s.path("snap/hello/x1/bin"), 0o755);
        write(&s.path("app.src"), APP, 0o644);
        install(&s.path("app.src"), &s.path("snap/hello/x1/bin/app"), 0o755);
        std::os::unix::fs::symlink("x1", s.path("snap/hello/current")).unwrap();
        mkdir(&s.path("var/lib/refreshd/launch/hello/x1"), 0o755);
        write(
            &s.path("var/lib/refreshd/launch/hello/x1/hello"),
            LAUNCH,
            0o644,
        );
        mkdir(&s.path("var/snap/hello/x1"), 0o755);
        mkdir(&s.path("var/snap/hello/common"), 0o755);
        mkdir(&s.path("snap/bin"), 0o755);
        s.add_launcher("hello");
        mkdir(&s.path("root"), 0o700);
        mkdir(&s.path("home"), 0o755);
        // Where apps write their reports (like /tmp).
        mkdir(&s.path("tmp"), 0o1777);
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn hook(&self) -> PathBuf {
        self.path("usr/lib/refreshd/confine-hook")
    }

    /// Adds `snap/bin/NAME -> hook`, as the daemon's launchers task does.
    pub fn add_launcher(&self, name: &str) -> PathBuf {
        let p = self.path(&format!("snap/bin/{name}"));
        std::os::unix::fs::symlink(self.hook(), &p).unwrap();
        p
    }

    pub fn runctl(&self, file: &str) -> PathBuf {
        self.path(&format!("run/refreshd/runctl/{file}"))
    }

    /// A command with a clean environment (plus `vars`).
    pub fn command(&self, program: impl AsRef<OsStr>, vars: &[(&str, &str)]) -> Command {
        let mut c = Command::new(program);
        c.env_clear();
        for (k, v) in vars {
            c.env(k, v);
        }
        c
    }

    /// The groups `snap.NAME` of this root in every hierarchy.
    pub fn cgroup_dirs(&self, name: &str) -> Vec<PathBuf> {
        let (v1, v2) = cgroup_mounts();
        [v1, v2]
            .into_iter()
            .flatten()
            .map(|m| m.join(&self.parent).join(format!("snap.{name}")))
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Cgroups: snap.* then the parent, in both hierarchies, once their processes are gone
        // (every process in them was started and waited for by the test).
        let (v1, v2) = cgroup_mounts();
        for m in [v1, v2].into_iter().flatten() {
            let parent = m.join(&self.parent);
            if !parent.exists() {
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(rd) = fs::read_dir(&parent) {
                    for e in rd.flatten() {
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            let _ = fs::remove_dir(e.path());
                        }
                    }
                }
                if fs::remove_dir(&parent).is_ok() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A real unprivileged user (useradd; userdel on drop) whose passwd home is `/home/NAME`,
/// with that home created under the scratch root and owned by the user.
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    pub fn new(s: &Scratch) -> User {
        let name = unique("chk");
        let st = Command::new("/usr/sbin/useradd")
            .args([
                "--no-create-home",
                "--user-group",
                "--shell",
                "/bin/sh",
                "--home-dir",
            ])
            .arg(format!("/home/{name}"))
            .arg(&name)
            .status()
            .unwrap();
        assert!(st.success(), "useradd {name}");
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").arg(flag).arg(&name).output().unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let u = User {
            uid: id("-u"),
            gid: id("-g"),
            name,
        };
        let home = s.path(&format!("home/{}", u.name));
        mkdir(&home, 0o755);
        chown(&home, u.uid, u.gid);
        u
    }

    /// `program args...` as this user (its uid, gid and its own groups only).
    pub fn command(&self, program: impl AsRef<OsStr>, vars: &[(&str, &str)]) -> Command {
        let mut c = Command::new("/usr/bin/setpriv");
        c.env_clear();
        for (k, v) in vars {
            c.env(k, v);
        }
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program);
        c
    }
}

impl User {
    /// `program` as this user without setpriv (std's `uid`/`gid`, which also clear the
    /// supplementary groups), so the test controls `argv[0]`.
    pub fn direct(&self, program: impl AsRef<OsStr>) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(program);
        c.env_clear().uid(self.uid).gid(self.gid);
        c
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/userdel").arg(&self.name).status();
        // The user group, if userdel left it (USERGROUPS_ENAB no).
        let _ = Command::new("/usr/sbin/groupdel")
            .arg(&self.name)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A background process the test started: killed and reaped on drop if still running.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What the app printed.
#[derive(Debug, Default)]
pub struct Report {
    pub start_ns: u128,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cgroups: Vec<String>,
}

impl Report {
    pub fn parse(text: &str) -> Report {
        let mut r = Report::default();
        for line in text.lines() {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            match k {
                "start" => r.start_ns = v.parse().unwrap(),
                "uid" => r.uid = v.parse().unwrap(),
                "gid" => r.gid = v.parse().unwrap(),
                "groups" => r.groups = v.split(' ').map(|g| g.parse().unwrap()).collect(),
                "arg" => r.args.push(v.into()),
                "env" => {
                    let (a, b) = v.split_once('=').unwrap();
                    r.env.push((a.into(), b.into()));
                }
                "cgroup" => r.cgroups.push(v.into()),
                _ => panic!("unexpected report line {line:?}"),
            }
        }
        r
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn names(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        n.sort_unstable();
        n
    }
}

/// Retries `f` while it fails with ETXTBSY: a binary the test just copied can still be open
/// for writing in a child another test thread forked and has not exec'd yet.
fn retry_busy<T>(mut f: impl FnMut() -> std::io::Result<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            r => return r.unwrap(),
        }
    }
}

/// `c.output()`, retried on ETXTBSY.
pub fn output(c: &mut Command) -> Output {
    retry_busy(|| c.output())
}

/// `c.spawn()` as a [`Bg`], retried on ETXTBSY.
pub fn spawn(c: &mut Command) -> Bg {
    Bg(retry_busy(|| c.spawn()))
}

/// Runs a launch to completion and parses the app's report; panics with the launcher's
/// stderr if it failed.
pub fn launch_ok(c: &mut Command) -> Report {
    let out = output(c);
    assert!(
        out.status.success(),
        "launch failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Report::parse(&String::from_utf8(out.stdout).unwrap())
}

/// Runs a launch that must be refused; returns its stderr.
pub fn launch_refused(c: &mut Command, code: i32) -> String {
    let out: Output = output(c);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout {:?} stderr {err:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "the app ran: {:?}", out.stdout);
    assert!(err.starts_with("confine-hook: "), "{err:?}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    err
}

/// Waits (test-side polling, bounded) until `cond` holds.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether process `pid` has an inotify watch set up (its fdinfo lists one).
pub fn has_inotify_watch(pid: u32) -> bool {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    rd.flatten().any(|e| {
        fs::read_to_string(e.path())
            .map(|t| t.contains("inotify wd:"))
            .unwrap_or(false)
    })
}

/// The state letter of process `pid` (`R`, `S`, ...).
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}
