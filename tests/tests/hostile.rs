//! Hostile local users against the real daemon and the installed setuid confine-hook: a real
//! unprivileged user calls every mutating endpoint (with forged headers and bodies), attacks
//! the runctl markers and the snap's lock, races symlinks through its own data directory while
//! a refresh copies it, uses up its inotify limits, fills the run directory, and feeds the
//! launcher crafted argv[0], environments, an empty argv and closed standard fds. Every attempt
//! must fail safely: a clear one-line refusal, or an app that runs as the user with the
//! allow-listed environment; nothing changed, nothing leaked, no launch inside a critical
//! section. Each test prints `figures: hostile: attempts=N refused=N leaked=0`.
//!
//! The user's own tools are a small C program (`HELPER_C`, built with gcc at run time) run as
//! the user with setpriv, so every attempt carries the user's credentials, not root's.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use refreshd_tests::*;

fn prerequisites() -> bool {
    root_with(
        "real users, cgroups and a setuid launcher",
        &[("gcc", "gcc"), ("curl", "curl"), ("setpriv", "util-linux")],
    )
}

/// The start of every test here: the prerequisites, then one real user per tag; None (after
/// saying why) when the machine cannot run the test.
fn hostile_users<const N: usize>(tags: [&str; N]) -> Option<[TestUser; N]> {
    if !prerequisites() {
        return None;
    }
    TestUser::create_all(tags)
}

/// The hostile user's tools (see the module doc): `inotify`, `stoplock`, `argc0`, `as0`, `closed`,
/// `race`, `fill`, `mkfiles`, `churn`.
const HELPER_C: &str = r#"/* Hostile helper run as an unprivileged user by tests/tests/hostile.rs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void wait_stdin(void) { char b[16]; while (read(0, b, sizeof b) > 0) {} }

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  const char *mode = argv[1];
  if (!strcmp(mode, "inotify")) {
    /* inotify MAXINST [DIR NFILES]: makes up to MAXINST inotify instances (fewer when the
       uid's limit comes first); with DIR, makes NFILES files there and has every instance
       watch all of them, until the uid's watch limit. Prints what it holds and holds it until
       stdin closes. */
    long max = atol(argv[2]), nfiles = argc > 4 ? atol(argv[4]) : 0;
    int n = 0, err_i = 0, err_w = 0;
    long w = 0;
    char p[4096];
    for (long i = 0; i < nfiles; i++) {
      snprintf(p, sizeof p, "%s/w%ld", argv[3], i);
      int fd = open(p, O_WRONLY | O_CREAT, 0600);
      if (fd < 0) { perror(p); return 1; }
      close(fd);
    }
    while (n < max) {
      int fd = inotify_init1(IN_CLOEXEC);
      if (fd < 0) { err_i = errno; break; }
      n++;
      for (long i = 0; i < nfiles && !err_w; i++) {
        snprintf(p, sizeof p, "%s/w%ld", argv[3], i);
        if (inotify_add_watch(fd, p, IN_MODIFY) < 0) err_w = errno; else w++;
      }
    }
    printf("held instances=%d (%s) watches=%ld (%s)\n", n, strerror(err_i), w, strerror(err_w));
    fflush(stdout);
    wait_stdin();
    return 0;
  }
  if (!strcmp(mode, "stoplock")) {
    /* stoplock LAUNCHER: starts the launcher again and again and stops it (SIGSTOP) at varying
       moments until /proc/locks shows it holding a flock; prints its pid and the tries, keeps it
       stopped until stdin closes, then kills it. */
    for (int tries = 1; tries <= 5000; tries++) {
      pid_t c = fork();
      if (c == 0) {
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 1); dup2(nul, 2);
        execl(argv[2], argv[2], (char *)NULL);
        _exit(127);
      }
      struct timespec d = {0, (tries * 37) % 3000 * 1000L};
      nanosleep(&d, NULL);
      kill(c, SIGSTOP);
      int held = 0;
      FILE *f = fopen("/proc/locks", "r");
      char line[512];
      while (f && fgets(line, sizeof line, f)) {
        char kind[32]; int pid;
        if (sscanf(line, "%*d: %31s %*s %*s %d", kind, &pid) == 2 && !strcmp(kind, "FLOCK") &&
            pid == c)
          held = 1;
      }
      if (f) fclose(f);
      if (held) {
        printf("holding %d tries=%d\n", (int)c, tries);
        fflush(stdout);
        wait_stdin();
        kill(c, SIGKILL);
        waitpid(c, NULL, 0);
        return 0;
      }
      kill(c, SIGKILL);
      waitpid(c, NULL, 0);
    }
    printf("never caught tries=5000\n");
    return 1;
  }
  if (!strcmp(mode, "argc0")) {
    /* execve with an empty argv (and envp). */
    char *none[] = {NULL};
    execve(argv[2], none, none);
    perror("execve");
    return 127;
  }
  if (!strcmp(mode, "as0")) {
    /* as0 PATH N VAR=VALUE*N ARGV0 ARGS...: execve with an argv[0] and an environment of
       our choosing (given as arguments, so this helper itself runs without them). */
    int n = atoi(argv[3]);
    char **envp = calloc(n + 1, sizeof *envp);
    for (int i = 0; i < n; i++) envp[i] = argv[4 + i];
    execve(argv[2], argv + 4 + n, envp);
    perror("execve");
    return 127;
  }
  if (!strcmp(mode, "closed")) {
    /* execve PATH with argv[0]=ARGV0 and fds 0, 1, 2 closed (the classic setuid trick). */
    close(0); close(1); close(2);
    execv(argv[2], argv + 3);
    return 127;
  }
  if (!strcmp(mode, "race")) {
    /* race STOP ALT_DIR ALT_FILE PATH...: until STOP exists, keeps exchanging each PATH (a
       directory or a file) with a symlink to ALT_DIR or ALT_FILE and back; writes the number of
       exchanges to STOP.count now and then and prints it at the end. */
    const char *stop = argv[2], *alt_dir = argv[3], *alt_file = argv[4];
    int n = argc - 5;
    char **paths = argv + 5;
    int isdir[64];
    if (n > 64) return 2;
    for (int i = 0; i < n; i++) {
      struct stat st;
      if (lstat(paths[i], &st) != 0) { perror(paths[i]); return 1; }
      isdir[i] = S_ISDIR(st.st_mode);
    }
    char tmp[4096], cnt[4096];
    snprintf(cnt, sizeof cnt, "%s.count", stop);
    long swaps = 0;
    while (access(stop, F_OK) != 0) {
      for (int i = 0; i < n; i++) {
        snprintf(tmp, sizeof tmp, "%s.swap", paths[i]);
        unlink(tmp);
        if (symlink(isdir[i] ? alt_dir : alt_file, tmp) != 0) continue;
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, paths[i], RENAME_EXCHANGE) == 0) {
          swaps++;
          for (volatile int k = 0; k < 2000; k++) {}
          if (renameat2(AT_FDCWD, tmp, AT_FDCWD, paths[i], RENAME_EXCHANGE) == 0) swaps++;
        }
      }
      if ((swaps & 1023) < 2 * n) {
        FILE *f = fopen(cnt, "w"); if (f) { fprintf(f, "%ld\n", swaps); fclose(f); }
      }
    }
    for (int i = 0; i < n; i++) { snprintf(tmp, sizeof tmp, "%s.swap", paths[i]); unlink(tmp); }
    FILE *f = fopen(cnt, "w"); if (f) { fprintf(f, "%ld\n", swaps); fclose(f); }
    printf("swaps=%ld\n", swaps);
    return 0;
  }
  if (!strcmp(mode, "fill")) {
    /* fill DIR bytes|inodes: writes DIR/fill until ENOSPC, or makes empty files DIR/fN until
       no inode is left. */
    char p[4096];
    if (!strcmp(argv[3], "bytes")) {
      snprintf(p, sizeof p, "%s/fill", argv[2]);
      int fd = open(p, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd < 0) { perror(p); return 1; }
      static char buf[65536];
      memset(buf, 'x', sizeof buf);
      long bytes = 0;
      ssize_t r;
      while ((r = write(fd, buf, sizeof buf)) > 0) bytes += r;
      while ((r = write(fd, buf, 1)) > 0) bytes += r;
      int e = errno;
      close(fd);
      printf("filled bytes=%ld (%s)\n", bytes, strerror(e));
      return 0;
    }
    long files = 0;
    for (;;) {
      snprintf(p, sizeof p, "%s/f%ld", argv[2], files);
      int f = open(p, O_WRONLY | O_CREAT | O_EXCL, 0644);
      if (f < 0) break;
      close(f);
      files++;
    }
    printf("filled files=%ld (%s)\n", files, strerror(errno));
    return 0;
  }
  if (!strcmp(mode, "mkfiles")) {
    /* mkfiles DIR N: N empty files, DIR/dK/fI, a thousand per subdirectory. */
    long n = atol(argv[3]);
    char p[4096];
    for (long i = 0; i < n; i++) {
      if (i % 1000 == 0) {
        snprintf(p, sizeof p, "%s/d%ld", argv[2], i / 1000);
        if (mkdir(p, 0755) != 0 && errno != EEXIST) { perror(p); return 1; }
      }
      snprintf(p, sizeof p, "%s/d%ld/f%ld", argv[2], i / 1000, i);
      int f = open(p, O_WRONLY | O_CREAT | O_EXCL, 0644);
      if (f < 0) { perror(p); return 1; }
      close(f);
    }
    printf("made files=%ld\n", n);
    return 0;
  }
  if (!strcmp(mode, "churn")) {
    /* churn DIR N STOP: until STOP exists, chmods and touches every file DIR/dK/fI made by
       mkfiles (so every ctime is always "just now"); prints the passes made when it ends. Its
       first line says it has started. */
    long n = atol(argv[3]), passes = 0;
    char p[4096];
    printf("churning files=%ld\n", n);
    fflush(stdout);
    while (access(argv[4], F_OK) != 0) {
      for (long i = 0; i < n; i++) {
        snprintf(p, sizeof p, "%s/d%ld/f%ld", argv[2], i / 1000, i);
        chmod(p, (passes & 1) ? 0600 : 0644);
        utimensat(AT_FDCWD, p, NULL, 0);
      }
      passes++;
    }
    printf("passes=%ld\n", passes);
    return 0;
  }
  return 2;
}
"#;

/// Builds `HELPER_C` beside the root, runnable by everyone.
fn build_helper(root: &Root) -> PathBuf {
    build_c(root, "hostile-helper", HELPER_C)
}

/// `sh -c SCRIPT` as the user, with `$1...` from `args`; (success, stderr).
fn user_sh(user: &TestUser, dir: &Path, script: &str, args: &[&Path]) -> (bool, String) {
    let out = as_user(user, "/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .current_dir(dir)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    (out.status.success(), text(&out.stderr))
}

/// A snap whose `probe` app writes who it runs as, its argv, its standard fds and its whole
/// environment to the file named by its first argument; `hold` runs until told to exit
/// (as in `tracking_snap`); `hello` says hello.
fn probe_snap(out: &Path, name: &str, version: &str) {
    SnapSrc::new(&format!(
        "name: {name}\nversion: '{version}'\nsummary: Hostile test\napps:\n  {name}:\n    command: bin/hello\n  hold:\n    command: bin/hold\n  probe:\n    command: bin/probe\n"
    ))
    .file("bin/hello", "#!/bin/sh\necho \"hello from $SNAP_NAME $SNAP_REVISION\"\n", 0o755)
    .file(
        "bin/hold",
        "#!/bin/sh\necho \"started $$ $(date +%s%N) $SNAP_REVISION\"\nread line\necho \"exit $(date +%s%N)\"\n",
        0o755,
    )
    .file(
        "bin/probe",
        "#!/bin/sh\nout=\"$1\"\nshift 2>/dev/null\nfds=$(for f in 0 1 2; do echo \"fd$f: $(readlink /proc/$$/fd/$f)\"; done)\n{\n  grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|NoNewPrivs):' /proc/$$/status\n  echo \"$fds\"\n  echo \"args: $*\"\n  echo '--env'\n  env\n} > \"$out\"\n",
        0o755,
    )
    .build(out);
}

/// What the `probe` app wrote.
struct Probe {
    status: Vec<(String, String)>,
    env: Vec<(String, String)>,
}

impl Probe {
    fn read(path: &Path) -> Probe {
        let t = fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("no probe report at {}: {e}", path.display()));
        let (head, env) = t.split_once("--env\n").expect("probe report");
        let pairs = |s: &str, sep: char| {
            s.lines()
                .filter_map(|l| l.split_once(sep))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect::<Vec<_>>()
        };
        Probe {
            status: pairs(head, ':'),
            env: pairs(env, '='),
        }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.status
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// Runs as `uid` in every slot (real, effective, saved, fs), with no capabilities.
    fn assert_user(&self, uid: u32, gid: u32, what: &str) {
        let all = |v: Option<&str>, want: u32| {
            v.is_some_and(|v| v.split_whitespace().all(|x| x == want.to_string()))
        };
        assert!(
            all(self.get("Uid"), uid),
            "{what}: Uid {:?}",
            self.get("Uid")
        );
        assert!(
            all(self.get("Gid"), gid),
            "{what}: Gid {:?}",
            self.get("Gid")
        );
        assert_eq!(self.get("CapEff"), Some("0000000000000000"), "{what}");
        assert_eq!(self.get("CapPrm"), Some("0000000000000000"), "{what}");
        assert!(
            self.get("Groups")
                .unwrap_or("")
                .split_whitespace()
                .all(|g| g == gid.to_string()),
            "{what}: supplementary groups {:?}",
            self.get("Groups")
        );
    }
}

/// Every variable an app may get: the caller's allow-list (confine-hook/src/env.rs) and the
/// launcher's own. Written out here rather than taken from `confine_hook::fuzzing::allowed`, so
/// the launcher is checked against an independent list, not against itself.
fn allowed_var(name: &str) -> bool {
    const ALLOWED: &[&str] = &[
        "TERM",
        "COLORTERM",
        "LANG",
        "LANGUAGE",
        "TZ",
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "XAUTHORITY",
        "XDG_RUNTIME_DIR",
        "XDG_SESSION_TYPE",
        "XDG_CURRENT_DESKTOP",
        "DBUS_SESSION_BUS_ADDRESS",
        "PATH",
        "USER",
        "LOGNAME",
        "HOME",
        "SNAP",
        "SNAP_NAME",
        "SNAP_INSTANCE_NAME",
        "SNAP_INSTANCE_KEY",
        "SNAP_REVISION",
        "SNAP_VERSION",
        "SNAP_DATA",
        "SNAP_COMMON",
        "SNAP_USER_DATA",
        "SNAP_USER_COMMON",
        // The shell running the probe sets these itself.
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    ];
    ALLOWED.contains(&name)
        || name.strip_prefix("LC_").is_some_and(|r| {
            !r.is_empty() && r.bytes().all(|c| c.is_ascii_uppercase() || c == b'_')
        })
}

/// A process the test started as the user, killed (by pid) and reaped on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        // End of input tells a helper to clean up after itself (kill what it started); it gets
        // a moment for that before it is killed.
        drop(self.0.stdin.take());
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills a process the test started indirectly (through a helper), by pid, on drop.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Starts a helper as the user with a pipe on stdin (closing it ends the helper) and returns it
/// with its first line of output.
fn start_helper(user: &TestUser, helper: &Path, args: &[&str]) -> (Bg, String) {
    let mut c = as_user(user, helper)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Bg(c), line.trim().to_owned())
}

/// The state a user must not be able to change: the snaps, the changes and every file in the
/// root but the database (whose pages move on reads) and the daemon's log.
fn observable_state(r: &Path) -> (Value, Value, Vec<(String, String)>) {
    (
        ctl_json(r, &["list", "--json"]),
        ctl_json(r, &["changes", "--all", "--json"]),
        snapshot(r, &["var/lib/refreshd/state.db"]),
    )
}

/// Installs x1 of a probe snap called `name` and returns a file of x2, with a daemon running
/// (the caller keeps it).
fn installed(root: &Root, name: &str, opts: DaemonOpts<'_>) -> (Daemon, PathBuf) {
    let (b1, b2) = (root.aux("p1.snap"), root.aux("p2.snap"));
    probe_snap(&b1, name, "1.0");
    probe_snap(&b2, name, "2.0");
    for b in [&b1, &b2] {
        fs::set_permissions(b, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let d = Daemon::start_with(root.path(), opts);
    let out = ctl(root.path(), &["install", b1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (d, b2)
}

/// Starts a refresh to `blob` without waiting; returns its change id.
fn start_refresh(r: &Path, blob: &Path) -> u64 {
    let out = ctl(r, &["install", "--no-wait", blob.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    newest_change(r)
}

/// Change `id` as the API shows it to root.
fn change(r: &Path, id: u64) -> Value {
    let (status, v) = http(r, "GET", &format!("/v1/changes/{id}"), &[], b"");
    assert_eq!(status, 200, "{v}");
    v
}

/// The status of the task of `kind` in a change snapshot.
fn status_of(change: &Value, kind: &str) -> String {
    task(change, kind)["status"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

// -------------------------------------------------------------------------------------------
// 1. The API

/// One request as the user with curl over the socket: (HTTP status, body).
fn curl_as(
    user: &TestUser,
    r: &Path,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> (u16, String) {
    let mut c = as_user(user, "curl");
    c.args(["-s", "-S", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .arg("--unix-socket")
        .arg(r.join("run/refreshd.socket"));
    for h in headers {
        c.arg("-H").arg(h);
    }
    if let Some(b) = body {
        c.arg("--data-binary").arg(b);
    }
    c.arg(format!("http://localhost{path}"));
    let out = c.output().unwrap();
    let t = text(&out.stdout);
    let (body, code) = t.rsplit_once('\n').unwrap_or(("", &t));
    (
        code.trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl {method} {path}: {t} {}", text(&out.stderr))),
        body.to_owned(),
    )
}

/// Every route that changes state (refreshd/src/api/mod.rs), called by a user outside the admin
/// group — raw over the socket, with forged identity headers and bodies, with the key of an
/// earlier root request, and with methods the routes do not have. Each is refused with a 403
/// and one line naming what it needs (or 405 for a method that does not exist), and nothing
/// changes: not the snaps, not the changes, not one file in the root.
/// Extends foundation.rs `unprivileged_user_reads_but_cannot_change` (install, remove, abort
/// through refreshctl) and `admin_group_members_may_install`.
#[test]
fn every_mutating_endpoint_refuses_a_user() {
    let Some([user, admin]) = hostile_users(["hapi", "hadm"]) else {
        return;
    };
    let mut tally = Tally::new("api");
    let root = Root::new("hostile-api");
    let r = root.path();
    let (_d, b2) = installed(
        &root,
        "hapi",
        DaemonOpts {
            extra_args: vec!["--admin-group".into(), admin.name.clone()],
            ..Default::default()
        },
    );
    // A key root used, which the user will replay: root removes the snap with it and installs
    // it again, so there is a snap to attack and changes to abort.
    let (st, v) = http(
        r,
        "POST",
        "/v1/snaps/hapi",
        &[("Idempotency-Key", "root-key-1")],
        br#"{"action": "remove"}"#,
    );
    assert_eq!(st, 202, "{v}");
    watch_until_ready(r, newest_change(r));
    let out = ctl(r, &["install", root.aux("p1.snap").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = newest_change(r).to_string();
    let before = observable_state(r);

    let blob = format!("@{}", b2.display());
    let forged: &[&str] = &[
        "X-Forwarded-User: root",
        "X-Remote-User: root",
        "X-Uid: 0",
        "X-Forwarded-For: 127.0.0.1",
        "Forwarded: for=localhost;by=root",
        "Authorization: Basic cm9vdDo=",
        "Authorization: Bearer root",
        "Idempotency-Key: root-key-1",
    ];
    let change_path = format!("/v1/changes/{id}");
    // (method, path, extra headers, body)
    let mut calls: Vec<(&str, String, Vec<&str>, Option<String>)> = vec![
        ("POST", "/v1/snaps".into(), vec![], Some(blob.clone())),
        (
            "POST",
            "/v1/snaps?instance-name=hapi_evil".into(),
            vec![],
            Some(blob.clone()),
        ),
        (
            "POST",
            "/v1/snaps".into(),
            vec!["Content-Type: application/json"],
            Some(r#"{"name": "hapi", "channel": "stable"}"#.into()),
        ),
        (
            "POST",
            "/v1/snaps/hapi".into(),
            vec![],
            Some(r#"{"action": "remove"}"#.into()),
        ),
        (
            "POST",
            "/v1/snaps/hapi".into(),
            vec![],
            Some(r#"{"action": "refresh"}"#.into()),
        ),
        (
            "POST",
            "/v1/snaps/hapi".into(),
            vec![],
            Some(r#"{"action": "revert"}"#.into()),
        ),
        (
            "POST",
            "/v1/snaps/hapi".into(),
            vec![],
            Some(r#"{"action": "remove", "uid": 0, "user": "root", "admin": true}"#.into()),
        ),
        (
            "POST",
            "/v1/refresh".into(),
            vec![],
            Some(r#"{"action": "refresh"}"#.into()),
        ),
        (
            "POST",
            "/v1/refresh".into(),
            vec![],
            Some(r#"{"action": "refresh", "names": ["hapi"]}"#.into()),
        ),
        (
            "POST",
            "/v1/refresh".into(),
            vec![],
            Some(r#"{"action": "hold", "names": ["hapi"], "hold": "forever"}"#.into()),
        ),
        (
            "POST",
            "/v1/refresh".into(),
            vec![],
            Some(r#"{"action": "hold", "hold": "forever"}"#.into()),
        ),
        (
            "POST",
            "/v1/refresh".into(),
            vec![],
            Some(r#"{"action": "unhold"}"#.into()),
        ),
        (
            "POST",
            change_path.clone(),
            vec![],
            Some(r#"{"action": "abort"}"#.into()),
        ),
        (
            "POST",
            "/v1/changes/1".into(),
            vec![],
            Some(r#"{"action": "abort"}"#.into()),
        ),
    ];
    // The same again with every forged header at once.
    let with_forged: Vec<_> = calls
        .iter()
        .map(|(m, p, h, b)| {
            let mut h = h.clone();
            h.extend_from_slice(forged);
            (*m, p.clone(), h, b.clone())
        })
        .collect();
    calls.extend(with_forged);
    for (method, path, headers, body) in &calls {
        let (status, body_text) = curl_as(&user, r, method, path, headers, body.as_deref());
        let v: Value = serde_json::from_str(&body_text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {body_text}"));
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 403, "{method} {path} {headers:?}: {body_text}");
        assert!(
            msg.contains(&format!(
                "requires root or membership of group {}",
                admin.name
            )) && !msg.contains('\n'),
            "{method} {path}: {msg}"
        );
        tally.attempt(true);
    }
    // Methods the routes do not have change nothing either.
    for (method, path) in [
        ("PUT", "/v1/snaps/hapi"),
        ("DELETE", "/v1/snaps/hapi"),
        ("PATCH", "/v1/snaps/hapi"),
        ("DELETE", "/v1/changes/1"),
        ("PUT", "/v1/refresh"),
        ("DELETE", "/v1/snaps"),
        ("POST", "/v1/changes"),
        ("POST", "/v1/metrics"),
        ("POST", "/v1/system-info"),
        ("POST", "/v1/snaps/hapi/status"),
        ("POST", "/v2/snaps"),
    ] {
        let (status, body) = curl_as(&user, r, method, path, &[], Some("{}"));
        assert!(
            status == 405 || status == 404,
            "{method} {path}: {status} {body}"
        );
        tally.attempt(true);
    }
    // Through refreshctl, which must not refuse early on the client side only.
    for args in [
        vec!["refresh", "hapi"],
        vec!["refresh"],
        vec!["refresh", "--hold", "forever", "hapi"],
        vec!["refresh", "--unhold"],
        vec!["revert", "hapi"],
        vec!["install", "hapi"],
    ] {
        let out = ctl_as(r, &args, Some((user.uid, user.gid)));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("requires root"), "{args:?}: {err}");
        tally.attempt(true);
    }
    // The socket and its directory are root's: the user cannot put its own in its place.
    let (ok, err) = user_sh(
        &user,
        Path::new("/"),
        "rm -f \"$1\" || exit 1; exit 0",
        &[&r.join("run/refreshd.socket")],
    );
    assert!(!ok && err.contains("Permission denied"), "{err}");
    tally.attempt(true);

    let after = observable_state(r);
    assert_eq!(after.0, before.0, "snaps changed");
    assert_eq!(after.1, before.1, "changes changed");
    assert_eq!(after.2, before.2, "files in the root changed");
    assert!(
        fs::read_dir(r.join("var/lib/refreshd/uploads"))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "an upload was left behind"
    );
}

// -------------------------------------------------------------------------------------------
// 2. Markers and the snap's lock

/// Polls `ctl changes ID` for `span`, failing as soon as `bad` holds for a snapshot; returns the
/// last snapshot. For asserting that something does not happen within a bounded time.
fn never_within(
    r: &Path,
    id: u64,
    span: Duration,
    bad: impl Fn(&Value) -> Option<String>,
) -> Value {
    let end = Instant::now() + span;
    loop {
        let c = change(r, id);
        if let Some(why) = bad(&c) {
            panic!("{why}: {c}");
        }
        if Instant::now() >= end {
            return c;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The user attacks runctl while a refresh waits for its app: creates, replaces (rename over,
/// symlink in place), removes, truncates, hard-links and locks the markers and the lock. Every
/// attempt is refused by the kernel, and the markers stay as they were. Then the user stops
/// (SIGSTOP) its own launcher at the moment it holds the snap's lock, to block the refresh: the
/// refresh does not enter its critical section while the lock is held, retries without
/// flooding the state, and completes once the holder is gone.
/// Extends tracking.rs `unprivileged_user_launches_but_cannot_touch_markers` and
/// confine-hook/tests/user.rs `user_cannot_touch_markers`.
#[test]
fn markers_and_the_lock_resist_a_user() {
    let Some([user]) = hostile_users(["hmk"]) else {
        return;
    };
    let mut tally = Tally::new("markers");
    let root = Root::new("hostile-markers");
    let r = root.path();
    let helper = build_helper(&root);
    let home = user_home(r, &user);
    let (_d, b2) = installed(&root, "hmark", DaemonOpts::default());
    let app = App::launch_as(r, "hmark.hold", Some((user.uid, user.gid)));
    let id = start_refresh(r, &b2);
    let c = watch_until(r, id, |c| status_of(c, "wait-for-apps") == "Wait");
    assert_eq!(status_of(&c, "wait-for-apps"), "Wait", "{c}");

    let runctl = r.join("run/refreshd/runctl");
    let before = snapshot(&runctl, &[]);
    let mine = home.join("mine");
    fs::write(&mine, "x").unwrap();
    std::os::unix::fs::chown(&mine, Some(user.uid), Some(user.gid)).unwrap();
    let attempts: &[&str] = &[
        "touch snap.hmark.inhibited",
        "ln -s /tmp snap.hmark.inhibited",
        "mkdir snap.hmark.inhibited",
        "echo 'reason=refresh' > .snap.hmark.inhibited.refreshd-tmp-1",
        "rm -f snap.hmark.running",
        "mv snap.hmark.running \"$HOME_DIR/stolen\"",
        "mv \"$HOME_DIR/mine\" snap.hmark.running",
        "ln -sf /dev/null snap.hmark.running",
        ": > snap.hmark.running",
        "truncate -s 0 snap.hmark.running",
        "truncate -s 0 snap.hmark.lock",
        "rm -f snap.hmark.lock",
        "mv snap.hmark.lock snap.hmark.lock.old",
        "flock -n snap.hmark.lock true",
        "flock -n -s snap.hmark.lock true",
        "ln snap.hmark.lock \"$HOME_DIR/lock-link\"",
        "ln snap.hmark.running \"$HOME_DIR/running-link\"",
        "touch tracking",
        "rm -f tracking",
    ];
    for script in attempts {
        let out = as_user(&user, "/bin/sh")
            .arg("-c")
            .arg(format!("set -e; {script}"))
            .current_dir(&runctl)
            .env("PATH", "/usr/bin:/bin")
            .env("HOME_DIR", &home)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(
            !out.status.success()
                && (err.contains("Permission denied") || err.contains("Operation not permitted")),
            "{script}: {err}"
        );
        tally.attempt(true);
    }
    assert_eq!(snapshot(&runctl, &[]), before, "runctl changed");
    assert!(runctl.join("snap.hmark.running").exists());
    assert!(!runctl.join("snap.hmark.inhibited").exists());
    assert!(!home.join("lock-link").exists() && !home.join("running-link").exists());
    let c = change(r, id);
    assert_eq!(status_of(&c, "wait-for-apps"), "Wait", "{c}");

    // Hold the snap's lock: a launcher of the user's, stopped while it holds it.
    let launcher = r.join("snap/bin/hmark");
    let (holder, line) = start_helper(&user, &helper, &["stoplock", launcher.to_str().unwrap()]);
    assert!(line.starts_with("holding "), "{line}");
    let _stopped = KillOnDrop(line.split_whitespace().nth(1).unwrap().parse().unwrap());
    println!("the user's launcher holds the lock: {line}");
    tally.attempt(true);
    let released = app.release();
    // While the lock is held the refresh must not enter its critical section.
    let last = never_within(r, id, Duration::from_secs(3), |c| {
        (status_of(c, "wait-for-apps") == "Done" || runctl.join("snap.hmark.inhibited").exists())
            .then(|| "the refresh entered its critical section while a user held the lock".into())
    });
    let retries = task(&last, "wait-for-apps")["retry"]["count"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "while held: wait-for-apps {} (retries {retries}): {}",
        status_of(&last, "wait-for-apps"),
        task(&last, "wait-for-apps")
    );
    // Retrying is fine, flooding is not: a few dozen attempts in 3 s at most.
    assert!(retries <= 12, "{retries} retries in 3 s");
    let t0 = Instant::now();
    drop(holder);
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    println!(
        "refresh done {:?} after the holder went ({} ns after the app exited)",
        t0.elapsed(),
        unix_ns() - released
    );
    let list = ctl_json(r, &["list", "--json"]);
    assert_eq!(list[0]["revision"], "x2", "{list}");
}

// -------------------------------------------------------------------------------------------
// 6. confine-hook's argv and environment

/// A shared object whose constructor leaves a file named after the uids that loaded it.
const EVIL_SO_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void hit(void) {
  char p[4096];
  snprintf(p, sizeof p, "%s/hit-%s-euid%d-uid%d", HITDIR, WHAT, (int)geteuid(), (int)getuid());
  int fd = open(p, O_WRONLY | O_CREAT, 0666);
  if (fd >= 0) close(fd);
}
"#;

fn build_so(root: &Root, hits: &Path, what: &str, out: &Path) {
    let src = root.aux("evil.c");
    fs::write(&src, EVIL_SO_C).unwrap();
    let st = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(out)
        .arg(format!("-DHITDIR=\"{}\"", hits.display()))
        .arg(format!("-DWHAT=\"{what}\""))
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    fs::set_permissions(out, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The user runs the installed setuid launcher with a hostile environment (loader variables, a
/// PATH of its own tools, shell start-up files, every REFRESHD_* and RUST_* variable, a HOME
/// that is root's, near ARG_MAX sizes), crafted argv[0]s (`..`, another root's path, a snap
/// that is not there, non-UTF-8, 100 KB, a newline), an empty argv (argc 0), and closed fds
/// 0, 1, 2. Each either is refused in one line, or runs the app as the user (every uid and gid
/// the user's, no capabilities, no supplementary groups) with only the allow-listed
/// environment. None of the user's code runs as root, and nothing is written anywhere the
/// user could not already write.
/// Extends confine-hook/tests/launch.rs `refuses_bad_names_and_argv0_tricks` and
/// `root_launch_is_tracked_marked_and_env_is_allowlisted`, and confine-hook/tests/user.rs.
#[test]
fn confine_hook_resists_crafted_argv_and_environment() {
    let Some([user]) = hostile_users(["hcf"]) else {
        return;
    };
    let mut tally = Tally::new("confine-hook");
    let root = Root::new("hostile-hook");
    let r = root.path();
    let helper = build_helper(&root);
    let home = user_home(r, &user);
    let (_d, _) = installed(&root, "hprobe", DaemonOpts::default());
    let launcher = r.join("snap/bin/hprobe.probe");
    let hook = r.join(refreshd_runctl::HOOK_PATH);

    // The user's tools: an evil preload, a fake libc, a PATH of its own, start-up files.
    let hits = root.aux("hits");
    fs::create_dir(&hits).unwrap();
    fs::set_permissions(&hits, fs::Permissions::from_mode(0o1777)).unwrap();
    let evil = root.aux("evil");
    fs::create_dir(&evil).unwrap();
    build_so(&root, &hits, "preload", &evil.join("evil.so"));
    build_so(&root, &hits, "libpath", &evil.join("libc.so.6"));
    for tool in ["sh", "env", "grep", "readlink", "id", "cat", "ls"] {
        let p = evil.join(tool);
        fs::write(
            &p,
            format!("#!/bin/sh\n: > {}/hit-path-{tool}\n", hits.display()),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::write(
        evil.join("gconv-modules"),
        format!("module INTERNAL EVIL// {}/evil 1\n", evil.display()),
    )
    .unwrap();
    let startup = evil.join("startup.sh");
    fs::write(&startup, format!(": > {}/hit-startup\n", hits.display())).unwrap();
    // A directory only root may read, for HOME.
    let secret = r.join("secret");
    fs::create_dir(&secret).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(secret.join("key"), "TOP-SECRET").unwrap();

    // A first launch makes the user's directories and the markers; after it, nothing in the
    // root may change.
    let report = home.join("report");
    let run = |argv0: Option<&str>, program: &Path, args: &[String], env: &[(String, String)]| {
        let _ = fs::remove_file(&report);
        let mut c = as_user(&user, &helper);
        c.arg("as0").arg(program).arg(env.len().to_string());
        c.args(env.iter().map(|(k, v)| format!("{k}={v}")));
        c.arg(argv0.unwrap_or(program.to_str().unwrap()));
        c.args(args);
        c.output().unwrap()
    };
    let out = run(None, &launcher, &[report.to_str().unwrap().into()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    Probe::read(&report).assert_user(user.uid, user.gid, "plain launch");
    let skip_paths = [
        "var/lib/refreshd/state.db",
        "run/refreshd/runctl/snap.hprobe.running",
    ];
    let home_rel = home.strip_prefix(r).unwrap().to_str().unwrap().to_owned();
    let mut skip_paths: Vec<&str> = skip_paths.to_vec();
    skip_paths.push(&home_rel);
    let before = snapshot(r, &skip_paths);

    let s = |x: &str| x.to_owned();
    let hostile_env: Vec<(String, String)> = [
        ("LD_PRELOAD", evil.join("evil.so").to_str().unwrap()),
        ("LD_LIBRARY_PATH", evil.to_str().unwrap()),
        ("LD_AUDIT", evil.join("evil.so").to_str().unwrap()),
        ("LD_DEBUG", "all"),
        ("LD_DEBUG_OUTPUT", &format!("{}/lddebug", hits.display())),
        ("LD_PROFILE", "libc.so.6"),
        ("GCONV_PATH", evil.to_str().unwrap()),
        ("LOCPATH", evil.to_str().unwrap()),
        ("NLSPATH", evil.to_str().unwrap()),
        ("TZDIR", evil.to_str().unwrap()),
        ("MALLOC_TRACE", &format!("{}/malloc-trace", hits.display())),
        ("MALLOC_CHECK_", "3"),
        ("GLIBC_TUNABLES", "glibc.malloc.check=3:glibc.rtld.nns=1"),
        ("PATH", evil.to_str().unwrap()),
        ("IFS", "/"),
        ("ENV", startup.to_str().unwrap()),
        ("BASH_ENV", startup.to_str().unwrap()),
        ("SHELL", evil.join("sh").to_str().unwrap()),
        ("HOME", secret.to_str().unwrap()),
        ("TMPDIR", secret.to_str().unwrap()),
        ("PYTHONPATH", evil.to_str().unwrap()),
        ("SNAP", evil.to_str().unwrap()),
        ("SNAP_USER_DATA", secret.to_str().unwrap()),
        ("REFRESHD_FAILPOINTS", "before-do:mount,lose-events"),
        ("REFRESHD_ROOT", evil.to_str().unwrap()),
        ("REFRESHD_SOCKET", evil.join("sock").to_str().unwrap()),
        ("RUST_BACKTRACE", "full"),
        ("RUST_LOG", "trace"),
        ("RUST_MIN_STACK", "1"),
        ("TERM", "xterm"),
        ("LANG", "C.UTF-8"),
        ("LC_ALL", "C"),
        ("XDG_RUNTIME_DIR", secret.to_str().unwrap()),
    ]
    .iter()
    .map(|(k, v)| (s(k), s(v)))
    .collect();
    // Near ARG_MAX: many large variables, and an allow-listed one over the length limit.
    let big: Vec<(String, String)> = (0..600)
        .map(|i| (format!("JUNK{i}"), "j".repeat(2000)))
        .chain([(s("COLORTERM"), "c".repeat(5000))])
        .collect();
    let big_args: Vec<String> = (0..60)
        .map(|i| format!("{i}{}", "a".repeat(10_000)))
        .collect();
    let rep = report.to_str().unwrap().to_owned();

    // (what, argv[0], program, args, environment, expected refusal or None for "runs")
    type Case<'a> = (
        &'a str,
        Option<String>,
        PathBuf,
        Vec<String>,
        Vec<(String, String)>,
        Option<&'a str>,
    );
    let other_root = "/tmp/refreshd-elsewhere/root/snap/bin/hprobe.probe".to_owned();
    // A case the launcher must refuse in one line containing `want`, with no environment.
    let refused = |what, argv0: &str, program: &PathBuf, args: &[&str], want| -> Case {
        let args = args.iter().map(|a| s(a)).collect();
        (
            what,
            Some(s(argv0)),
            program.clone(),
            args,
            vec![],
            Some(want),
        )
    };
    let cases: Vec<Case> = vec![
        (
            "hostile environment",
            None,
            launcher.clone(),
            vec![rep.clone()],
            hostile_env.clone(),
            None,
        ),
        (
            "near ARG_MAX environment",
            None,
            launcher.clone(),
            vec![rep.clone()],
            big.clone(),
            None,
        ),
        (
            "near ARG_MAX arguments",
            None,
            launcher.clone(),
            [vec![rep.clone()], big_args].concat(),
            vec![],
            None,
        ),
        (
            "another root's path",
            Some(other_root),
            hook.clone(),
            vec![rep.clone()],
            vec![],
            None,
        ),
        (
            "explicit form",
            Some(s("confine-hook")),
            hook.clone(),
            vec![s("hprobe.probe"), s("--"), rep.clone()],
            hostile_env.clone(),
            None,
        ),
        refused(
            "dot-dot",
            "../../../usr/lib/refreshd/confine-hook",
            &hook,
            &["hprobe.probe"],
            "\"..\"",
        ),
        refused(
            "dot-dot launcher",
            "/snap/bin/../../etc/hprobe",
            &launcher,
            &[],
            "\"..\"",
        ),
        refused("absent snap", "nosuch.probe", &hook, &[], "not installed"),
        refused(
            "stop form",
            "confine-hook",
            &hook,
            &["--command=stop", "hprobe.probe"],
            "has no app",
        ),
        refused(
            "non-UTF-8",
            "hprobe\u{fffd}",
            &hook,
            &[],
            "not a valid app name",
        ),
        refused(
            "newline",
            "hprobe\n.probe",
            &hook,
            &[],
            "not a valid app name",
        ),
        refused(
            "100 KB argv[0]",
            &"h".repeat(100_000),
            &hook,
            &[],
            "not a valid app name",
        ),
        refused("empty argv[0]", "", &hook, &[], "not a valid app name"),
    ];
    for (what, argv0, program, args, env, refusal) in &cases {
        let out = run(argv0.as_deref(), program, args, env);
        let err = text(&out.stderr);
        match refusal {
            None => {
                assert!(out.status.success(), "{what}: {err}");
                let p = Probe::read(&report);
                p.assert_user(user.uid, user.gid, what);
                for (k, _) in &p.env {
                    assert!(allowed_var(k), "{what}: {k} reached the app");
                }
                assert!(p.env.iter().all(|(_, v)| v.len() <= 4096), "{what}");
                assert_eq!(p.var("HOME"), p.var("SNAP_USER_DATA"), "{what}");
                assert!(
                    p.var("HOME").unwrap().starts_with(home.to_str().unwrap()),
                    "{what}"
                );
                assert_eq!(
                    p.var("PATH"),
                    Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
                    "{what}"
                );
                tally.attempt(false);
            }
            Some(want) => {
                assert_eq!(out.status.code(), Some(1), "{what}: {err}");
                assert!(
                    err.starts_with("confine-hook: ") && err.contains(want),
                    "{what}: {err}"
                );
                assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
                assert!(err.len() < 600, "{what}: {} bytes", err.len());
                tally.attempt(true);
            }
        }
    }
    // Non-UTF-8 bytes proper (the table above holds Rust strings).
    {
        use std::os::unix::ffi::OsStrExt;
        let out = as_user(&user, &helper)
            .args(["as0", hook.to_str().unwrap(), "0"])
            .arg(std::ffi::OsStr::from_bytes(b"hprobe\xff\xfe.probe"))
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(
            out.status.code() == Some(1) && err.contains("not a valid app name"),
            "{err}"
        );
        tally.attempt(true);
    }
    // argc 0: the kernel gives an empty argv[0] (or none); refused either way.
    let out = as_user(&user, &helper)
        .arg("argc0")
        .arg(&launcher)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "argc 0: {err}");
    assert!(
        err.contains("not a valid app name") || err.contains("without argv[0]"),
        "{err}"
    );
    tally.attempt(true);

    // Closed fds 0, 1, 2: a refusal's message must not land in a file the launcher opened (the
    // lock, a directory), and an app must not inherit one of those as a standard fd.
    let lock = r.join("run/refreshd/runctl/snap.hprobe.lock");
    let out = as_user(&user, &helper)
        .args(["closed"])
        .arg(&hook)
        .args(["confine-hook", "hprobe.nosuch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "closed fds, refused");
    assert_eq!(
        fs::metadata(&lock).unwrap().len(),
        0,
        "the error went into the lock"
    );
    tally.attempt(true);
    // The launcher run with fds 0, 1 and 2 closed.
    let closed_launch = || {
        as_user(&user, &helper)
            .args(["closed"])
            .arg(&launcher)
            .arg(&launcher)
            .arg(&report)
            .output()
            .unwrap()
    };
    let out = closed_launch();
    let _ = fs::remove_file(&report);
    assert!(out.status.success(), "closed fds, launch");
    // The probe wrote its report before the launch returned.
    let out = closed_launch();
    assert!(out.status.success());
    let p = Probe::read(&report);
    p.assert_user(user.uid, user.gid, "closed fds");
    for fd in ["fd0", "fd1", "fd2"] {
        let target = p.get(fd).unwrap_or("");
        assert!(
            // glibc gives a setuid program /dev/full or /dev/null for closed standard fds.
            target.is_empty() || target == "/dev/null" || target == "/dev/full",
            "{fd} of the app is {target}"
        );
    }
    assert_eq!(fs::metadata(&lock).unwrap().len(), 0);
    tally.attempt(false);

    // Nothing of the user's ran as root or at all, nothing was written where it could not
    // write, and the secret stayed where it was.
    let hit: Vec<_> = fs::read_dir(&hits)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        hit.is_empty(),
        "the user's code or files were used: {hit:?}"
    );
    assert_eq!(snapshot(r, &skip_paths), before, "the root changed");
    assert!(!home.join("snap/hprobe/x1/key").exists());
}

// -------------------------------------------------------------------------------------------
// 4. inotify limits

/// Installs x1 of the probe snap `name`, then holds a refresh to x2 inside its critical
/// section (parked at lift-inhibition: the marker is there). Returns the daemon holding it and
/// the change. Restarting the daemon without the failpoint finishes the change.
fn section_held_open(root: &Root, name: &str) -> (Daemon, u64) {
    let r = root.path();
    let b2 = {
        let (_d, b2) = installed(root, name, DaemonOpts::default());
        b2
    };
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            failpoints: Some("park-do:lift-inhibition"),
            ..Default::default()
        },
    );
    let id = start_refresh(r, &b2);
    let c = watch_until(r, id, |c| status_of(c, "lift-inhibition") == "Wait");
    assert_eq!(status_of(&c, "lift-inhibition"), "Wait", "{c}");
    assert!(r
        .join(format!("run/refreshd/runctl/snap.{name}.inhibited"))
        .exists());
    (d, id)
}

/// The numbers a `inotify` helper printed: (instances, watches).
fn held(line: &str) -> (u64, u64) {
    let num = |key: &str| {
        line.split(key)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line:?}"))
    };
    (num("instances="), num("watches="))
}

/// How many inotify instances `user` can still make right now.
fn instances_left(user: &TestUser, helper: &Path) -> u64 {
    let (_h, line) = start_helper(user, helper, &["inotify", "1000000"]);
    held(&line).0
}

/// A launch of `LAUNCHER REPORT` as a user, in the background (setpriv execs the launcher: the
/// pid is the launcher's, then the app's).
fn launch_bg(user: &TestUser, launcher: &Path, report: &Path) -> Bg {
    Bg(as_user(user, launcher)
        .arg(report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap())
}

fn inotify_watches(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .matches("inotify wd:")
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Where the fds of process `pid` point.
fn fd_targets(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn inotify_fds(pid: u32) -> usize {
    fd_targets(pid)
        .iter()
        .filter(|t| *t == "anon_inode:inotify")
        .count()
}

/// Polls `cond` until it holds or `limit` passes (for states no event announces).
fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// During a critical section the user (1) starts waiting launches and checks whom their inotify
/// instances are charged to — the user, never root, so launches cannot use up root's instances;
/// (2) uses up its inotify watches (keeping an instance free) and (3) its instances, and
/// launches again each time. Every launch waits — none runs inside the critical section — and
/// all run as the user on the new revision once the section ends. Meanwhile another user's
/// launch waits on inotify as usual, and the daemon (restarted: a new root instance) finishes
/// the refresh. Extends kernel_faults.rs `user_out_of_inotify_instances_waits_without_charging_root`.
#[test]
fn inotify_exhaustion_by_a_user_fails_safe() {
    let Some([user, other]) = hostile_users(["hin", "hio"]) else {
        return;
    };
    let mut tally = Tally::new("inotify");
    let root = Root::new("hostile-inotify");
    let r = root.path();
    let helper = build_helper(&root);
    let home = user_home(r, &user);
    let other_home = user_home(r, &other);
    let (d, id) = section_held_open(&root, "hino");
    let launcher = r.join("snap/bin/hino.probe");
    let marker = r.join("run/refreshd/runctl/snap.hino.inhibited");

    // (1) Waiting launches are charged to the user.
    let n0 = instances_left(&user, &helper);
    assert!(n0 > 8, "the user may make only {n0} inotify instances");
    let mut launches = vec![];
    for i in 0..6 {
        let rep = home.join(format!("report-wait-{i}"));
        let bg = launch_bg(&user, &launcher, &rep);
        let pid = bg.0.id();
        assert!(
            eventually(Duration::from_secs(10), || inotify_watches(pid) > 0),
            "launch {i} does not wait on inotify"
        );
        launches.push((bg, rep));
        tally.attempt(false);
    }
    let n1 = instances_left(&user, &helper);
    println!("the user may make {n0} instances; with 6 launches waiting, {n1}");
    assert_eq!(
        n1,
        n0 - 6,
        "the waiting launches' instances are not charged to the user"
    );

    // (2) Out of watches, one instance left: the launch waits by looking.
    let max_watches: u64 = fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let wdir = root.aux("watched");
    fs::create_dir(&wdir).unwrap();
    std::os::unix::fs::chown(&wdir, Some(user.uid), None).unwrap();
    let inst = n1 - 1;
    let files = max_watches / inst + 16;
    let (watch_hog, line) = start_helper(
        &user,
        &helper,
        &[
            "inotify",
            &inst.to_string(),
            wdir.to_str().unwrap(),
            &files.to_string(),
        ],
    );
    println!("watch hog: {line}");
    assert!(
        line.contains("No space left on device"),
        "the watches were not used up: {line}"
    );
    let rep = home.join("report-nowatch");
    let bg = launch_bg(&user, &launcher, &rep);
    let pid = bg.0.id();
    // It has its instance, but no watch on it.
    assert!(
        eventually(Duration::from_secs(10), || inotify_fds(pid) == 1),
        "the launch made no inotify instance: {:?}",
        fd_targets(pid)
    );
    assert_eq!(inotify_watches(pid), 0);
    launches.push((bg, rep));
    tally.attempt(false);

    // (3) Out of instances as well.
    let (inst_hog, line) = start_helper(&user, &helper, &["inotify", "1000000"]);
    println!("instance hog: {line}");
    assert_eq!(held(&line).0, 0, "an instance was left: {line}");
    let rep = home.join("report-noinstance");
    let bg = launch_bg(&user, &launcher, &rep);
    let pid = bg.0.id();
    // Past its start (it has the runctl directory open), without inotify.
    assert!(
        eventually(Duration::from_secs(10), || fd_targets(pid)
            .iter()
            .any(|t| t.ends_with("run/refreshd/runctl"))),
        "the launch did not get to the wait"
    );
    assert_eq!(inotify_fds(pid), 0);
    launches.push((bg, rep));
    tally.attempt(false);

    // Another user is not affected: its launch waits on inotify.
    let other_rep = other_home.join("report-other");
    let other_bg = launch_bg(&other, &launcher, &other_rep);
    let pid = other_bg.0.id();
    assert!(
        eventually(Duration::from_secs(10), || inotify_watches(pid) > 0),
        "another user's launch cannot wait on inotify"
    );
    launches.push((other_bg, other_rep));

    // Still inside the critical section: every launch is alive and waiting, none ran.
    assert!(!eventually(Duration::from_secs(1), || launches
        .iter()
        .any(|(_, rep)| rep.exists())));
    for (bg, rep) in &mut launches {
        assert!(
            bg.0.try_wait().unwrap().is_none(),
            "a launch gave up: {}",
            rep.display()
        );
        let cg = fs::read_to_string(format!("/proc/{}/cgroup", bg.0.id())).unwrap_or_default();
        assert!(
            !cg.contains("snap.hino"),
            "joined inside the critical section: {cg}"
        );
    }
    assert!(marker.exists());

    // The daemon, restarted (a new inotify instance of root's), ends the section.
    assert!(d.stop().success());
    let _d = Daemon::start(r);
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    for (bg, rep) in &mut launches {
        let st = bg.0.wait().unwrap();
        assert!(st.success(), "{}: {st:?}", rep.display());
        let p = Probe::read(rep);
        let (uid, gid) = if rep.starts_with(&other_home) {
            (other.uid, other.gid)
        } else {
            (user.uid, user.gid)
        };
        p.assert_user(uid, gid, &rep.display().to_string());
        assert_eq!(p.var("SNAP_REVISION"), Some("x2"), "{}", rep.display());
    }
    drop(inst_hog);
    drop(watch_hog);
    assert_eq!(instances_left(&user, &helper), n0, "instances leaked");
}

// -------------------------------------------------------------------------------------------
// 3. Symlink races in the user's data during copy-data

/// The swaps a racer has done so far (it writes them to STOP.count now and then).
fn swaps(stop: &Path) -> u64 {
    fs::read_to_string(stop.with_extension("count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Fails if any file under `dir` holds `canary`, is a device, or is not owned by `uid`.
fn assert_users_own_clean(dir: &Path, uid: u32, canary: &str) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            n += 1;
            assert_eq!(md.uid(), uid, "{} is not the user's", p.display());
            use std::os::unix::fs::FileTypeExt;
            let ft = md.file_type();
            assert!(
                !ft.is_block_device() && !ft.is_char_device(),
                "{}",
                p.display()
            );
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let bytes = fs::read(&p).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(canary),
                    "root-only data was copied into {}",
                    p.display()
                );
            }
        }
    }
    n
}

/// While a refresh carries the user's data over (the `user-data` task, which makes it as the
/// user), the user keeps exchanging directories and files in `~/snap/NAME/x1` with symlinks to
/// a root-only directory and a root-only secret, and has planted links to them; it also tries
/// to hard-link the secret. The refresh completes; the new revision's data holds none of the
/// secret, everything in it is the user's, nothing outside the user's home changed, and no
/// temporary or staging directory is left. Extends copydata/tests/hostile.rs `hostile_tree_under_a_race`
/// (the library alone) and tracking.rs `user_data_is_carried_over_safely` (static links).
#[test]
fn symlink_races_during_copy_data_leak_nothing() {
    let Some([user]) = hostile_users(["hrc"]) else {
        return;
    };
    let mut tally = Tally::new("copy-data-race");
    let root = Root::new("hostile-race");
    let r = root.path();
    let helper = build_helper(&root);
    let home = user_home(r, &user);
    let (_d, b2) = installed(&root, "hrace", DaemonOpts::default());
    // Root's secrets: a file and a directory only root may read.
    let canary = format!("CANARY-{}-{}", std::process::id(), unix_ns());
    let secret = r.join("secret");
    fs::create_dir(&secret).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(secret.join("key"), &canary).unwrap();
    fs::set_permissions(secret.join("key"), fs::Permissions::from_mode(0o600)).unwrap();
    let outside = r.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o700)).unwrap();
    for i in 0..20 {
        fs::write(outside.join(format!("o{i}")), &canary).unwrap();
    }

    // The user's data: a tree big enough to race with, and the victims.
    let out = as_user(&user, r.join("snap/bin/hrace.probe"))
        .arg(home.join("report"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let x1 = home.join("snap/hrace/x1");
    for d in 0..40 {
        let dir = x1.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            fs::write(dir.join(format!("f{f}")), format!("{d}/{f} ").repeat(200)).unwrap();
        }
    }
    for v in ["victim-dir", "sub/victim-dir"] {
        fs::create_dir_all(x1.join(v)).unwrap();
        fs::write(x1.join(v).join("mine"), "mine").unwrap();
    }
    fs::write(x1.join("victim-file"), "mine").unwrap();
    fs::write(x1.join("sub/victim-file"), "mine").unwrap();
    std::os::unix::fs::symlink(secret.join("key"), x1.join("planted-secret")).unwrap();
    std::os::unix::fs::symlink(&outside, x1.join("planted-outside")).unwrap();
    let st = Command::new("chown")
        .arg("-hR")
        .arg(format!("{}:{}", user.uid, user.gid))
        .arg(&x1)
        .status()
        .unwrap();
    assert!(st.success());
    tally.attempt(true);
    tally.attempt(true);
    // A hard link to the secret: the kernel refuses it (fs.protected_hardlinks).
    let (ok, err) = user_sh(&user, &x1, "ln \"$1\" hard-secret", &[&secret.join("key")]);
    assert!(!ok, "the user hard-linked root's secret: {err}");
    tally.attempt(true);

    let outside_before = snapshot(r, &["home", "var", "snap", "run", "usr"]);
    // In the home: the racer (the user) writes its count beside it.
    let stop = home.join("stop-racing");
    let x1s = |v: &str| x1.join(v).to_str().unwrap().to_owned();
    let victims = [
        "victim-dir",
        "victim-file",
        "sub/victim-dir",
        "sub/victim-file",
    ];
    let racer = as_user(&user, &helper)
        .arg("race")
        .arg(&stop)
        .arg(&outside)
        .arg(secret.join("key"))
        .args(victims.map(x1s))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut racer = Bg(racer);
    for _ in victims {
        tally.attempt(true);
    }
    assert!(
        eventually(Duration::from_secs(20), || swaps(&stop) >= 1000),
        "the racer does not race"
    );

    // The racer goes on all through the refresh (it was seen racing above and stops only when
    // told to below).
    let id = start_refresh(r, &b2);
    let done = watch_until_ready(r, id);
    fs::write(&stop, "").unwrap();
    let mut line = String::new();
    BufReader::new(racer.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let total: u64 = line
        .trim()
        .strip_prefix("swaps=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("racer: {line}"));
    println!("symlink swaps during the refresh: {total}");
    println!("user-data: {:?}", task_log(&done, "user-data"));
    assert_eq!(done["status"], "Done", "{done}");
    tally.extra = format!(" swaps={total}");

    let x2 = home.join("snap/hrace/x2");
    let n = assert_users_own_clean(&x2, user.uid, &canary);
    assert!(n > 2000, "only {n} entries were copied");
    assert_eq!(fs::metadata(&x2).unwrap().uid(), user.uid);
    // The planted links were carried as links, not followed.
    assert_eq!(
        fs::read_link(x2.join("planted-secret")).unwrap(),
        secret.join("key")
    );
    assert_eq!(fs::read_link(x2.join("planted-outside")).unwrap(), outside);
    assert_eq!(
        snapshot(r, &["home", "var", "snap", "run", "usr"]),
        outside_before,
        "something outside the user's home changed"
    );
    assert_eq!(fs::read_to_string(secret.join("key")).unwrap(), canary);
    assert!(temporaries(&home).is_empty(), "{:?}", temporaries(&home));
    assert!(
        !fs::read_dir(home.join("snap/hrace"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".refreshd-")),
        "a temporary or staging directory was left in the user's home"
    );
}

// -------------------------------------------------------------------------------------------
// 5. A full run directory

/// Mounts a small tmpfs at `ROOT/run` with a world-writable sticky `run/lock` in it, as on a
/// system where `/run/lock` is a directory of the `/run` tmpfs. The root's guard unmounts it.
fn small_run(r: &Path) -> bool {
    let run = r.join("run");
    fs::create_dir_all(&run).unwrap();
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=256k,nr_inodes=64,mode=0755",
            "tmpfs",
        ])
        .arg(&run)
        .status()
        .unwrap();
    if !st.success() {
        return false;
    }
    let lock = run.join("lock");
    fs::create_dir(&lock).unwrap();
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o1777)).unwrap();
    true
}

/// The revision `current` names for snap `name`.
fn current(r: &Path, name: &str) -> String {
    fs::read_link(r.join(format!("snap/{name}/current")))
        .unwrap()
        .display()
        .to_string()
}

/// The user fills a run directory it can write (`run/lock`, sticky and world-writable) that
/// shares a small tmpfs with `run/refreshd`: first its bytes, then its inodes. With the bytes
/// gone, launches still work (markers are empty files) and a refresh stops before its critical
/// section, undone, saying it cannot write the inhibition marker and what to do; with the
/// inodes gone too, a launch is refused in one line (it cannot mark itself running) and a
/// refresh stops the same way; the daemon still starts (the `tracking` file is only for
/// people). Nothing enters a critical section without its marker. Once the space is freed,
/// launches and the refresh go through. Filled during a critical section, launches keep
/// waiting and the section still ends.
#[test]
fn a_full_run_dir_fails_safe() {
    let Some([user]) = hostile_users(["hfl"]) else {
        return;
    };
    let mut tally = Tally::new("full-run");
    let root = Root::new("hostile-full");
    let r = root.path();
    if !small_run(r) {
        skip("cannot mount a tmpfs");
        return;
    }
    let helper = build_helper(&root);
    let home = user_home(r, &user);
    let (d, b2) = installed(&root, "hfill", DaemonOpts::default());
    let launcher = r.join("snap/bin/hfill.probe");
    let rep = home.join("report");
    let launch = || {
        let _ = fs::remove_file(&rep);
        as_user(&user, &launcher).arg(&rep).output().unwrap()
    };
    let out = launch();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lockdir = r.join("run/lock");
    let runctl = r.join("run/refreshd/runctl");
    let inhibited = runctl.join("snap.hfill.inhibited");
    // A refresh stopped for want of space: undone before its critical section.
    let refused_refresh = |want: &str| {
        let id = start_refresh(r, &b2);
        let done = watch_until_ready(r, id);
        assert_eq!(done["status"], "Error", "{done}");
        let err = done["error"].as_str().unwrap_or_default();
        assert!(err.contains(want) && err.contains("free space"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert_eq!(status_of(&done, "wait-for-apps"), "Error", "{done}");
        for t in ["setup-data", "link", "lift-inhibition"] {
            assert_eq!(status_of(&done, t), "Hold", "{t} ran: {done}");
        }
        assert_eq!(current(r, "hfill"), "x1");
        assert!(!inhibited.exists());
        assert!(!home.join("snap/hfill/x2").exists());
        println!("refresh refused: {err}");
    };

    // The bytes.
    let out = as_user(&user, &helper)
        .args(["fill", lockdir.to_str().unwrap(), "bytes"])
        .output()
        .unwrap();
    println!("the user: {}", text(&out.stdout).trim());
    assert!(text(&out.stdout).contains("No space left on device"));
    let out = launch();
    assert!(out.status.success(), "bytes full: {}", text(&out.stderr));
    Probe::read(&rep).assert_user(user.uid, user.gid, "bytes full");
    tally.attempt(false);
    refused_refresh("cannot write the inhibition marker");
    tally.attempt(true);

    // The inodes.
    let out = as_user(&user, &helper)
        .args(["fill", lockdir.to_str().unwrap(), "inodes"])
        .output()
        .unwrap();
    println!("the user: {}", text(&out.stdout).trim());
    let out = launch();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "inodes full: {err}");
    assert!(
        err.starts_with("confine-hook: cannot create")
            && err.contains("No space left on device")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(!rep.exists(), "the app ran");
    tally.attempt(true);
    refused_refresh("cannot create");
    tally.attempt(true);
    // The daemon starts on a full run directory and says what it could not write.
    drop(d);
    let d = Daemon::start(r);
    assert!(d.log_text().contains("cannot write"), "{}", d.log_text());
    tally.attempt(true);

    // Space freed (by root, as an administrator would): everything works again.
    for e in fs::read_dir(&lockdir).unwrap().flatten() {
        fs::remove_file(e.path()).unwrap();
    }
    let out = launch();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = start_refresh(r, &b2);
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(current(r, "hfill"), "x2");
    let out = launch();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let p = Probe::read(&rep);
    p.assert_user(user.uid, user.gid, "after");
    assert_eq!(p.var("SNAP_REVISION"), Some("x2"));

    // Filled during a critical section: launches keep waiting (the marker is there, and
    // removing it needs no space), none runs inside it, and the section ends.
    let b3 = root.aux("p3.snap");
    probe_snap(&b3, "hfill", "3.0");
    drop(d);
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            failpoints: Some("park-do:lift-inhibition"),
            ..Default::default()
        },
    );
    let id = start_refresh(r, &b3);
    let c = watch_until(r, id, |c| status_of(c, "lift-inhibition") == "Wait");
    assert_eq!(status_of(&c, "lift-inhibition"), "Wait", "{c}");
    assert!(inhibited.exists());
    for kind in ["bytes", "inodes"] {
        let out = as_user(&user, &helper)
            .args(["fill", lockdir.to_str().unwrap(), kind])
            .output()
            .unwrap();
        println!("the user, in the section: {}", text(&out.stdout).trim());
    }
    let _ = fs::remove_file(&rep);
    let mut waiting = launch_bg(&user, &launcher, &rep);
    let pid = waiting.0.id();
    assert!(
        eventually(Duration::from_secs(10), || inotify_watches(pid) > 0
            || !Path::new(&format!("/proc/{pid}")).exists()),
        "the launch neither waits nor ends"
    );
    assert!(
        waiting.0.try_wait().unwrap().is_none(),
        "a launch inside the critical section gave up"
    );
    assert!(
        !eventually(Duration::from_secs(1), || rep.exists()),
        "ran inside the section"
    );
    tally.attempt(true);
    drop(d);
    let _d = Daemon::start(r);
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(current(r, "hfill"), "x3");
    // After the section the launch goes on: it runs x3, or (no inode left for its running
    // marker) is refused in one line. Either way, only now.
    let out = waiting.0.wait().unwrap();
    if out.success() {
        assert_eq!(Probe::read(&rep).var("SNAP_REVISION"), Some("x3"));
    } else {
        assert_eq!(out.code(), Some(1));
        assert!(!rep.exists());
    }
    println!("the launch held through the section ended: {out:?}");
}

// -------------------------------------------------------------------------------------------
// 6. Root's deletions in users' trees

/// Runs `sh -c SCRIPT` as the user in their home; panics with its stderr when it fails.
fn user_do(user: &TestUser, home: &Path, script: &str, args: &[&Path]) {
    let (ok, err) = user_sh(user, home, script, args);
    assert!(ok, "as {}: {script}: {err}", user.name);
}

/// A root-only directory with a `precious` file in each of `x1`..`x9` (and the same below
/// `NAME/`), for a user's symlinks to point at.
fn victim(r: &Path, tag: &str, name: &str) -> PathBuf {
    let v = r.join(tag);
    for rev in 1..10 {
        for d in [
            v.join(format!("x{rev}")),
            v.join(name).join(format!("x{rev}")),
        ] {
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("precious"), "root's").unwrap();
        }
    }
    fs::set_permissions(&v, fs::Permissions::from_mode(0o700)).unwrap();
    v
}

/// Every `precious` file of a victim is still there.
fn victim_intact(v: &Path, name: &str) -> bool {
    (1..10).all(|rev| {
        [
            v.join(format!("x{rev}")),
            v.join(name).join(format!("x{rev}")),
        ]
        .iter()
        .all(|d| fs::read_to_string(d.join("precious")).is_ok_and(|s| s == "root's"))
    })
}

/// A user swaps `~/snap/NAME`, then `~/snap` itself, for a symlink to a directory they cannot
/// read, while a refresh stands in its last steps; the refresh is then aborted and undone.
/// Later the snap is refreshed with old revisions discarded, and removed, with the links in
/// place. Root's undo, cleanup and removal never delete through the links: the victims are
/// intact every time, and the user's own tree is where they left it.
#[test]
fn root_never_deletes_through_a_users_symlink() {
    let Some([user]) = hostile_users(["hdel"]) else {
        return;
    };
    let mut tally = Tally::new("delete-through-symlink");
    let root = Root::new("hostile-delete");
    let r = root.path();
    let home = user_home(r, &user);
    let name = "hdel";
    let v1 = victim(r, "victim-one", name);
    let v2 = victim(r, "victim-two", name);
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            failpoints: Some("park-do:post-refresh-hook"),
            ..Default::default()
        },
    );
    let blob = |v: u32| {
        let b = root.aux(&format!("d{v}.snap"));
        probe_snap(&b, name, &format!("{v}.0"));
        fs::set_permissions(&b, fs::Permissions::from_mode(0o644)).unwrap();
        b
    };
    let out = ctl(r, &["install", blob(1).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let probe = |to: &str| {
        let out = as_user(&user, r.join(format!("snap/bin/{name}.probe")))
            .arg(home.join(to))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    probe("report");

    // The swaps, each while a refresh is parked after its critical section, then the abort.
    let swaps: [(&str, &str); 2] = [
        (
            "mv snap/hdel snap/hdel.real && ln -s \"$1\" snap/hdel",
            "rm snap/hdel && mv snap/hdel.real snap/hdel",
        ),
        (
            "mv snap snap.real && ln -s \"$1\" snap",
            "rm snap && mv snap.real snap",
        ),
    ];
    for (i, ((swap, undo), target)) in swaps.iter().zip([&v1, &v2]).enumerate() {
        let id = start_refresh(r, &blob(2 + i as u32));
        watch_until(r, id, |c| status_of(c, "post-refresh-hook") == "Wait");
        // The new revision runs: the user has data of it too.
        probe("report");
        user_do(&user, &home, swap, &[target]);
        let out = ctl(r, &["abort", &id.to_string()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let done = watch_until_ready(r, id);
        println!("undone ({swap}): {}", done["status"]);
        assert!(
            victim_intact(target, name),
            "the undo deleted through the user's link ({swap}): {:?}",
            fs::read_dir(target).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        );
        tally.attempt(true);
        user_do(&user, &home, undo, &[]);
    }
    drop(d);

    // Cleanup of old revisions, and removal, with `~/snap/NAME` a link.
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec!["--retain".into(), "2".into()],
            ..Default::default()
        },
    );
    user_do(&user, &home, swaps[0].0, &[&v1]);
    for v in 4..7 {
        let out = ctl(r, &["install", blob(v).to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert!(
        victim_intact(&v1, name),
        "cleanup deleted through the user's link"
    );
    tally.attempt(true);
    let out = ctl(r, &["remove", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        victim_intact(&v1, name),
        "remove deleted through the user's link"
    );
    assert!(
        home.join("snap/hdel.real").is_dir(),
        "the user's own directory (moved away) is theirs"
    );
    tally.attempt(true);
}

// -------------------------------------------------------------------------------------------
// 7. One user's tree and everyone's refresh

/// `text` into `PATH` as the user (so the file is theirs).
fn user_write(user: &TestUser, home: &Path, path: &Path, text: &str) {
    user_do(user, home, &format!("printf %s '{text}' > \"$1\""), &[path]);
}

/// Users make their own trees odd: B turns `~/snap/NAME` into a symlink to a directory of
/// theirs, C plants a symlink where the next revision's data directory goes. The refresh still
/// completes for everyone: the system's data and A's are carried over, B's too (as B, through
/// B's own link), C's link is left as C made it and C's own launch says what is wrong. Then
/// directories of the next revision left behind by an earlier change — the system's, and one of
/// A's not made for this refresh — are never taken as complete: the refresh makes them afresh
/// from the data as it is now.
#[test]
fn one_users_tree_fails_no_refresh_and_no_stale_copy_is_taken() {
    let Some([a, b, c]) = hostile_users(["hsta", "hstb", "hstc"]) else {
        return;
    };
    let mut tally = Tally::new("stale-and-blocked-data");
    let root = Root::new("hostile-stale");
    let r = root.path();
    let name = "hstale";
    let homes = [user_home(r, &a), user_home(r, &b), user_home(r, &c)];
    let (home_a, home_b, home_c) = (&homes[0], &homes[1], &homes[2]);
    let (_d, b2) = installed(&root, name, DaemonOpts::default());
    let b3 = root.aux("p3.snap");
    probe_snap(&b3, name, "3.0");
    fs::set_permissions(&b3, fs::Permissions::from_mode(0o644)).unwrap();
    for (u, h) in [(&a, home_a), (&b, home_b), (&c, home_c)] {
        let out = as_user(u, r.join(format!("snap/bin/{name}.probe")))
            .arg(h.join("report"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let data = |h: &Path, rev: &str| h.join(format!("snap/{name}/{rev}/data"));
    let sys = |rev: &str| r.join(format!("var/snap/{name}/{rev}/sys"));
    user_write(&a, home_a, &data(home_a, "x1"), "A1");
    user_write(&b, home_b, &data(home_b, "x1"), "B1");
    fs::write(sys("x1"), "S1").unwrap();
    user_do(
        &b,
        home_b,
        &format!("mv snap/{name} snap/{name}.real && ln -s {name}.real snap/{name}"),
        &[],
    );
    user_do(
        &c,
        home_c,
        &format!("ln -s /nonexistent snap/{name}/x2"),
        &[],
    );

    let id = start_refresh(r, &b2);
    let done = watch_until_ready(r, id);
    assert_eq!(
        done["status"], "Done",
        "one user's tree failed the refresh for everyone: {done}"
    );
    tally.attempt(true);
    let log = task_log(&done, "user-data").join("\n");
    println!("user-data: {log}");
    assert_eq!(fs::read_to_string(sys("x2")).unwrap(), "S1");
    assert_eq!(fs::read_to_string(data(home_a, "x2")).unwrap(), "A1");
    assert_eq!(
        fs::read_to_string(home_b.join(format!("snap/{name}.real/x2/data"))).unwrap(),
        "B1",
        "B's data was not carried over (through B's own link, as B)"
    );
    tally.attempt(true);
    assert_eq!(
        fs::read_link(home_c.join(format!("snap/{name}/x2"))).unwrap(),
        Path::new("/nonexistent"),
        "root changed C's tree"
    );
    assert!(
        log.contains(&format!("{}: not ready", c.name)) && log.contains("is not a directory"),
        "{log}"
    );
    // C's own launch says what is wrong, in one line, and runs nothing.
    let out = as_user(&c, r.join(format!("snap/bin/{name}.probe")))
        .arg(home_c.join("report2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a directory"),
        "{}",
        text(&out.stderr)
    );
    assert!(!home_c.join("report2").exists());
    tally.attempt(true);

    // Stale directories of x3: the system's (a failed change left it) and A's (not made for
    // the refresh that now comes), each with old content; then newer data in x2.
    fs::create_dir_all(sys("x3").parent().unwrap()).unwrap();
    fs::write(sys("x3"), "STALE").unwrap();
    user_do(&a, home_a, &format!("mkdir snap/{name}/x3"), &[]);
    user_write(&a, home_a, &data(home_a, "x3"), "STALE");
    fs::write(sys("x2"), "S2").unwrap();
    user_write(&a, home_a, &data(home_a, "x2"), "A2");
    let id = start_refresh(r, &b3);
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(
        fs::read_to_string(sys("x3")).unwrap(),
        "S2",
        "a stale system data directory was taken as complete"
    );
    tally.attempt(true);
    assert_eq!(
        fs::read_to_string(data(home_a, "x3")).unwrap(),
        "A2",
        "a stale user data directory was taken as complete"
    );
    tally.attempt(true);
    assert!(temporaries(home_a).is_empty(), "{:?}", temporaries(home_a));
}

// -------------------------------------------------------------------------------------------
// 8. No user holds up another user's launches

/// Launches `NAME` (its hello app) as `user` every few ms until `until` exists; returns every
/// launch's start (unix ns) and duration.
fn launch_loop(user: &TestUser, launcher: &Path, until: &Path) -> Vec<(u128, Duration)> {
    let mut took = vec![];
    while !until.exists() {
        let (at, t) = (unix_ns(), Instant::now());
        let out = as_user(user, launcher).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        took.push((at, t.elapsed()));
        std::thread::sleep(Duration::from_millis(5));
    }
    took
}

/// A refresh while user V launches the app in a loop; returns V's longest launch and the
/// refresh's critical section in ms (from its task logs).
fn refresh_under_launches(r: &Path, v: &TestUser, launcher: &Path, blob: &Path) -> (Duration, f64) {
    let stop = r.parent().unwrap().join(format!("stop-{}", unix_ns()));
    let (took, done) = std::thread::scope(|s| {
        let looper = s.spawn(|| launch_loop(v, launcher, &stop));
        std::thread::sleep(Duration::from_millis(200));
        let id = start_refresh(r, blob);
        let done = watch_until_ready(r, id);
        fs::write(&stop, "").unwrap();
        (looper.join().unwrap(), done)
    });
    assert_eq!(done["status"], "Done", "{done}");
    let entered = logged_at(&done, "wait-for-apps", "critical section entered").unwrap();
    let left = logged_at(&done, "lift-inhibition", "critical section left").unwrap();
    let section = (left - entered) as f64 / 1e6;
    let mut by_length = took.clone();
    by_length.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    for (at, d) in by_length.iter().take(3) {
        println!(
            "  launch at {:+.1} ms from the section's entry took {:.1} ms",
            (*at as f64 - entered as f64) / 1e6,
            d.as_secs_f64() * 1e3
        );
    }
    let tasks = done["tasks"].as_array().cloned().unwrap_or_default();
    if let Some(t) = tasks.iter().find(|t| t["kind"] == "user-data") {
        println!("  user-data: {}", t["log"]);
    }
    (by_length[0].1, section)
}

/// User U keeps chmod-ing and touching the 100,000 files of their snap data, so every one of
/// them changed "just now", while the snap is refreshed; user V launches the app in a loop
/// meanwhile. V's longest launch stays within twice the longest of an undisturbed refresh
/// (measured the same way, in the same run), and so does the critical section: U's data is
/// U's own business, made by U outside it.
#[test]
fn one_users_churn_never_stretches_another_users_launches() {
    let Some([u, v]) = hostile_users(["hchu", "hchv"]) else {
        return;
    };
    let mut tally = Tally::new("churn");
    let root = Root::new("hostile-churn");
    let r = root.path();
    let helper = build_helper(&root);
    let name = "hchurn";
    let (home_u, home_v) = (user_home(r, &u), user_home(r, &v));
    // As on a real system, the run directory (markers, locks) is a tmpfs, not the disk that
    // users' homes are on.
    fs::create_dir_all(r.join("run")).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs"])
        .arg(r.join("run"))
        .status()
        .unwrap();
    assert!(
        st.success(),
        "cannot mount a tmpfs at {}",
        r.join("run").display()
    );
    let (_d, b2) = installed(&root, name, DaemonOpts::default());
    let blob3 = root.aux("p3.snap");
    probe_snap(&blob3, name, "3.0");
    fs::set_permissions(&blob3, fs::Permissions::from_mode(0o644)).unwrap();
    let launcher = r.join(format!("snap/bin/{name}"));
    for (who, h) in [(&u, &home_u), (&v, &home_v)] {
        let out = as_user(who, r.join(format!("snap/bin/{name}.probe")))
            .arg(h.join("report"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    const FILES: &str = "100000";
    let files = home_u.join(format!("snap/{name}/x1/many"));
    user_do(&u, &home_u, "mkdir \"$1\"", &[&files]);
    let out = as_user(&u, &helper)
        .args(["mkfiles", files.to_str().unwrap(), FILES])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let (calm, calm_section) = refresh_under_launches(r, &v, &launcher, &b2);
    // U's data now lives in x2 (U's own copy, made after the section): churn that.
    let files = home_u.join(format!("snap/{name}/x2/many"));
    assert!(files.is_dir(), "U's data was not carried to x2");
    let stop = home_u.join("stop-churning");
    let (churner, line) = start_helper(
        &u,
        &helper,
        &[
            "churn",
            files.to_str().unwrap(),
            FILES,
            stop.to_str().unwrap(),
        ],
    );
    assert!(line.starts_with("churning"), "{line}");
    let (churned, churned_section) = refresh_under_launches(r, &v, &launcher, &blob3);
    fs::write(&stop, "").unwrap();
    drop(churner);
    tally.attempt(false);
    let floor = Duration::from_millis(50);
    let ratio = churned.as_secs_f64() / calm.max(floor).as_secs_f64();
    println!(
        "another user's longest launch during a refresh: {:.1} ms undisturbed, {:.1} ms while a user churns {FILES} files: ratio {ratio:.2}; critical section {calm_section:.1} ms and {churned_section:.1} ms",
        calm.as_secs_f64() * 1e3,
        churned.as_secs_f64() * 1e3
    );
    tally.extra = format!(
        " launch_ratio_x100={} section_calm_us={} section_churned_us={}",
        (ratio * 100.0) as u64,
        (calm_section * 1e3) as u64,
        (churned_section * 1e3) as u64
    );
    assert!(
        ratio <= 2.0,
        "a user's churn stretched another user's launches {ratio:.2}x"
    );
    // The section still syncs the state to the disk the churn keeps busy, so it pays for the
    // disk's contention; what must not happen is that it grows with the user's files (it was
    // 17 times longer when the section copied users' data).
    assert!(
        churned_section <= 4.0 * calm_section.max(50.0),
        "a user's churn stretched the critical section: {churned_section:.1} ms against {calm_section:.1} ms"
    );
}

/// User U stops their own launcher while it holds the snap's lock. User V's launches go on as
/// if nothing happened, and so do U's other launches; a refresh waits for the stopped launch
/// (as it would for a running app) and completes once it is gone.
#[test]
fn a_users_stopped_launcher_holds_up_no_other_launch() {
    let Some([u, v]) = hostile_users(["hslu", "hslv"]) else {
        return;
    };
    let mut tally = Tally::new("stopped-launcher");
    let root = Root::new("hostile-stopped");
    let r = root.path();
    let helper = build_helper(&root);
    let name = "hstop";
    user_home(r, &u);
    user_home(r, &v);
    let (_d, b2) = installed(&root, name, DaemonOpts::default());
    let launcher = r.join(format!("snap/bin/{name}"));
    let (holder, line) = start_helper(&u, &helper, &["stoplock", launcher.to_str().unwrap()]);
    assert!(line.starts_with("holding "), "{line}");
    let _stopped = KillOnDrop(line.split_whitespace().nth(1).unwrap().parse().unwrap());
    println!("U's launcher is stopped holding the lock: {line}");
    for who in [&v, &u] {
        let t = Instant::now();
        let c = std::cell::RefCell::new(
            as_user(who, &launcher)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let finished = eventually(Duration::from_secs(10), || {
            c.borrow_mut().try_wait().unwrap().is_some()
        });
        let mut c = c.into_inner();
        if !finished {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(
            finished,
            "{}'s launch waited for U's stopped launcher",
            who.name
        );
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        println!("{}'s launch took {:?}", who.name, t.elapsed());
        tally.attempt(true);
    }
    let id = start_refresh(r, &b2);
    let last = never_within(r, id, Duration::from_secs(2), |c| {
        (status_of(c, "wait-for-apps") == "Done").then(|| {
            "the refresh entered its critical section past a launch holding the lock".into()
        })
    });
    println!("while held: {}", task(&last, "wait-for-apps"));
    // V still launches while the refresh waits.
    let out = as_user(&v, &launcher).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(holder);
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
}

// -------------------------------------------------------------------------------------------
// 9. What root makes on a user's behalf

/// A user's launch is the first to need the snap's lock, its `running` marker and its cgroups,
/// so the setuid launcher makes them, as root. They are root's group's too, not the user's
/// (a setuid program keeps its caller's group unless it changes it): nothing a user's group
/// could write or claim.
#[test]
fn what_root_makes_for_a_users_launch_is_roots() {
    let Some([user]) = hostile_users(["hgid"]) else {
        return;
    };
    let mut tally = Tally::new("root-made-group");
    let root = Root::new("hostile-gid");
    let r = root.path();
    let home = user_home(r, &user);
    let (_d, _) = installed(&root, "hgid", DaemonOpts::default());
    let out = as_user(&user, r.join("snap/bin/hgid.probe"))
        .arg(home.join("report"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runctl = r.join("run/refreshd/runctl");
    let mut paths: Vec<PathBuf> = ["snap.hgid.lock", "snap.hgid.running"]
        .iter()
        .map(|n| runctl.join(n))
        .collect();
    paths.extend(cgroup_parents(r).into_iter().map(|p| p.join("snap.hgid")));
    // Read at once: the running marker goes when the app has exited (whenever that is seen).
    let made: Vec<(PathBuf, fs::Metadata)> = paths
        .into_iter()
        .filter_map(|p| fs::metadata(&p).ok().map(|m| (p, m)))
        .collect();
    assert!(!made.is_empty(), "the launch made nothing as root");
    for (p, md) in &made {
        println!("{}: uid {} gid {}", p.display(), md.uid(), md.gid());
        assert_eq!(
            (md.uid(), md.gid()),
            (0, 0),
            "{} was made with the launching user's group",
            p.display()
        );
        tally.attempt(true);
    }
}
