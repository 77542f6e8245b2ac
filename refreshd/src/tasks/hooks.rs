//! A snap's hooks (`meta/hooks/NAME` in its payload): pre-refresh, post-refresh and
//! refresh-pending, each run with a bounded time (docs/hooks.md).
//!
//! A hook runs as root in a clean environment, in its own process group, with its output
//! captured (the tail goes into the task's log). When it outlives `refreshd --hook-timeout`, or
//! the daemon shuts down, its group gets SIGTERM and, after a short grace, SIGKILL. Killing a
//! hook is allowed; refreshd never kills an app.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::Signal;
use refreshd_snap::payload::Trust;
use refreshd_snap::text::one_line;
use refreshd_snap::SnapYaml;

use super::{setup, Ctx, SnapSetup};
use crate::engine::{Outcome, Phase, TaskCtx};
use crate::layout::Layout;
use crate::supervise::{self, End, Exit, Job, Stream};

pub const PRE_REFRESH: &str = "pre-refresh";
pub const POST_REFRESH: &str = "post-refresh";
pub const REFRESH_PENDING: &str = "refresh-pending";

/// A hook's fixed PATH (the environment is built from scratch, never inherited).
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Between SIGTERM and SIGKILL to a hook's process group.
const GRACE: Duration = Duration::from_secs(2);

/// How much of a hook's output is kept (the last bytes), and how many of its lines go into the
/// task's log (which keeps 30 lines in all).
const MAX_OUTPUT: usize = 4096;
const MAX_LOGGED_LINES: usize = 12;

/// Runs the current (old) revision's `pre-refresh` hook, if it has one. It runs before the data
/// is pre-copied and before the apps are waited for; a failure undoes the refresh.
pub fn pre_refresh(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    if phase == Phase::Undo {
        return Ok(Outcome::Done);
    }
    let ss: SnapSetup = setup(t)?;
    let Some(rev) = old_revision(t, &ss)? else {
        t.log("not a refresh (no revision is current): no pre-refresh hook to run");
        return Ok(Outcome::Done);
    };
    run_task_hook(c, t, &rev, PRE_REFRESH)
}

/// Runs the new revision's `post-refresh` hook, if it has one: the revision is linked, its apps
/// may start and its services run. A failure undoes the whole refresh.
pub fn post_refresh(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    if phase == Phase::Undo {
        return Ok(Outcome::Done);
    }
    let ss: SnapSetup = setup(t)?;
    let rev = new_revision(&ss)?;
    run_task_hook(c, t, &rev, POST_REFRESH)
}

/// Called by wait-for-apps each time it finds apps still running: runs the current revision's
/// `refresh-pending` hook once per change, so the app can save its state and exit. Never fails
/// the refresh: whatever goes wrong is logged, and the apps are waited for as before.
pub fn refresh_pending(c: &Ctx, t: &TaskCtx, ss: &SnapSetup) -> anyhow::Result<()> {
    let mut data: super::data::WaitForApps = t.data();
    if data.refresh_pending_hook.is_some() || t.cancelled() {
        return Ok(());
    }
    let Some(prev) = ss.previous.as_deref() else {
        return Ok(());
    };
    // Recorded before it starts: at most once per change, even when the daemon dies mid-hook.
    data.refresh_pending_hook = Some(super::data::HookStarted {
        revision: prev.to_owned(),
        at: refreshd_state::now_ms(),
    });
    t.record(&data);
    let res = old_revision(t, ss).and_then(|rev| {
        let rev = rev.context("no revision is current")?;
        run_hook(c, t, &rev, REFRESH_PENDING)
    });
    match res {
        Ok(Ran::Ok | Ran::Absent) => {}
        Ok(Ran::Cancelled) => t.log(format!(
            "the {REFRESH_PENDING} hook was stopped: refreshd is shutting down (it is not run again for this change)"
        )),
        Err(e) => t.log(format!(
            "{e:#} (not fatal: the refresh goes on waiting for the apps)"
        )),
    }
    Ok(())
}

/// A hook run as a task of its own: a failure fails the task (and so undoes the change); a
/// shutdown leaves it to run again at the next start.
fn run_task_hook(c: &Ctx, t: &TaskCtx, rev: &Rev, hook: &str) -> anyhow::Result<Outcome> {
    Ok(match run_hook(c, t, rev, hook)? {
        Ran::Ok | Ran::Absent => Outcome::Done,
        Ran::Cancelled => Outcome::Retry {
            reason: format!(
                "refreshd is shutting down: the {hook} hook was stopped and runs again at the next start"
            ),
            after: None,
        },
    })
}

/// The revision whose hook runs, and what its environment is made of.
#[derive(Debug, Clone)]
struct Rev {
    instance: String,
    snap_name: String,
    instance_key: Option<String>,
    revision: String,
    version: String,
    yaml: SnapYaml,
    /// The revision the refresh goes to (`SNAP_REFRESH_TARGET_REVISION`).
    target: String,
}

impl Rev {
    /// `pre-refresh hook of "hello" (revision 3)`: how messages name a hook.
    fn who(&self, hook: &str) -> String {
        format!(
            "{hook} hook of {:?} (revision {})",
            self.instance, self.revision
        )
    }
}

/// The revision current when the change was made (`ss.previous`), from its recorded manifest.
fn old_revision(t: &TaskCtx, ss: &SnapSetup) -> anyhow::Result<Option<Rev>> {
    let Some(prev) = ss.previous.as_deref() else {
        return Ok(None);
    };
    let row = t
        .db_with(|s| s.revision(&ss.instance, prev))?
        .with_context(|| {
            format!(
                "revision {prev} of {:?} is not recorded although it is current; the state is inconsistent",
                ss.instance
            )
        })?;
    let yaml = refreshd_snap::yaml::parse(row.manifest.as_bytes()).with_context(|| {
        format!(
            "the recorded snap.yaml of {:?} (revision {prev}) does not parse",
            ss.instance
        )
    })?;
    Ok(Some(Rev {
        instance: ss.instance.clone(),
        snap_name: ss.snap_name.clone(),
        instance_key: ss.instance_key.clone(),
        revision: prev.to_owned(),
        version: row.version,
        yaml,
        target: ss.revision.clone(),
    }))
}

/// The revision the change installs.
fn new_revision(ss: &SnapSetup) -> anyhow::Result<Rev> {
    let yaml = refreshd_snap::yaml::parse(ss.manifest.as_bytes()).with_context(|| {
        format!(
            "the snap.yaml of {:?} (revision {}) does not parse",
            ss.instance, ss.revision
        )
    })?;
    Ok(Rev {
        instance: ss.instance.clone(),
        snap_name: ss.snap_name.clone(),
        instance_key: ss.instance_key.clone(),
        revision: ss.revision.clone(),
        version: ss.version.clone(),
        yaml,
        target: ss.revision.clone(),
    })
}

/// How a hook run ended, when it did not fail.
#[derive(Debug, PartialEq)]
enum Ran {
    /// It exited with status 0.
    Ok,
    /// The revision has no such hook.
    Absent,
    /// The daemon is shutting down: the hook was stopped.
    Cancelled,
}

/// Finds and runs `hook` of `rev`, logging its output on the task. A non-zero exit, a signal or
/// a timeout is an error saying so in one line.
fn run_hook(c: &Ctx, t: &TaskCtx, rev: &Rev, hook: &str) -> anyhow::Result<Ran> {
    let who = rev.who(hook);
    let payload = format!("{}/{}", rev.instance, rev.revision);
    let Some(path) = find(&c.layout.snaps_dir(), &payload, hook).with_context(|| who.clone())?
    else {
        t.log(format!(
            "revision {} of {:?} has no {hook} hook",
            rev.revision, rev.instance
        ));
        return Ok(Ran::Absent);
    };
    let env = environment(&c.layout, rev, hook);
    let cwd = [
        c.layout.data_rev(&rev.instance, &rev.revision),
        c.layout.data_common(&rev.instance),
    ]
    .into_iter()
    .find(|d| d.is_dir())
    .unwrap_or_else(|| PathBuf::from("/"));
    t.log(format!(
        "running the {who}: refreshing to {}, {} at most",
        rev.target,
        seconds(c.hook_timeout)
    ));
    let job = job(path, &env, cwd, c.hook_timeout, GRACE);
    let run = execute(&job, &|| t.cancelled()).with_context(|| who.clone())?;
    for line in run.output.log_lines(hook) {
        t.log(line);
    }
    if !run.exit.closed {
        t.log(format!(
            "the {hook} hook exited but its output stayed open: a process it started outside its process group still holds it"
        ));
    }
    match verdict(&who, &run, job.limit()) {
        Ok(Ran::Ok) => {
            t.log(format!(
                "the {who} succeeded in {:.2} s",
                run.exit.elapsed.as_secs_f64()
            ));
            Ok(Ran::Ok)
        }
        Ok(other) => Ok(other),
        Err(msg) => Err(anyhow!(msg)),
    }
}

/// Judges a finished run: `Ok` for status 0 or a shutdown, else the one-line error.
fn verdict(who: &str, run: &Run, timeout: Duration) -> Result<Ran, String> {
    let tail = run
        .output
        .last_line()
        .map(|l| format!(": {l}"))
        .unwrap_or_default();
    match run.exit.end {
        End::Stopped => Ok(Ran::Cancelled),
        End::TimedOut => Err(format!(
            "{who} timed out after {} and was stopped (refreshd --hook-timeout){tail}",
            seconds(timeout)
        )),
        End::Exited(st) if st.success() => Ok(Ran::Ok),
        End::Exited(st) => match (st.code(), st.signal()) {
            (Some(code), _) => Err(format!("{who} exited with status {code}{tail}")),
            (None, Some(sig)) => Err(format!(
                "{who} was killed by signal {}{tail}",
                Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.as_str().to_owned())
            )),
            (None, None) => Err(format!("{who} ended abnormally ({st}){tail}")),
        },
    }
}

/// `2 s`, or `0.3 s` below a second.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// `meta/hooks/NAME` in the payload `snaps/PAYLOAD` (`NAME/REV`), if there is one. A snap may
/// carry symlinks pointing anywhere on the machine: neither the hook nor the directories
/// leading to it may be one, and the hook must be a regular, executable file. And since it runs
/// as root, no user may have written it or be able to swap it: it and every directory from
/// `snaps` down to it must be on a read-only mount (a loop-mounted payload) or the daemon's and
/// not writable by group or others (an extracted one, or a tree someone changed since).
///
/// The hook is then run by its path, not through the descriptor checked: a script needs its own
/// path as `$0`, and a path whose every directory no one but root can write resolves to the
/// very file checked.
fn find(snaps: &Path, payload: &str, hook: &str) -> anyhow::Result<Option<PathBuf>> {
    let meta = snaps.join(payload).join("meta");
    let hooks = meta.join("hooks");
    let file = hooks.join(hook);
    match fs::symlink_metadata(&meta) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!(
            "{} is not a directory; the snap is malformed",
            meta.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "the revision's payload is not available ({} is missing); is it mounted?",
            meta.display()
        ),
        Err(e) => bail!("cannot read {}: {e}", meta.display()),
    }
    for (path, last) in [(&hooks, false), (&file, true)] {
        let m = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("cannot read {}: {e}", path.display()),
        };
        if m.file_type().is_symlink() {
            bail!(
                "{} is a symbolic link; a hook must be a regular file inside the snap, reached without symlinks",
                path.display()
            );
        }
        if !last && !m.is_dir() {
            bail!(
                "{} is not a directory; the snap is malformed",
                path.display()
            );
        }
        if last && !m.is_file() {
            bail!(
                "{} is not a regular file; a hook must be an executable file",
                path.display()
            );
        }
        if last && m.permissions().mode() & 0o111 == 0 {
            bail!(
                "{} is not executable; the snap must ship its hooks with mode 0755",
                path.display()
            );
        }
    }
    let rel = format!("{payload}/meta/hooks/{hook}");
    match refreshd_snap::payload::open_trusted(&Trust::this_process(), snaps, &rel) {
        Ok(Some(_)) => Ok(Some(file)),
        // Gone since it was looked at: as if it had never been there.
        Ok(None) => Ok(None),
        Err(e) => bail!(
            "refusing to run it: {e}; refreshd runs as root only what no user can change (make it root's and not writable by group or others, or reinstall the snap)"
        ),
    }
}

/// An ordered environment; setting a name again replaces its value in place.
#[derive(Debug, Default, Clone, PartialEq)]
struct Env(Vec<(String, OsString)>);

impl Env {
    fn set(&mut self, name: &str, value: impl Into<OsString>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    fn get(&self, name: &str) -> Option<&OsStr> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_os_str())
    }

    /// Expands `$NAME` and `${NAME}` in `value` against this environment (unknown: empty), as
    /// the launcher does for apps ([`refreshd_runctl::expand`]).
    fn expand(&self, value: &str) -> OsString {
        let mut out = Vec::with_capacity(value.len());
        refreshd_runctl::expand(
            value.as_bytes(),
            |name| {
                std::str::from_utf8(name)
                    .ok()
                    .and_then(|n| self.get(n))
                    .map(OsStrExt::as_bytes)
            },
            |piece| out.extend_from_slice(piece),
        );
        OsString::from_vec(out)
    }
}

/// A hook's whole environment: the fixed variables, then snap.yaml's top-level `environment`,
/// then the hook's own (each value expanded against what came before). Nothing of refreshd's
/// own environment is passed on.
fn environment(layout: &Layout, rev: &Rev, hook: &str) -> Env {
    let mut env = Env::default();
    let data = layout.data_rev(&rev.instance, &rev.revision);
    env.set("PATH", PATH);
    // Hooks run as root, and root's per-user snap data is the apps' business: HOME is the
    // revision's system data, which exists and is root's.
    env.set("HOME", &data);
    env.set("SNAP", layout.rev_dir(&rev.instance, &rev.revision));
    env.set("SNAP_NAME", &rev.snap_name);
    env.set("SNAP_INSTANCE_NAME", &rev.instance);
    if let Some(key) = &rev.instance_key {
        env.set("SNAP_INSTANCE_KEY", key);
    }
    env.set("SNAP_REVISION", &rev.revision);
    env.set("SNAP_VERSION", &rev.version);
    env.set("SNAP_DATA", &data);
    env.set("SNAP_COMMON", layout.data_common(&rev.instance));
    env.set("SNAP_REFRESH_TARGET_REVISION", &rev.target);
    let own = rev.yaml.hooks.get(hook).map(|h| &h.environment);
    for (k, v) in rev.yaml.environment.iter().chain(own.into_iter().flatten()) {
        let value = env.expand(v);
        env.set(k, value);
    }
    env
}

/// A hook as the supervisor runs it: as root, with `env` and nothing else, stopped after
/// `timeout` (SIGTERM to its process group, SIGKILL after `grace`).
fn job(path: PathBuf, env: &Env, cwd: PathBuf, timeout: Duration, grace: Duration) -> Job {
    env.0
        .iter()
        .fold(Job::new(path, timeout), |j, (k, v)| j.env(k, v))
        .cwd(cwd)
        .grace(grace)
}

/// A finished hook and the tail of its output.
struct Run {
    exit: Exit,
    output: Output,
}

/// Runs `job` to its end, stopped early when `cancelled()` turns true (shutdown).
fn execute(job: &Job, cancelled: &dyn Fn() -> bool) -> anyhow::Result<Run> {
    let mut output = Output::default();
    let exit =
        supervise::run(job, cancelled, &mut |s, l| output.push(s, l)).map_err(|e| match e {
            supervise::Error::Start(e) => anyhow!("cannot be started: {e}"),
            e => anyhow!(e),
        })?;
    Ok(Run { exit, output })
}

/// The tail of a hook's output, bounded in bytes and lines; stdout is dropped before stderr.
/// The two streams are read apart, so their lines interleave only roughly.
#[derive(Debug, Default)]
struct Output {
    lines: VecDeque<(Stream, String)>,
    bytes: usize,
    /// Lines dropped from the front to stay within the bounds.
    dropped: usize,
    last_stderr: Option<String>,
    last_stdout: Option<String>,
}

impl Output {
    fn push(&mut self, stream: Stream, raw: &[u8]) {
        let line = one_line(&String::from_utf8_lossy(raw));
        if !line.is_empty() {
            match stream {
                Stream::Stderr => self.last_stderr = Some(line.clone()),
                Stream::Stdout => self.last_stdout = Some(line.clone()),
            }
        }
        self.bytes += line.len() + 1;
        self.lines.push_back((stream, line));
        while self.bytes > MAX_OUTPUT || self.lines.len() > MAX_LOGGED_LINES {
            // stderr is where a hook says what went wrong: stdout goes first.
            let oldest = self
                .lines
                .iter()
                .position(|(s, _)| *s == Stream::Stdout)
                .unwrap_or(0);
            let Some((_, l)) = self.lines.remove(oldest) else {
                break;
            };
            self.bytes -= l.len() + 1;
            self.dropped += 1;
        }
    }

    /// The line an error message ends with: the last one on stderr, else on stdout.
    fn last_line(&self) -> Option<&str> {
        self.last_stderr.as_deref().or(self.last_stdout.as_deref())
    }

    /// The task-log lines for this output.
    fn log_lines(&self, hook: &str) -> Vec<String> {
        let mut out = vec![];
        if self.dropped > 0 {
            out.push(format!(
                "{hook} hook: ({} lines of output left out)",
                self.dropped
            ));
        }
        for (s, l) in &self.lines {
            out.push(match s {
                Stream::Stdout => format!("{hook} hook: {l}"),
                Stream::Stderr => format!("{hook} hook (stderr): {l}"),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Instant;

    fn rev(yaml: &str, key: Option<&str>) -> Rev {
        let yaml = refreshd_snap::yaml::parse(yaml.as_bytes()).unwrap();
        let instance = match key {
            Some(k) => format!("{}_{k}", yaml.name),
            None => yaml.name.clone(),
        };
        Rev {
            instance,
            snap_name: yaml.name.clone(),
            instance_key: key.map(str::to_owned),
            revision: "x1".into(),
            version: yaml.version.clone(),
            yaml,
            target: "x2".into(),
        }
    }

    fn as_map(env: &Env) -> BTreeMap<String, String> {
        env.0
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string_lossy().into_owned()))
            .collect()
    }

    #[test]
    fn environment_is_built_from_scratch_in_order() {
        let yaml = "name: hello\nversion: '1.0'\nenvironment:\n  GREETING: hi-$SNAP_REVISION\n  WHO: snap\n  PATH: /opt/bin:$PATH\nhooks:\n  pre-refresh:\n    environment:\n      WHO: hook-${SNAP_NAME}\n      TARGET: to-$SNAP_REFRESH_TARGET_REVISION\n";
        let env = environment(&Layout::new("/srv/r"), &rev(yaml, None), PRE_REFRESH);
        let m = as_map(&env);
        let want: &[(&str, &str)] = &[
            ("PATH", "/opt/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            ("HOME", "/srv/r/var/snap/hello/x1"),
            ("SNAP", "/srv/r/snap/hello/x1"),
            ("SNAP_NAME", "hello"),
            ("SNAP_INSTANCE_NAME", "hello"),
            ("SNAP_REVISION", "x1"),
            ("SNAP_VERSION", "1.0"),
            ("SNAP_DATA", "/srv/r/var/snap/hello/x1"),
            ("SNAP_COMMON", "/srv/r/var/snap/hello/common"),
            ("SNAP_REFRESH_TARGET_REVISION", "x2"),
            ("GREETING", "hi-x1"),
            // The hook's own environment comes last and wins.
            ("WHO", "hook-hello"),
            ("TARGET", "to-x2"),
        ];
        assert_eq!(
            m,
            want.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        );
        // Set again, a name keeps its place.
        assert_eq!(env.0[0].0, "PATH");
        assert!(!m.contains_key("SNAP_INSTANCE_KEY"));
        // Another hook does not see pre-refresh's own variables.
        let post = as_map(&environment(
            &Layout::new("/"),
            &rev(yaml, None),
            POST_REFRESH,
        ));
        assert_eq!(post["WHO"], "snap");
        assert!(!post.contains_key("TARGET"));
        assert_eq!(post["SNAP"], "/snap/hello/x1");
    }

    #[test]
    fn parallel_instances_get_their_key_and_their_own_dirs() {
        let yaml = "name: hello\nversion: '1.0'\n";
        let m = as_map(&environment(
            &Layout::new("/"),
            &rev(yaml, Some("work")),
            REFRESH_PENDING,
        ));
        assert_eq!(m["SNAP_NAME"], "hello");
        assert_eq!(m["SNAP_INSTANCE_NAME"], "hello_work");
        assert_eq!(m["SNAP_INSTANCE_KEY"], "work");
        assert_eq!(m["SNAP_DATA"], "/var/snap/hello_work/x1");
        assert_eq!(m["SNAP_COMMON"], "/var/snap/hello_work/common");
    }

    #[test]
    fn expansion_like_the_launcher() {
        let mut env = Env::default();
        env.set("A", "a");
        env.set("B_1", "b");
        let cases: &[(&str, &str)] = &[
            ("$A", "a"),
            ("${A}x", "ax"),
            ("$Ax", ""),
            ("$B_1/$A", "b/a"),
            ("$UNKNOWN-", "-"),
            ("cost $5", "cost $5"),
            ("${A", "${A"),
            ("${1A}", "${1A}"),
            ("$", "$"),
            ("a$$A", "a$a"),
        ];
        for (input, want) in cases {
            assert_eq!(env.expand(input), OsString::from(want), "{input:?}");
        }
    }

    #[test]
    fn hooks_are_found_only_as_regular_executables_inside_the_payload() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("s/1")).unwrap();
        let (snaps, p) = (d.path(), d.path().join("s/1"));
        let find = |hook: &str| find(snaps, "s/1", hook);
        let err = |r: anyhow::Result<Option<PathBuf>>| format!("{:#}", r.unwrap_err());
        assert!(err(find(PRE_REFRESH)).contains("payload is not available"));
        fs::create_dir(p.join("meta")).unwrap();
        assert_eq!(find(PRE_REFRESH).unwrap(), None, "no hooks dir");
        fs::create_dir(p.join("meta/hooks")).unwrap();
        assert_eq!(find(PRE_REFRESH).unwrap(), None, "no such hook");

        let hook = p.join("meta/hooks/pre-refresh");
        fs::write(&hook, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(err(find(PRE_REFRESH)).contains("is not executable"));
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find(PRE_REFRESH).unwrap(), Some(hook.clone()));

        // Writable by others, here or on the way: refused, in one line.
        for (at, mode) in [
            (hook.clone(), 0o777),
            (p.join("meta/hooks"), 0o777),
            (p.clone(), 0o775),
        ] {
            fs::set_permissions(&at, fs::Permissions::from_mode(mode)).unwrap();
            let e = err(find(PRE_REFRESH));
            assert!(
                e.contains("refusing to run it") && e.contains("is writable by group or others"),
                "{e}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
            fs::set_permissions(&at, fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(find(PRE_REFRESH).unwrap(), Some(hook.clone()));

        // A symlink, even to a file inside the payload, is refused.
        std::os::unix::fs::symlink("/bin/true", p.join("meta/hooks/post-refresh")).unwrap();
        assert!(err(find(POST_REFRESH)).contains("is a symbolic link"));
        std::os::unix::fs::symlink("pre-refresh", p.join("meta/hooks/refresh-pending")).unwrap();
        assert!(err(find(REFRESH_PENDING)).contains("is a symbolic link"));
        fs::create_dir(p.join("meta/hooks/install")).unwrap();
        assert!(err(find("install")).contains("is not a regular file"));

        // The hooks directory itself may not lead elsewhere.
        fs::create_dir_all(d.path().join("q/1/meta")).unwrap();
        std::os::unix::fs::symlink(p.join("meta/hooks"), d.path().join("q/1/meta/hooks")).unwrap();
        assert!(err(super::find(snaps, "q/1", PRE_REFRESH)).contains("is a symbolic link"));
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("hook");
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn spec(dir: &Path, body: &str, timeout: Duration) -> Job {
        let mut env = Env::default();
        env.set("PATH", PATH);
        env.set("OUT", dir);
        job(
            script(dir, body),
            &env,
            dir.to_owned(),
            timeout,
            Duration::from_millis(300),
        )
    }

    #[test]
    fn output_is_captured_bounded_and_the_status_reported() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(
            d.path(),
            "for i in $(seq 1 50); do echo \"line $i\"; done\necho 'bad thing' >&2\nexit 3",
            Duration::from_secs(30),
        );
        let run = execute(&s, &|| false).unwrap();
        assert!(matches!(run.exit.end, End::Exited(st) if st.code() == Some(3)));
        assert!(run.exit.closed);
        let lines = run.output.log_lines("pre-refresh");
        assert!(lines.len() <= MAX_LOGGED_LINES + 1, "{lines:?}");
        assert!(lines[0].contains("lines of output left out"), "{lines:?}");
        // The two streams are read apart (their lines interleave only roughly); stderr stays.
        assert!(
            lines.contains(&"pre-refresh hook (stderr): bad thing".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"pre-refresh hook: line 50".to_owned()),
            "{lines:?}"
        );
        assert_eq!(
            verdict("pre-refresh hook of \"x\" (revision x1)", &run, s.limit()),
            Err("pre-refresh hook of \"x\" (revision x1) exited with status 3: bad thing".into())
        );
    }

    #[test]
    fn the_environment_is_exactly_what_was_given() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(d.path(), "env; pwd", Duration::from_secs(30));
        let run = execute(&s, &|| false).unwrap();
        assert!(matches!(run.exit.end, End::Exited(st) if st.success()));
        let text: Vec<&str> = run.output.lines.iter().map(|(_, l)| l.as_str()).collect();
        let out = format!("OUT={}", d.path().display());
        assert!(text.contains(&out.as_str()), "{text:?}");
        assert!(
            !text
                .iter()
                .any(|l| l.starts_with("CARGO") || l.starts_with("RUST")),
            "{text:?}"
        );
        assert_eq!(text.last().copied(), d.path().to_str());
    }

    /// Waits (on a pidfd: no polling) until process `pid` has exited; false if it still runs
    /// after `within`.
    fn exits_within(pid: i32, within: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => return e == rustix::io::Errno::SRCH,
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let within = Timespec::try_from(within).unwrap();
        poll(&mut fds, Some(&within)).unwrap_or(0) == 1
    }

    fn read_pid(p: &Path) -> i32 {
        fs::read_to_string(p).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn a_hook_that_outlives_its_time_is_stopped_with_its_children() {
        let d = tempfile::tempdir().unwrap();
        // It ignores SIGTERM (and so does its child): SIGKILL after the grace ends both.
        let s = spec(
            d.path(),
            "trap '' TERM\nsleep 1000 &\necho $! > \"$OUT/child\"\necho started\nwait",
            Duration::from_millis(300),
        );
        let t0 = Instant::now();
        let run = execute(&s, &|| false).unwrap();
        assert!(matches!(run.exit.end, End::TimedOut), "{:?}", run.exit.end);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let msg = verdict("post-refresh hook of \"x\" (revision 3)", &run, s.limit()).unwrap_err();
        assert!(msg.contains("timed out"), "{msg}");
        assert!(msg.ends_with(": started"), "{msg}");
        // SIGKILL was sent to the group before the hook was reaped; the child is dying.
        let child = read_pid(&d.path().join("child"));
        assert!(
            exits_within(child, Duration::from_secs(5)),
            "the hook's child {child} still runs"
        );
    }

    #[test]
    fn leftovers_are_killed_when_the_hook_exits() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(
            d.path(),
            "sleep 1000 >/dev/null 2>&1 &\necho $! > \"$OUT/child\"\nexit 0",
            Duration::from_secs(30),
        );
        let run = execute(&s, &|| false).unwrap();
        assert!(matches!(run.exit.end, End::Exited(st) if st.success()));
        let child = read_pid(&d.path().join("child"));
        assert!(
            exits_within(child, Duration::from_secs(5)),
            "the hook's leftover {child} still runs"
        );
    }

    #[test]
    fn a_shutdown_stops_the_hook() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(d.path(), "exec sleep 1000", Duration::from_secs(60));
        let t0 = Instant::now();
        let run = execute(&s, &|| t0.elapsed() > Duration::from_millis(100)).unwrap();
        assert!(matches!(run.exit.end, End::Stopped), "{:?}", run.exit.end);
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(verdict("x", &run, s.limit()), Ok(Ran::Cancelled));
    }

    #[test]
    fn a_signal_is_named() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(
            d.path(),
            "echo dying >&2; kill -SEGV $$",
            Duration::from_secs(30),
        );
        let run = execute(&s, &|| false).unwrap();
        assert_eq!(
            verdict("hook", &run, s.limit()),
            Err("hook was killed by signal SIGSEGV: dying".into())
        );
    }

    #[test]
    fn a_hook_that_cannot_start_says_why() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(d.path(), "", Duration::from_secs(30));
        fs::write(d.path().join("hook"), "#!/nonexistent/interpreter\n").unwrap();
        let e = execute(&s, &|| false).err().unwrap();
        assert!(format!("{e:#}").starts_with("cannot be started: "), "{e:#}");
    }
}
