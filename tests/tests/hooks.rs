//! A snap's hooks in refreshes, on the real system: pre-refresh runs from the old revision
//! before the critical section and post-refresh from the new one after it, in a clean
//! environment; a failing hook undoes the refresh; a hook that hangs is stopped after
//! `--hook-timeout` together with its children; and the refresh-pending handshake lets a
//! running app save its state and exit by itself, the hook run once however often the refresh
//! looks again — while refreshd never kills an app.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use refreshd_tests::*;

fn prerequisites() -> bool {
    root_with("hooks run as root, apps are tracked in cgroups", &[])
}

/// The tracking tests' `hold`: runs until told to exit on its stdin.
const HOLD: &str = "#!/bin/sh\necho \"started $$ $(date +%s%N) $SNAP_REVISION\"\nread line\necho \"exit $(date +%s%N)\"\n";

/// Builds `NAME_VERSION.snap` beside the root: apps `NAME` (says hello) and `hold`, plus
/// `extra` snap.yaml lines and `files` (hooks and apps, all executable).
fn build(root: &Root, name: &str, version: &str, extra: &str, files: &[(&str, &str)]) -> PathBuf {
    let mut src = SnapSrc::new(&format!(
        "name: {name}\nversion: '{version}'\nsummary: Hook test\napps:\n  {name}:\n    command: bin/hello\n  hold:\n    command: bin/hold\n{extra}"
    ))
    .file(
        "bin/hello",
        "#!/bin/sh\necho \"hello from $SNAP_NAME $SNAP_REVISION\"\n",
        0o755,
    )
    .file("bin/hold", HOLD, 0o755);
    for (path, body) in files {
        src = src.file(path, body, 0o755);
    }
    let out = root.aux(&format!("{name}_{version}.snap"));
    src.build(&out);
    out
}

fn install(r: &Path, file: &Path) {
    let out = ctl(r, &["install", file.to_str().unwrap()]);
    assert!(out.status.success(), "install: {}", text(&out.stderr));
}

/// Starts the refresh to `file` (an installed snap's next version) and returns its change.
fn start_refresh(r: &Path, file: &Path) -> u64 {
    let out = ctl(r, &["install", file.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "refresh: {}", text(&out.stderr));
    newest_change(r)
}

fn current(r: &Path, name: &str) -> String {
    fs::read_link(r.join(format!("snap/{name}/current")))
        .unwrap()
        .display()
        .to_string()
}

fn data_current(r: &Path, name: &str) -> String {
    fs::read_link(r.join(format!("var/snap/{name}/current")))
        .unwrap()
        .display()
        .to_string()
}

fn logged(change: &Value, kind: &str, needle: &str) -> bool {
    task_log(change, kind).iter().any(|l| l.contains(needle))
}

/// `key=value` lines into a map.
fn fields(path: &Path) -> std::collections::BTreeMap<String, String> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn read_pid(p: &Path) -> i32 {
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Waits on a pidfd (no polling) until process `pid` has exited; false if it still runs after
/// `within`. A pid already gone counts as exited.
fn exits_within(pid: i32, within: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    // SAFETY: the descriptor was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, within.as_millis() as i32) };
    n == 1
}

/// The variables the recording hooks see: the documented ones and snap.yaml's `GREETING` (each
/// hook adds its own `WHO`); and what a shell adds by itself.
const HOOK_VARS: [&str; 11] = [
    "PATH",
    "HOME",
    "SNAP",
    "SNAP_NAME",
    "SNAP_INSTANCE_NAME",
    "SNAP_REVISION",
    "SNAP_VERSION",
    "SNAP_DATA",
    "SNAP_COMMON",
    "SNAP_REFRESH_TARGET_REVISION",
    "GREETING",
];
const SHELL_VARS: [&str; 4] = ["PWD", "OLDPWD", "SHLVL", "_"];

/// A hook that records what it sees in `SNAP_COMMON/HOOK.REV` (and its whole environment in
/// `.env` beside it).
const RECORD: &str = r#"#!/bin/sh
hook=$(basename "$0")
out="$SNAP_COMMON/$hook.$SNAP_REVISION"
{
  echo "revision=$SNAP_REVISION"
  echo "target=$SNAP_REFRESH_TARGET_REVISION"
  echo "version=$SNAP_VERSION"
  echo "cwd=$(pwd)"
  echo "home=$HOME"
  echo "greeting=$GREETING"
  echo "who=$WHO"
  echo "current=$(readlink "$(dirname "$SNAP")/current")"
  echo "new-data=$(test -e "$SNAP_COMMON/../x2" && echo yes || echo no)"
  echo "at=$(date +%s%N)"
} > "$out"
env > "$out.env"
echo "$hook of $SNAP_REVISION done"
"#;

const RECORD_YAML: &str = "environment:\n  GREETING: hi-from-$SNAP_REVISION\nhooks:\n  pre-refresh:\n    environment:\n      WHO: pre-to-$SNAP_REFRESH_TARGET_REVISION\n  post-refresh:\n    environment:\n      WHO: post\n      GREETING: overridden\n";

/// pre-refresh runs from the old revision before the critical section, post-refresh from the
/// new one once it is current and launches are allowed again; each in its revision's data
/// directory, with the documented environment and nothing of the daemon's.
#[test]
fn pre_refresh_runs_from_the_old_revision_and_post_refresh_from_the_new() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("hooks-order");
    let r = root.path();
    let hooks = [
        ("meta/hooks/pre-refresh", RECORD),
        ("meta/hooks/post-refresh", RECORD),
    ];
    let b1 = build(&root, "hooky", "1.0", RECORD_YAML, &hooks);
    let b2 = build(&root, "hooky", "2.0", RECORD_YAML, &hooks);
    let _d = Daemon::start(r);
    install(r, &b1);
    let common = r.join("var/snap/hooky/common");
    assert!(
        !common.join("pre-refresh.x1").exists(),
        "an install runs no refresh hook"
    );

    let id = start_refresh(r, &b2);
    let ch = watch_until_ready(r, id);
    assert_eq!(ch["status"], "Done", "{ch}");
    assert_eq!(current(r, "hooky"), "x2");

    // Each hook ran once, from the revision the contract says.
    for absent in ["pre-refresh.x2", "post-refresh.x1"] {
        assert!(!common.join(absent).exists(), "{absent} should not exist");
    }
    let real = fs::canonicalize(r).unwrap();
    let pre = fields(&common.join("pre-refresh.x1"));
    let post = fields(&common.join("post-refresh.x2"));
    let want_pre = [
        ("revision", "x1".to_owned()),
        ("target", "x2".to_owned()),
        ("version", "1.0".to_owned()),
        ("cwd", real.join("var/snap/hooky/x1").display().to_string()),
        ("home", real.join("var/snap/hooky/x1").display().to_string()),
        ("greeting", "hi-from-x1".to_owned()),
        ("who", "pre-to-x2".to_owned()),
        ("current", "x1".to_owned()),
        ("new-data", "no".to_owned()),
    ];
    for (k, v) in want_pre {
        assert_eq!(pre[k], v, "pre-refresh saw {k}: {pre:?}");
    }
    let want_post = [
        ("revision", "x2".to_owned()),
        ("target", "x2".to_owned()),
        ("version", "2.0".to_owned()),
        ("cwd", real.join("var/snap/hooky/x2").display().to_string()),
        ("home", real.join("var/snap/hooky/x2").display().to_string()),
        ("greeting", "overridden".to_owned()),
        ("who", "post".to_owned()),
        ("current", "x2".to_owned()),
        ("new-data", "yes".to_owned()),
    ];
    for (k, v) in want_post {
        assert_eq!(post[k], v, "post-refresh saw {k}: {post:?}");
    }

    // Before the critical section, and after it.
    let entered = logged_at(&ch, "wait-for-apps", "critical section entered").unwrap();
    let left = logged_at(&ch, "lift-inhibition", "critical section left").unwrap();
    let pre_at: u128 = pre["at"].parse().unwrap();
    let post_at: u128 = post["at"].parse().unwrap();
    assert!(
        pre_at < entered,
        "pre-refresh at {pre_at}, critical section at {entered}"
    );
    assert!(
        post_at > left,
        "post-refresh at {post_at}, critical section left at {left}"
    );

    // A clean environment: exactly the documented variables.
    for (hook, env_file) in [
        ("pre-refresh", "pre-refresh.x1.env"),
        ("post-refresh", "post-refresh.x2.env"),
    ] {
        let env = fs::read_to_string(common.join(env_file)).unwrap();
        let names: BTreeSet<&str> = env
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| !SHELL_VARS.contains(k))
            .collect();
        let want: BTreeSet<&str> = HOOK_VARS.iter().copied().chain(["WHO"]).collect();
        assert_eq!(names, want, "{hook}'s environment:\n{env}");
        assert!(
            env.lines()
                .any(|l| l == "PATH=/usr/sbin:/usr/bin:/sbin:/bin"),
            "{env}"
        );
    }

    // Their output is in their tasks' logs.
    assert!(
        logged(
            &ch,
            "pre-refresh-hook",
            "pre-refresh hook: pre-refresh of x1 done"
        ),
        "{:?}",
        task_log(&ch, "pre-refresh-hook")
    );
    assert!(
        logged(
            &ch,
            "post-refresh-hook",
            "post-refresh hook: post-refresh of x2 done"
        ),
        "{:?}",
        task_log(&ch, "post-refresh-hook")
    );
}

/// A pre-refresh hook that exits 1 fails the refresh before anything changed: the old revision
/// stays current, its data exactly as it was, and the hook's reason is the change's error.
#[test]
fn a_failing_pre_refresh_hook_undoes_the_refresh() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("hooks-pre-fail");
    let r = root.path();
    let refuse = "#!/bin/sh\necho \"checking whether $SNAP_NAME may be refreshed\"\necho 'refusing: the database is being migrated' >&2\nexit 1\n";
    let b1 = build(
        &root,
        "refuser",
        "1.0",
        "",
        &[("meta/hooks/pre-refresh", refuse)],
    );
    let b2 = build(&root, "refuser", "2.0", "", &[]);
    let _d = Daemon::start(r);
    install(r, &b1);
    fs::write(r.join("var/snap/refuser/x1/state"), "precious").unwrap();
    let data_before = snapshot(&r.join("var/snap/refuser"), &[]);
    let bin_before = snapshot(&r.join("snap/bin"), &[]);

    let id = start_refresh(r, &b2);
    let ch = watch_until_ready(r, id);
    assert_eq!(ch["status"], "Error", "{ch}");
    let err = ch["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(
            "pre-refresh hook of \"refuser\" (revision x1) exited with status 1: refusing: the database is being migrated"
        ),
        "{err}"
    );
    assert_eq!(task(&ch, "pre-refresh-hook")["status"], "Error");
    assert_eq!(task(&ch, "wait-for-apps")["status"], "Hold");
    assert_eq!(task(&ch, "mount")["status"], "Undone");
    assert!(
        logged(
            &ch,
            "pre-refresh-hook",
            "pre-refresh hook: checking whether refuser may be refreshed"
        ),
        "{:?}",
        task_log(&ch, "pre-refresh-hook")
    );
    assert!(logged(
        &ch,
        "pre-refresh-hook",
        "pre-refresh hook (stderr): refusing: the database is being migrated"
    ));

    assert_eq!(current(r, "refuser"), "x1");
    assert_eq!(data_current(r, "refuser"), "x1");
    assert_eq!(snapshot(&r.join("var/snap/refuser"), &[]), data_before);
    assert_eq!(snapshot(&r.join("snap/bin"), &[]), bin_before);
    assert!(!r.join("snap/refuser/x2").exists(), "x2 is unmounted");
    assert!(!r.join("var/lib/refreshd/blobs/refuser_x2.snap").exists());
    let out = Command::new(r.join("snap/bin/refuser")).output().unwrap();
    assert_eq!(text(&out.stdout).trim(), "hello from refuser x1");
}

/// A post-refresh hook that fails after the new revision went live undoes the whole refresh:
/// the old revision is current again, its launchers back, no inhibition left.
#[test]
fn a_failing_post_refresh_hook_undoes_the_whole_refresh() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("hooks-post-fail");
    let r = root.path();
    let fail = "#!/bin/sh\necho \"current=$(readlink \"$(dirname \"$SNAP\")/current\")\" > \"$SNAP_COMMON/post-ran.$SNAP_REVISION\"\necho 'migration of the settings failed' >&2\nexit 2\n";
    let b1 = build(&root, "postie", "1.0", "", &[]);
    let b2 = build(
        &root,
        "postie",
        "2.0",
        "  newapp:\n    command: bin/hello\n",
        &[("meta/hooks/post-refresh", fail)],
    );
    let _d = Daemon::start(r);
    install(r, &b1);
    fs::write(r.join("var/snap/postie/x1/state"), "precious").unwrap();

    let id = start_refresh(r, &b2);
    let ch = watch_until_ready(r, id);
    assert_eq!(ch["status"], "Error", "{ch}");
    let err = ch["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(
            "post-refresh hook of \"postie\" (revision x2) exited with status 2: migration of the settings failed"
        ),
        "{err}"
    );
    assert!(
        logged(&ch, "pre-refresh-hook", "has no pre-refresh hook"),
        "{:?}",
        task_log(&ch, "pre-refresh-hook")
    );
    // It ran with x2 live, and everything up to it was undone.
    assert_eq!(
        fields(&r.join("var/snap/postie/common/post-ran.x2"))["current"],
        "x2"
    );
    for kind in [
        "link",
        "launchers",
        "lift-inhibition",
        "wait-for-apps",
        "setup-data",
    ] {
        assert_eq!(task(&ch, kind)["status"], "Undone", "{kind}: {ch}");
    }

    assert_eq!(current(r, "postie"), "x1");
    assert_eq!(data_current(r, "postie"), "x1");
    assert_eq!(
        fs::read_to_string(r.join("var/snap/postie/x1/state")).unwrap(),
        "precious"
    );
    assert!(!r.join("var/snap/postie/x2").exists(), "x2's data is gone");
    assert!(
        fs::symlink_metadata(r.join("snap/bin/postie.newapp")).is_err(),
        "the new revision's launcher is gone"
    );
    assert!(
        !r.join("run/refreshd/runctl/snap.postie.inhibited").exists(),
        "no inhibition left"
    );
    let out = Command::new(r.join("snap/bin/postie")).output().unwrap();
    assert_eq!(text(&out.stdout).trim(), "hello from postie x1");
    let app = App::launch(r, "postie.hold");
    assert_eq!(app.revision, "x1");
    app.release();
}

/// A pre-refresh hook that hangs — and ignores SIGTERM, as does the child it forked — is
/// stopped after --hook-timeout: SIGTERM, then SIGKILL to its process group. The refresh fails
/// saying so, and neither process is left.
#[test]
fn a_hanging_hook_is_stopped_after_the_timeout() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("hooks-timeout");
    let r = root.path();
    let hang = "#!/bin/sh\ntrap '' TERM\necho $$ > \"$SNAP_COMMON/hook.pid\"\nsleep 1000 &\necho $! > \"$SNAP_COMMON/child.pid\"\necho 'stuck on purpose'\nwait\n";
    let b1 = build(
        &root,
        "hangs",
        "1.0",
        "",
        &[("meta/hooks/pre-refresh", hang)],
    );
    let b2 = build(&root, "hangs", "2.0", "", &[]);
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec!["--hook-timeout".into(), "2".into()],
            ..Default::default()
        },
    );
    install(r, &b1);

    let t0 = Instant::now();
    let id = start_refresh(r, &b2);
    let ch = watch_until_ready(r, id);
    let took = t0.elapsed();
    assert_eq!(ch["status"], "Error", "{ch}");
    let err = ch["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(
            "pre-refresh hook of \"hangs\" (revision x1) timed out after 2 s and was stopped (refreshd --hook-timeout): stuck on purpose"
        ),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(30),
        "failed after {took:?}"
    );
    let common = r.join("var/snap/hangs/common");
    for file in ["hook.pid", "child.pid"] {
        let pid = read_pid(&common.join(file));
        assert!(
            exits_within(pid, Duration::from_secs(10)),
            "process {pid} ({file}) of the stopped hook is still running"
        );
    }
    assert_eq!(current(r, "hangs"), "x1");
    println!("a hook hanging past a 2 s timeout failed the refresh after {took:?}");
}

/// An app started through its launcher (so it is in the snap's cgroups), whose end the test
/// waits for without telling it anything.
struct Worker {
    child: Child,
    out: std::io::Lines<BufReader<std::process::ChildStdout>>,
    pid: i32,
}

impl Worker {
    fn launch(r: &Path, launcher: &str) -> Worker {
        let mut child = Command::new(r.join("snap/bin").join(launcher))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = out.next().expect("a first line").unwrap();
        let pid = first
            .strip_prefix("started ")
            .and_then(|w| w.split_whitespace().next())
            .unwrap_or_else(|| panic!("{launcher}: {first}"))
            .parse()
            .unwrap();
        Worker { child, out, pid }
    }

    /// Waits for the app to exit by itself; returns its remaining output.
    fn wait_for_exit(mut self) -> Vec<String> {
        let rest: Vec<String> = self.out.by_ref().map_while(Result::ok).collect();
        let st = self.child.wait().unwrap();
        assert!(st.success(), "the worker did not exit by itself: {st:?}");
        rest
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Only after a failed assertion: the worker is the test's own child.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The worker: waits on a fifo for a request to exit, saves its state, and exits.
const WORKER: &str = r#"#!/bin/sh
fifo="$SNAP_COMMON/exit-request"
rm -f "$fifo"
mkfifo "$fifo"
echo "started $$ $(date +%s%N) $SNAP_REVISION"
read request < "$fifo"
echo "saved by $SNAP_REVISION before the $request" > "$SNAP_DATA/state"
echo "exit $(date +%s%N)"
"#;

/// The refresh-pending hook that asks the worker to exit.
const ASK_TO_EXIT: &str = r#"#!/bin/sh
echo "$SNAP_REVISION -> $SNAP_REFRESH_TARGET_REVISION" >> "$SNAP_COMMON/pending-runs"
echo "refresh to $SNAP_REFRESH_TARGET_REVISION" > "$SNAP_COMMON/exit-request"
echo "asked the worker to save its state and exit"
"#;

/// The handshake: a refresh finds apps running and becomes pending; the snap's
/// refresh-pending hook asks the worker to save its state and exit; the worker does, by itself.
/// The hook runs once although wait-for-apps looks again (after a daemon restart, and when the
/// last app exits), and the state the worker saved after the pre-copy reaches the new revision.
/// Nothing is ever killed.
#[test]
fn refresh_pending_hook_lets_the_app_save_its_state_and_exit() {
    if !prerequisites() {
        return;
    }
    let root = Root::new("hooks-pending");
    let r = root.path();
    let apps = "  worker:\n    command: bin/worker\n";
    let files = [
        ("bin/worker", WORKER),
        ("meta/hooks/refresh-pending", ASK_TO_EXIT),
    ];
    let b1 = build(&root, "minix", "1.0", apps, &files);
    let b2 = build(&root, "minix", "2.0", apps, &files);
    let d = Daemon::start(r);
    install(r, &b1);
    let worker = Worker::launch(r, "minix.worker");
    // A second app, held by the test like a window someone keeps open.
    let hold = App::launch(r, "minix.hold");

    let id = start_refresh(r, &b2);
    let pending = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(
        task(&pending, "wait-for-apps")["status"],
        "Wait",
        "{pending}"
    );
    let reason = task(&pending, "wait-for-apps")["wait"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("waiting for 2 processes"), "{reason}");
    assert!(reason.contains(&format!("pid {}", worker.pid)), "{reason}");

    // The worker exits by itself, having been asked by the hook.
    let rest = worker.wait_for_exit();
    assert!(
        rest.iter().any(|l| l.starts_with("exit ")),
        "the worker's output: {rest:?}"
    );
    assert_eq!(
        fs::read_to_string(r.join("var/snap/minix/x1/state")).unwrap(),
        "saved by x1 before the refresh to x2\n"
    );

    // wait-for-apps looks again after a restart; the hook is not run a second time.
    d.stop();
    let _d = Daemon::start(r);
    let again = watch_until(r, id, |c| {
        let t = task(c, "wait-for-apps");
        t["status"] == "Wait"
            && t["wait"]["reason"]
                .as_str()
                .is_some_and(|s| s.contains("waiting for 1 process"))
    });
    assert_eq!(task(&again, "wait-for-apps")["status"], "Wait", "{again}");
    assert_eq!(current(r, "minix"), "x1", "never forced");

    let exited = hold.release();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    let entered = logged_at(&done, "wait-for-apps", "critical section entered").unwrap();
    assert!(entered >= exited);
    assert_eq!(current(r, "minix"), "x2");

    let runs = fs::read_to_string(r.join("var/snap/minix/common/pending-runs")).unwrap();
    assert_eq!(
        runs, "x1 -> x2\n",
        "the refresh-pending hook ran exactly once"
    );
    let lines = task_log(&done, "wait-for-apps");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("running the refresh-pending hook"))
            .count(),
        1,
        "{lines:?}"
    );
    assert!(
        lines.iter().any(
            |l| l.contains("refresh-pending hook: asked the worker to save its state and exit")
        ),
        "{lines:?}"
    );
    // The state saved after the pre-copy was carried into the critical section's copy.
    assert_eq!(
        fs::read_to_string(r.join("var/snap/minix/x2/state")).unwrap(),
        "saved by x1 before the refresh to x2\n"
    );
}

/// A refresh-pending hook that fails or times out is logged and nothing else: the refresh still
/// waits for the app, and completes once the app exits.
fn refresh_pending_trouble_is_not_fatal(tag: &str, hook: &str, args: &[&str], want: &str) {
    let root = Root::new(tag);
    let r = root.path();
    let files = [("meta/hooks/refresh-pending", hook)];
    let b1 = build(&root, "trouble", "1.0", "", &files);
    let b2 = build(&root, "trouble", "2.0", "", &files);
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    );
    install(r, &b1);
    let app = App::launch(r, "trouble.hold");

    let id = start_refresh(r, &b2);
    let pending = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(pending["status"], "Wait", "{pending}");
    let lines = task_log(&pending, "wait-for-apps");
    assert!(
        lines.iter().any(|l| l.contains(want)
            && l.contains("not fatal: the refresh goes on waiting for the apps")),
        "want {want:?} in {lines:?}"
    );
    assert_eq!(current(r, "trouble"), "x1");

    app.release();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(current(r, "trouble"), "x2");
    let hook_pid = r.join("var/snap/trouble/common/hook.pid");
    if hook_pid.exists() {
        let pid = read_pid(&hook_pid);
        assert!(
            exits_within(pid, Duration::from_secs(10)),
            "the stopped refresh-pending hook {pid} still runs"
        );
    }
}

#[test]
fn a_failing_refresh_pending_hook_does_not_fail_the_refresh() {
    if !prerequisites() {
        return;
    }
    refresh_pending_trouble_is_not_fatal(
        "hooks-pending-fail",
        "#!/bin/sh\necho 'cannot save the state: disk full' >&2\nexit 7\n",
        &[],
        "refresh-pending hook of \"trouble\" (revision x1) exited with status 7: cannot save the state: disk full",
    );
}

#[test]
fn a_hanging_refresh_pending_hook_is_stopped_and_the_refresh_goes_on() {
    if !prerequisites() {
        return;
    }
    refresh_pending_trouble_is_not_fatal(
        "hooks-pending-hang",
        "#!/bin/sh\necho $$ > \"$SNAP_COMMON/hook.pid\"\nexec sleep 1000\n",
        &["--hook-timeout", "1"],
        "refresh-pending hook of \"trouble\" (revision x1) timed out after 1 s and was stopped",
    );
}
