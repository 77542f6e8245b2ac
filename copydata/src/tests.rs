//! The race windows hit on purpose: an entry swapped between its `statx` and its open (the
//! integration tests race a real thread, which rarely lands exactly there), and a directory
//! moved out of a walk deeper than the fd window.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::walk::hook;
use crate::{copy_tree, NoteKind, Options, Stats, UserTree, FD_WINDOW};

const UID: u32 = 1234;
const CANARY: &str = "CANARY-unit-7f3a";

fn is_root(test: &str) -> bool {
    if crate::sys::effective_ids().0 == 0 {
        return true;
    }
    println!("SKIP: {test}: needs root");
    false
}

struct Case {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    tree: PathBuf,
    outside: PathBuf,
}

fn case() -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let tree = home.join("tree");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&tree).unwrap();
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("dir/secret"), CANARY).unwrap();
    fs::write(outside.join("secret"), CANARY).unwrap();
    for p in [&home, &tree] {
        std::os::unix::fs::chown(p, Some(UID), Some(UID)).unwrap();
    }
    Case {
        _tmp: tmp,
        home,
        tree,
        outside,
    }
}

fn user(c: &Case) -> Options {
    Options {
        user: Some(UserTree {
            uid: UID,
            home: c.home.clone(),
        }),
        ..Options::default()
    }
}

/// Copies `c.tree` to `home/dst` with `swap` run between the stat and the open of `at`, on a
/// thread, failing if the copy does not return in time (a fifo must not block it).
fn copy_swapping(c: &Case, at: &'static str, swap: impl FnMut() + Send + 'static) -> Stats {
    let (tree, dst, opts) = (c.tree.clone(), c.home.join("dst"), user(c));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut swap = swap;
        hook::set(Some(Box::new(move |rel: &Path| {
            if rel == Path::new(at) {
                swap();
            }
        })));
        let r = copy_tree(&tree, &dst, &opts, &mut |_| {});
        hook::set(None);
        let _ = tx.send(r);
    });
    let stats = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the copy blocked")
        .unwrap();
    assert_no_canary(&c.home.join("dst"));
    stats
}

fn assert_no_canary(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            assert_no_canary(&p);
        } else if md.is_file() {
            let data = fs::read(&p).unwrap();
            assert!(
                !String::from_utf8_lossy(&data).contains(CANARY),
                "{}",
                p.display()
            );
        }
    }
}

fn write_user_file(p: &Path, data: &str) {
    fs::write(p, data).unwrap();
    std::os::unix::fs::chown(p, Some(UID), Some(UID)).unwrap();
}

#[test]
fn dir_swapped_for_a_symlink_after_its_stat_is_not_followed() {
    if !is_root("dir_swapped_for_a_symlink_after_its_stat_is_not_followed") {
        return;
    }
    let c = case();
    fs::create_dir(c.tree.join("sub")).unwrap();
    write_user_file(&c.tree.join("sub/mine"), "mine");
    let (tree, home, outside) = (c.tree.clone(), c.home.clone(), c.outside.clone());
    let stats = copy_swapping(&c, "sub", move || {
        fs::rename(tree.join("sub"), home.join("sub.away")).unwrap();
        symlink(outside.join("dir"), tree.join("sub")).unwrap();
    });
    assert_eq!(stats.count(NoteKind::Swapped), 1, "{stats:?}");
    assert!(!c.home.join("dst/sub").exists());
}

#[test]
fn file_swapped_for_a_fifo_after_its_stat_does_not_block() {
    if !is_root("file_swapped_for_a_fifo_after_its_stat_does_not_block") {
        return;
    }
    let c = case();
    write_user_file(&c.tree.join("f"), "mine");
    let tree = c.tree.clone();
    let stats = copy_swapping(&c, "f", move || {
        fs::remove_file(tree.join("f")).unwrap();
        let out = std::process::Command::new("mkfifo")
            .arg(tree.join("f"))
            .status()
            .unwrap();
        assert!(out.success());
    });
    assert_eq!(stats.count(NoteKind::Swapped), 1, "{stats:?}");
    assert!(!c.home.join("dst/f").exists());
}

#[test]
fn file_swapped_for_a_hard_link_to_a_root_file_is_not_read() {
    if !is_root("file_swapped_for_a_hard_link_to_a_root_file_is_not_read") {
        return;
    }
    let c = case();
    write_user_file(&c.tree.join("f"), "mine");
    let (tree, outside) = (c.tree.clone(), c.outside.clone());
    let stats = copy_swapping(&c, "f", move || {
        fs::remove_file(tree.join("f")).unwrap();
        fs::hard_link(outside.join("secret"), tree.join("f")).unwrap();
    });
    assert_eq!(stats.count(NoteKind::ForeignHardLink), 1, "{stats:?}");
    assert!(!c.home.join("dst/f").exists());
}

#[test]
fn symlink_swapped_for_a_file_after_its_stat_is_skipped() {
    if !is_root("symlink_swapped_for_a_file_after_its_stat_is_skipped") {
        return;
    }
    let c = case();
    symlink("target", c.tree.join("l")).unwrap();
    let tree = c.tree.clone();
    let stats = copy_swapping(&c, "l", move || {
        fs::remove_file(tree.join("l")).unwrap();
        write_user_file(&tree.join("l"), "now a file");
    });
    assert_eq!(stats.count(NoteKind::Swapped), 1, "{stats:?}");
}

#[test]
fn dir_moved_out_of_a_deep_walk_is_not_read_further() {
    if !is_root("dir_moved_out_of_a_deep_walk_is_not_read_further") {
        return;
    }
    let c = case();
    let mut deepest = c.tree.join("a/b");
    for _ in 0..FD_WINDOW + 10 {
        deepest.push("d");
    }
    fs::create_dir_all(&deepest).unwrap();
    write_user_file(&deepest.join("leaf"), "leaf");
    write_user_file(&c.tree.join("a/sibling"), "sibling");
    let leaf_rel: &'static str = Box::leak(
        deepest
            .join("leaf")
            .strip_prefix(&c.tree)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
            .into_boxed_str(),
    );
    let (tree, home) = (c.tree.clone(), c.home.clone());
    let stats = copy_swapping(&c, leaf_rel, move || {
        // `a/b` leaves the tree while the walk is far below it, with `a`'s fds closed.
        fs::rename(tree.join("a/b"), home.join("b.away")).unwrap();
    });
    assert!(stats.count(NoteKind::DirectoryMoved) >= 1, "{stats:?}");
}
