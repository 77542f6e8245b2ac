//! The HTTP transport against a real web server: nginx from Debian on 127.0.0.1, with a proxy
//! written here in front of it that cuts connections, fails requests or hides lengths.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::nginx::{store_root, Nginx, Proxy, ProxyPlan};
use common::*;
use refreshd_store::{Entry, Error, Store, StoreConfig};

/// Size of the test blob: several of the client's 128 KiB chunks.
const SIZE: usize = 1_000_000;

fn start_nginx(root: &Path, extra: &str) -> Option<Nginx> {
    let nginx = Nginx::start(root, extra);
    if nginx.is_none() {
        skip("nginx not installed");
    }
    nginx
}

/// A store with one snap, `hello` revision 1 on stable, of `blob`.
fn store_with(dir: &Path, blob: &[u8]) -> std::path::PathBuf {
    let root = store_root(dir);
    write_blob(&root, "blobs/hello_1.snap", blob);
    write_index(
        &root,
        "hello",
        1,
        blob.len() as u64,
        &sha3_hex(blob),
        "blobs/hello_1.snap",
    );
    root
}

fn open(url: &str) -> Store {
    Store::open_with(url, test_config()).unwrap()
}

fn stable(store: &Store) -> Entry {
    store
        .snap("hello")
        .unwrap()
        .expect("hello is in the store")
        .channel("stable")
        .cloned()
        .unwrap()
}

#[test]
fn a_cut_download_resumes_with_range_and_fetches_nothing_twice() {
    let tmp = scratch("http-cut");
    let blob = noise(SIZE, 10);
    let root = store_with(tmp.path(), &blob);
    let Some(nginx) = start_nginx(&root, "") else {
        return;
    };
    // The index straight from nginx; the blob through a proxy that cuts it once.
    let entry = stable(&open(&nginx.url()));
    let cut = 300_000u64;
    let proxy = Proxy::start(
        nginx.port(),
        ProxyPlan {
            cut_after: Some(cut),
            ..ProxyPlan::default()
        },
    );
    let store = open(&proxy.url());
    let dest = tmp.path().join("hello_1.snap");
    let mut progress = Progress::default();
    let stats = store
        .fetch(&entry, &dest, &mut progress.record(), &never)
        .unwrap_or_else(|e| panic!("{e}\nnginx: {}", nginx.error_log()));

    let log = proxy.log();
    assert_eq!(log.cuts, 1);
    assert_eq!(log.requests.len(), 2, "{:?}", log.requests);
    assert_eq!(log.range(0), None, "a fresh download asks for everything");
    assert_eq!(log.range(1).as_deref(), Some("bytes=300000-"));
    assert_eq!(stats.attempts, 2);
    assert_eq!(stats.partial_at_start, 0);
    assert_eq!(stats.resumed_from, cut);
    assert!(!stats.restarted);
    // Nothing fetched twice: what the client wrote and what crossed the wire are the blob.
    assert_eq!(stats.bytes_fetched, SIZE as u64);
    assert_eq!(log.body_bytes, SIZE as u64);
    assert_eq!(progress.last(), Some((SIZE as u64, SIZE as u64)));
    assert_eq!(fs::read(&dest).unwrap(), blob);
    assert!(!tmp.path().join("hello_1.snap.partial").exists());
}

#[test]
fn a_partial_from_an_earlier_call_is_resumed() {
    let tmp = scratch("http-partial");
    let blob = noise(SIZE, 11);
    let root = store_with(tmp.path(), &blob);
    let Some(nginx) = start_nginx(&root, "") else {
        return;
    };
    let proxy = Proxy::start(nginx.port(), ProxyPlan::default());
    let store = open(&proxy.url());
    let entry = stable(&store);
    let dest = tmp.path().join("hello_1.snap");
    let have = 123_457usize;
    fs::write(tmp.path().join("hello_1.snap.partial"), &blob[..have]).unwrap();

    let stats = store.fetch(&entry, &dest, &mut |_, _| {}, &never).unwrap();
    let log = proxy.log();
    assert_eq!(log.paths(), ["/v1/snaps/hello.json", "/blobs/hello_1.snap"]);
    assert_eq!(log.range(1).as_deref(), Some("bytes=123457-"));
    assert_eq!(
        (stats.partial_at_start, stats.resumed_from),
        (have as u64, have as u64)
    );
    assert_eq!(stats.bytes_fetched, (SIZE - have) as u64);
    let index_bytes = fs::metadata(root.join("v1/snaps/hello.json"))
        .unwrap()
        .len();
    assert_eq!(log.body_bytes, index_bytes + (SIZE - have) as u64);
    assert_eq!(fs::read(&dest).unwrap(), blob);
}

#[test]
fn a_server_that_ignores_range_restarts_from_zero() {
    let tmp = scratch("http-norange");
    let blob = noise(SIZE, 12);
    let root = store_with(tmp.path(), &blob);
    // max_ranges 0: nginx answers every Range request with 200 and the whole file.
    let Some(nginx) = start_nginx(&root, "max_ranges 0;") else {
        return;
    };
    let entry = stable(&open(&nginx.url()));
    let cut = 200_000u64;
    let proxy = Proxy::start(
        nginx.port(),
        ProxyPlan {
            cut_after: Some(cut),
            ..ProxyPlan::default()
        },
    );
    let store = open(&proxy.url());
    let dest = tmp.path().join("hello_1.snap");
    let mut progress = Progress::default();
    let stats = store
        .fetch(&entry, &dest, &mut progress.record(), &never)
        .unwrap();
    let log = proxy.log();
    assert_eq!(log.range(1).as_deref(), Some("bytes=200000-"));
    assert!(stats.restarted, "{stats:?}");
    assert_eq!(stats.resumed_from, 0);
    assert_eq!(stats.attempts, 2);
    assert_eq!(stats.bytes_fetched, cut + SIZE as u64);
    assert_eq!(log.body_bytes, cut + SIZE as u64);
    assert!(progress.calls.contains(&(0, SIZE as u64)));
    assert_eq!(fs::read(&dest).unwrap(), blob);
}

#[test]
fn a_corrupted_blob_is_rejected_and_leaves_no_file() {
    let tmp = scratch("http-corrupt");
    let blob = noise(SIZE, 13);
    let root = store_with(tmp.path(), &blob);
    // Same size, one bit flipped: only the hash can tell.
    let mut bad = blob.clone();
    bad[SIZE / 3] ^= 0x80;
    write_blob(&root, "blobs/hello_1.snap", &bad);
    let Some(nginx) = start_nginx(&root, "") else {
        return;
    };
    let store = open(&nginx.url());
    let entry = stable(&store);
    let dest = tmp.path().join("hello_1.snap");
    let e = store
        .fetch(&entry, &dest, &mut |_, _| {}, &never)
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(
        e.to_string().contains("corrupt or was tampered with"),
        "{e}"
    );
    assert!(!dest.exists());
    assert!(!tmp.path().join("hello_1.snap.partial").exists());
}

#[test]
fn a_blob_larger_than_declared_is_rejected() {
    let tmp = scratch("http-large");
    let blob = noise(SIZE, 14);
    let root = store_with(tmp.path(), &blob);
    let mut longer = blob.clone();
    longer.extend_from_slice(b"and some more");
    write_blob(&root, "blobs/hello_1.snap", &longer);
    let Some(nginx) = start_nginx(&root, "") else {
        return;
    };
    let entry = stable(&open(&nginx.url()));
    let dest = tmp.path().join("hello_1.snap");

    // With Content-Length, the answer is refused before its body is read.
    let e = open(&nginx.url())
        .fetch(&entry, &dest, &mut |_, _| {}, &never)
        .unwrap_err();
    assert!(matches!(e, Error::BlobTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("larger than"), "{e}");
    assert!(!dest.exists());
    assert!(!tmp.path().join("hello_1.snap.partial").exists());

    // Without it (a body that ends when the connection does), the client takes `size` bytes
    // and one more tells it the blob is longer.
    let proxy = Proxy::start(
        nginx.port(),
        ProxyPlan {
            hide_length: true,
            ..ProxyPlan::default()
        },
    );
    let mut most = 0;
    let e = open(&proxy.url())
        .fetch(&entry, &dest, &mut |done, _| most = most.max(done), &never)
        .unwrap_err();
    assert!(matches!(e, Error::BlobTooLarge { .. }), "{e}");
    assert_eq!(most, SIZE as u64, "never more than the declared size");
    assert!(!dest.exists());
    assert!(!tmp.path().join("hello_1.snap.partial").exists());
}

#[test]
fn a_body_of_unknown_length_is_downloaded() {
    let tmp = scratch("http-nolength");
    let blob = noise(SIZE, 15);
    let root = store_with(tmp.path(), &blob);
    let Some(nginx) = start_nginx(&root, "") else {
        return;
    };
    let proxy = Proxy::start(
        nginx.port(),
        ProxyPlan {
            hide_length: true,
            ..ProxyPlan::default()
        },
    );
    let store = open(&proxy.url());
    let entry = stable(&store);
    let dest = tmp.path().join("hello_1.snap");
    let stats = store.fetch(&entry, &dest, &mut |_, _| {}, &never).unwrap();
    assert_eq!(stats.bytes_fetched, SIZE as u64);
    assert_eq!(fs::read(&dest).unwrap(), blob);
}

#[test]
fn an_index_path_leaving_the_store_is_rejected_before_any_blob_request() {
    let tmp = scratch("http-hostile");
    let root = store_root(tmp.path());
    let Some(nginx) = start_nginx(&root, "") else {
        return;
    };
    let sha = sha3_hex(b"x");
    for path in ["../../etc/passwd", "/etc/passwd"] {
        write_index(&root, "hello", 7, 100, &sha, path);
        let proxy = Proxy::start(nginx.port(), ProxyPlan::default());
        let store = open(&proxy.url());
        let e = store.snap("hello").unwrap_err();
        assert!(
            matches!(e, Error::Index { ref field, .. } if field == "revisions.7.path"),
            "{e}"
        );
        assert!(e.to_string().contains("revisions.7.path"), "{e}");
        assert_eq!(
            proxy.log().paths(),
            ["/v1/snaps/hello.json"],
            "only the index"
        );

        // An entry built by hand is checked before any request too.
        let entry = Entry {
            name: "hello".into(),
            revision: 7,
            version: "1.0".into(),
            sha3_384: sha.clone(),
            size: 100,
            path: path.into(),
        };
        let dest = tmp.path().join("hello_7.snap");
        let e = store
            .fetch(&entry, &dest, &mut |_, _| {}, &never)
            .unwrap_err();
        assert!(e.to_string().contains("revisions.7.path"), "{e}");
        assert_eq!(proxy.log().requests.len(), 1, "no request for the blob");
        assert!(!tmp.path().join("hello_7.snap.partial").exists());
    }
    assert!(
        !nginx.access_log().contains("passwd"),
        "{}",
        nginx.access_log()
    );
}

#[test]
fn absent_snaps_and_blobs() {
    let tmp = scratch("http-absent");
    let blob = noise(1000, 16);
    let root = store_with(tmp.path(), &blob);
    let Some(nginx) = start_nginx(&root, "") else {
        return;
    };
    let store = open(&format!("{}/", nginx.url()));
    assert!(store.snap("nothere").unwrap().is_none(), "404 is no snap");
    let entry = stable(&store);
    fs::remove_file(root.join("blobs/hello_1.snap")).unwrap();
    let e = store
        .fetch(
            &entry,
            &tmp.path().join("hello_1.snap"),
            &mut |_, _| {},
            &never,
        )
        .unwrap_err();
    assert!(matches!(e, Error::BlobMissing { .. }), "{e}");
}

#[test]
fn a_store_under_a_base_path_works() {
    let tmp = scratch("http-base");
    let blob = noise(5000, 17);
    let site = tmp.path().join("site");
    store_with(&site.join("mirror"), &blob);
    let Some(nginx) = start_nginx(&site, "") else {
        return;
    };
    let store = open(&format!("{}/mirror/store", nginx.url()));
    let entry = stable(&store);
    let dest = tmp.path().join("hello_1.snap");
    store.fetch(&entry, &dest, &mut |_, _| {}, &never).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), blob);
}

#[test]
fn a_503_is_retried() {
    let tmp = scratch("http-503");
    let blob = noise(SIZE, 18);
    let root = store_with(tmp.path(), &blob);
    let Some(nginx) = start_nginx(&root, "") else {
        return;
    };
    let proxy = Proxy::start(
        nginx.port(),
        ProxyPlan {
            fail_first: Some(503),
            ..ProxyPlan::default()
        },
    );
    let store = open(&proxy.url());
    // The index request meets the 503 and is retried.
    let entry = stable(&store);
    let stats = store
        .fetch(
            &entry,
            &tmp.path().join("hello_1.snap"),
            &mut |_, _| {},
            &never,
        )
        .unwrap();
    assert_eq!(stats.attempts, 1);
    assert_eq!(
        proxy.log().paths(),
        [
            "/v1/snaps/hello.json",
            "/v1/snaps/hello.json",
            "/blobs/hello_1.snap"
        ]
    );
}

#[test]
fn a_silent_server_times_out_and_retries_are_bounded() {
    // A socket that is bound and listening but never accepts: connections complete in the
    // kernel's backlog, and no answer ever comes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let config = StoreConfig {
        read_timeout: Duration::from_millis(200),
        max_attempts: 3,
        ..test_config()
    };
    let store = Store::open_with(&url, config).unwrap();
    let e = store.snap("hello").unwrap_err();
    assert!(matches!(e, Error::Unreachable { attempts: 3, .. }), "{e}");
    assert!(e.to_string().contains("try again"), "{e}");
    drop(listener);
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with the openssl command:
/// `(ca.pem, server.pem, server.key)`.
fn make_certificates(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
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
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
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

#[test]
fn https_with_a_trusted_ca_works_and_an_unknown_one_is_refused() {
    let tmp = scratch("https");
    let blob = noise(SIZE, 19);
    let root = store_with(tmp.path(), &blob);
    let Some((ca, cert, key)) = make_certificates(tmp.path()) else {
        return skip("openssl not installed");
    };
    let Some(nginx) = Nginx::start_tls(&root, &cert, &key) else {
        return skip("nginx not installed");
    };
    let url = format!("https://127.0.0.1:{}", nginx.port());

    // Trusting the store's CA: the same download as over plain HTTP, resumed with Range.
    let config = StoreConfig {
        ca_file: Some(ca),
        ..test_config()
    };
    let store = Store::open_with(&url, config).unwrap();
    let entry = stable(&store);
    let dest = tmp.path().join("hello_1.snap");
    let have = 400_000usize;
    fs::write(tmp.path().join("hello_1.snap.partial"), &blob[..have]).unwrap();
    let stats = store
        .fetch(&entry, &dest, &mut |_, _| {}, &never)
        .unwrap_or_else(|e| panic!("{e}\nnginx: {}", nginx.error_log()));
    assert_eq!(stats.resumed_from, have as u64);
    assert_eq!(stats.bytes_fetched, (SIZE - have) as u64);
    assert_eq!(fs::read(&dest).unwrap(), blob);

    // With the built-in roots the certificate is unknown: refused at once, not retried.
    let e = open(&url).snap("hello").unwrap_err();
    assert!(matches!(e, Error::Transfer { .. }), "{e}");
    assert!(e.to_string().contains("CA file"), "{e}");

    // A CA file that is not PEM is refused when the store is opened.
    let config = StoreConfig {
        ca_file: Some(key_not_cert(tmp.path())),
        ..test_config()
    };
    let e = Store::open_with(&url, config).err().unwrap();
    assert!(matches!(e, Error::CaFile { .. }), "{e}");
}

fn key_not_cert(dir: &Path) -> PathBuf {
    let p = dir.join("not-a-ca.pem");
    fs::write(&p, "hello\n").unwrap();
    p
}
