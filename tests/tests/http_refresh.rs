//! Installs and refreshes over HTTP from a real web server (nginx from Debian's packages, on
//! 127.0.0.1) through a proxy that cuts the first download mid-way: the download resumes
//! without fetching again what it had; a corrupted blob is rejected with nothing changed.

use std::fs;
use std::path::Path;

use refreshd_tests::*;

// The store crate's nginx and proxy harness, shared rather than copied.
#[path = "../../store/tests/common/nginx.rs"]
mod nginx;

/// A snap with about 2 MB of incompressible payload, so a download can be cut in the middle.
fn big_snap(out: &Path, version: &str, seed: u64) {
    let noise = noise(2_000_000, seed | 1);
    let src = SnapSrc::new(&format!(
        "name: webby\nversion: '{version}'\napps:\n  webby:\n    command: bin/hello\n"
    ))
    .file(
        "bin/hello",
        "#!/bin/sh\necho \"hello from $SNAP_NAME $SNAP_REVISION\"\n",
        0o755,
    );
    fs::write(src.dir.path().join("payload"), noise).unwrap();
    src.build(out);
}

#[test]
fn install_and_refresh_over_http_resume_and_verify() {
    if !mksquashfs_available() || !is_root() {
        skip("needs root and mksquashfs");
        return;
    }
    let root = Root::new("http");
    let r = root.path();
    let store = root.aux("store");
    fs::create_dir(&store).unwrap();
    let b1 = root.aux("webby1.snap");
    big_snap(&b1, "1.0", 1);
    let e1 = refreshd_store::publish(&store, &b1, "stable").unwrap();
    let Some(server) = nginx::Nginx::start(&store, "") else {
        skip("nginx not installed");
        return;
    };
    // The first response body larger than a megabyte is cut once, in the middle.
    let proxy = nginx::Proxy::start(
        server.port(),
        nginx::ProxyPlan {
            cut_after: Some(1_000_000),
            ..Default::default()
        },
    );
    let url = proxy.url();
    let _d = Daemon::start_with(
        r,
        DaemonOpts {
            extra_args: vec![
                "--insecure-unsigned-store".into(),
                "--store".into(),
                url.clone(),
            ],
            ..Default::default()
        },
    );
    let out = ctl(r, &["install", "webby"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ch = ctl_json(r, &["tasks", &newest_change(r).to_string(), "--json"]);
    let log = task(&ch, "download")["log"].to_string();
    assert!(
        log.contains("resumed at byte"),
        "the cut download resumed: {log}"
    );
    let seen = proxy.log();
    assert_eq!(seen.cuts, 1, "the proxy cut once");
    let index_len = fs::metadata(store.join("v1/snaps/webby.json"))
        .unwrap()
        .len();
    let index_reqs = seen
        .paths()
        .iter()
        .filter(|p| p.ends_with("webby.json"))
        .count() as u64;
    assert_eq!(
        seen.body_bytes - index_reqs * index_len,
        e1.size,
        "every byte of the blob crossed the wire exactly once"
    );
    println!(
        "http: {} bytes of blob, cut at 1000000, resumed with {:?}; nothing fetched twice",
        e1.size,
        (0..seen.requests.len()).find_map(|i| seen.range(i))
    );
    let hello = std::process::Command::new(r.join("snap/bin/webby"))
        .output()
        .unwrap();
    assert_eq!(text(&hello.stdout).trim(), "hello from webby 1");

    // A tampered revision 2: refused at download, revision 1 untouched.
    let b2 = root.aux("webby2.snap");
    big_snap(&b2, "2.0", 2);
    let e2 = refreshd_store::publish(&store, &b2, "stable").unwrap();
    let blob = store.join(&e2.path);
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&blob, &bytes).unwrap();
    let out = ctl(r, &["refresh", "webby"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let failed = ctl_json(r, &["tasks", &newest_change(r).to_string(), "--json"]);
    assert_eq!(task(&failed, "download")["status"], "Error", "{failed}");
    assert_eq!(
        fs::read_link(r.join("snap/webby/current")).unwrap(),
        Path::new("1")
    );
    assert!(!r.join("var/lib/refreshd/blobs/webby_2.snap").exists());

    // A good revision 3 refreshes.
    let b3 = root.aux("webby3.snap");
    big_snap(&b3, "3.0", 3);
    refreshd_store::publish(&store, &b3, "stable").unwrap();
    let out = ctl(r, &["refresh", "webby"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        fs::read_link(r.join("snap/webby/current")).unwrap(),
        Path::new("3")
    );
}
