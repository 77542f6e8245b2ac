//! A real nginx serving a store directory on 127.0.0.1, and a proxy in front of it that can
//! cut a response short, fail a request, or hide the body's length.
#![allow(dead_code)]

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{find_program, scratch};

/// nginx as a child process, killed (that pid only) on drop.
pub struct Nginx {
    child: Child,
    ip: String,
    port: u16,
    log: Arc<Mutex<String>>,
    log_thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// How many ports to try when another process takes the one picked first.
const START_TRIES: usize = 3;

impl Nginx {
    /// Starts nginx serving `root`, with `server_extra` added to its server block. `None` when
    /// nginx is not installed.
    ///
    /// nginx logs to a pipe. It logs its version right after its listening socket is bound
    /// (nginx.c: `ngx_init_cycle`, then `ngx_os_status`), so reading that line is the event
    /// that says it is ready; from then on connections queue on the socket. (Handing nginx a
    /// socket bound here, through the `NGINX` variable, would avoid the port race, but nginx
    /// 1.22 crashes on inherited sockets with `master_process off`.)
    pub fn start(root: &Path, server_extra: &str) -> Option<Nginx> {
        Nginx::start_with(root, server_extra, None, "127.0.0.1")
    }

    /// [`Nginx::start`] serving HTTPS with the certificate and key in these PEM files.
    pub fn start_tls(root: &Path, cert: &Path, key: &Path) -> Option<Nginx> {
        Nginx::start_with(root, "", Some((cert, key)), "127.0.0.1")
    }

    /// [`Nginx::start_tls`] with `server_extra` added to its server block.
    pub fn start_tls_with(
        root: &Path,
        cert: &Path,
        key: &Path,
        server_extra: &str,
    ) -> Option<Nginx> {
        Nginx::start_with(root, server_extra, Some((cert, key)), "127.0.0.1")
    }

    /// [`Nginx::start`] listening on `ip` (an address of this machine) instead of 127.0.0.1.
    pub fn start_on(ip: &str, root: &Path, server_extra: &str) -> Option<Nginx> {
        Nginx::start_with(root, server_extra, None, ip)
    }

    fn start_with(
        root: &Path,
        server_extra: &str,
        tls: Option<(&Path, &Path)>,
        ip: &str,
    ) -> Option<Nginx> {
        let nginx = find_program("nginx")?;
        let mut failures = Vec::new();
        for _ in 0..START_TRIES {
            match Nginx::try_start(&nginx, root, server_extra, tls, ip) {
                Ok(n) => return Some(n),
                Err(output) => failures.push(output),
            }
        }
        panic!("nginx did not start:\n{}", failures.join("\n---\n"));
    }

    fn try_start(
        nginx: &Path,
        root: &Path,
        server_extra: &str,
        tls: Option<(&Path, &Path)>,
        ip: &str,
    ) -> Result<Nginx, String> {
        let dir = scratch("nginx");
        // A free port: bound and released, then nginx binds it (a race, hence the retries).
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let d = dir.path().display();
        let (ssl, tls_conf) = match tls {
            None => ("", String::new()),
            Some((cert, key)) => (
                " ssl",
                format!(
                    "ssl_certificate {};\n        ssl_certificate_key {};",
                    cert.display(),
                    key.display()
                ),
            ),
        };
        let conf = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    types {{ application/json json; }}
    default_type application/octet-stream;
    # One response a connection: the proxy below counts bytes per connection.
    keepalive_timeout 0;
    server {{
        listen {ip}:{port}{ssl};
        root {root};
        {tls_conf}
        {server_extra}
    }}
}}
",
            root = root.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nginx");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut log = String::new();
        let ready = loop {
            let mut line = String::new();
            match stderr.read_line(&mut line) {
                Ok(0) | Err(_) => break false,
                Ok(_) => {
                    log.push_str(&line);
                    if line.contains(": nginx/") {
                        break true;
                    }
                }
            }
        };
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            return Err(log);
        }
        // Keep draining the pipe so nginx never blocks on it; the thread ends when nginx does.
        let log = Arc::new(Mutex::new(log));
        let log_thread = {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                while matches!(stderr.read_line(&mut line), Ok(n) if n > 0) {
                    log.lock().unwrap().push_str(&line);
                    line.clear();
                }
            })
        };
        Ok(Nginx {
            child,
            ip: ip.to_owned(),
            port,
            log,
            log_thread: Some(log_thread),
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }

    /// The address of a TLS nginx ([`Nginx::start_tls`]).
    pub fn https_url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What nginx logged, for failure messages.
    pub fn error_log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The requests nginx served.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self._dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
    }
}

/// What the proxy does to responses.
#[derive(Debug, Clone, Default)]
pub struct ProxyPlan {
    /// Close the client's connection once, after this many bytes of a response body.
    pub cut_after: Option<u64>,
    /// Answer the first request with this status (for example 503) instead of forwarding it.
    pub fail_first: Option<u16>,
    /// Remove `Content-Length` from responses (the body then ends when the connection does).
    pub hide_length: bool,
}

/// What went through the proxy.
#[derive(Debug, Default, Clone)]
pub struct ProxyLog {
    /// Every request's head, in order.
    pub requests: Vec<String>,
    /// Response body bytes forwarded to the client, over all connections.
    pub body_bytes: u64,
    pub cuts: u32,
}

impl ProxyLog {
    /// The value of the `Range` header of request `i`, if it had one.
    pub fn range(&self, i: usize) -> Option<String> {
        self.requests[i].lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("range")
                .then(|| v.trim().to_owned())
        })
    }

    /// The request paths, in order.
    pub fn paths(&self) -> Vec<String> {
        self.requests
            .iter()
            .map(|r| r.split_whitespace().nth(1).unwrap_or("").to_owned())
            .collect()
    }
}

/// A TCP proxy on 127.0.0.1 in front of `upstream`, one connection at a time.
pub struct Proxy {
    port: u16,
    log: Arc<Mutex<ProxyLog>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How many connections a proxy serves at most: every test makes a handful.
const MAX_CONNECTIONS: usize = 64;
/// The longest the proxy waits on either side; tests never come near it.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

impl Proxy {
    pub fn start(upstream_port: u16, plan: ProxyPlan) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(ProxyLog::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let log = log.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut plan = plan;
                for conn in listener.incoming().take(MAX_CONNECTIONS) {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = conn else { continue };
                    // A failed connection is the test's business (it sees the error); the
                    // proxy carries on.
                    let _ = serve(client, upstream_port, &mut plan, &log);
                }
            })
        };
        Proxy {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> ProxyLog {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop, which then sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`); returns the head and any bytes after it.
fn read_head(s: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("head too long"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed in head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn serve(
    mut client: TcpStream,
    upstream_port: u16,
    plan: &mut ProxyPlan,
    log: &Mutex<ProxyLog>,
) -> io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let (head, _) = read_head(&mut client)?;
    log.lock()
        .unwrap()
        .requests
        .push(String::from_utf8_lossy(&head).into_owned());

    if let Some(status) = plan.fail_first.take() {
        client.write_all(
            format!("HTTP/1.1 {status} Failing On Purpose\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        return client.shutdown(Shutdown::Both);
    }

    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    upstream.set_read_timeout(Some(IO_TIMEOUT))?;
    upstream.write_all(&head)?;
    let (resp_head, mut body) = read_head(&mut upstream)?;
    let resp_head = if plan.hide_length {
        let text = String::from_utf8_lossy(&resp_head);
        text.split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
            .collect::<Vec<_>>()
            .join("\r\n")
            .into_bytes()
    } else {
        resp_head
    };
    client.write_all(&resp_head)?;

    let mut chunk = vec![0u8; 16 * 1024];
    let mut sent = 0u64;
    loop {
        if body.is_empty() {
            let n = upstream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        let mut take = body.len();
        let mut cut = false;
        if let Some(limit) = plan.cut_after {
            if sent + take as u64 >= limit {
                take = (limit - sent) as usize;
                cut = true;
            }
        }
        client.write_all(&body[..take])?;
        sent += take as u64;
        log.lock().unwrap().body_bytes += take as u64;
        body.drain(..take);
        if cut {
            plan.cut_after = None;
            log.lock().unwrap().cuts += 1;
            break;
        }
    }
    // The client sees the end of the connection: mid-body if it was cut, at the end of the
    // body otherwise (nginx closes after each response).
    client.shutdown(Shutdown::Both)
}

/// A CA and a certificate for 127.0.0.1 (and `more_ips`) signed by it, made with the openssl
/// command: `(ca.pem, server.pem, server.key)`. `None` without openssl.
pub fn make_certificates(dir: &Path, more_ips: &[&str]) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let openssl = find_program("openssl")?;
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=refreshd test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    let sans: Vec<String> = std::iter::once("127.0.0.1")
        .chain(more_ips.iter().copied())
        .map(|ip| format!("IP:{ip}"))
        .collect();
    fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            sans.join(",")
        ),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    Some((
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ))
}

/// An IPv4 address of this machine that is not a loopback one (for a store "on another
/// host"), if it has one.
pub fn non_loopback_ipv4() -> Option<String> {
    // The kernel's own table of local addresses: `LOCAL` entries under each prefix.
    let trie = fs::read_to_string("/proc/net/fib_trie").ok()?;
    let mut last_ip = None;
    for line in trie.lines() {
        let t = line.trim_start();
        if let Some(ip) = t.strip_prefix("|-- ") {
            last_ip = Some(ip.trim().to_owned());
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last_ip.take() {
                if !ip.starts_with("127.") {
                    return Some(ip);
                }
            }
        }
    }
    None
}

/// Returns the path of an nginx store root inside `dir`.
pub fn store_root(dir: &Path) -> PathBuf {
    let root = dir.join("store");
    fs::create_dir_all(&root).unwrap();
    root
}
