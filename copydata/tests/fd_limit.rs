//! A tree far deeper than the fd limit allows to keep open: the walk keeps a window of open
//! levels and comes back up through `..`, so it neither fails with EMFILE nor leaks fds.
//! (Its own test binary: it lowers the process's fd limit.)

mod common;

use std::fs;
use std::path::Path;

use common::*;
use refreshd_copydata::{copy_tree, discard, finish, precopy, Options, FD_WINDOW};

const DEPTH: usize = 400;

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

fn nofile(limit: &str) -> Result<String, String> {
    let pid = std::process::id().to_string();
    run("prlimit", &["--pid", &pid, &format!("--nofile={limit}")])
}

#[test]
fn deep_tree_under_a_low_fd_limit() {
    if !require_root("deep_tree_under_a_low_fd_limit") {
        return;
    }
    if !have("prlimit") {
        return println!("SKIP: deep_tree_under_a_low_fd_limit: prlimit missing (util-linux)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut d = src.clone();
    fs::create_dir(&d).unwrap();
    for i in 0..DEPTH {
        d.push("d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join(format!("f{i}")), format!("level {i}")).unwrap();
    }
    settle_times(&src);
    let opts = Options::default();
    let before = open_fds();
    let pid = std::process::id().to_string();
    let saved = run(
        "prlimit",
        &["--pid", &pid, "--nofile", "-o", "SOFT,HARD", "--noheadings"],
    )
    .unwrap();
    let saved: Vec<&str> = saved.split_whitespace().collect();
    // Room for the window (two fds a level) and little else.
    nofile(&format!("{}:{}", 2 * FD_WINDOW + 40, saved[1])).unwrap();
    let result = (|| -> Result<(), String> {
        let dst = tmp.path().join("dst");
        copy_tree(&src, &dst, &opts, &mut no_progress()).map_err(|e| e.chain().to_string())?;
        let staging = tmp.path().join(".next.staging");
        precopy(&src, &staging, &opts, &mut no_progress()).map_err(|e| e.chain().to_string())?;
        precopy(&src, &staging, &opts, &mut no_progress()).map_err(|e| e.chain().to_string())?;
        let next = tmp.path().join("next");
        finish(&src, &staging, &next, &opts, &mut no_progress())
            .map_err(|e| e.chain().to_string())?;
        precopy(&src, &staging, &opts, &mut no_progress()).map_err(|e| e.chain().to_string())?;
        discard(&staging, &opts).map_err(|e| e.chain().to_string())?;
        Ok(())
    })();
    nofile(&format!("{}:{}", saved[0], saved[1])).unwrap();
    result.unwrap();
    assert_eq!(open_fds(), before, "fds leaked");
    // One snapshot of the source: reading its directories moves their atimes (relatime).
    let want = snapshot(&src);
    assert_same(&want, &snapshot(&tmp.path().join("dst")), "deep copy");
    assert_same(&want, &snapshot(&tmp.path().join("next")), "deep finish");
    assert!(!Path::new(&tmp.path().join(".next.staging")).exists());
}
