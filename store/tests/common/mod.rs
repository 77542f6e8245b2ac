//! Helpers shared by the store's integration tests: scratch directories, snap files, blobs
//! and indexes written by hand, hashing.
#![allow(dead_code)]

pub mod nginx;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use refreshd_store::StoreConfig;
use sha3::{Digest, Sha3_384};

/// Prints why a test is skipped, and records it where `scripts/test.sh` counts skips.
pub fn skip(why: &str) {
    println!("SKIP: {why}");
    if let Some(p) = std::env::var_os("REFRESHD_TEST_SKIPS") {
        let test = std::thread::current().name().unwrap_or("?").to_owned();
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(p) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// Finds a program in `PATH` or the sbin directories (where Debian puts nginx).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A unique scratch directory, deleted on drop (even when the test fails).
pub fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("refreshd-store-test-{tag}-"))
        .tempdir()
        .expect("tempdir")
}

/// A configuration for tests: no proxy from the environment (tests only talk to 127.0.0.1),
/// short backoff and timeouts.
pub fn test_config() -> StoreConfig {
    StoreConfig {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        max_attempts: 5,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        proxy_from_env: false,
        ca_file: None,
        trust: None,
    }
}

/// `len` bytes that do not compress (xorshift), different for each seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha3_hex(bytes: &[u8]) -> String {
    hex::encode(Sha3_384::digest(bytes))
}

/// Writes a blob at `store/rel`.
pub fn write_blob(store: &Path, rel: &str, bytes: &[u8]) {
    let path = store.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// Writes `v1/snaps/NAME.json` with one revision on `stable`, declaring `size`, `sha` and
/// `path` exactly as given (tests use it to lie).
pub fn write_index(store: &Path, name: &str, revision: u32, size: u64, sha: &str, path: &str) {
    let index = serde_json::json!({
        "format": 1,
        "name": name,
        "revisions": {
            revision.to_string(): {"version": "1.0", "sha3-384": sha, "size": size, "path": path},
        },
        "channels": {"stable": revision},
    });
    let dir = store.join("v1/snaps");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}

/// Whether squashfs-tools are installed (publishing reads snap.yaml with unsquashfs).
pub fn have_squashfs_tools() -> bool {
    find_program("mksquashfs").is_some() && find_program("unsquashfs").is_some()
}

/// Builds a snap file `NAME_VERSION.snap` in `dir` with `payload` bytes of noise in it.
pub fn make_snap(dir: &Path, name: &str, version: &str, payload: usize) -> PathBuf {
    let src = dir.join(format!("src-{name}-{version}"));
    fs::create_dir_all(src.join("meta")).unwrap();
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::write(
        src.join("meta/snap.yaml"),
        format!(
            "name: {name}\nversion: '{version}'\nsummary: test snap\napps:\n  {name}:\n    command: bin/{name}\n"
        ),
    )
    .unwrap();
    fs::write(src.join(format!("bin/{name}")), "#!/bin/sh\necho hello\n").unwrap();
    fs::write(
        src.join("payload"),
        noise(payload, version.bytes().map(u64::from).sum::<u64>() + 7),
    )
    .unwrap();
    let out = dir.join(format!("{name}_{version}.snap"));
    refreshd_snap::pack(&src, &out).expect("mksquashfs");
    out
}

/// Collects progress reports and checks they only go forward (or restart at 0).
#[derive(Default)]
pub struct Progress {
    pub calls: Vec<(u64, u64)>,
}

impl Progress {
    pub fn record(&mut self) -> impl FnMut(u64, u64) + '_ {
        |done, total| {
            if let Some(&(last, _)) = self.calls.last() {
                assert!(
                    done >= last || done == 0,
                    "progress went back: {last} -> {done}"
                );
            }
            assert!(done <= total, "progress past the end: {done} > {total}");
            self.calls.push((done, total));
        }
    }

    pub fn last(&self) -> Option<(u64, u64)> {
        self.calls.last().copied()
    }
}

/// Never cancels.
pub fn never() -> bool {
    false
}
