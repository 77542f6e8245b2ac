//! A hostile local user against the API, on the Unix socket of a real daemon: connections that
//! send nothing, more connections than a user may have, a flood of every endpoint open to
//! users (a store lookup against a silent store and watch streams included) while root works
//! and a refresh goes through its critical section, and reading what root's hooks printed.
//!
//! The user's connections are made by the user: a small C helper (built with gcc at run time)
//! runs as the user with setpriv, connects, and passes each connection to the test over a
//! socketpair (SCM_RIGHTS). The kernel records the credentials of whoever called `connect`, so
//! the daemon sees the user's uid on each, whatever the test then sends. Each test prints
//! `figures: hostile: test=NAME attempts=N refused=N ... leaked=N`.

use std::fs;
use std::io::{BufRead, BufReader, IoSliceMut, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use refreshd_tests::*;

/// The documented defaults (docs/api.md, "Limits") the tests run against: a daemon started
/// with no `--api-*` option has exactly these.
const USER_CONNECTIONS: usize = 32;
const USER_STREAMS: usize = 8;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections over their limit answered at a time (each for at most a second); more are
/// closed unanswered.
const REFUSING: usize = 64;

fn prerequisites() -> bool {
    root_with(
        "a real user's connections to a daemon of its own",
        &[("gcc", "gcc"), ("setpriv", "util-linux")],
    )
}

fn users<const N: usize>(tags: [&str; N]) -> Option<[TestUser; N]> {
    if !prerequisites() {
        return None;
    }
    TestUser::create_all(tags)
}

/// `connect SOCKET N`: connects to SOCKET up to N times as whoever runs it, passes each
/// connection over fd 0 (SCM_RIGHTS) and closes its own copy; a connect that does not complete
/// within 2 s (a full backlog) ends it. Prints how many it made.
const HELPER_C: &str = r#"/* Connections made by an unprivileged user, for tests/tests/hostile_api.rs. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 4 || strcmp(argv[1], "connect")) return 2;
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  strncpy(a.sun_path, argv[2], sizeof a.sun_path - 1);
  long n = atol(argv[3]), k = 0;
  int err = 0;
  for (; k < n; k++) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) { err = errno; break; }
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { err = errno; close(fd); break; }
    char byte = 'c';
    struct iovec io = {&byte, 1};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(0, &m, 0) < 0) { err = errno; close(fd); break; }
    close(fd);
  }
  printf("connected=%ld error=%s\n", k, err ? strerror(err) : "none");
  return 0;
}
"#;

/// Builds `HELPER_C` beside the root, runnable by everyone.
fn build_helper(root: &Root) -> PathBuf {
    build_c(root, "api-helper", HELPER_C)
}

fn socket(r: &Path) -> PathBuf {
    r.join("run/refreshd.socket")
}

/// `n` connections to the daemon made by `user`, in the order they were made.
fn user_connect(helper: &Path, user: &TestUser, r: &Path, n: usize) -> Vec<UnixStream> {
    let (mine, theirs) = UnixStream::pair().unwrap();
    let child = {
        let mut c = as_user(user, helper);
        c.arg("connect")
            .arg(socket(r))
            .arg(n.to_string())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The command (and its copy of our socketpair end) goes with this block: the helper's
        // exit is then the end of what we read.
        c.spawn().expect("start the helper")
    };
    let mut conns = vec![];
    loop {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!(std::os::fd::RawFd);
        let msg = recvmsg::<()>(
            mine.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .expect("recvmsg");
        if msg.bytes == 0 {
            break;
        }
        for c in msg.cmsgs().expect("cmsgs") {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel just installed `fd` in this process for us alone.
                    conns.push(unsafe { UnixStream::from_raw_fd(fd) });
                }
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "helper: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&format!("connected={}", conns.len())),
        "helper: {} (received {})",
        text(&out.stdout),
        conns.len()
    );
    conns
}

/// The daemon's open descriptors, once it answers requests (its engine's own set up).
fn ready_fds(r: &Path, pid: i32) -> usize {
    let out = ctl(r, &["list"]);
    assert!(out.status.success(), "list: {}", text(&out.stderr));
    fds(pid)
}

/// The daemon's open descriptors.
fn fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The daemon's open Unix sockets (its API connections and its listener; not the TCP
/// connections a store look-up holds).
fn unix_sockets(pid: i32) -> usize {
    let table = fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let inodes: std::collections::HashSet<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(6))
        .collect();
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .filter(|ino| inodes.contains(ino.as_str()))
                .count()
        })
        .unwrap_or(0)
}

/// The daemon's threads.
fn threads(pid: i32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until `count` of the daemon is back to at most `base`; returns how many more it
/// still has after `limit`.
fn settle(count: fn(i32) -> usize, pid: i32, base: usize, limit: Duration) -> usize {
    let end = Instant::now() + limit;
    loop {
        let n = count(pid);
        if n <= base || Instant::now() > end {
            return n.saturating_sub(base);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// -------------------------------------------------------------------------------------------
// HTTP/1.1 on a raw connection, keep-alive included

/// A response: status, headers (lower-case names), body (chunks joined).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The answer to a request on a connection over its user's share.
    fn refused_at_accept(&self) -> bool {
        self.status == 503 && self.body.contains("connections open")
    }
}

/// What a connection over its user's share gets: its request answered with a 503 saying so,
/// or, while many such are being answered, closed unanswered.
fn refused(a: &std::io::Result<Answer>) -> bool {
    match a {
        Ok(a) => a.refused_at_accept(),
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        ),
    }
}

struct Http {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Http {
    fn new(s: UnixStream) -> Http {
        let w = s.try_clone().unwrap();
        Http {
            r: BufReader::new(s),
            w,
        }
    }

    fn send(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<()> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.w.write_all(req.as_bytes())
    }

    /// The status line and headers of the next response.
    fn head(&mut self) -> std::io::Result<(u16, Vec<(String, String)>)> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not a status line: {line:?}")))?;
        let mut headers = vec![];
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                return Ok((status, headers));
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
    }

    /// The next chunk of a chunked body; None after the last.
    fn chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let n = usize::from_str_radix(line.trim(), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
        let mut data = vec![0; n + 2];
        self.r.read_exact(&mut data)?;
        data.truncate(n);
        Ok((n > 0).then_some(data))
    }

    /// A whole response.
    fn answer(&mut self) -> std::io::Result<Answer> {
        let (status, headers) = self.head()?;
        let mut a = Answer {
            status,
            headers,
            body: String::new(),
        };
        if a.header("transfer-encoding") == Some("chunked") {
            while let Some(c) = self.chunk()? {
                a.body.push_str(&String::from_utf8_lossy(&c));
            }
        } else {
            let n: usize = a
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; n];
            self.r.read_exact(&mut body)?;
            a.body = String::from_utf8_lossy(&body).into_owned();
        }
        Ok(a)
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<Answer> {
        // A connection refused at accept was answered and closed already: the request may not
        // go out, and the answer is there all the same.
        let _ = self.send(method, path, body);
        self.answer()
    }
}

/// Runs refreshctl (as `user`, else root), killed after `limit`: how long it took, and its
/// output when it finished in time.
fn timed_ctl(
    r: &Path,
    args: &[&str],
    user: Option<&TestUser>,
    limit: Duration,
) -> (Duration, Option<Output>) {
    let mut c = match user {
        Some(u) => as_user(u, bin("refreshctl")),
        None => Command::new(bin("refreshctl")),
    };
    c.arg("--root")
        .arg(r)
        .args(args)
        .env_remove("REFRESHD_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().unwrap();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return (start.elapsed(), Some(child.wait_with_output().unwrap()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    (start.elapsed(), None)
}

// -------------------------------------------------------------------------------------------
// 1. Idle connections

/// Connections of a user that send nothing, half a request head, or nothing after a first
/// answer are closed after the header timeout (10 s by default), and give their descriptor
/// back: a user cannot hold connections by keeping quiet. Nor by promising a request body and
/// not sending it: a user's is never read, the request is answered at once.
#[test]
fn connections_that_say_nothing_are_closed_after_the_header_timeout() {
    let Some([user]) = users(["aid"]) else {
        return;
    };
    let mut tally = Tally::new("api-idle");
    let root = Root::new("hostile-api-idle");
    let r = root.path();
    let helper = build_helper(&root);
    let d = Daemon::start(r);
    let base = ready_fds(r, d.pid());

    let conns = user_connect(&helper, &user, r, 3);
    let mut conns = conns.into_iter();
    let silent = conns.next().unwrap();
    let mut half = conns.next().unwrap();
    let mut done = Http::new(conns.next().unwrap());
    half.write_all(b"GET /v1/snaps HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let answered = done.request("GET", "/v1/system-info", "").unwrap();
    assert_eq!(answered.status, 200, "{}", answered.body);
    let start = Instant::now();

    // Each is watched on a thread of its own: the time from the last byte it sent to its end.
    let limit = HEADER_TIMEOUT + Duration::from_secs(4);
    let watch = move |what: &'static str, s: UnixStream| {
        std::thread::spawn(move || {
            s.set_read_timeout(Some(limit)).unwrap();
            let mut s = s;
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    // A 408 may precede the end; anything else is not expected.
                    Ok(n) if n > 0 => continue,
                    Ok(_) => return (what, Some(start.elapsed())),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return (what, None),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (what, None),
                    Err(_) => return (what, Some(start.elapsed())),
                }
            }
        })
    };
    let watchers = [
        watch("silent", silent),
        watch("half a head", half),
        watch("idle after an answer", done.r.into_inner()),
    ];
    drop(done.w);
    let mut open = vec![];
    for w in watchers {
        let (what, closed) = w.join().unwrap();
        println!("{what}: closed after {closed:?}");
        tally.attempt(closed.is_some());
        match closed {
            Some(t) => assert!(
                t >= HEADER_TIMEOUT - Duration::from_millis(500),
                "{what}: closed after {t:?}, before the header timeout"
            ),
            None => open.push(what),
        }
    }
    tally.leaked = open.len();
    assert!(
        open.is_empty(),
        "still open {limit:?} after their last byte, past the header timeout of {HEADER_TIMEOUT:?}: {open:?}"
    );
    // A body of 1 MB promised, one byte sent.
    let promised = user_connect(&helper, &user, r, 1).remove(0);
    promised
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut promised = Http::new(promised);
    let asked = Instant::now();
    promised
        .w
        .write_all(
            b"POST /v1/snaps/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n{",
        )
        .unwrap();
    let a = promised.answer();
    let took = asked.elapsed();
    let told = a.as_ref().is_ok_and(|a| a.status == 403) && took < Duration::from_secs(1);
    tally.attempt(told);
    tally.leaked += usize::from(!told);
    assert!(
        told,
        "a body promised and not sent was waited for: {:?} after {took:?}",
        a.map(|a| (a.status, a.body))
    );
    drop(promised);
    let left = settle(fds, d.pid(), base, Duration::from_secs(3));
    tally.leaked += left;
    assert_eq!(left, 0, "descriptors left in the daemon");
}

// -------------------------------------------------------------------------------------------
// 2. A user's share of connections

/// A user opens its share of connections, then more: each one beyond is answered 503 with one
/// line at once and closed, while another user's and root's requests go on; and however many
/// the user tries, the daemon's descriptors stay within the share.
#[test]
fn connections_beyond_a_users_share_are_refused_at_once() {
    let Some([holder, other]) = users(["acap", "aoth"]) else {
        return;
    };
    let mut tally = Tally::new("api-share");
    let root = Root::new("hostile-api-share");
    let r = root.path();
    let helper = build_helper(&root);
    let d = Daemon::start(r);
    let pid = d.pid();
    let base = ready_fds(r, pid);

    let extra = 40;
    let conns = user_connect(&helper, &holder, r, USER_CONNECTIONS + extra);
    // Those beyond the share are answered at once.
    let mut slowest = Duration::ZERO;
    let mut told = 0;
    for (i, c) in conns.iter().enumerate().skip(USER_CONNECTIONS) {
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut h = Http::new(c.try_clone().unwrap());
        let asked = Instant::now();
        let a = h.request("GET", "/v1/system-info", "");
        slowest = slowest.max(asked.elapsed());
        let ok = a.as_ref().is_ok_and(|a| {
            a.refused_at_accept()
                && a.body.contains(&format!(
                    "uid {} has {USER_CONNECTIONS} connections open",
                    holder.uid
                ))
                && a.header("connection") == Some("close")
                && !a.body.contains('\n')
        });
        tally.attempt(ok);
        tally.leaked += usize::from(!ok);
        told += usize::from(ok);
        assert!(
            ok,
            "connection {} of {} ({} allowed) was not refused at once: {:?}",
            i + 1,
            conns.len(),
            USER_CONNECTIONS,
            a.map(|a| (a.status, a.body))
        );
    }
    println!("refused {told} connections beyond the share, each answered within {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "not at once: {slowest:?}");
    // Those within it are served.
    for c in conns.iter().take(USER_CONNECTIONS) {
        let mut h = Http::new(c.try_clone().unwrap());
        let a = h.request("GET", "/v1/system-info", "").unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let held = fds(pid);
    assert!(
        held <= base + USER_CONNECTIONS + 4,
        "the daemon has {held} descriptors, {base} before the user connected"
    );

    // Another user, and root, are served meanwhile.
    for who in [Some(&other), None] {
        let (took, out) = timed_ctl(r, &["list"], who, Duration::from_secs(10));
        let out = out.unwrap_or_else(|| {
            panic!(
                "list as {who:?} did not answer in {took:?}",
                who = who.map(|u| &u.name)
            )
        });
        assert!(out.status.success(), "list: {}", text(&out.stderr));
        assert!(took < Duration::from_secs(1), "list took {took:?}");
    }
    // The holder itself is told why, in one line (refreshctl retries a 503 for a few seconds).
    let (_, out) = timed_ctl(r, &["list"], Some(&holder), Duration::from_secs(20));
    let out = out.expect("refreshctl gives up in bounded time");
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("connections open") && err.trim().lines().count() == 1,
        "{err}"
    );
    tally.attempt(true);

    // However many more it tries, the daemon does not keep them.
    let more = user_connect(&helper, &holder, r, 2000);
    let mut peak = fds(pid);
    for c in &more {
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let a = Http::new(c.try_clone().unwrap()).request("GET", "/v1/snaps", "");
        let ok = refused(&a);
        tally.attempt(ok);
        tally.leaked += usize::from(!ok);
        assert!(ok, "{:?}", a.map(|a| (a.status, a.body)));
        peak = peak.max(fds(pid));
    }
    println!(
        "2000 more connections refused; the daemon's descriptors: {base} before, {peak} at most with {} held and {} refused",
        USER_CONNECTIONS,
        more.len()
    );
    assert!(
        peak <= base + USER_CONNECTIONS + REFUSING + 8,
        "the daemon's descriptors grew to {peak} ({base} before)"
    );
    drop((conns, more));
    let left = settle(fds, pid, base, Duration::from_secs(5));
    tally.leaked += left;
    assert_eq!(left, 0, "descriptors left in the daemon");
}

// -------------------------------------------------------------------------------------------
// 3. The flood

/// What one of the flood's connections did.
#[derive(Default, Debug)]
struct Done {
    role: usize,
    refused_at_accept: bool,
    answers: usize,
    /// 503s: over the user's share of requests or streams, or refreshd busy.
    busy: usize,
    /// 403s: mutating requests of a user.
    forbidden: usize,
    stream_lines: usize,
    ended: Option<String>,
}

/// The requests of the flood's plain connections: every route open to users, and the mutating
/// ones (which must be refused).
fn routes(id: u64) -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("GET", "/v1/system-info".into(), ""),
        ("GET", "/v1/snaps".into(), ""),
        ("GET", "/v1/snaps/work".into(), ""),
        ("GET", "/v1/snaps/work/status".into(), ""),
        ("GET", "/v1/changes?select=all".into(), ""),
        ("GET", format!("/v1/changes/{id}"), ""),
        ("GET", "/v1/metrics".into(), ""),
        ("GET", "/v1/nothing-here".into(), ""),
        ("POST", "/v1/snaps/work".into(), r#"{"action": "remove"}"#),
        (
            "POST",
            format!("/v1/changes/{id}"),
            r#"{"action": "abort"}"#,
        ),
    ]
}

/// One connection of the flood, until `stop`: `role` 0 watches change `id`, 1 asks what would
/// be refreshed (the store is silent), 2 goes through [`routes`].
fn flood_one(s: UnixStream, role: usize, id: u64, stop: Arc<AtomicBool>, sent: Arc<Sent>) -> Done {
    let mut first = Some(sent);
    let d = flood_on(s, role, id, &stop, &mut first);
    // A connection that ended before it sent anything counts as started too.
    if let Some(sent) = first {
        sent.one();
    }
    d
}

/// How many of the flood's connections have sent their first request.
#[derive(Default)]
struct Sent(std::sync::Mutex<usize>, std::sync::Condvar);

impl Sent {
    fn one(&self) {
        *self.0.lock().unwrap() += 1;
        self.1.notify_all();
    }

    /// Waits until `n` have (at most `limit`).
    fn wait(&self, n: usize, limit: Duration) {
        let g = self.0.lock().unwrap();
        let _ = self.1.wait_timeout_while(g, limit, |k| *k < n).unwrap();
    }
}

fn flood_on(
    s: UnixStream,
    role: usize,
    id: u64,
    stop: &AtomicBool,
    first: &mut Option<Arc<Sent>>,
) -> Done {
    let mut d = Done {
        role,
        ..Done::default()
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut h = Http::new(s);
    let routes = routes(id);
    let watch = format!("/v1/changes/{id}/watch");
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let (method, path, body) = match role {
            0 => ("GET", watch.as_str(), ""),
            1 => ("GET", "/v1/refresh", ""),
            _ => {
                let (m, p, b) = &routes[i % routes.len()];
                (*m, p.as_str(), *b)
            }
        };
        i += 1;
        let _ = h.send(method, path, body);
        if let Some(sent) = first.take() {
            sent.one();
        }
        let head = match h.head() {
            Ok(head) => head,
            Err(e) => {
                // Closed unanswered before any answer, and not by the flood's end: refused
                // while many were.
                d.refused_at_accept = d.answers == 0
                    && !stop.load(Ordering::Relaxed)
                    && refused(&Err(e.kind().into()));
                d.ended = Some(e.to_string());
                return d;
            }
        };
        let chunked = head
            .1
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked");
        let a = if role == 0 && head.0 == 200 && chunked {
            // A stream: its lines until it ends (the change is ready) or the flood stops.
            d.answers += 1;
            loop {
                match h.chunk() {
                    Ok(Some(c)) => d.stream_lines += c.iter().filter(|&&b| b == b'\n').count(),
                    Ok(None) => break,
                    Err(e) => {
                        d.ended = Some(e.to_string());
                        return d;
                    }
                }
            }
            continue;
        } else {
            // The head is read; the rest of the answer as usual.
            let mut a = Answer {
                status: head.0,
                headers: head.1,
                body: String::new(),
            };
            let rest = if chunked {
                let mut b = vec![];
                loop {
                    match h.chunk() {
                        Ok(Some(c)) => b.extend(c),
                        Ok(None) => break Ok(b),
                        Err(e) => break Err(e),
                    }
                }
            } else {
                let n: usize = a
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut b = vec![0; n];
                h.r.read_exact(&mut b).map(|()| b)
            };
            match rest {
                Ok(b) => a.body = String::from_utf8_lossy(&b).into_owned(),
                Err(e) => {
                    d.ended = Some(e.to_string());
                    return d;
                }
            }
            a
        };
        if d.answers == 0 && a.refused_at_accept() {
            d.refused_at_accept = true;
            return d;
        }
        d.answers += 1;
        match a.status {
            503 => d.busy += 1,
            403 => d.forbidden += 1,
            _ => {}
        }
        if a.header("connection") == Some("close") {
            d.ended = Some(format!("closed after {} {}", a.status, a.body));
            return d;
        }
    }
    d
}

/// A user's flood: `n` connections of theirs, each on a thread of its own.
struct Flood {
    stop: Arc<AtomicBool>,
    /// A second handle on each connection, to shut it down when the flood ends.
    handles: Vec<UnixStream>,
    threads: Vec<JoinHandle<Done>>,
}

impl Flood {
    fn start(helper: &Path, user: &TestUser, r: &Path, n: usize, id: u64) -> Flood {
        let conns = user_connect(helper, user, r, n);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Sent::default());
        let n = conns.len();
        let mut handles = vec![];
        let mut threads = vec![];
        for (i, c) in conns.into_iter().enumerate() {
            handles.push(c.try_clone().unwrap());
            // Within the user's share: a quarter watches, an eighth asks the silent store, the
            // rest goes through the routes. Beyond it (where nothing should be served), mostly
            // what would take a thread each: asking the silent store.
            let role = if i < USER_CONNECTIONS {
                match i % 8 {
                    0 | 4 => 0,
                    1 => 1,
                    _ => 2,
                }
            } else {
                match i % 4 {
                    0 => 0,
                    2 => 2,
                    _ => 1,
                }
            };
            let (stop, sent) = (stop.clone(), sent.clone());
            threads.push(std::thread::spawn(move || {
                flood_one(c, role, id, stop, sent)
            }));
        }
        // Under way: every connection has asked (or been closed).
        sent.wait(n, Duration::from_secs(20));
        Flood {
            stop,
            handles,
            threads,
        }
    }

    fn stop(self) -> Vec<Done> {
        self.stop.store(true, Ordering::Relaxed);
        for h in &self.handles {
            let _ = h.shutdown(std::net::Shutdown::Both);
        }
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

/// Refreshes `work` to `file` while its app runs; the app exits once the refresh waits for it.
/// Returns the change and how long its critical section lasted (from the task logs).
fn refresh_past_the_app(r: &Path, file: &Path, during: impl FnOnce(u64)) -> (Value, Duration) {
    let app = App::launch(r, "work.hold");
    let out = ctl(r, &["install", file.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "refresh: {}", text(&out.stderr));
    let id = newest_change(r);
    let c = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(task(&c, "wait-for-apps")["status"], "Wait", "{c}");
    during(id);
    let exited = app.release();
    let c = watch_until(r, id, |_| false);
    assert_eq!(
        c["status"], "Done",
        "the refresh completes after the app exits: {c}"
    );
    let entered = logged_at(&c, "wait-for-apps", "critical section entered at=").expect("entered");
    let left = logged_at(&c, "lift-inhibition", "critical section left at=").expect("left");
    assert!(entered >= exited, "the section began after the app exited");
    (c, Duration::from_nanos((left - entered) as u64))
}

/// A user holds every connection it may have (and tries a thousand more) and floods every
/// endpoint open to it — `GET /v1/refresh` against a store that never answers, watch streams of
/// the refresh under way, every read, the mutating routes — while root lists the snaps (each
/// answer within 1 s), another user does too, and a refresh waits for an app, then goes through
/// its critical section, which lasts no longer than the same refresh's without the flood
/// (within 2× and 400 ms, for a busy 2-core machine). The daemon's descriptors and threads stay
/// bounded, and none is left after.
#[test]
fn a_users_flood_holds_up_neither_root_nor_the_critical_section() {
    let Some([flooder, other]) = users(["afl", "aot"]) else {
        return;
    };
    let mut tally = Tally::new("api-flood");
    let root = Root::new("hostile-api-flood");
    let r = root.path();
    let helper = build_helper(&root);
    // A snap that follows a store channel, so that `GET /v1/refresh` asks the store; and the
    // snap whose refreshes are timed, with three revisions.
    let store = root.aux("store");
    fs::create_dir(&store).unwrap();
    let tool = root.aux("tool_1.0.snap");
    hello_snap(&tool, "tool", "1.0");
    refreshd_store::publish(&store, &tool, "stable").unwrap();
    let files = ["1.0", "2.0", "3.0"].map(|v| {
        let f = root.aux(&format!("work_{v}.snap"));
        tracking_snap(&f, "work", v, false);
        f
    });
    {
        let d = Daemon::start_with(
            r,
            DaemonOpts {
                extra_args: vec![
                    "--insecure-unsigned-store".into(),
                    "--store".into(),
                    store.display().to_string(),
                ],
                ..Default::default()
            },
        );
        for args in [
            vec!["install", "tool"],
            vec!["install", files[0].to_str().unwrap()],
        ] {
            let out = ctl(r, &args);
            assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        }
        if ctl_json(r, &["status", "--json"])["tracking"] == "none" {
            skip("no usable cgroup hierarchy: a refresh cannot wait for an app");
            return;
        }
        d.stop();
    }
    // From now on the store takes connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec![
                "--insecure-unsigned-store".into(),
                "--store".into(),
                format!("http://{}", silent.local_addr().unwrap()),
            ],
            ..Default::default()
        },
    );
    let pid = d.pid();

    let (_, quiet) = refresh_past_the_app(r, &files[1], |_| {});

    let base_fds = unix_sockets(pid);
    let base_threads = threads(pid);
    let attempts = USER_CONNECTIONS + 1000;
    let mut lists = vec![];
    let mut peak = (0, 0);
    let mut flood = None;
    let (c, loud) = refresh_past_the_app(r, &files[2], |id| {
        let f = Flood::start(&helper, &flooder, r, attempts, id);
        // The flood is under way: root and another user are served all the same, for as long
        // as it lasts (samples a fifth of a second apart, two seconds long).
        for i in 0..10 {
            let who = if i % 3 == 2 { Some(&other) } else { None };
            let (took, out) = timed_ctl(r, &["list"], who, Duration::from_secs(10));
            let ok = out.as_ref().is_some_and(|o| o.status.success());
            lists.push((took, ok));
            peak = (peak.0.max(unix_sockets(pid)), peak.1.max(threads(pid)));
            std::thread::sleep(Duration::from_millis(200).saturating_sub(took));
        }
        flood = Some(f);
    });
    peak = (peak.0.max(unix_sockets(pid)), peak.1.max(threads(pid)));
    let done = flood.take().unwrap().stop();

    let refused = done.iter().filter(|d| d.refused_at_accept).count();
    let served = done.iter().map(|d| d.answers).sum::<usize>();
    let busy = done.iter().map(|d| d.busy).sum::<usize>();
    let forbidden = done.iter().map(|d| d.forbidden).sum::<usize>();
    let lines = done.iter().map(|d| d.stream_lines).sum::<usize>();
    let streams = done
        .iter()
        .filter(|d| d.role == 0 && !d.refused_at_accept && d.stream_lines > 0)
        .count();
    // The attempts are the connections; what was asked on those served is counted beside.
    tally.attempts = attempts;
    tally.refused = refused;
    // Served beyond the user's share, and connections the daemon kept after the flood.
    let beyond = (attempts - refused).saturating_sub(USER_CONNECTIONS);
    let left = settle(unix_sockets, pid, base_fds, Duration::from_secs(5));
    tally.leaked = beyond + left;
    tally.extra = format!(
        " served={served} busy={busy} forbidden={forbidden} streams={streams} section_quiet_us={} section_flooded_us={}",
        quiet.as_micros(),
        loud.as_micros()
    );
    let ratio = loud.as_secs_f64() / quiet.as_secs_f64().max(1e-6);
    let slowest = lists.iter().map(|l| l.0).max().unwrap_or_default();
    println!(
        "flood: {attempts} connections tried, {refused} refused at once; {served} answers ({busy} busy, {forbidden} forbidden), {lines} lines on {streams} watch streams; the daemon's Unix sockets {base_fds} -> {} at most, threads {base_threads} -> {} at most",
        peak.0, peak.1
    );
    println!(
        "flood: list answered in {:?}; critical section {:?} without the flood, {:?} with it: ratio {ratio:.2}",
        lists.iter().map(|l| l.0).collect::<Vec<_>>(),
        quiet,
        loud
    );

    assert!(
        lists.iter().all(|l| l.1) && slowest < Duration::from_secs(1),
        "list during the flood: {lists:?}"
    );
    assert_eq!(c["status"], "Done");
    assert!(
        loud <= quiet * 2 + Duration::from_millis(400),
        "the critical section lasted {loud:?} with the flood, {quiet:?} without (ratio {ratio:.2})"
    );
    assert_eq!(
        attempts - refused,
        USER_CONNECTIONS,
        "the user had {} connections served, its share is {USER_CONNECTIONS}",
        attempts - refused
    );
    assert!(
        streams <= USER_STREAMS,
        "{streams} watch streams of one user, its share is {USER_STREAMS}"
    );
    assert!(served > 0 && lines > 0, "the flood was served: {done:?}");
    assert!(
        peak.0 <= base_fds + USER_CONNECTIONS + REFUSING + 8,
        "the daemon's Unix sockets grew from {base_fds} to {}",
        peak.0
    );
    assert!(
        peak.1 <= base_threads + 24,
        "the daemon's threads grew from {base_threads} to {}",
        peak.1
    );
    assert_eq!(left, 0, "connections left in the daemon");
    drop(silent);
}

// -------------------------------------------------------------------------------------------
// 4. What users may see

/// Root's hook prints a secret (on stdout and stderr) and fails: root sees it in the change;
/// a user sees the change, its tasks and their statuses through every route and refreshctl
/// command, and never the secret. The state database, which holds it too, is root's alone
/// (0600 with its `-wal` and `-shm`), also when an older version left it readable.
#[test]
fn users_see_changes_but_not_what_roots_hooks_print() {
    let Some([user]) = users(["asee"]) else {
        return;
    };
    let mut tally = Tally::new("api-see");
    let root = Root::new("hostile-api-see");
    let r = root.path();
    let helper = build_helper(&root);
    let secret = format!("SECRET-{}-{}", std::process::id(), unix_ns());
    let hook = format!("#!/bin/sh\necho \"token {secret} on stdout\"\necho \"token {secret} on stderr\" >&2\nexit 2\n");
    let yaml =
        |v: &str| format!("name: seen\nversion: '{v}'\napps:\n  seen:\n    command: bin/hello\n");
    let b1 = root.aux("seen_1.snap");
    SnapSrc::new(&yaml("1.0"))
        .file("bin/hello", "#!/bin/sh\necho hello\n", 0o755)
        .build(&b1);
    let b2 = root.aux("seen_2.snap");
    SnapSrc::new(&yaml("2.0"))
        .file("bin/hello", "#!/bin/sh\necho hello\n", 0o755)
        .file("meta/hooks/post-refresh", &hook, 0o755)
        .build(&b2);
    let d = Daemon::start(r);
    for b in [&b1, &b2] {
        let _ = ctl(r, &["install", b.to_str().unwrap()]);
    }
    let id = newest_change(r);
    let full = ctl_json(r, &["tasks", &id.to_string(), "--json"]);
    assert_eq!(full["status"], "Error", "{full}");
    assert!(
        full.to_string().contains(&secret),
        "root sees the hook's output: {full}"
    );

    // Through the API, on the user's own connections.
    let paths = [
        format!("/v1/changes/{id}"),
        "/v1/changes?select=all".to_owned(),
        format!("/v1/changes/{id}/watch"),
        "/v1/snaps/seen/status".to_owned(),
    ];
    let conns = user_connect(&helper, &user, r, paths.len());
    for (path, c) in paths.iter().zip(conns) {
        let a = Http::new(c).request("GET", path, "").unwrap();
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        let leaked = a.body.contains(&secret);
        tally.attempt(!leaked);
        tally.leaked += usize::from(leaked);
        assert!(
            !leaked,
            "GET {path} shows a user what root's hook printed: {}",
            a.body
        );
        if path.contains(&id.to_string()) {
            // What the change is and where it stands, still.
            let v: Value = serde_json::from_str(a.body.lines().next().unwrap()).unwrap();
            assert_eq!(v["status"], "Error", "{v}");
            assert_eq!(task(&v, "post-refresh-hook")["status"], "Error", "{v}");
            assert!(
                v["error"].as_str().unwrap_or_default().contains("failed"),
                "{v}"
            );
            assert!(task_log(&v, "post-refresh-hook").is_empty(), "{v}");
        }
    }
    // Through refreshctl, as the user: it works, and shows no secret.
    let id_s = id.to_string();
    for args in [
        vec!["tasks", id_s.as_str()],
        vec!["tasks", id_s.as_str(), "--json"],
        vec!["watch", id_s.as_str()],
        vec!["changes", "--all"],
        vec!["status", "seen"],
    ] {
        let out = ctl_as(r, &args, Some((user.uid, user.gid)));
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        let leaked = all.contains(&secret);
        tally.attempt(!leaked);
        tally.leaked += usize::from(leaked);
        assert!(!leaked, "refreshctl {args:?} as a user: {all}");
        // A change that failed makes tasks and watch exit 1; they still print it.
        assert!(
            out.status.code() == Some(0)
                || (out.status.code() == Some(1) && !out.stdout.is_empty()),
            "refreshctl {args:?} as a user: {all}"
        );
    }

    // The state holds it too: root's alone.
    let db = r.join("var/lib/refreshd/state.db");
    let private = |tally: &mut Tally| {
        for name in ["state.db", "state.db-wal", "state.db-shm"] {
            let p = db.with_file_name(name);
            let Ok(m) = fs::metadata(&p) else { continue };
            let mode = m.permissions().mode() & 0o777;
            let out = as_user(&user, "cat").arg(&p).output().unwrap();
            let leaked = out.status.success();
            tally.attempt(!leaked);
            tally.leaked += usize::from(leaked);
            assert_eq!(mode, 0o600, "{name} is {mode:o}");
            assert!(!leaked, "a user read {name}");
        }
    };
    private(&mut tally);
    d.stop();
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        let p = db.with_file_name(name);
        if p.exists() {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let _d = Daemon::start(r);
    private(&mut tally);
}
