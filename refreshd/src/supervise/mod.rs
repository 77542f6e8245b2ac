//! Child processes: every program refreshd runs with a bound — a snap's hooks
//! (`tasks::hooks`), the notification helper as each user (`notify`), `confine-hook
//! --prepare-data` as each user (`usertree`) — runs here, one way, so all get the same care:
//!
//! - a clean environment (only what the caller gives), a working directory, stdin on /dev/null;
//! - as root, or as a user (their uid, gid and groups, dropped in that order and checked);
//! - in a process group of its own, and dying with the thread that started it;
//! - for a bounded time: past it, or when the caller asks (shutdown), the whole group gets
//!   SIGTERM and, after a grace, SIGKILL; and whatever it leaves in its group is killed when it
//!   exits;
//! - its output read line by line (each line cut at [`MAX_LINE`] bytes), handed to the caller or
//!   kept up to a number of bytes.
//!
//! Every `unsafe` of refreshd is in [`sys`].

#[allow(unsafe_code)]
pub(crate) mod sys;

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

/// How long to wait for a child to exit after SIGKILL before giving up on it (a process stuck in
/// the kernel, say); it is still reaped whenever it does exit.
const REAP_LIMIT: Duration = Duration::from_secs(10);
/// How long, after the child exited, its output may take to reach its end: a process that left
/// the child's process group may still hold the pipes, and is not waited for longer.
const DRAIN: Duration = Duration::from_millis(500);
/// How often a running child's caller is asked whether to stop it (a flag without a wake-up:
/// `TaskCtx::cancelled`).
const STOP_CHECK: Duration = Duration::from_millis(250);
/// Longer lines are cut when read.
pub(crate) const MAX_LINE: usize = 1024;

/// A user to run as.
#[derive(Debug, Clone)]
pub(crate) struct User {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

impl User {
    /// `name` (`uid`, primary group `gid`) with the groups a login of theirs would have.
    pub(crate) fn login(name: &str, uid: u32, gid: u32) -> anyhow::Result<User> {
        let c = CString::new(name)
            .map_err(|_| anyhow::anyhow!("user name {name:?} holds a NUL byte"))?;
        let groups = nix::unistd::getgrouplist(&c, nix::unistd::Gid::from_raw(gid))
            .with_context(|| format!("cannot list the groups of {name}"))?;
        Ok(User {
            uid,
            gid,
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        })
    }
}

/// What to run, as whom, where, and for how long.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
    user: Option<User>,
    limit: Duration,
    grace: Duration,
}

impl Job {
    /// `program` as root, in `/`, with an empty environment, for at most `limit` (then SIGKILL
    /// at once, unless [`Job::grace`] says otherwise).
    pub(crate) fn new(program: impl Into<PathBuf>, limit: Duration) -> Job {
        Job {
            program: program.into(),
            args: vec![],
            env: vec![],
            cwd: PathBuf::from("/"),
            user: None,
            limit,
            grace: Duration::ZERO,
        }
    }

    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Job {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Sets a variable (nothing of refreshd's own environment is passed on).
    pub(crate) fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Job {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub(crate) fn cwd(mut self, dir: impl Into<PathBuf>) -> Job {
        self.cwd = dir.into();
        self
    }

    pub(crate) fn user(mut self, user: User) -> Job {
        self.user = Some(user);
        self
    }

    /// When stopped, its group gets SIGTERM first, and SIGKILL only `grace` later.
    pub(crate) fn grace(mut self, grace: Duration) -> Job {
        self.grace = grace;
        self
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// How a child ended.
#[derive(Debug)]
pub(crate) enum End {
    Exited(ExitStatus),
    /// Outlived its limit and was stopped.
    TimedOut,
    /// Stopped because its caller asked.
    Stopped,
}

/// A finished run.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) end: End,
    pub(crate) elapsed: Duration,
    /// Whether both output streams reached their end (else a process that left the group
    /// still holds them).
    pub(crate) closed: bool,
}

/// Why a run has no end to report.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Callers say what could not be started.
    #[error("{0}")]
    Start(io::Error),
    #[error(
        "does not exit even after SIGKILL (process {pid}, stuck in the kernel?); it is left behind"
    )]
    Stuck { pid: Pid },
    #[error("cannot wait for process {pid}: {error}")]
    Wait { pid: Pid, error: io::Error },
    #[error("lost track of process {pid}")]
    Lost { pid: Pid },
}

/// What the child's threads report: output lines, the end of a stream, the exit.
enum Msg {
    Line(Stream, Vec<u8>),
    Eof,
    Exited(io::Result<ExitStatus>),
}

/// Runs `job` to its end: exited, or stopped after its limit or when `stop()` turns true
/// (SIGTERM to its process group, then SIGKILL after the grace). Each line of its output goes
/// to `on_line` as it comes. Whatever it leaves in its process group is killed when it exits.
pub(crate) fn run(
    job: &Job,
    stop: &dyn Fn() -> bool,
    on_line: &mut dyn FnMut(Stream, &[u8]),
) -> Result<Exit, Error> {
    let mut cmd = Command::new(&job.program);
    cmd.args(&job.args)
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&job.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    sys::before_exec(&mut cmd, job.user.as_ref());
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(Error::Start)?;
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::sync_channel::<Msg>(64);
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || read_lines(out, Stream::Stdout, tx));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        std::thread::spawn(move || read_lines(err, Stream::Stderr, tx));
    }
    std::thread::spawn(move || {
        let res = wait_and_sweep(&mut child, pid);
        let _ = tx.send(Msg::Exited(res));
    });

    enum State {
        Running,
        Terminating { kill_at: Instant },
        Killing { give_up_at: Instant },
        Draining { until: Instant },
    }
    let deadline = started + job.limit;
    let mut state = State::Running;
    let mut stopped: Option<End> = None;
    let mut exit: Option<io::Result<ExitStatus>> = None;
    let mut eofs = 0;
    while exit.is_none() || eofs < 2 {
        let now = Instant::now();
        let wake_at = match state {
            State::Running => deadline.min(now + STOP_CHECK),
            State::Terminating { kill_at } => kill_at,
            State::Killing { give_up_at } => give_up_at,
            State::Draining { until } => until,
        };
        match rx.recv_timeout(wake_at.saturating_duration_since(now)) {
            Ok(Msg::Line(s, l)) => on_line(s, &l),
            Ok(Msg::Eof) => eofs += 1,
            Ok(Msg::Exited(res)) => {
                exit = Some(res);
                state = State::Draining {
                    until: Instant::now() + DRAIN,
                };
            }
            // Every thread is done: the exit and both ends have been received.
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                match state {
                    State::Running => {
                        let why = if stop() {
                            Some(End::Stopped)
                        } else if now >= deadline {
                            Some(End::TimedOut)
                        } else {
                            None
                        };
                        if let Some(why) = why {
                            stopped = Some(why);
                            if job.grace.is_zero() {
                                let _ = killpg(pid, Signal::SIGKILL);
                                state = State::Killing {
                                    give_up_at: now + REAP_LIMIT,
                                };
                            } else {
                                let _ = killpg(pid, Signal::SIGTERM);
                                state = State::Terminating {
                                    kill_at: now + job.grace,
                                };
                            }
                        }
                    }
                    State::Terminating { .. } => {
                        let _ = killpg(pid, Signal::SIGKILL);
                        state = State::Killing {
                            give_up_at: now + REAP_LIMIT,
                        };
                    }
                    State::Killing { .. } => return Err(Error::Stuck { pid }),
                    State::Draining { .. } => break,
                }
            }
        }
    }
    let status = match exit {
        Some(Ok(st)) => st,
        Some(Err(error)) => return Err(Error::Wait { pid, error }),
        None => return Err(Error::Lost { pid }),
    };
    Ok(Exit {
        end: stopped.unwrap_or(End::Exited(status)),
        elapsed: started.elapsed(),
        closed: eofs >= 2,
    })
}

/// A child's output, each stream's first bytes (lines joined by `\n`).
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

/// Runs `job` to its end (see [`run`]; never stopped early), keeping up to `max` bytes of each
/// of its output streams.
pub(crate) fn output(job: &Job, max: usize) -> Result<(Exit, Captured), Error> {
    let mut c = Captured::default();
    // Whether a line came on each stream yet: the next one follows a newline.
    let (mut out_seen, mut err_seen) = (false, false);
    let exit = run(job, &|| false, &mut |s, line| {
        let (buf, seen) = match s {
            Stream::Stdout => (&mut c.stdout, &mut out_seen),
            Stream::Stderr => (&mut c.stderr, &mut err_seen),
        };
        if std::mem::replace(seen, true) && buf.len() < max {
            buf.push(b'\n');
        }
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&line[..line.len().min(room)]);
    })?;
    Ok((exit, c))
}

/// Waits for the child to exit; before reaping it kills whatever it left in its process group.
/// Until it is reaped its pid — the group's id — cannot be reused, so the group signalled is
/// the child's.
fn wait_and_sweep(child: &mut Child, pid: Pid) -> io::Result<ExitStatus> {
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
    let _ = killpg(pid, Signal::SIGKILL);
    child.wait()
}

/// Sends `r`'s lines (cut at [`MAX_LINE`] bytes) until its end, then [`Msg::Eof`].
fn read_lines(mut r: impl Read, stream: Stream, tx: SyncSender<Msg>) {
    let mut buf = [0u8; 4096];
    let mut line = Vec::new();
    let mut cut = false;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                if cut {
                    line.extend_from_slice("…".as_bytes());
                }
                if tx
                    .send(Msg::Line(stream, std::mem::take(&mut line)))
                    .is_err()
                {
                    return;
                }
                cut = false;
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        let _ = tx.send(Msg::Line(stream, line));
    }
    let _ = tx.send(Msg::Eof);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("job");
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn output_is_kept_up_to_its_bound_per_stream() {
        let d = tempfile::tempdir().unwrap();
        let job = Job::new(
            script(
                d.path(),
                "echo one; echo two; echo >&2; echo oops >&2; exit 2",
            ),
            Duration::from_secs(30),
        );
        let (exit, out) = output(&job, 5).unwrap();
        assert!(matches!(exit.end, End::Exited(st) if st.code() == Some(2)));
        assert!(exit.closed);
        assert_eq!(out.stdout, b"one\nt");
        assert_eq!(out.stderr, b"\noops");
    }

    #[test]
    fn arguments_environment_and_directory_are_exactly_what_was_given() {
        let d = tempfile::tempdir().unwrap();
        let job = Job::new(
            script(d.path(), "echo \"$1|$2\"; env; pwd"),
            Duration::from_secs(30),
        )
        .arg("a b")
        .arg("c")
        .env("PATH", "/usr/bin:/bin")
        .env("X", "y")
        .cwd(d.path());
        let (_, out) = output(&job, 4096).unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "a b|c");
        assert!(lines.contains(&"X=y"), "{lines:?}");
        assert!(!lines.iter().any(|l| l.starts_with("CARGO")), "{lines:?}");
        assert_eq!(lines.last().copied(), d.path().to_str());
    }

    #[test]
    fn without_a_grace_the_group_is_killed_at_once() {
        let d = tempfile::tempdir().unwrap();
        // SIGTERM is ignored: only SIGKILL, at the limit, ends it this quickly.
        let job = Job::new(
            script(d.path(), "trap '' TERM\necho started\nsleep 1000"),
            Duration::from_millis(200),
        );
        let t0 = Instant::now();
        let (exit, out) = output(&job, 4096).unwrap();
        assert!(matches!(exit.end, End::TimedOut), "{:?}", exit.end);
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert_eq!(out.stdout, b"started");
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error() {
        let e = run(
            &Job::new("/nonexistent/program", Duration::from_secs(1)),
            &|| false,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(e, Error::Start(ref io) if io.kind() == io::ErrorKind::NotFound));
    }

    #[test]
    fn a_user_gets_their_ids_and_groups_only() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: not root: cannot drop to another user");
            return;
        }
        let user = User {
            uid: 65534,
            gid: 65534,
            groups: vec![65534, 4242],
        };
        let job = Job::new("/usr/bin/id", Duration::from_secs(30))
            .arg("-u")
            .user(user.clone());
        let (exit, out) = output(&job, 4096).unwrap();
        assert!(
            matches!(exit.end, End::Exited(st) if st.success()),
            "{exit:?}"
        );
        assert_eq!(out.stdout, b"65534");
        let job = Job::new("/usr/bin/id", Duration::from_secs(30))
            .arg("-G")
            .user(user);
        let (_, out) = output(&job, 4096).unwrap();
        assert_eq!(out.stdout, b"65534 4242");
    }
}
