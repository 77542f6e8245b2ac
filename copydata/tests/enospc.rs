//! A full destination: the error names a path, no destination appears, no temporary is left,
//! and the space comes back. `finish` keeps its staging directory for a retry.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use refreshd_copydata::{copy_tree, finish, precopy, Options};

/// 32 MiB of incompressible data in four files.
fn big_source(root: &Path) {
    dir(root, 0o755, 0, 0);
    for i in 0..4 {
        file(&root.join(format!("f{i}")), &bytes(8 << 20, i), 0o644, 0, 0);
    }
}

fn used_kib(path: &Path) -> u64 {
    let out = run("df", &["--output=used", "-k", path.to_str().unwrap()]).unwrap();
    out.lines().nth(1).unwrap().trim().parse().unwrap()
}

fn full_destination(fs_name: &str, mount: Mount) {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("src");
    big_source(&src);
    let before = used_kib(&mount.path);
    let dst = mount.path.join("dst");
    let e = copy_tree(&src, &dst, &Options::default(), &mut no_progress()).unwrap_err();
    println!("{fs_name}: {}", e.chain());
    assert!(e.is_no_space(), "{fs_name}: {e:?}");
    assert!(
        e.path().starts_with(&mount.path),
        "{fs_name}: names {}",
        e.path().display()
    );
    assert!(!dst.exists());
    assert!(
        temporaries(&mount.path).is_empty(),
        "{fs_name}: temporary left"
    );
    assert!(
        used_kib(&mount.path) <= before + 64,
        "{fs_name}: space not given back"
    );

    let staging = mount.path.join(".dst.staging");
    let e = precopy(&src, &staging, &Options::default(), &mut no_progress()).unwrap_err();
    assert!(e.is_no_space(), "{fs_name}: {e:?}");
    assert!(
        !staging.exists(),
        "{fs_name}: a failed pre-copy leaves nothing"
    );
}

#[test]
fn full_tmpfs() {
    if !require_root("full_tmpfs") {
        return;
    }
    match Mount::tmpfs("size=16m") {
        Ok(m) => full_destination("tmpfs", m),
        Err(e) => println!("SKIP: full_tmpfs: {e}"),
    }
}

#[test]
fn full_ext4() {
    if !require_root("full_ext4") {
        return;
    }
    match Mount::loopfs("ext4", 16, &["-q", "-F"]) {
        Ok(m) => full_destination("ext4", m),
        Err(e) => println!("SKIP: full_ext4: {e}"),
    }
}

#[test]
fn finish_keeps_its_staging_for_a_retry() {
    if !require_root("finish_keeps_its_staging_for_a_retry") {
        return;
    }
    let mount = match Mount::tmpfs("size=16m") {
        Ok(m) => m,
        Err(e) => return println!("SKIP: finish_keeps_its_staging_for_a_retry: {e}"),
    };
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("src");
    dir(&src, 0o755, 1234, 1234);
    file(&src.join("small"), &bytes(1 << 20, 9), 0o644, 1234, 1234);
    let staging = mount.path.join(".dst.staging");
    let dst = mount.path.join("dst");
    let opts = Options::default();
    precopy(&src, &staging, &opts, &mut no_progress()).unwrap();

    file(&src.join("grown"), &bytes(20 << 20, 10), 0o644, 1234, 1234);
    let e = finish(&src, &staging, &dst, &opts, &mut no_progress()).unwrap_err();
    assert!(e.is_no_space(), "{e:?}");
    assert!(!dst.exists());
    assert!(staging.exists(), "kept for a retry");

    fs::remove_file(src.join("grown")).unwrap();
    finish(&src, &staging, &dst, &opts, &mut no_progress()).unwrap();
    assert!(!staging.exists());
    settle_times(&src);
    let fresh = src_dir.path().join("fresh");
    copy_tree(&src, &fresh, &opts, &mut no_progress()).unwrap();
    // settle_times moved the source after the finish: compare content and shape only.
    let strip = |mut s: Snapshot| {
        for e in s.values_mut() {
            e.atime = (0, 0);
            e.mtime = (0, 0);
        }
        s
    };
    assert_same(
        &strip(snapshot(&fresh)),
        &strip(snapshot(&dst)),
        "retried finish",
    );
}
