//! Pre-copy then finish must give exactly what a fresh `copy_tree` gives at that moment,
//! whatever changed in between — including changes that keep size and mtime (only the ctime
//! moves) — and must stay right without its record.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use refreshd_copydata::{copy_tree, discard, finish, precopy, Error, Options};

/// `dirs` directories of `files` files of `size` bytes each under `root/bulk`.
fn bulk(root: &Path, dirs: usize, files: usize, size: usize) {
    let b = root.join("bulk");
    dir(&b, 0o755, 1234, 1234);
    for d in 0..dirs {
        let dd = b.join(format!("d{d}"));
        dir(&dd, 0o755, 1234, 1234);
        for f in 0..files {
            let seed = (d * files + f) as u64;
            file(
                &dd.join(format!("f{f}")),
                &bytes(size, seed),
                0o644,
                1234,
                1234,
            );
        }
    }
}

/// Enough time for the tree's ctimes to fall out of the pre-copy's "racy" window.
fn let_settle() {
    std::thread::sleep(Duration::from_millis(2100));
}

/// Rewrites a file in place with other bytes of the same length, then puts its times back:
/// only the ctime tells.
fn rewrite_keeping_times(p: &Path) {
    let md = fs::metadata(p).unwrap();
    let len = md.len() as usize;
    let f = fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_at(&bytes(len, 0xdead), 0).unwrap();
    let t = fs::FileTimes::new()
        .set_accessed(UNIX_EPOCH + Duration::new(md.atime() as u64, md.atime_nsec() as u32))
        .set_modified(UNIX_EPOCH + Duration::new(md.mtime() as u64, md.mtime_nsec() as u32));
    f.set_times(t).unwrap();
}

/// About 1% of the entries changed, in every way a copy must notice.
fn modify(src: &Path, rich: &Rich) {
    let b = src.join("bulk");
    rewrite_keeping_times(&b.join("d0/f0"));
    fs::OpenOptions::new()
        .write(true)
        .open(b.join("d0/f1"))
        .unwrap()
        .write_at(b"XX", 10)
        .unwrap();
    fs::set_permissions(b.join("d1/f2"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(b.join("d1/f3"), Some(4321), None).unwrap();
    file(&b.join("d2/new"), b"new file", 0o644, 1234, 1234);
    fs::remove_file(b.join("d2/f4")).unwrap();
    fs::rename(b.join("d3/f5"), b.join("d3/f5.renamed")).unwrap();
    fs::rename(b.join("d3/f6"), b.join("d4/f6.moved")).unwrap();
    // Two files of the same size exchange names.
    fs::rename(b.join("d5/f7"), b.join("d5/tmp")).unwrap();
    fs::rename(b.join("d5/f8"), b.join("d5/f7")).unwrap();
    fs::rename(b.join("d5/tmp"), b.join("d5/f8")).unwrap();
    File::options()
        .write(true)
        .open(src.join("big.bin"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    dir(&b.join("newdir"), 0o700, 1234, 1234);
    file(&b.join("newdir/a"), b"a", 0o644, 1234, 1234);
    file(&b.join("newdir/b"), b"b", 0o644, 1234, 1234);
    fs::remove_dir_all(b.join("d6")).unwrap();
    fs::remove_dir_all(b.join("d7")).unwrap();
    file(&b.join("d7"), b"was a directory", 0o644, 1234, 1234);
    fs::remove_file(b.join("d8/f9")).unwrap();
    dir(&b.join("d8/f9"), 0o755, 1234, 1234);
    file(&b.join("d8/f9/inner"), b"was a file", 0o644, 1234, 1234);
    fs::remove_file(src.join("links/sym-rel")).unwrap();
    symlink("../exec", src.join("links/sym-rel")).unwrap();
    fs::hard_link(b.join("d9/f10"), b.join("d9/f10.link")).unwrap();
    fs::remove_file(src.join("links/two")).unwrap();
    // A reader moves the atime of a file whose atime was older than its mtime (relatime),
    // without touching its ctime.
    fs::read(b.join("d10/f11")).unwrap();
    let sparse = File::options()
        .write(true)
        .open(src.join("sparse.img"))
        .unwrap();
    sparse.write_at(b"into a hole", 16 << 20).unwrap();
    fs::remove_file(src.join("special/fifo")).unwrap();
    symlink("fifo-now-a-link", src.join("special/fifo")).unwrap();
    fs::remove_file(src.join("special/null")).unwrap();
    run(
        "mknod",
        &[src.join("special/null").to_str().unwrap(), "c", "1", "5"],
    )
    .unwrap();
    if rich.xattrs {
        setfattr(&src.join("xattrs/file"), "user.comment", "changed");
        run(
            "setfattr",
            &["-x", "user.bin", src.join("xattrs/file").to_str().unwrap()],
        )
        .unwrap();
        setfattr(&b.join("d11"), "user.new", "on a directory");
    }
    if rich.acl {
        let f = src.join("xattrs/aclfile");
        run("setfacl", &["-m", "u:2001:r--", f.to_str().unwrap()]).unwrap();
    }
    // Let new symlinks' first read land a tick after their creation (relatime).
    std::thread::sleep(Duration::from_millis(50));
}

struct Tree {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    src: PathBuf,
    rich: Rich,
}

fn tree() -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_owned();
    let src = base.join("src");
    let rich = build_rich_tree(&src);
    bulk(&src, 20, 100, 512);
    // d10/f11: atime before mtime, so a plain read moves it.
    set_times(
        &src.join("bulk/d10/f11"),
        (now() - 7200, 5),
        (now() - 3600, 7),
    );
    Tree {
        _tmp: tmp,
        base,
        src,
        rich,
    }
}

fn fresh_copy(t: &Tree, name: &str) -> Snapshot {
    let fresh = t.base.join(name);
    copy_tree(&t.src, &fresh, &Options::default(), &mut no_progress()).unwrap();
    snapshot(&fresh)
}

#[test]
fn finish_equals_a_fresh_copy() {
    if !require_root("finish_equals_a_fresh_copy") {
        return;
    }
    let t = tree();
    let opts = Options::default();
    let staging = t.base.join(".dst.staging");
    let dst = t.base.join("dst");
    let_settle();
    let pre = precopy(&t.src, &staging, &opts, &mut no_progress()).unwrap();
    assert!(pre.files > 2000, "{pre:?}");
    modify(&t.src, &t.rich);

    let done = finish(&t.src, &staging, &dst, &opts, &mut no_progress()).unwrap();
    let fresh = fresh_copy(&t, "fresh");
    let got = snapshot(&dst);
    assert_same(&fresh, &got, "finish and a fresh copy");
    assert!(!staging.exists());
    assert!(temporaries(&t.base).is_empty());
    // The critical section copied what changed, not the tree.
    assert!(done.unchanged > 1750, "{done:?}"); // 2000 less two removed directories
    assert!(done.files < 40, "{done:?}");
    assert!(done.removed >= 5, "{done:?}");
    println!("precopy: {pre:?}\nfinish: {done:?}");
}

#[test]
fn passes_narrow_the_delta_and_survive_a_lost_record() {
    if !require_root("passes_narrow_the_delta_and_survive_a_lost_record") {
        return;
    }
    let t = tree();
    let opts = Options::default();
    let staging = t.base.join(".dst.staging");
    let_settle();
    precopy(&t.src, &staging, &opts, &mut no_progress()).unwrap();
    let second = precopy(&t.src, &staging, &opts, &mut no_progress()).unwrap();
    assert!(second.unchanged > 2000, "{second:?}");
    assert!(second.files == 0 && second.removed == 0, "{second:?}");

    // A damaged record is ignored: finish copies everything again and is still right.
    modify(&t.src, &t.rich);
    let state = staging.join("state");
    let mut data = fs::read(&state).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 1;
    fs::write(&state, data).unwrap();
    let dst = t.base.join("dst");
    let done = finish(&t.src, &staging, &dst, &opts, &mut no_progress()).unwrap();
    assert_eq!(done.unchanged, 0, "{done:?}");
    assert_same(
        &fresh_copy(&t, "fresh"),
        &snapshot(&dst),
        "finish without a record",
    );
}

#[test]
fn finish_without_staging_copies_and_discard_cleans_up() {
    if !require_root("finish_without_staging_copies_and_discard_cleans_up") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    dir(&src, 0o755, 1234, 1234);
    bulk(&src, 2, 10, 100);
    settle_times(&src);
    let opts = Options::default();
    let dst = tmp.path().join("dst");
    finish(
        &src,
        &tmp.path().join(".none"),
        &dst,
        &opts,
        &mut no_progress(),
    )
    .unwrap();
    assert_same(&snapshot(&src), &snapshot(&dst), "finish without staging");

    let staging = tmp.path().join(".s");
    precopy(&src, &staging, &opts, &mut no_progress()).unwrap();
    let md = fs::metadata(&staging).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o700));
    let e = finish(&src, &staging, &dst, &opts, &mut no_progress()).unwrap_err();
    assert!(matches!(e, Error::Exists { .. }), "{e}");
    assert!(staging.exists(), "kept for a retry");
    assert!(discard(&staging, &opts).unwrap());
    assert!(!staging.exists());
    assert!(!discard(&staging, &opts).unwrap());
}
