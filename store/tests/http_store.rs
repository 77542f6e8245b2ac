//! The HTTP transport against a real web server: nginx from Debian on 127.0.0.1, with a proxy
//! written here in front of it that cuts connections, fails requests or hides lengths.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::nginx::{make_certificates, non_loopback_ipv4, store_root, Nginx, Proxy, ProxyPlan};
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

#[test]
fn https_with_a_trusted_ca_works_and_an_unknown_one_is_refused() {
    let tmp = scratch("https");
    let blob = noise(SIZE, 19);
    let root = store_with(tmp.path(), &blob);
    let Some((ca, cert, key)) = make_certificates(tmp.path(), &[]) else {
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

/// The TLS nginx of a redirect test: serves `root`, and while one of the flag files exists in
/// `flags` redirects what it names: `v1-http` the indexes to plain HTTP at `evil`, `blobs-http`
/// the blobs there, `blobs-https` the blobs to another HTTPS server at `mirror`.
fn redirecting_tls_store(
    root: &Path,
    flags: &Path,
    cert: &Path,
    key: &Path,
    evil: u16,
    mirror: u16,
) -> Option<Nginx> {
    let f = flags.display();
    let extra = format!(
        "location /v1/ {{
            if (-f {f}/v1-http) {{ return 302 http://127.0.0.1:{evil}$request_uri; }}
        }}
        location /blobs/ {{
            if (-f {f}/blobs-http) {{ return 302 http://127.0.0.1:{evil}$request_uri; }}
            if (-f {f}/blobs-https) {{ return 307 https://127.0.0.1:{mirror}$request_uri; }}
        }}"
    );
    Nginx::start_tls_with(root, cert, key, &extra)
}

/// An `https://` store that redirects to `http://` — its index to a tampered one, its blobs to
/// the very same bytes, a resumed download's range too — is refused at once, naming the
/// redirect, and nothing is requested over plain HTTP; a redirect to another HTTPS server is
/// followed (a CDN); once the redirects are gone the same store works, and the refused
/// download resumes where it was.
#[test]
fn an_https_store_never_follows_a_redirect_to_plain_http() {
    let tmp = scratch("https-redirect");
    let blob = noise(SIZE, 31);
    let root = store_with(tmp.path(), &blob);
    let Some((ca, cert, key)) = make_certificates(tmp.path(), &[]) else {
        return skip("openssl not installed");
    };
    // Plain HTTP: a tampered store (another blob, an index that matches it).
    let evil_dir = tmp.path().join("evil");
    let evil_blob = noise(SIZE, 32);
    let evil_root = store_with(&evil_dir, &evil_blob);
    let Some(evil) = start_nginx(&evil_root, "") else {
        return;
    };
    let Some(mirror) = Nginx::start_tls(&root, &cert, &key) else {
        return skip("nginx not installed");
    };
    let flags = tmp.path().join("flags");
    fs::create_dir(&flags).unwrap();
    let Some(nginx) = redirecting_tls_store(&root, &flags, &cert, &key, evil.port(), mirror.port())
    else {
        return skip("nginx not installed");
    };
    let config = StoreConfig {
        ca_file: Some(ca),
        ..test_config()
    };
    let store = Store::open_with(&nginx.https_url(), config).unwrap();
    let flag = |name: &str, on: bool| {
        let p = flags.join(name);
        if on {
            fs::write(p, "").unwrap();
        } else {
            let _ = fs::remove_file(p);
        }
    };
    let evil_url = format!("http://127.0.0.1:{}", evil.port());
    let refused = |e: Error, what: &str| {
        let msg = e.to_string();
        println!("{what}: {msg}");
        assert!(matches!(e, Error::Redirect { .. }), "{what}: {msg}");
        assert!(
            msg.contains(&evil_url),
            "{what}: the redirect is named: {msg}"
        );
        assert!(msg.contains("plain HTTP"), "{what}: {msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(evil.access_log(), "", "{what}: plain HTTP was asked");
    };
    let mut attacks = 0;

    // The index.
    flag("v1-http", true);
    attacks += 1;
    refused(store.snap("hello").unwrap_err(), "index");
    flag("v1-http", false);
    let entry = stable(&store);
    assert_eq!(entry.sha3_384, sha3_hex(&blob));

    // A blob, from the start and resumed (a range request).
    flag("blobs-http", true);
    let dest = tmp.path().join("hello_1.snap");
    attacks += 1;
    refused(
        store
            .fetch(&entry, &dest, &mut |_, _| {}, &never)
            .unwrap_err(),
        "blob",
    );
    assert!(!dest.exists());
    let partial = tmp.path().join("hello_1.snap.partial");
    let have = 300_000usize;
    fs::write(&partial, &blob[..have]).unwrap();
    attacks += 1;
    refused(
        store
            .fetch(&entry, &dest, &mut |_, _| {}, &never)
            .unwrap_err(),
        "resumed blob",
    );
    assert_eq!(fs::metadata(&partial).unwrap().len(), have as u64);
    assert!(!dest.exists());
    flag("blobs-http", false);

    // Another HTTPS server (a CDN's edge): followed, and the range goes with it.
    flag("blobs-https", true);
    let stats = store
        .fetch(&entry, &dest, &mut |_, _| {}, &never)
        .unwrap_or_else(|e| panic!("{e}\nnginx: {}", nginx.error_log()));
    assert_eq!(stats.resumed_from, have as u64);
    assert_eq!(fs::read(&dest).unwrap(), blob);
    assert!(
        mirror.access_log().contains("/blobs/hello_1.snap"),
        "the mirror served it: {}",
        mirror.access_log()
    );
    flag("blobs-https", false);

    // No redirect: the same store as ever.
    let dest2 = tmp.path().join("again.snap");
    store.fetch(&entry, &dest2, &mut |_, _| {}, &never).unwrap();
    assert_eq!(fs::read(&dest2).unwrap(), blob);
    assert_eq!(evil.access_log(), "");
    println!("figures: store: attacks={attacks} refused={attacks}");
}

/// Redirects that lead off http(s), in a loop, too far, or — from a store on another host — to
/// this machine are refused in one line naming them, before anything is asked there; a chain
/// within the limit is followed.
#[test]
fn redirects_off_http_in_loops_too_far_or_to_this_machine_are_refused() {
    let tmp = scratch("http-redirects");
    let blob = noise(4096, 33);
    let root = store_with(tmp.path(), &blob);
    let hops: String = (1..=7)
        .map(|i| {
            let next = if i == 7 {
                "/v1/snaps/hello.json".to_owned()
            } else {
                format!("/v1/snaps/far{}.json", i + 1)
            };
            format!("location = /v1/snaps/far{i}.json {{ return 302 {next}; }}\n")
        })
        .collect();
    let extra = format!(
        "location = /v1/snaps/file.json {{ return 302 file:///etc/passwd; }}
        location = /v1/snaps/ftp.json {{ return 301 ftp://127.0.0.1/x; }}
        location = /v1/snaps/loop.json {{ return 302 /v1/snaps/loop2.json; }}
        location = /v1/snaps/loop2.json {{ return 301 loop.json; }}
        location = /v1/snaps/near.json {{ return 302 /hop/a; }}
        location = /hop/a {{ return 307 b; }}
        location = /hop/b {{ return 308 /idx/v1/snaps/near.json; }}
        {hops}"
    );
    let Some(nginx) = start_nginx(&root, &extra) else {
        return;
    };
    let store = open(&nginx.url());
    let cases = [
        ("file", "another scheme (\"file\")"),
        ("ftp", "another scheme (\"ftp\")"),
        ("loop", "redirect loop"),
        ("far1", "at most 5 redirects"),
    ];
    let mut attacks = 0;
    for (name, why) in cases {
        attacks += 1;
        let e = store.snap(name).unwrap_err();
        let msg = e.to_string();
        println!("{name}: {msg}");
        assert!(matches!(e, Error::Redirect { .. }), "{name}: {msg}");
        assert!(msg.contains(why), "{name}: {msg}");
        assert!(!msg.contains('\n'));
    }
    // Three hops, then the index: fine.
    write_index(
        &root.join("idx"),
        "near",
        1,
        4096,
        &sha3_hex(&blob),
        "blobs/hello_1.snap",
    );
    let index = store.snap("near").unwrap().expect("the index at the end");
    assert_eq!(index.name(), "near");

    // A store on another host (an address of this machine other than loopback stands in for
    // one) redirecting to 127.0.0.1.
    let Some(ip) = non_loopback_ipv4() else {
        println!("figures: store: attacks={attacks} refused={attacks}");
        return skip("no address but loopback: cannot stand in for another host");
    };
    let to_local = format!(
        "location = /v1/snaps/hello.json {{ return 302 http://127.0.0.1:{}/v1/snaps/hello.json; }}",
        nginx.port()
    );
    let Some(remote) = Nginx::start_on(&ip, &root, &to_local) else {
        return;
    };
    attacks += 1;
    let e = open(&remote.url()).snap("hello").unwrap_err();
    let msg = e.to_string();
    println!("to this machine: {msg}");
    assert!(matches!(e, Error::Redirect { .. }), "{msg}");
    assert!(msg.contains("this machine"), "{msg}");
    assert!(
        !nginx.access_log().contains("/v1/snaps/hello.json"),
        "the local server was asked: {}",
        nginx.access_log()
    );
    println!("figures: store: attacks={attacks} refused={attacks}");
}
