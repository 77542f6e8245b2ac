//! Store attacks and store failures, end to end through a real daemon and refreshctl: a
//! tampered blob, blobs longer or shorter than their index says, index paths that leave the
//! store, an older revision (or the same revision with other content) offered as an update,
//! a store that is down, silent, stalls or answers 5xx, and hostile index content.
//!
//! The store client's own behaviour is tested at library level (store/tests/dir_store.rs,
//! store/tests/http_store.rs); these tests show what the daemon makes of it: what the user
//! sees, that nothing is mounted, linked or left behind, that the installed revision keeps
//! running, and that the next refresh works once the store is right again.
//!
//! The HTTP store is a small file server written here on std::net, which serves a store
//! directory like any web server (ranges included) and can be turned hostile while the test
//! runs; it logs every request, so a test can tell what the daemon asked for.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use refreshd_store::Entry;
use refreshd_tests::store::*;
use refreshd_tests::*;

// The store crate's nginx harness and certificates, shared rather than copied.
#[path = "../../store/tests/common/nginx.rs"]
mod nginx;

/// How the file server behaves for the next requests.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    Normal,
    /// Accepts, reads the request, never answers.
    Silent,
    /// Holds index requests unanswered until the mode changes, then answers them.
    Gate,
    /// Answers with this status: every request, or (`index` false) blob requests only.
    Status {
        code: u16,
        index: bool,
    },
    /// Sends blobs up to byte `at`, then nothing more, the connection left open.
    StallBlob {
        at: u64,
    },
    /// Serves blobs `extra` bytes longer than the file, with or without Content-Length.
    Longer {
        extra: u64,
        length: bool,
    },
    /// Serves blobs cut to `keep` bytes, with or without Content-Length (a truncated file).
    Shorter {
        keep: u64,
        length: bool,
    },
    /// Sends indexes a byte every 250 ms: never silent for long, never done.
    DripIndex,
    /// Sends indexes that never end (JSON whitespace, as fast as the client takes it).
    EndlessIndex {
        length: bool,
    },
}

struct Shared {
    dir: PathBuf,
    mode: Mutex<Mode>,
    /// (path, Range header) of every request, in order.
    log: Mutex<Vec<(String, Option<String>)>>,
    stop: AtomicBool,
    /// Bytes of endless indexes the client took.
    index_bytes: AtomicU64,
}

/// A file server on 127.0.0.1 serving a store directory, turned hostile at will.
struct Server {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = Server {
            port: listener.local_addr().unwrap().port(),
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                mode: Mutex::new(Mode::Normal),
                log: Mutex::new(vec![]),
                stop: AtomicBool::new(false),
                index_bytes: AtomicU64::new(0),
            }),
            acceptor: None,
        };
        s.accept_on(listener);
        s
    }

    fn accept_on(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (d, sh) = (done.clone(), self.shared.clone());
        let h = std::thread::spawn(move || {
            // Polled: a listener has no way to be woken by the test, and 10 ms is nothing here.
            while !d.load(Ordering::SeqCst) && !sh.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let sh = sh.clone();
                        std::thread::spawn(move || serve(conn, &sh));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        self.acceptor = Some((done, h));
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.shared.log.lock().unwrap().clone()
    }

    fn forget(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// Closes the port: connections are refused until [`Server::listen`].
    fn refuse(&mut self) {
        if let Some((done, h)) = self.acceptor.take() {
            done.store(true, Ordering::SeqCst);
            let _ = h.join();
        }
    }

    /// Listens on the same port again.
    fn listen(&mut self) {
        let l = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        self.accept_on(l);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.refuse();
    }
}

/// Keeps a connection open, saying nothing, while `still(mode)` holds.
fn hold(sh: &Shared, still: impl Fn(&Mode) -> bool) {
    while !sh.stop.load(Ordering::SeqCst) && still(&sh.mode.lock().unwrap()) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(mut s: TcpStream, sh: &Shared) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if sh.stop.load(Ordering::SeqCst) || head.len() > 65536 {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
        .to_owned();
    let range = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("range")
            .then(|| v.trim().to_owned())
    });
    sh.log.lock().unwrap().push((path.clone(), range.clone()));
    let mode = sh.mode.lock().unwrap().clone();
    let is_index = path.ends_with(".json");
    match mode {
        Mode::Silent => return hold(sh, |m| *m == Mode::Silent),
        Mode::Gate if is_index => hold(sh, |m| *m == Mode::Gate),
        Mode::Status { code, index } if index || !is_index => {
            let _ = write!(
                s,
                "HTTP/1.1 {code} Broken\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        Mode::DripIndex if is_index => {
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n"
            );
            while !sh.stop.load(Ordering::SeqCst) && s.write_all(b" ").is_ok() {
                std::thread::sleep(Duration::from_millis(250));
            }
            return;
        }
        Mode::EndlessIndex { length } if is_index => {
            let len = if length {
                "Content-Length: 1073741824\r\n"
            } else {
                ""
            };
            let _ = write!(s, "HTTP/1.1 200 OK\r\n{len}Connection: close\r\n\r\n");
            let chunk = vec![b' '; 64 * 1024];
            // Up to 1 GiB, or until the client hangs up.
            for _ in 0..16 * 1024 {
                if sh.stop.load(Ordering::SeqCst) || s.write_all(&chunk).is_err() {
                    break;
                }
                sh.index_bytes
                    .fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            return;
        }
        _ => {}
    }
    // From here on, an ordinary file server.
    let rel = path.trim_start_matches('/');
    let not_found = |s: &mut TcpStream| {
        let _ = write!(
            s,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    };
    if path.contains('%') || rel.split('/').any(|c| c == "..") {
        return not_found(&mut s);
    }
    let Ok(mut content) = fs::read(sh.dir.join(rel)) else {
        return not_found(&mut s);
    };
    let mut length = true;
    if !is_index {
        match mode {
            Mode::Longer { extra, length: l } => {
                content.extend(noise(extra as usize, 99 | 1));
                length = l;
            }
            Mode::Shorter { keep, length: l } => {
                content.truncate(keep as usize);
                length = l;
            }
            _ => {}
        }
    }
    let total = content.len() as u64;
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<u64>().ok());
    let start = match from {
        Some(n) if n >= total => {
            let _ = write!(
                s,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        Some(n) => n,
        None => 0,
    };
    let mut out = if from.is_some() {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{total}\r\n",
            total - 1
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_owned()
    };
    if length {
        out.push_str(&format!("Content-Length: {}\r\n", total - start));
    }
    out.push_str("Connection: close\r\n\r\n");
    if s.write_all(out.as_bytes()).is_err() {
        return;
    }
    let body = &content[start as usize..];
    if let Mode::StallBlob { at } = mode {
        if !is_index {
            let upto = (at.saturating_sub(start) as usize).min(body.len());
            let _ = s.write_all(&body[..upto]);
            let _ = s.flush();
            return hold(sh, |m| matches!(m, Mode::StallBlob { .. }));
        }
    }
    let _ = s.write_all(body);
}

/// A scratch root, a directory store beside it, maybe the file server in front of the store,
/// and a daemon using one or the other.
struct World {
    root: Root,
    store: PathBuf,
    server: Option<Server>,
    daemon: Option<Daemon>,
    seed: u64,
}

impl World {
    fn new(tag: &str, http: bool) -> World {
        let root = Root::new(tag);
        let store = root.aux("store");
        fs::create_dir(&store).unwrap();
        let server = http.then(|| Server::start(&store));
        World {
            root,
            store,
            server,
            daemon: None,
            seed: 1,
        }
    }

    /// A world whose daemon runs with `extra` arguments and has NAME 1.0 (with `payload` bytes
    /// of noise) installed from the store.
    fn installed(tag: &str, http: bool, name: &str, payload: usize, extra: &[&str]) -> World {
        let mut w = World::new(tag, http);
        w.publish(name, "1.0", payload);
        w.start(extra);
        ok(&ctl(w.r(), &["install", name]));
        w
    }

    fn r(&self) -> &Path {
        self.root.path()
    }

    fn url(&self) -> String {
        match &self.server {
            Some(s) => s.url(),
            None => self.store.to_str().unwrap().to_owned(),
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    fn start(&mut self, extra: &[&str]) {
        self.start_at(&self.url(), extra);
    }

    /// Starts the daemon with the store at `url`.
    fn start_at(&mut self, url: &str, extra: &[&str]) {
        self.daemon = None;
        let mut args = vec![
            "--insecure-unsigned-store".to_owned(),
            "--store".to_owned(),
            url.to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.daemon = Some(Daemon::start_with(
            self.root.path(),
            DaemonOpts {
                extra_args: args,
                ..Default::default()
            },
        ));
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    /// Publishes a build of NAME VERSION to `stable`.
    fn publish(&mut self, name: &str, version: &str, payload: usize) -> Entry {
        self.seed += 1;
        let file = self.root.aux(&format!("{name}_{version}.snap"));
        build_snap(&file, name, version, payload, self.seed);
        refreshd_store::publish(&self.store, &file, "stable").unwrap()
    }

    fn index_path(&self, name: &str) -> PathBuf {
        self.store.join(format!("v1/snaps/{name}.json"))
    }

    fn index(&self, name: &str) -> Value {
        serde_json::from_slice(&fs::read(self.index_path(name)).unwrap()).unwrap()
    }

    fn write_index(&self, name: &str, v: &Value) {
        fs::write(self.index_path(name), serde_json::to_vec(v).unwrap()).unwrap();
    }

    fn current(&self, name: &str) -> String {
        current(self.r(), name)
    }

    fn hello(&self, name: &str) -> String {
        hello(self.r(), name)
    }

    fn blobs(&self) -> Vec<String> {
        blobs(self.r())
    }

    fn changes(&self) -> usize {
        changes(self.r())
    }

    fn untouched(&self, name: &str, rev: &str) {
        untouched(self.r(), name, rev)
    }
}

fn can_run() -> bool {
    root_with("loop mounts and a daemon of its own", &[])
}

/// The peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn flip_middle_byte(path: &Path) -> Vec<u8> {
    let original = fs::read(path).unwrap();
    let mut bytes = original.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    fs::write(path, &bytes).unwrap();
    original
}

/// 1. A blob whose bytes differ from its index's sha3-384 (same size): the install or refresh
///    fails saying so, nothing is mounted, linked or left, the installed revision keeps
///    running; once the store is fixed the same refresh works.
#[test]
fn a_tampered_blob_is_refused_and_the_installed_revision_keeps_running() {
    if !can_run() {
        return;
    }
    let (mut attacks, mut refusals) = (0, 0);
    for http in [false, true] {
        let mut w = World::installed(
            if http { "tamper-http" } else { "tamper-dir" },
            http,
            "tamper",
            64 * 1024,
            &[],
        );

        // A first install of a tampered blob installs nothing.
        let fresh = w.publish("fresh", "1.0", 64 * 1024);
        flip_middle_byte(&w.store.join(&fresh.path));
        attacks += 1;
        refused(
            &ctl(w.r(), &["install", "fresh"]),
            &["fresh revision 1", "corrupt or was tampered with"],
        );
        refusals += 1;
        let list = ctl_json(w.r(), &["list", "--json"]);
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
        assert!(!w.r().join("snap/fresh").exists());
        assert!(!w.r().join("snap/bin/fresh").exists());
        assert_eq!(w.blobs(), ["tamper_1.snap"]);

        // A refresh to a tampered blob changes nothing.
        let e2 = w.publish("tamper", "2.0", 64 * 1024);
        let original = flip_middle_byte(&w.store.join(&e2.path));
        attacks += 1;
        let line = refused(
            &ctl(w.r(), &["refresh", "tamper"]),
            &[
                "tamper revision 2",
                "corrupt or was tampered with",
                "sha3-384",
            ],
        );
        refusals += 1;
        println!("tampered ({}): {line}", if http { "http" } else { "dir" });
        let failed = ctl_json(
            w.r(),
            &["tasks", &newest_change(w.r()).to_string(), "--json"],
        );
        assert_eq!(failed["status"], "Error", "{failed}");
        assert_eq!(task(&failed, "download")["status"], "Error", "{failed}");
        for t in ["prepare", "mount", "link"] {
            assert_ne!(task(&failed, t)["status"], "Done", "{t} ran: {failed}");
        }
        w.untouched("tamper", "1");

        // The store's operator fixes the blob: the same refresh goes through.
        fs::write(w.store.join(&e2.path), original).unwrap();
        ok(&ctl(w.r(), &["refresh", "tamper"]));
        assert_eq!(w.current("tamper"), "2");
        assert_eq!(w.hello("tamper"), "hello from tamper 2");
    }
    println!("figures: store: attacks={attacks} refused={refusals}");
}

/// 2. Blobs longer or shorter than their index says, with and without Content-Length (and in a
///    directory store): refused, one line, nothing left; the daemon never writes more than the
///    declared size — its blob directory is a tmpfs with room for the declared size and a page
///    or two, so a daemon writing the extra megabytes would fail with ENOSPC instead.
#[test]
fn blobs_longer_or_shorter_than_declared_are_refused_at_the_declared_size() {
    if !can_run() {
        return;
    }
    let mut w = World::new("size-http", true);
    w.publish("sized", "1.0", 64 * 1024);
    let blobs = w.r().join("var/lib/refreshd/blobs");
    fs::create_dir_all(&blobs).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs"])
        .arg(&blobs)
        .status()
        .unwrap();
    if !st.success() {
        skip("cannot mount a tmpfs");
        return;
    }
    w.start(&[]);
    ok(&ctl(w.r(), &["install", "sized"]));
    let e2 = w.publish("sized", "2.0", 512 * 1024);
    // Room for the declared size and 8 KiB more (tmpfs counts pages): the server sends 4 MiB
    // more than declared.
    let used = {
        let s = nix::sys::statvfs::statvfs(&blobs).unwrap();
        (s.blocks() - s.blocks_free()) * s.fragment_size()
    };
    let room = used + e2.size + 8192;
    let st = std::process::Command::new("mount")
        .args(["-o", &format!("remount,size={room}")])
        .arg(&blobs)
        .status()
        .unwrap();
    assert!(st.success());
    let extra = 4 << 20;
    let size = e2.size.to_string();
    let cases = [
        (
            Mode::Longer {
                extra,
                length: true,
            },
            "larger than the",
        ),
        (
            Mode::Longer {
                extra,
                length: false,
            },
            "larger than the",
        ),
        (
            Mode::Shorter {
                keep: e2.size / 2,
                length: true,
            },
            "smaller than the",
        ),
        (
            Mode::Shorter {
                keep: e2.size / 2,
                length: false,
            },
            "smaller than the",
        ),
    ];
    let (mut attacks, mut refusals) = (0, 0);
    for (mode, needle) in cases {
        w.server().set(mode.clone());
        attacks += 1;
        let line = refused(
            &ctl(w.r(), &["refresh", "sized"]),
            &[needle, &size, "sized revision 2"],
        );
        refusals += 1;
        println!("{mode:?}: {line}");
        w.untouched("sized", "1");
    }
    // The directory store, with the blob file itself longer or shorter.
    w.server().set(Mode::Normal);
    let mut d = World::new("size-dir", false);
    d.publish("sized", "1.0", 64 * 1024);
    d.start(&[]);
    ok(&ctl(d.r(), &["install", "sized"]));
    let d2 = d.publish("sized", "2.0", 64 * 1024);
    let file = d.store.join(&d2.path);
    let good = fs::read(&file).unwrap();
    for (bytes, needle) in [
        ([good.clone(), vec![0; 4096]].concat(), "larger than the"),
        (good[..good.len() / 2].to_vec(), "smaller than the"),
    ] {
        fs::write(&file, bytes).unwrap();
        attacks += 1;
        refused(&ctl(d.r(), &["refresh", "sized"]), &[needle]);
        refusals += 1;
        d.untouched("sized", "1");
    }
    fs::write(&file, good).unwrap();
    ok(&ctl(d.r(), &["refresh", "sized"]));
    assert_eq!(d.hello("sized"), "hello from sized 2");

    // Once the server is right, the refresh works, within the same tmpfs.
    ok(&ctl(w.r(), &["refresh", "sized"]));
    assert_eq!(w.hello("sized"), "hello from sized 2");
    println!("figures: store: attacks={attacks} refused={refusals}");
}

/// Watches one file for opens and reads (inotify), to show nothing touched it.
struct Untouched {
    fd: i32,
}

impl Untouched {
    fn watch(path: &Path) -> Untouched {
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let wd =
            unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS) };
        assert!(wd >= 0, "inotify_add_watch {}", path.display());
        Untouched { fd }
    }

    /// True if the file was opened or read since [`Untouched::watch`].
    fn touched(&self) -> bool {
        let mut buf = [0u8; 4096];
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        n > 0
    }
}

impl Drop for Untouched {
    fn drop(&mut self) {
        unsafe { libc::close(self.fd) };
    }
}

/// 3. Index paths that leave the store: refused before anything is requested or opened. Over
///    HTTP the server's log shows only index requests; in a directory store, a symlink out
///    (to a file that even has the right hash) is refused and the file outside is never opened.
#[test]
fn index_paths_that_leave_the_store_are_refused_before_any_request() {
    if !can_run() {
        return;
    }
    let (mut attacks, mut refusals) = (0, 0);
    let mut w = World::installed("escape-http", true, "esc", 4096, &[]);
    let e2 = w.publish("esc", "2.0", 4096);
    let good = w.index("esc");
    let changes = w.changes();
    for path in [
        "../../../../etc/passwd",
        "blobs/../../../etc/passwd",
        "/etc/passwd",
        "blobs/%2e%2e/%2e%2e/etc/passwd",
        "blobs/..%2f..%2fetc%2fpasswd",
        "blobs\\..\\..\\etc\\passwd",
        "blobs/./esc_2.snap",
        "blobs//esc_2.snap",
        "http://127.0.0.1:1/esc_2.snap",
        "blobs/esc_2.snap\u{0}.txt",
    ] {
        let mut index = good.clone();
        index["revisions"]["2"]["path"] = path.into();
        w.write_index("esc", &index);
        w.server().forget();
        attacks += 2;
        let line = refused(
            &ctl(w.r(), &["refresh", "esc"]),
            &["revisions.2.path", "the store's operator must fix"],
        );
        println!("{path:?}: {line}");
        // Refreshing everything says the same, for this snap, and makes nothing.
        let out = ctl(w.r(), &["refresh"]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(all.contains("revisions.2.path"), "{all}");
        refusals += 2;
        let asked: Vec<String> = w.server().requests().into_iter().map(|r| r.0).collect();
        assert!(
            asked.iter().all(|p| p == "/v1/snaps/esc.json"),
            "only the index was requested: {asked:?}"
        );
        assert_eq!(w.changes(), changes);
        w.untouched("esc", "1");
    }
    w.write_index("esc", &good);
    drop(w);

    // A directory store: symlinks out of it. The file outside is a good copy of the blob (its
    // hash matches), so only the symlink check stands between it and the daemon.
    let mut d = World::new("escape-dir", false);
    d.publish("esc", "1.0", 4096);
    d.start(&[]);
    ok(&ctl(d.r(), &["install", "esc"]));
    let d2 = d.publish("esc", "2.0", 4096);
    let outside = d.root.aux("outside");
    fs::create_dir(&outside).unwrap();
    let blob = d.store.join(&d2.path);
    fs::copy(&blob, outside.join("esc_2.snap")).unwrap();
    fs::remove_file(&blob).unwrap();

    // The blob is a symlink out.
    std::os::unix::fs::symlink(outside.join("esc_2.snap"), &blob).unwrap();
    let watch = Untouched::watch(&outside.join("esc_2.snap"));
    attacks += 1;
    refused(
        &ctl(d.r(), &["refresh", "esc"]),
        &["revisions.2.path", "outside the store (through a symlink)"],
    );
    refusals += 1;
    assert!(!watch.touched(), "the file outside the store was opened");
    d.untouched("esc", "1");

    // The blobs directory is a symlink out.
    fs::remove_file(&blob).unwrap();
    let blobs = d.store.join("blobs");
    fs::rename(&blobs, d.root.aux("blobs-moved")).unwrap();
    std::os::unix::fs::symlink(&outside, &blobs).unwrap();
    attacks += 1;
    refused(
        &ctl(d.r(), &["refresh", "esc"]),
        &["outside the store (through a symlink)"],
    );
    refusals += 1;
    assert!(!watch.touched(), "the file outside the store was opened");
    d.untouched("esc", "1");
    fs::remove_file(&blobs).unwrap();
    fs::rename(d.root.aux("blobs-moved"), &blobs).unwrap();
    fs::copy(outside.join("esc_2.snap"), &blob).unwrap();

    // The index itself is a symlink out, to an index that would be valid.
    let index = d.index_path("esc");
    fs::rename(&index, outside.join("esc.json")).unwrap();
    std::os::unix::fs::symlink(outside.join("esc.json"), &index).unwrap();
    let watch_index = Untouched::watch(&outside.join("esc.json"));
    attacks += 1;
    refused(
        &ctl(d.r(), &["refresh", "esc"]),
        &[
            "refused a file of the store",
            "outside the store (through a symlink)",
        ],
    );
    refusals += 1;
    assert!(
        !watch_index.touched(),
        "the index outside the store was opened"
    );
    d.untouched("esc", "1");
    fs::remove_file(&index).unwrap();
    fs::rename(outside.join("esc.json"), &index).unwrap();

    // Put right, the refresh works.
    ok(&ctl(d.r(), &["refresh", "esc"]));
    assert_eq!(d.hello("esc"), "hello from esc 2");
    assert_eq!(e2.revision, d2.revision);
    println!("figures: store: attacks={attacks} refused={refusals}");
}

/// 4. An older revision offered as an update: `refresh NAME`, `refresh` and auto-refresh
///    refuse it and say why; an explicit `revert` goes back. The same revision number with
///    other content (a replay) is never installed, whether it is the current revision or one
///    kept from before.
#[test]
fn an_older_revision_is_no_update_unless_reverted_and_a_replay_is_refused() {
    if !can_run() {
        return;
    }
    let (mut attacks, mut refusals) = (0, 0);
    let mut w = World::installed("older", false, "old", 4096, &[]);
    w.publish("old", "2.0", 4096);
    ok(&ctl(w.r(), &["refresh", "old"]));
    assert_eq!(w.current("old"), "2");
    let good = w.index("old");
    let changes = w.changes();

    // stable (and beta) point back at revision 1.
    let mut back = good.clone();
    back["channels"]["stable"] = 1.into();
    back["channels"]["beta"] = 1.into();
    w.write_index("old", &back);
    attacks += 1;
    refused(
        &ctl(w.r(), &["refresh", "old"]),
        &["revision 1", "older than the installed 2", "not an update"],
    );
    refusals += 1;
    attacks += 1;
    refused(
        &ctl(w.r(), &["refresh", "old", "--channel", "beta"]),
        &["older than the installed 2"],
    );
    refusals += 1;
    attacks += 1;
    let out = ctl(w.r(), &["refresh"]);
    assert!(!out.status.success());
    let all = text(&out.stderr);
    assert!(
        all.contains("old: the store offers revision 1, older than the installed 2; not an update"),
        "{all}"
    );
    refusals += 1;
    // --list says so too, and lists no update.
    let out = ctl(w.r(), &["refresh", "--list", "--json"]);
    assert!(!out.status.success());
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plan["updates"].as_array().unwrap().is_empty(), "{plan}");
    assert!(
        plan.to_string().contains("older than the installed 2"),
        "{plan}"
    );
    assert_eq!(w.changes(), changes, "no change was made");
    assert_eq!(w.current("old"), "2");

    // Auto-refresh likewise.
    w.start(&["--auto-refresh", "1s"]);
    attacks += 1;
    let needle = "auto-refresh: old: the store offers revision 1, older than the installed 2";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w.daemon().log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no auto-refresh note: {}",
            w.daemon().log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    refusals += 1;
    assert_eq!(w.changes(), changes, "auto-refresh made no change");
    assert_eq!(w.current("old"), "2");
    w.start(&[]);

    // A replay: revision 2 in the index is now other bytes (another build), under the same
    // number. It is not installed over the current revision 2.
    let other = w.root.aux("old-other.snap");
    build_snap(&other, "old", "2.0", 4096, 777);
    let bytes = fs::read(&other).unwrap();
    fs::write(w.store.join("blobs/old_2-replay.snap"), &bytes).unwrap();
    let mut replay = good.clone();
    replay["revisions"]["2"]["path"] = "blobs/old_2-replay.snap".into();
    replay["revisions"]["2"]["size"] = bytes.len().into();
    replay["revisions"]["2"]["sha3-384"] = sha3_of(&other).into();
    w.write_index("old", &replay);
    let installed = fs::read(w.r().join("var/lib/refreshd/blobs/old_2.snap")).unwrap();
    attacks += 1;
    let line = refused(
        &ctl(w.r(), &["refresh", "old"]),
        &["revision 2 of old with other content than the revision 2 kept here"],
    );
    refusals += 1;
    println!("replay of the current revision: {line}");
    assert_eq!(w.changes(), changes);
    assert_eq!(
        fs::read(w.r().join("var/lib/refreshd/blobs/old_2.snap")).unwrap(),
        installed
    );

    // The explicit way back: revert, to the revision kept on this machine.
    w.write_index("old", &back);
    ok(&ctl(w.r(), &["revert", "old"]));
    assert_eq!(w.current("old"), "1");
    assert_eq!(w.hello("old"), "hello from old 1");
    // With revision 1 current, the store's stable (revision 1) is up to date.
    let out = ctl(w.r(), &["refresh", "old"]);
    ok(&out);
    assert!(
        text(&out.stdout).contains("has no updates available"),
        "{}",
        text(&out.stdout)
    );

    // The replayed revision 2 is newer than 1, but revision 2 is kept here with other
    // content: refused, and the kept one is untouched.
    w.write_index("old", &replay);
    let changes = w.changes();
    attacks += 1;
    let line = refused(
        &ctl(w.r(), &["refresh", "old"]),
        &["with other content than the revision 2 kept here"],
    );
    refusals += 1;
    println!("replay of a kept revision: {line}");
    attacks += 1;
    let out = ctl(w.r(), &["refresh"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("with other content than the revision 2 kept here"),
        "{}",
        text(&out.stderr)
    );
    refusals += 1;
    assert_eq!(w.changes(), changes);
    assert_eq!(w.current("old"), "1");
    assert_eq!(
        fs::read(w.r().join("var/lib/refreshd/blobs/old_2.snap")).unwrap(),
        installed
    );

    // The real revision 2 again: the refresh goes forward to the kept revision.
    w.write_index("old", &good);
    ok(&ctl(w.r(), &["refresh", "old"]));
    assert_eq!(w.current("old"), "2");
    assert_eq!(w.hello("old"), "hello from old 2");
    println!("figures: store: attacks={attacks} refused={refusals}");
}

/// The sha3-384 of a snap file, as a store computes it (publishing it to a scratch store).
fn sha3_of(path: &Path) -> String {
    let tmp = scratch("sha3");
    refreshd_store::publish(tmp.path(), path, "stable")
        .unwrap()
        .sha3_384
}

/// The store client's backoff between its 5 attempts: 250 ms doubling (docs/store.md).
const BACKOFFS: Duration = Duration::from_millis(250 + 500 + 1000 + 2000);

/// 5. The store down, silent, dripping, endless or answering 503 when a refresh looks it up:
///    `refreshctl refresh` fails in one line within a bound the client's settings give (with
///    `--store-timeout 2s`), nothing changes, the running app is untouched, memory stays
///    bounded, and once the store is back the refresh works.
#[test]
fn a_store_that_is_down_or_silent_is_reported_in_bounded_time() {
    if !can_run() {
        return;
    }
    let mut w = World::installed("down", true, "down", 4096, &["--store-timeout", "2s"]);
    let app = App::launch(w.r(), "down.hold");
    w.publish("down", "2.0", 4096);
    let changes = w.changes();
    let timeout = Duration::from_secs(2);
    let slack = Duration::from_secs(3);
    let mut faults = 0;
    let cases: [(&str, Option<Mode>, &str, Duration); 4] = [
        // Refused at once: only the backoffs.
        ("refused", None, "cannot reach the store", BACKOFFS),
        (
            "503",
            Some(Mode::Status {
                code: 503,
                index: true,
            }),
            "HTTP 503",
            BACKOFFS,
        ),
        // Each attempt waits one timeout for an answer.
        (
            "silent",
            Some(Mode::Silent),
            "cannot reach the store",
            BACKOFFS + 5 * timeout,
        ),
        // Each attempt waits at most a timeout for the head and a timeout for the body.
        (
            "drip",
            Some(Mode::DripIndex),
            "cannot reach the store",
            BACKOFFS + 10 * timeout,
        ),
    ];
    for (what, mode, needle, bound) in cases {
        match &mode {
            None => w.server.as_mut().unwrap().refuse(),
            Some(m) => w.server().set(m.clone()),
        }
        faults += 1;
        let t0 = Instant::now();
        let line = refused(
            &ctl(w.r(), &["refresh", "down"]),
            &[needle, "after 5 attempts"],
        );
        let took = t0.elapsed();
        // refreshctl retries a 503 from refreshd for up to 5 s (it is what refreshd answers
        // while it shuts down), and the daemon says 503 when the store cannot be reached: a
        // lookup that fails within those 5 s is made twice.
        let bound = if bound < Duration::from_secs(5) {
            2 * bound
        } else {
            bound
        };
        println!("{what}: {took:.1?} (bound {bound:.1?}): {line}");
        assert!(took <= bound + slack, "{what} took {took:?}");
        assert_eq!(w.changes(), changes);
        w.untouched("down", "1");
        assert!(alive(app.pid), "the app runs on");
        match mode {
            None => w.server.as_mut().unwrap().listen(),
            Some(_) => w.server().set(Mode::Normal),
        }
    }

    // An index that never ends: read up to 16 MiB, then refused; the daemon's memory stays
    // bounded.
    let pid = w.daemon().pid();
    for length in [true, false] {
        let before = peak_rss_kib(pid);
        w.server().set(Mode::EndlessIndex { length });
        faults += 1;
        let t0 = Instant::now();
        let line = refused(
            &ctl(w.r(), &["refresh", "down"]),
            &["larger than 16777216 bytes"],
        );
        let taken = w
            .server
            .as_ref()
            .unwrap()
            .shared
            .index_bytes
            .swap(0, Ordering::SeqCst);
        let grew = peak_rss_kib(pid).saturating_sub(before);
        println!(
            "endless index (Content-Length {length}): {:.1?}, {} MiB sent, peak memory +{} MiB: {line}",
            t0.elapsed(),
            taken >> 20,
            grew >> 10
        );
        assert!(taken < 32 << 20, "the daemon read {taken} bytes of index");
        assert!(
            grew < 128 << 10,
            "the daemon's peak memory grew by {grew} KiB"
        );
        w.untouched("down", "1");
    }

    // The store is back: the refresh goes through (once the app exits).
    w.server().set(Mode::Normal);
    app.release();
    ok(&ctl(w.r(), &["refresh", "down"]));
    assert_eq!(w.hello("down"), "hello from down 2");
    println!("figures: store: faults={faults}");
}

/// 5. A download that stalls in the middle: the download task shows a retry with its reason in
///    `refreshctl tasks`, the app runs on, and once the store answers again the download
///    resumes where it stopped (a `Range` request from the byte it had).
#[test]
fn a_stalled_download_is_retried_with_its_reason_and_resumes() {
    if !can_run() {
        return;
    }
    let mut w = World::installed("stall", true, "stall", 4096, &["--store-timeout", "2s"]);
    let app = App::launch(w.r(), "stall.hold");
    let e2 = w.publish("stall", "2.0", 2_000_000);
    let at = 1_000_000u64;
    w.server().set(Mode::StallBlob { at });
    let r = w.r().to_owned();
    let t0 = Instant::now();
    ok(&ctl(&r, &["refresh", "stall", "--no-wait"]));
    let id = newest_change(&r);
    let retrying = watch_until(&r, id, |c| !task(c, "download")["retry"].is_null());
    let retry = &task(&retrying, "download")["retry"];
    let reason = retry["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("{retrying}"));
    println!(
        "stalled at {at}: retry after {:.1?}: {reason}",
        t0.elapsed()
    );
    assert!(
        reason.contains("cannot reach the store") && reason.contains("after 5 attempts"),
        "{reason}"
    );
    // One store timeout with progress, then five without, and the backoffs between them.
    assert!(
        t0.elapsed() <= 6 * Duration::from_secs(2) + BACKOFFS + Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
    let shown = text(&ctl(&r, &["tasks", &id.to_string()]).stdout);
    assert!(shown.contains("retrying (1 so far)"), "{shown}");
    assert_eq!(
        fs::metadata(r.join("var/lib/refreshd/blobs/stall_2.snap.partial"))
            .unwrap()
            .len(),
        at,
        "the partial download holds what came"
    );
    assert_eq!(w.current("stall"), "1");
    assert!(alive(app.pid));

    // The store answers again: the next attempt resumes from the partial download.
    w.server().set(Mode::Normal);
    let downloaded = watch_until(&r, id, |c| task(c, "download")["status"] == "Done");
    let log = task_log(&downloaded, "download").join("\n");
    assert!(log.contains(&format!("resumed at byte {at}")), "{log}");
    let ranges: Vec<_> = w
        .server()
        .requests()
        .into_iter()
        .filter_map(|(p, r)| r.filter(|_| p.ends_with(&e2.path)))
        .collect();
    assert!(ranges.contains(&format!("bytes={at}-")), "{ranges:?}");
    app.release();
    let done = watch_until_ready(&r, id);
    assert_eq!(done["status"], "Done", "{done}");
    assert_eq!(w.hello("stall"), "hello from stall 2");
    assert!(temporaries(&r).is_empty());
    println!("figures: store: faults=1");
}

/// 5. A store whose blobs keep failing (HTTP 503) through every retry: the refresh fails with
///    one line, within the bound the retries give, and leaves nothing; the next refresh, once
///    the store is right, works.
#[test]
fn a_store_that_stays_broken_fails_the_refresh_in_one_line() {
    if !can_run() {
        return;
    }
    let mut w = World::installed("broken", true, "broken", 4096, &["--store-timeout", "2s"]);
    w.publish("broken", "2.0", 4096);
    w.server().set(Mode::Status {
        code: 503,
        index: false,
    });
    let t0 = Instant::now();
    let line = refused(&ctl(w.r(), &["refresh", "broken"]), &["HTTP 503"]);
    let took = t0.elapsed();
    // 9 fetches (the first and 8 retries of the task), each 5 attempts apart by the client's
    // backoffs, and the engine's backoffs between fetches: 0.1 s doubling, 25.5 s in all.
    let bound = 9 * BACKOFFS + Duration::from_millis(25_500);
    println!("503 throughout: failed after {took:.1?} (bound {bound:.1?}): {line}");
    assert!(took <= bound + Duration::from_secs(10), "{took:?}");
    let blob_requests = w
        .server()
        .requests()
        .iter()
        .filter(|(p, _)| p.ends_with(".snap"))
        .count();
    println!("{blob_requests} blob requests");
    assert!(
        (45..=50).contains(&blob_requests),
        "9 fetches of 5 attempts, or 10: {blob_requests}"
    );
    let failed = ctl_json(
        w.r(),
        &["tasks", &newest_change(w.r()).to_string(), "--json"],
    );
    assert_eq!(task(&failed, "download")["status"], "Error", "{failed}");
    w.untouched("broken", "1");
    w.server().set(Mode::Normal);
    ok(&ctl(w.r(), &["refresh", "broken"]));
    assert_eq!(w.hello("broken"), "hello from broken 2");
    println!("figures: store: faults=1");
}

/// 6. Hostile index content — absurd sizes, invalid UTF-8, deep nesting, an index over the
///    limit, a huge one under it, duplicate keys, a newer format, terminal escapes — refused
///    in one line naming what is wrong, with the daemon's memory bounded.
#[test]
fn hostile_index_content_is_refused_in_one_line() {
    if !can_run() {
        return;
    }
    let mut w = World::installed("hostile", false, "hostile", 4096, &[]);
    w.publish("hostile", "2.0", 4096);
    let good = w.index("hostile");
    let good_text = serde_json::to_string(&good).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let sha = good["revisions"]["2"]["sha3-384"]
        .as_str()
        .unwrap()
        .to_owned();
    let deep = {
        let mut s = String::from("{\"format\":1,\"name\":\"hostile\",\"x\":");
        s.push_str(&"[".repeat(100_000));
        s.push_str(&"]".repeat(100_000));
        s.push('}');
        s.into_bytes()
    };
    let over_limit = {
        let mut b = vec![b' '; 17 << 20];
        b.extend_from_slice(good_text.as_bytes());
        b
    };
    // Just under the size limit: valid JSON, an unknown key holding millions of zeros (and a
    // bad path, should they be parsed).
    let wide = {
        let mut v = good.clone();
        v["revisions"]["2"]["path"] = "../x".into();
        let mut s = serde_json::to_string(&v).unwrap();
        s.pop();
        s.push_str(",\"zzz\":[0");
        let n = ((16 << 20) - s.len() - 16) / 2;
        s.push_str(&",0".repeat(n));
        s.push_str("]}");
        assert!(s.len() < 16 << 20);
        s.into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "size u64::MAX",
            with(&|v| v["revisions"]["2"]["size"] = u64::MAX.into()),
            vec!["revisions.2.size"],
        ),
        (
            "size 1e30",
            with(&|v| v["revisions"]["2"]["size"] = 1e30.into()),
            vec!["revisions.2.size"],
        ),
        (
            "size -1",
            with(&|v| v["revisions"]["2"]["size"] = (-1).into()),
            vec!["revisions.2.size"],
        ),
        (
            "size 0",
            with(&|v| v["revisions"]["2"]["size"] = 0.into()),
            vec!["revisions.2.size"],
        ),
        (
            "invalid UTF-8",
            {
                let mut b = good_text.replace("\"2.0\"", "\"2.@0\"").into_bytes();
                let at = b.iter().position(|&c| c == b'@').unwrap();
                b[at] = 0xff;
                b
            },
            vec!["not valid JSON"],
        ),
        ("deep nesting", deep, vec!["not valid JSON"]),
        (
            "over 16 MiB",
            over_limit,
            vec!["larger than 16777216 bytes"],
        ),
        ("16 MiB of zeros", wide, vec!["more than 250000 values"]),
        (
            "duplicate keys",
            good_text
                .replacen("\"channels\":", "\"channels\":{},\"channels\":", 1)
                .into_bytes(),
            vec!["duplicate"],
        ),
        (
            "format 2",
            with(&|v| v["format"] = 2.into()),
            vec!["upgrade refreshd"],
        ),
        ("not an object", b"[]".to_vec(), vec!["not an object"]),
        (
            "terminal escapes",
            with(&|v| v["revisions"]["2"]["version"] = "\u{1b}[2J\u{1b}]0;pwned\u{7}\n2".into()),
            vec!["revisions.2.version"],
        ),
        (
            "a short hash",
            with(&|v| v["revisions"]["2"]["sha3-384"] = sha[..95].into()),
            vec!["revisions.2.sha3-384"],
        ),
        (
            "a channel to a missing revision",
            with(&|v| v["channels"]["stable"] = 7.into()),
            vec!["channels.stable"],
        ),
    ];
    let pid = w.daemon().pid();
    let before = peak_rss_kib(pid);
    let changes = w.changes();
    let mut attacks = 0;
    for (what, bytes, needles) in cases {
        fs::write(w.index_path("hostile"), &bytes).unwrap();
        attacks += 1;
        let line = refused(&ctl(w.r(), &["refresh", "hostile"]), &needles);
        assert!(
            !line.chars().any(|c| c.is_control()),
            "control characters reach the terminal: {line:?}"
        );
        println!("{what}: {}", &line[..line.len().min(300)]);
        assert_eq!(w.changes(), changes);
        w.untouched("hostile", "1");
    }
    let grew = peak_rss_kib(pid).saturating_sub(before);
    println!(
        "hostile indexes: the daemon's peak memory grew by {} MiB",
        grew >> 10
    );
    assert!(grew < 256 << 10, "peak memory grew by {grew} KiB");
    w.write_index("hostile", &good);
    ok(&ctl(w.r(), &["refresh", "hostile"]));
    println!("figures: store: attacks={attacks} refused={attacks}");
}

/// 7. An `https://` store that redirects to `http://` — its index to a tampered one whose
///    blob matches it, its blobs to the same bytes over plain HTTP — is refused in one line
///    naming the redirect, with nothing asked over plain HTTP and nothing changed; once the
///    redirects are gone the same store refreshes the snap.
#[test]
fn an_https_store_that_redirects_to_plain_http_is_refused() {
    if !can_run() {
        return;
    }
    let mut w = World::new("https", false);
    w.publish("secure", "1.0", 4096);
    // The plain-HTTP side: a store whose revision 2 of `secure` is another build, its index
    // matching it (what a network attacker would serve).
    let evil = w.root.aux("evil");
    fs::create_dir(&evil).unwrap();
    for (version, seed) in [("6.6.5", 66), ("6.6.6", 67)] {
        let file = w.root.aux(&format!("evil_{version}.snap"));
        build_snap(&file, "secure", version, 4096, seed);
        refreshd_store::publish(&evil, &file, "stable").unwrap();
    }
    let tls = w.root.aux("tls");
    fs::create_dir(&tls).unwrap();
    let Some((ca, cert, key)) = nginx::make_certificates(&tls, &[]) else {
        return skip("openssl not installed");
    };
    let Some(evil_server) = nginx::Nginx::start(&evil, "") else {
        return skip("nginx not installed");
    };
    let evil_url = evil_server.url();
    let flags = w.root.aux("flags");
    fs::create_dir(&flags).unwrap();
    let f = flags.display();
    let redirects = format!(
        "location /v1/ {{ if (-f {f}/index) {{ return 302 {evil_url}$request_uri; }} }}
        location /blobs/ {{ if (-f {f}/blobs) {{ return 302 {evil_url}$request_uri; }} }}"
    );
    let Some(server) = nginx::Nginx::start_tls_with(&w.store, &cert, &key, &redirects) else {
        return skip("nginx not installed");
    };
    let flag = |name: &str, on: bool| {
        if on {
            fs::write(flags.join(name), "").unwrap();
        } else {
            fs::remove_file(flags.join(name)).unwrap();
        }
    };
    w.start_at(&server.https_url(), &["--store-ca", ca.to_str().unwrap()]);
    ok(&ctl(w.r(), &["install", "secure"]));
    let changes = w.changes();
    let needles = ["refused the redirect", evil_url.as_str(), "plain HTTP"];
    let mut attacks = 0;

    // The index (and, should it be followed, the blobs): the lookup fails, no change is made.
    flag("index", true);
    flag("blobs", true);
    attacks += 1;
    let line = refused(&ctl(w.r(), &["refresh", "secure"]), &needles);
    println!("index: {line}");
    assert_eq!(w.changes(), changes);
    w.untouched("secure", "1");

    // The index over HTTPS, the blob redirected: the download fails, the change is undone.
    flag("index", false);
    w.publish("secure", "2.0", 4096);
    attacks += 1;
    let line = refused(&ctl(w.r(), &["refresh", "secure"]), &needles);
    println!("blob: {line}");
    w.untouched("secure", "1");
    assert_eq!(
        evil_server.access_log(),
        "",
        "something was asked over plain HTTP"
    );

    // Without the redirects, the same store.
    flag("blobs", false);
    ok(&ctl(w.r(), &["refresh", "secure"]));
    assert_eq!(w.current("secure"), "2");
    assert_eq!(w.hello("secure"), "hello from secure 2");
    println!("figures: store: attacks={attacks} refused={attacks}");
}

/// A refresh is made from the snap as it is when its change is created, not as it was before
/// the store answered: here another change of the snap (a local revision) completes while the
/// store is slow to answer the refresh, and the refresh then replaces that revision and carries
/// its data over. Made from the picture taken before the look-up, it would carry revision 1's
/// data over (losing what was written since) and its undo would put revision 1 back.
#[test]
fn a_refresh_is_made_from_what_is_current_when_its_change_is_created() {
    if !can_run() {
        return;
    }
    let mut w = World::installed("race-current", true, "racy", 0, &[]);
    w.publish("racy", "2.0", 0);
    let r = w.r().to_owned();
    fs::write(r.join("var/snap/racy/1/data"), "written in 1").unwrap();
    let local = w.root.aux("racy_local.snap");
    build_snap(&local, "racy", "1.5", 0, 99);

    w.server().set(Mode::Gate);
    w.server().forget();
    let refresh = {
        let r = r.clone();
        std::thread::spawn(move || ctl(&r, &["refresh", "racy"]))
    };
    // The refresh has read the snap and asked the store, which holds its answer.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w
        .server()
        .requests()
        .iter()
        .any(|(p, _)| p.ends_with("racy.json"))
    {
        assert!(
            Instant::now() < deadline,
            "the refresh never asked the store"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Meanwhile a local revision is installed, and written to.
    ok(&ctl(&r, &["install", local.to_str().unwrap()]));
    let local_rev = w.current("racy");
    assert!(local_rev.starts_with('x'), "{local_rev}");
    fs::write(
        r.join(format!("var/snap/racy/{local_rev}/data")),
        "written in the local revision",
    )
    .unwrap();
    w.server().set(Mode::Normal);

    let out = refresh.join().unwrap();
    ok(&out);
    assert_eq!(w.current("racy"), "2", "{}", text(&out.stdout));
    assert_eq!(
        fs::read_to_string(r.join("var/snap/racy/2/data")).unwrap(),
        "written in the local revision",
        "the refresh carried over the data of a revision that was no longer current"
    );
}
