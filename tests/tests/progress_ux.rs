//! What a person at a terminal sees while refreshctl works: refreshctl runs in a real
//! pseudo-terminal of a set size (its controlling terminal, as in a shell), and the test reads
//! the screen's byte stream. The live line fits the terminal's width and follows a resize; a
//! wait says what to do about it; Ctrl-C stops the waiting, not the change; uploading,
//! verifying, packing and publishing show their progress.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use refreshd_tests::*;
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcsetwinsize, Winsize};

/// How long a test waits for what it expects on the terminal before it fails, showing what was
/// there.
const SCREEN_LIMIT: Duration = Duration::from_secs(120);

/// A program running on a pseudo-terminal that is its controlling terminal (`setsid --ctty`):
/// Ctrl-C typed on it and a resize reach it as they would from a terminal emulator. Killed on
/// drop if still running.
struct Pty {
    master: fs::File,
    child: Option<Child>,
    chunks: mpsc::Receiver<Vec<u8>>,
    screen: Vec<u8>,
}

impl Pty {
    fn spawn(columns: u16, program: &Path, args: &[&str]) -> Pty {
        Self::spawn_in(Path::new("/"), columns, program, args)
    }

    /// [`Pty::spawn`] in directory `cwd`.
    fn spawn_in(cwd: &Path, columns: u16, program: &Path, args: &[&str]) -> Pty {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        resize(&master, columns);
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave: OwnedFd = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(name.to_str().unwrap())
            .expect("open the pty's terminal")
            .into();
        let child = {
            let mut cmd = Command::new("setsid");
            cmd.current_dir(cwd)
                .args(["--ctty", "--wait"])
                .arg(program)
                .args(args)
                .env_remove("REFRESHD_SOCKET")
                .env_remove("NO_COLOR")
                .env("TERM", "xterm")
                .stdin(Stdio::from(slave.try_clone().unwrap()))
                .stdout(Stdio::from(slave.try_clone().unwrap()))
                .stderr(Stdio::from(slave));
            cmd.spawn().expect("setsid (util-linux)")
            // The command, holding the terminal's side, is dropped here: once the program
            // exits, reading the master side ends.
        };
        let mut reader = fs::File::from(master.try_clone().unwrap());
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once no one holds the terminal's side any more.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Pty {
            master: master.into(),
            child: Some(child),
            chunks,
            screen: Vec::new(),
        }
    }

    /// Everything written to the terminal so far.
    fn screen(&self) -> String {
        self.screen_since(0)
    }

    /// How much was written so far, for [`Pty::screen_since`].
    fn mark(&self) -> usize {
        self.screen.len()
    }

    fn screen_since(&self, mark: usize) -> String {
        String::from_utf8_lossy(&self.screen[mark..]).into_owned()
    }

    /// Reads the terminal until `pred` holds for what it shows (each piece of output is an
    /// event: no polling); fails, showing the screen, after [`SCREEN_LIMIT`].
    fn wait_until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_LIMIT;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            match self
                .chunks
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(chunk) => self.screen.extend(chunk),
                Err(_) => panic!("no {what} on the terminal; it shows:\n{screen:?}"),
            }
        }
    }

    fn wait_for(&mut self, needle: &str) -> String {
        self.wait_until(needle, |s| s.contains(needle))
    }

    /// Types `bytes` as a user would.
    fn type_in(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// Makes the terminal `columns` wide, as a window resize does (SIGWINCH to the program).
    fn resize(&self, columns: u16) {
        resize(&self.master, columns);
    }

    /// Waits for the program to exit and for the last of its output.
    fn exit(&mut self) -> ExitStatus {
        let status = self.child.take().unwrap().wait().unwrap();
        // The reader ends at EIO, once the terminal's side is closed.
        while let Ok(chunk) = self.chunks.recv_timeout(SCREEN_LIMIT) {
            self.screen.extend(chunk);
        }
        status
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn resize(master: impl std::os::fd::AsFd, columns: u16) {
    tcsetwinsize(
        master,
        Winsize {
            ws_row: 24,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .expect("TIOCSWINSZ");
}

/// Every live line drawn on the screen: what follows a `\r\x1b[K` up to the next one, unless
/// it ends a line (a result printed once the live line was cleared).
fn drawn(screen: &str) -> Vec<String> {
    screen
        .split("\r\x1b[K")
        .skip(1)
        .filter(|l| !l.is_empty() && !l.contains('\n'))
        .map(str::to_string)
        .collect()
}

/// Asserts no live line is `columns` wide or wider: none reaches the last column.
fn assert_fits(lines: &[String], columns: usize) {
    for l in lines {
        assert!(
            l.chars().count() < columns,
            "{} characters on a terminal of {columns} columns: {l:?}",
            l.chars().count()
        );
    }
}

fn refreshctl(root: &Path, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--root".to_string(), root.to_str().unwrap().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    all
}

fn spawn_ctl(columns: u16, root: &Path, args: &[&str]) -> Pty {
    let args = refreshctl(root, args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Pty::spawn(columns, &bin("refreshctl"), &args)
}

/// x1 of `tracked` installed and its `hold` app running: a refresh to x2 will wait for it.
/// Returns the daemon, the app and the file of x2.
fn waiting_setup(root: &Root) -> (Daemon, App, std::path::PathBuf) {
    let (b1, b2) = (root.aux("t1.snap"), root.aux("t2.snap"));
    tracking_snap(&b1, "tracked", "1.0", false);
    tracking_snap(&b2, "tracked", "2.0", false);
    let d = Daemon::start(root.path());
    let out = ctl(root.path(), &["install", b1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let app = App::launch(root.path(), "tracked.hold");
    (d, app, b2)
}

/// A root with a snap whose app runs, a daemon, and the revision a refresh of it would wait
/// for; None (after saying why) where a pty test cannot run.
fn waiting(tag: &str) -> Option<(Root, Daemon, App, std::path::PathBuf)> {
    if !root_with("cgroups and a setuid launcher", &[("setsid", "util-linux")]) {
        return None;
    }
    let root = Root::new(tag);
    let (d, app, b2) = waiting_setup(&root);
    Some((root, d, app, b2))
}

/// A refresh that waits for an app, followed on a terminal 50 columns wide: no line drawn is
/// wider than the terminal, and the wait says where to look (`refreshctl status tracked`).
/// Widened to 120 columns (SIGWINCH), the line is redrawn at once, wider, and says how to
/// cancel too (`refreshctl abort ID`). Once the app exits, the refresh completes and the line
/// is cleared before the result.
#[test]
fn the_live_line_fits_the_terminal_and_a_wait_says_what_to_do() {
    let Some((root, _d, app, b2)) = waiting("pty-wait") else {
        return;
    };
    let r = root.path();

    let mut term = spawn_ctl(50, r, &["install", b2.to_str().unwrap()]);
    let narrow = term.wait_for("refreshctl status tracked");
    assert!(narrow.contains("waiting for"), "{narrow:?}");
    assert_fits(&drawn(&narrow), 50);
    let id = newest_change(r);
    assert!(
        !narrow.contains(&format!("refreshctl abort {id}")),
        "no room for the abort at 50 columns: {narrow:?}"
    );

    let mark = term.mark();
    term.resize(120);
    let abort = format!("refreshctl abort {id}");
    term.wait_for(&abort);
    let redrawn = drawn(&term.screen_since(mark));
    assert_fits(&redrawn, 120);
    let line = redrawn
        .iter()
        .find(|l| l.contains(&abort))
        .expect("the wide line");
    assert!(line.chars().count() > 50, "{line:?}");
    assert!(
        line.contains("waiting for 1 process")
            && line.contains("see: refreshctl status tracked; cancel: refreshctl abort"),
        "{line:?}"
    );

    app.release();
    let status = term.exit();
    let screen = term.screen();
    assert!(status.success(), "{status:?}: {screen:?}");
    assert!(
        screen.contains("\r\x1b[KInstalled tracked x2"),
        "the live line is cleared before the result: {screen:?}"
    );
    assert_fits(&drawn(&screen), 120);
}

/// Ctrl-C typed while refreshctl waits for a refresh: refreshctl clears its line, says the
/// change goes on and how to follow it (`refreshctl watch ID`) and exits 130. The change is
/// not aborted: it still waits, and completes once the app exits.
#[test]
fn ctrl_c_stops_the_waiting_not_the_change() {
    let Some((root, _d, app, b2)) = waiting("pty-ctrl-c") else {
        return;
    };
    let r = root.path();

    let mut term = spawn_ctl(80, r, &["install", b2.to_str().unwrap()]);
    term.wait_for("refreshctl status tracked");
    let id = newest_change(r);
    term.type_in(b"\x03");
    let status = term.exit();
    let screen = term.screen();
    assert_eq!(status.code(), Some(130), "{screen:?}");
    let said = format!(
        "\r\x1b[KChange {id} goes on in the background; follow it with: refreshctl watch {id} \
         (cancel: refreshctl abort {id})\r\n"
    );
    assert!(screen.contains(&said), "{screen:?}");
    assert!(!screen.contains("error"), "{screen:?}");

    let change = ctl_json(r, &["tasks", &id.to_string(), "--json"]);
    assert_eq!(change["status"], "Wait", "not aborted: {change}");
    assert_eq!(task(&change, "wait-for-apps")["status"], "Wait", "{change}");

    app.release();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(
        fs::read_link(r.join("snap/tracked/current")).unwrap(),
        Path::new("x2")
    );
}

/// A snap of `size` incompressible bytes (besides its app), built in `dir`; returns its file.
fn big_snap(dir: &Path, name: &str, size: usize) -> std::path::PathBuf {
    let src = SnapSrc::new(&format!(
        "name: {name}\nversion: '1.0'\nsummary: Large\napps:\n  {name}:\n    command: bin/hello\n"
    ))
    .file("bin/hello", "#!/bin/sh\necho hello\n", 0o755);
    fs::write(src.dir.path().join("payload.bin"), noise(size, 0x9e37_79b9)).unwrap();
    let out = dir.join(format!("{name}_1.0_all.snap"));
    src.build(&out);
    out
}

/// `install ./big_1.0_all.snap` of 20 MB on a terminal: the upload is shown with a bar that
/// reaches 100% of the file's size, then refreshd's verification of the blob (the prepare
/// task's `verifying` bar: the daemon is held in it until the terminal has shown it); every
/// line fits the terminal; the install completes.
#[test]
fn a_large_local_install_shows_its_upload_and_verification() {
    if !root_with("mounting snaps", &[("setsid", "util-linux")]) {
        return;
    }
    let root = Root::new("pty-upload");
    let r = root.path();
    let release = root.aux("verify.go");
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            failpoints: Some(&format!("pause:mid-verify={}", release.display())),
            ..Default::default()
        },
    );
    let file = big_snap(&root.aux(""), "big", 20_000_000);
    let size = fs::metadata(&file).unwrap().len();
    let total = format!("/ {:.1} MB", size as f64 / 1e6);

    let mut term = spawn_ctl(80, r, &["install", file.to_str().unwrap()]);
    let uploaded = term.wait_until("the upload at 100%", |s| {
        drawn(s)
            .iter()
            .any(|l| l.starts_with("Uploading big_1.0_all.snap: [####################] 100%"))
    });
    let upload = drawn(&uploaded);
    let first = upload
        .iter()
        .find(|l| l.starts_with("Uploading big_1.0_all.snap: ["))
        .unwrap();
    assert!(first.ends_with(&total), "{first:?}");
    let verifying = term.wait_until("the verification", |s| {
        drawn(s)
            .iter()
            .any(|l| l.contains("Prepare snap \"big\" (x1): verifying ["))
    });
    fs::write(&release, b"").unwrap();
    let status = term.exit();
    let screen = term.screen();
    assert!(status.success(), "{status:?}: {screen:?}");
    assert!(screen.contains("Installed big x1"), "{screen:?}");
    let lines = drawn(&screen);
    assert_fits(&lines, 80);
    let verify = drawn(&verifying)
        .into_iter()
        .find(|l| l.contains("verifying ["))
        .unwrap();
    assert!(verify.ends_with(&total), "{verify:?}");
}

/// `pack DIR` and `publish` of 20 MB on a terminal: each shows its bar up to 100% (packing:
/// the directory's files and bytes read by mksquashfs; publishing: the bytes copied and
/// hashed) and clears it before saying what it did. Not on a terminal, neither draws anything.
#[test]
fn pack_and_publish_show_their_progress_on_a_terminal() {
    if !mksquashfs_available() || find_program("setsid").is_none() {
        skip("mksquashfs (squashfs-tools) or setsid (util-linux) not installed");
        return;
    }
    let tmp = scratch("pty-pack");
    let dir = tmp.path().join("big");
    fs::create_dir_all(dir.join("meta")).unwrap();
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::write(
        dir.join("meta/snap.yaml"),
        "name: big\nversion: '1.0'\nsummary: Large\napps:\n  big:\n    command: bin/hello\n",
    )
    .unwrap();
    fs::write(dir.join("bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    fs::write(dir.join("payload.bin"), noise(20_000_000, 0x51_7cc1)).unwrap();
    let store = tmp.path().join("store");
    fs::create_dir(&store).unwrap();

    let ctl_bin = bin("refreshctl");
    // Relative paths, as typed in a shell.
    let (d, o, t) = ("big", "big.snap", tmp.path());
    let mut term = Pty::spawn_in(t, 80, &ctl_bin, &["pack", d, "--output", o]);
    let status = term.exit();
    let screen = term.screen();
    assert!(status.success(), "{status:?}: {screen:?}");
    let lines = drawn(&screen);
    assert_fits(&lines, 80);
    assert!(
        lines.iter().any(|l| l.starts_with("Packing ")
            && l.contains("(3 files, 20.0 MB): [####################] 100%")),
        "{screen:?}"
    );
    assert!(screen.contains(&format!("\r\x1b[KBuilt {o}")), "{screen:?}");

    let s = store.to_str().unwrap();
    let mut term = Pty::spawn_in(t, 80, &ctl_bin, &["publish", "--store", s, o]);
    let status = term.exit();
    let screen = term.screen();
    assert!(status.success(), "{status:?}: {screen:?}");
    let lines = drawn(&screen);
    assert_fits(&lines, 80);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Publishing big.snap: [####################] 100%")),
        "{screen:?}"
    );
    assert!(
        screen.contains("\r\x1b[KPublished big 1.0 as revision 1"),
        "{screen:?}"
    );

    // Through pipes (a script, a log): the results, and no progress.
    let again = tmp.path().join("again.snap");
    let piped = Command::new(&ctl_bin)
        .current_dir(t)
        .args(["pack", d, "--output", again.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert!(piped.stderr.is_empty(), "{}", text(&piped.stderr));
    let piped = Command::new(&ctl_bin)
        .args(["publish", "--store", s, again.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert!(piped.stderr.is_empty(), "{}", text(&piped.stderr));
}
