//! Reflinks on filesystems that share extents (XFS with reflink=1, btrfs): the data is
//! cloned, not copied — counted in the stats and visible in the free space — and the copy is
//! still exact. `Reflink::Never` copies the blocks.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use refreshd_copydata::{copy_tree, finish, precopy, Options, Reflink};

fn used_kib(path: &Path) -> u64 {
    let out = run("df", &["--output=used", "-k", path.to_str().unwrap()]).unwrap();
    out.lines().nth(1).unwrap().trim().parse().unwrap()
}

/// Four 8 MiB files, a sparse file, an empty one, a hard link, in a small tree.
fn source(root: &Path) -> u64 {
    dir(root, 0o755, 1234, 1234);
    dir(&root.join("sub"), 0o700, 1234, 1234);
    for i in 0..4 {
        file(
            &root.join(format!("sub/f{i}")),
            &bytes(8 << 20, i),
            0o640,
            1234,
            1234,
        );
    }
    file(&root.join("empty"), b"", 0o644, 1234, 1234);
    let sparse = File::create(root.join("sparse")).unwrap();
    sparse.set_len(32 << 20).unwrap();
    sparse.write_at(&bytes(65536, 7), 16 << 20).unwrap();
    drop(sparse);
    std::fs::hard_link(root.join("sub/f0"), root.join("f0-link")).unwrap();
    settle_times(root);
    5 // regular files with data: f0..f3 and sparse
}

fn reflinks_on(fs_name: &str, mount: Mount) {
    let src = mount.path.join("src");
    let files = source(&src);
    syncfs(&mount.path);

    let before = used_kib(&mount.path);
    let dst = mount.path.join("dst");
    let stats = copy_tree(&src, &dst, &Options::default(), &mut no_progress()).unwrap();
    syncfs(&mount.path);
    let grew = used_kib(&mount.path) - before;
    println!("{fs_name}: reflinked copy grew the filesystem by {grew} KiB; {stats:?}");
    assert_eq!(stats.reflinked_files, files, "{fs_name}: {stats:?}");
    assert_eq!(stats.copied_bytes, 0, "{fs_name}: {stats:?}");
    assert!(grew < 4096, "{fs_name}: 32 MiB reflinked cost {grew} KiB");
    assert_same(&snapshot(&src), &snapshot(&dst), fs_name);

    // Files whose last block is partial stay wholly shared: no block of the copy is its own
    // (a same-size truncate after the clone used to unshare every file's tail on XFS).
    let tails = mount.path.join("tails");
    dir(&tails, 0o755, 0, 0);
    for i in 0..2000u64 {
        file(&tails.join(format!("t{i}")), &bytes(5000, i), 0o644, 0, 0);
    }
    syncfs(&mount.path);
    let before = used_kib(&mount.path);
    let stats = copy_tree(
        &tails,
        &mount.path.join("tails-copy"),
        &Options::default(),
        &mut no_progress(),
    )
    .unwrap();
    syncfs(&mount.path);
    let grew = used_kib(&mount.path) - before;
    println!("{fs_name}: 2,000 reflinked tails grew the filesystem by {grew} KiB");
    assert_eq!(stats.reflinked_files, 2000, "{fs_name}: {stats:?}");
    // Their tails alone would be 2,000 blocks (7.8 MiB); inodes and directories are far less.
    assert!(
        grew < 3072,
        "{fs_name}: 2,000 reflinked files cost {grew} KiB"
    );

    let plain = mount.path.join("plain");
    let opts = Options {
        reflink: Reflink::Never,
        ..Options::default()
    };
    let stats = copy_tree(&src, &plain, &opts, &mut no_progress()).unwrap();
    assert_eq!(stats.reflinked_files, 0, "{fs_name}: {stats:?}");
    assert_eq!(
        stats.copied_bytes,
        (32 << 20) + 65536,
        "{fs_name}: {stats:?}"
    );
    assert_same(&snapshot(&src), &snapshot(&plain), fs_name);

    // Pre-copy and finish reflink too; finish only what changed.
    let staging = mount.path.join(".next.staging");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let pre = precopy(&src, &staging, &Options::default(), &mut no_progress()).unwrap();
    assert_eq!(pre.reflinked_files, files, "{fs_name}: {pre:?}");
    File::options()
        .write(true)
        .open(src.join("sub/f2"))
        .unwrap()
        .write_at(b"changed", 4096)
        .unwrap();
    let next = mount.path.join("next");
    let done = finish(
        &src,
        &staging,
        &next,
        &Options::default(),
        &mut no_progress(),
    )
    .unwrap();
    assert_eq!(done.reflinked_files, 1, "{fs_name}: {done:?}");
    assert_same(&snapshot(&src), &snapshot(&next), fs_name);
}

#[test]
fn xfs_reflinks() {
    if !require_root("xfs_reflinks") {
        return;
    }
    match Mount::loopfs("xfs", 512, &["-q", "-f", "-m", "reflink=1"]) {
        Ok(m) => reflinks_on("xfs", m),
        Err(e) => println!("SKIP: xfs_reflinks: {e} (package xfsprogs)"),
    }
}

#[test]
fn btrfs_reflinks() {
    if !require_root("btrfs_reflinks") {
        return;
    }
    match Mount::loopfs("btrfs", 256, &["-q", "-f"]) {
        Ok(m) => reflinks_on("btrfs", m),
        Err(e) => println!("SKIP: btrfs_reflinks: {e} (package btrfs-progs)"),
    }
}
