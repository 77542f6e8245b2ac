//! refreshd installed the way an administrator installs it — `make install` into a staging
//! directory, then that tree copied into the root of a real systemd booted by the harness
//! ([`crate::systemd`]) — and driven there through its own units: refreshd.socket (socket
//! activation), refreshd.service, refreshd-boot.service, tmpfiles.d.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::systemd::{BootOpts, Systemd};

/// Where the install step puts refreshctl.
pub const REFRESHCTL: &str = "/usr/bin/refreshctl";
/// The directory store the daemon follows, inside: on the instance's disk, so that it is still
/// there after a reboot. [`Installed::publish`] fills it.
pub const STORE: &str = "/var/lib/refreshd-tests-store";

/// The repository's root (the Makefile's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

/// The build the tests run (TARGET_DIR and PROFILE for the Makefile): where `bin` finds it.
pub struct Build {
    pub target: PathBuf,
    pub profile: String,
}

pub fn build() -> Build {
    let built = crate::bin("refreshd")
        .parent()
        .expect("binaries live in a directory")
        .to_owned();
    Build {
        target: built
            .parent()
            .expect("target/PROFILE has a parent")
            .to_owned(),
        profile: built
            .file_name()
            .expect("a profile directory")
            .to_string_lossy()
            .into_owned(),
    }
}

/// `make -C REPO GOAL VAR=VALUE...`, optionally as `user`, with nothing inherited from the
/// environment that could change what make does.
pub fn make(goal: &str, vars: &[(&str, &Path)], user: Option<&crate::TestUser>) -> Output {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--clear-groups")
                .arg("make");
            c
        }
        None => Command::new("make"),
    };
    cmd.arg("--no-print-directory")
        .arg("-C")
        .arg(repo_root())
        .arg(goal);
    for (name, value) in vars {
        let mut arg = std::ffi::OsString::from(format!("{name}="));
        arg.push(value.as_os_str());
        cmd.arg(arg);
    }
    for var in [
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "DESTDIR",
        "PREFIX",
        "PROFILE",
        "ASSETS",
        "TARGET_DIR",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null()).output().expect("running make")
}

/// `make assets` (as root) then `make install DESTDIR=dest` (as `user` if given) of the tests'
/// build, with the generated pages in `assets`; returns the install's output. Panics if
/// `make assets` fails.
pub fn assets_and_install(assets: &Path, dest: &Path, user: Option<&crate::TestUser>) -> Output {
    let b = build();
    let profile = PathBuf::from(&b.profile);
    let mut vars = vec![
        ("PROFILE", profile.as_path()),
        ("TARGET_DIR", b.target.as_path()),
        ("ASSETS", assets),
    ];
    let out = make("assets", &vars, None);
    assert!(
        out.status.success(),
        "make assets failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    vars.push(("DESTDIR", dest));
    make("install", &vars, user)
}

/// `make assets` and `make install DESTDIR=dest` of the debug build; panics with make's output.
/// The generated pages go to a directory of this call's own: tests run in parallel.
pub fn stage(dest: &Path) {
    let assets = tempfile::Builder::new()
        .prefix("refreshd-assets-")
        .tempdir()
        .expect("assets dir");
    let out = assets_and_install(assets.path(), dest, None);
    assert!(
        out.status.success(),
        "make install failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether a systemd world with refreshd installed can be booted here (root, mksquashfs, make,
/// tar, and what the harness needs); says why not (a skip) otherwise.
pub fn can_run() -> bool {
    if !crate::is_root() || !crate::mksquashfs_available() {
        crate::skip("needs root and mksquashfs");
        return false;
    }
    for tool in ["make", "tar"] {
        if crate::find_program(tool).is_none() {
            crate::skip(&format!("{tool} is not installed"));
            return false;
        }
    }
    match crate::systemd::can_run() {
        Ok(()) => true,
        Err(why) => {
            crate::skip(&why);
            false
        }
    }
}

/// A systemd world with refreshd installed by `make install` and its socket enabled.
pub struct Installed {
    pub sd: Systemd,
}

impl Installed {
    /// Boots, installs, and runs `systemctl enable --now refreshd.socket` (and enables
    /// refreshd-boot.service). refreshd itself starts on the first request. `args` go to
    /// /etc/default/refreshd (REFRESHD_ARGS).
    pub fn boot(opts: BootOpts, args: &str) -> Installed {
        let staged = tempfile::Builder::new()
            .prefix("refreshd-staged-")
            .tempdir()
            .expect("staging dir");
        stage(staged.path());
        let sd = Systemd::boot(opts).unwrap_or_else(|e| panic!("{e:#}"));
        let w = Installed { sd };
        // The staged tree is not needed once inside: it goes now, not at the end of the test.
        w.copy_in(staged.path());
        drop(staged);
        w.sd.run_ok(&["mkdir", "-p", STORE]);
        w.sd.write_file(
            "/etc/default/refreshd",
            format!("REFRESHD_ARGS=\"{args}\"\n"),
        );
        w.sd.run_ok(&["systemctl", "daemon-reload"]);
        w.sd.run_ok(&[
            "systemd-tmpfiles",
            "--create",
            "/usr/lib/tmpfiles.d/refreshd.conf",
        ]);
        w.sd.run_ok(&["systemctl", "enable", "--now", "refreshd.socket"]);
        w.sd.run_ok(&["systemctl", "enable", "refreshd-boot.service"]);
        w
    }

    /// Boots again on a disk that already has refreshd installed and enabled (a reboot).
    pub fn reboot(opts: BootOpts) -> Installed {
        assert!(
            opts.disk.is_some(),
            "a reboot needs the disk of the first boot"
        );
        let sd = Systemd::boot(opts).unwrap_or_else(|e| panic!("{e:#}"));
        Installed { sd }
    }

    /// Streams the staged tree into the instance's root: a checkout under /tmp is not visible
    /// inside (the instance has a /tmp of its own).
    fn copy_in(&self, staged: &Path) {
        let tar = Command::new("tar")
            .arg("-C")
            .arg(staged)
            .args(["-cf", "-", "."])
            .output()
            .expect("tar");
        assert!(tar.status.success(), "tar of the staged tree failed");
        let out = self.sd.run_with_input(
            &["tar", "-C", "/", "-xpf", "-", "--no-overwrite-dir"],
            &tar.stdout,
        );
        assert!(
            out.status.success(),
            "unpacking the staged tree inside failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Publishes a .snap (a host file) to the store inside as the next revision of stable.
    pub fn publish(&self, blob: &Path) -> u32 {
        let host = self.sd.results_dir().join("store");
        std::fs::create_dir_all(&host).expect("store dir");
        let e = refreshd_store::publish(&host, blob, "stable").expect("publish");
        self.sd
            .run_ok(&["cp", "-a", "/results/store/.", &format!("{STORE}/")]);
        e.revision
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = vec![REFRESHCTL];
        cmd.extend_from_slice(args);
        self.sd.run(&cmd)
    }

    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "refreshctl {args:?} ({}): {}{}\n--- refreshd's journal ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal("refreshd.service")
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ctl_json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ctl_ok(args)).unwrap()
    }

    pub fn journal(&self, unit: &str) -> String {
        let out = self.sd.run_timeout(
            &["journalctl", "--no-pager", "-o", "cat", "-u", unit],
            Duration::from_secs(20),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `refreshctl watch ID --json` running inside; its NDJSON on stdout.
    pub fn watch(&self, id: u64) -> Watcher {
        let mut child = self
            .sd
            .command(&[
                "timeout",
                "300",
                REFRESHCTL,
                "watch",
                &id.to_string(),
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read on a thread of its own, so that a wait for a state can have a deadline.
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Watcher {
            child,
            lines,
            last: Value::Null,
        }
    }

    /// Until a unit's property has a value, with a deadline (systemd sends no event the
    /// harness can wait on from outside).
    pub fn wait_prop(&self, unit: &str, prop: &str, want: &str, limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            let v = self.sd.show(unit, prop);
            if v == want {
                return;
            }
            assert!(
                Instant::now() < until,
                "{unit}: {prop}={v}, not {want}, after {limit:?}\n{}",
                self.journal(unit)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `refreshctl watch --json` inside, read state by state.
pub struct Watcher {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// The last state read.
    pub last: Value,
}

impl Watcher {
    /// Reads states until `pred` holds (true), or the stream ends or two minutes pass (false).
    pub fn until(&mut self, pred: impl Fn(&Value) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(l) = self.lines.recv_timeout(left) else {
                return false;
            };
            let Ok(v) = serde_json::from_str::<Value>(&l) else {
                continue;
            };
            self.last = v;
            if pred(&self.last) {
                return true;
            }
        }
    }

    /// True while the watch process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Reads to the end and returns the exit status and stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        while self.lines.recv_timeout(Duration::from_secs(60)).is_ok() {}
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (status, err)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The status of a change's task of `kind` in a change's JSON.
pub fn task_status(change: &Value, kind: &str) -> String {
    change["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["kind"] == kind))
        .and_then(|t| t["status"].as_str())
        .unwrap_or("")
        .to_owned()
}
