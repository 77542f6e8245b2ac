//! What users and the store control, printed on root's terminal: a real unprivileged user's app
//! whose command line (`exec -a`) holds escape sequences, carriage returns and newline-prefixed
//! fake lines while a refresh waits for it, and a store whose snap's summary holds
//! bidirectional overrides and whose index holds escape sequences. Every refreshctl output that
//! shows them — `tasks`, `watch` (lines, live on a terminal, JSON), the progress of the command
//! that waits, `status` (text and JSON), `list`, `refresh --list` and error lines — and the
//! daemon's own log must carry them escaped: the bytes are checked, not the look.
//!
//! Each test prints `figures: hostile: test=NAME attempts=N refused=N leaked=0`: an attempt is
//! one output path shown hostile text; it leaked if a raw control byte or a forged line got
//! through (the test then fails).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use refreshd_snap::text::escapes;
use refreshd_tests::*;

/// What the user's app makes its command line: an OSC title change, a screen clear, a cursor
/// home, a carriage return and a newline starting a line that looks like refreshd's, a
/// colour, a C1 CSI (UTF-8 C2 9B) and a right-to-left override (E2 80 AE), in bash's `$'...'`.
const EVIL_ARGV0: &str =
    r"$'\e]0;pwned\a\e[2J\e[H\r\nFAKE root: refresh done\e[31m\xc2\x9b1m\xe2\x80\xaeevil'";
/// Its second argument: another forged line, a cursor-up.
const EVIL_ARG: &str = r"$'arg\n\rFAKE second line\e[1A'";
/// What a forged line starts with, wherever it lands.
const FAKE: &str = "FAKE ";

/// A snap whose `hold` app becomes a bash with the hostile command line (the same pid), which
/// says `started PID NS REV` and waits for a line on stdin.
fn evil_snap(out: &Path, version: &str) {
    let hold = format!(
        "#!/bin/bash\nexec -a {EVIL_ARGV0} /bin/bash -c 'echo \"started $$ $(date +%s%N) $SNAP_REVISION\"; read l; echo \"exit $(date +%s%N)\"' {EVIL_ARG}\n"
    );
    SnapSrc::new(&format!(
        "name: ho\nversion: '{version}'\nsummary: Hostile output\napps:\n  hold:\n    command: bin/hold\n"
    ))
    .file("bin/hold", &hold, 0o755)
    .build(out);
}

/// The characters of `bytes` a terminal would act on (besides the newlines of the output's own
/// lines), and lines that start with the forged text: what leaked.
fn leaks(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut found: Vec<String> = text
        .chars()
        .filter(|&c| c != '\n' && escapes(c))
        .map(|c| format!("{c:?}"))
        .collect();
    found.extend(
        text.lines()
            .filter(|l| l.trim_start().starts_with(FAKE))
            .map(|l| format!("forged line {l:?}")),
    );
    found
}

/// Output on a terminal, with the client's own sequences taken out: the live line's
/// `\r\x1b[K`, and the terminal's `\r\n` for each newline.
fn terminal_text(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes)
        .replace("\r\x1b[K", "")
        .replace("\r\n", "\n");
    text.into_bytes()
}

/// Counts what was shown hostile text, and fails on a leak.
struct Shown(Tally);

impl Shown {
    /// `what` showed hostile text as `bytes`; `needle` (if any) must appear in it, escaped, so
    /// that the check is not passed by output that simply left it out.
    fn shown(&mut self, what: &str, bytes: &[u8], needle: Option<&str>) {
        self.0.attempt(false);
        let found = leaks(bytes);
        assert!(
            found.is_empty(),
            "{what}: raw control characters or forged lines reach the terminal: {found:?}\n{}",
            String::from_utf8_lossy(bytes)
        );
        if let Some(n) = needle {
            let text = String::from_utf8_lossy(bytes);
            assert!(text.contains(n), "{what}: {n:?} not shown: {text}");
        }
        println!("{what}: clean ({} bytes)", bytes.len());
    }

    /// An attempt turned down with an error (the hostile text never got in).
    fn refused(&mut self, what: &str, bytes: &[u8]) {
        self.shown(what, bytes, None);
        self.0.refused += 1;
    }
}

/// A child whose stdout and stderr are a terminal (a pty) the test reads; killed on drop.
struct OnTerminal {
    child: Child,
    chunks: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl OnTerminal {
    fn spawn(mut cmd: Command) -> OnTerminal {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave = pty.slave;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().expect("spawn on a terminal");
        // `cmd` holds the slave's last copies: dropped, so the master sees the end once the
        // child exits.
        drop(cmd);
        let (tx, chunks) = mpsc::channel();
        let mut master = fs::File::from(pty.master);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once no slave is open.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        OnTerminal {
            child,
            chunks,
            seen: Vec::new(),
            reader: Some(reader),
        }
    }

    /// Reads until the output contains `needle` (or `limit` passes); returns all of it.
    fn until(&mut self, needle: &str, limit: Duration) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            match self
                .chunks
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => break,
            }
        }
        self.seen.clone()
    }

    /// Waits for the child to exit and returns everything it wrote.
    fn wait(&mut self) -> Vec<u8> {
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.seen.extend(self.chunks.try_iter().flatten());
        self.seen.clone()
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn refreshctl(r: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin("refreshctl"));
    c.arg("--root").arg(r).args(args);
    c
}

fn all_output(out: &Output) -> Vec<u8> {
    [out.stdout.as_slice(), out.stderr.as_slice()].concat()
}

/// A user's app with a hostile command line, waited for by a refresh: every output that shows
/// the wait reason or the process shows it escaped.
#[test]
fn a_users_hostile_command_line_reaches_no_terminal_raw() {
    if !root_with(
        "a daemon, a setuid launcher and a real user",
        &[("setpriv", "util-linux"), ("bash", "bash")],
    ) {
        return;
    }
    let Some(user) = TestUser::create("o") else {
        skip("cannot create a test user (useradd)");
        return;
    };
    let root = Root::new("ho-argv");
    let r = root.path();
    user_home(r, &user);
    let (b1, b2) = (root.aux("ho1.snap"), root.aux("ho2.snap"));
    evil_snap(&b1, "1.0");
    evil_snap(&b2, "2.0");
    let d = Daemon::start(r);
    let out = ctl(r, &["install", b1.to_str().unwrap()]);
    assert!(out.status.success(), "install: {}", text(&out.stderr));
    let mut tally = Shown(Tally::new("hostile_command_line"));

    let app = App::launch_as(r, "ho.hold", Some((user.uid, user.gid)));
    let cmdline = fs::read(format!("/proc/{}/cmdline", app.pid)).unwrap();
    assert!(
        cmdline.starts_with(b"\x1b]0;pwned"),
        "the app's command line is the hostile one: {cmdline:?}"
    );
    // The refresh that waits, with its progress on a terminal.
    let mut progress = OnTerminal::spawn(refreshctl(r, &["install", b2.to_str().unwrap()]));
    let id = {
        let t0 = Instant::now();
        loop {
            let changes = ctl_json(r, &["changes", "--json"]);
            if let Some(id) = changes[0]["id"].as_u64() {
                break id;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no change");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let waiting = watch_until(r, id, |c| {
        task(c, "wait-for-apps")["status"] == "Wait"
            && c.to_string().contains(&format!("pid {}", app.pid))
    });
    let reason = task(&waiting, "wait-for-apps")["wait"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    println!("the wait reason, as the API gives it: {reason}");
    let escaped = r"\u{1b}]0;pwned";

    // The progress line of the command that waits, on a terminal (live mode). It is cut at 79
    // columns, here before the command line; client/src/cli/progress.rs's
    // hostile_reasons_reach_no_terminal shows a reason that fits, escaped.
    let shown = progress.until("waiting for", Duration::from_secs(30));
    tally.shown(
        "install's progress (live)",
        &terminal_text(&shown),
        Some("waiting for"),
    );

    // tasks, text and JSON.
    let out = ctl(r, &["tasks", &id.to_string()]);
    tally.shown("tasks", &all_output(&out), Some(escaped));
    let out = ctl(r, &["tasks", &id.to_string(), "--json"]);
    // Escaped by the daemon (the reason is text), then quoted by JSON.
    tally.shown("tasks --json", &all_output(&out), Some(r"\\u{1b}]0;pwned"));

    // watch: lines (a pipe), until it shows the wait.
    let mut lines = refreshctl(r, &["watch", &id.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Read on a thread of its own, so that output that never comes ends at a deadline.
    std::thread::spawn(move || {
        for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        seen.extend_from_slice(&line);
        seen.push(b'\n');
        if String::from_utf8_lossy(&line).contains("pwned") {
            break;
        }
    }
    let _ = lines.kill();
    let _ = lines.wait();
    tally.shown("watch (lines)", &seen, Some(escaped));

    // watch: live, on a terminal.
    let mut live = OnTerminal::spawn(refreshctl(r, &["watch", &id.to_string()]));
    let shown = live.until("waiting for", Duration::from_secs(30));
    drop(live);
    tally.shown("watch (live)", &terminal_text(&shown), Some("waiting for"));

    // watch --json, one state.
    let (mut json, rx) = watch_lines(r, id);
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let _ = json.kill();
    let _ = json.wait();
    tally.shown("watch --json", first.as_bytes(), Some(r"\\u{1b}]0;pwned"));

    // status, text and JSON; changes.
    let out = ctl(r, &["status", "ho"]);
    tally.shown("status NAME", &all_output(&out), Some(escaped));
    let out = ctl(r, &["status", "ho", "--json"]);
    // The command line as data (its arguments), in JSON's own escapes.
    tally.shown(
        "status NAME --json",
        &all_output(&out),
        Some(r"\u001b]0;pwned"),
    );
    let out = ctl(r, &["changes"]);
    tally.shown("changes", &all_output(&out), None);

    // The app goes; the refresh ends; its command's output, to the end, and the daemon's log.
    app.release();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    let rest = progress.wait();
    tally.shown(
        "install's progress, to the end",
        &terminal_text(&rest),
        None,
    );
    drop(d);
    let log = fs::read(root.aux("refreshd.log")).unwrap_or_default();
    tally.shown("the daemon's log", &log, None);
}

/// A store whose snap has a summary with bidirectional overrides and zero-width characters
/// (snap.yaml refuses control characters, not these), and whose index then offers a version
/// with escape sequences: `list` (text and JSON) and the refusals show them escaped.
#[test]
fn a_hostile_store_s_strings_reach_no_terminal_raw() {
    if !root_with("a daemon of its own", &[]) {
        return;
    }
    let root = Root::new("ho-store");
    let r = root.path();
    let store = root.aux("store");
    fs::create_dir(&store).unwrap();
    let summary = "Photos \u{202e}gpj.exe\u{202c} \u{200b}viewer\u{2066}";
    let file = root.aux("bidi.snap");
    SnapSrc::new(&format!(
        "name: bidi\nversion: '1.0'\nsummary: \"{summary}\"\napps:\n  bidi:\n    command: bin/hello\n"
    ))
    .file("bin/hello", "#!/bin/sh\necho hello\n", 0o755)
    .build(&file);
    refreshd_store::publish(&store, &file, "stable").unwrap();
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec![
                "--insecure-unsigned-store".into(),
                "--store".into(),
                store.to_str().unwrap().into(),
            ],
            ..Default::default()
        },
    );
    let out = ctl(r, &["install", "bidi"]);
    assert!(out.status.success(), "install: {}", text(&out.stderr));
    let mut tally = Shown(Tally::new("hostile_store_strings"));
    let out = ctl(r, &["list"]);
    tally.shown("list", &all_output(&out), Some(r"\u{202e}gpj.exe"));
    let out = ctl(r, &["list", "--json"]);
    tally.shown("list --json", &all_output(&out), Some(r"\u202egpj.exe"));

    // A version with escapes and a fake line: refused, and the refusal is shown escaped.
    let index_path = store.join("v1/snaps/bidi.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let mut rev2 = index["revisions"]["1"].clone();
    rev2["version"] = "\u{1b}[2J\u{1b}]0;pwned\u{7}\r\nFAKE 2\u{9b}1m".into();
    index["revisions"]["2"] = rev2;
    index["channels"]["stable"] = 2.into();
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let out = ctl(r, &["refresh", "bidi"]);
    assert!(!out.status.success());
    tally.refused("refresh (a hostile version)", &all_output(&out));
    let out = ctl(r, &["refresh", "--list"]);
    tally.refused("refresh --list (a hostile version)", &all_output(&out));
    let out = ctl(r, &["refresh"]);
    tally.refused("refresh (every snap)", &all_output(&out));
}
