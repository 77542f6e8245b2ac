//! Measurement, never a failure on time: 200 MB in 10,000 files, 1% changed after the
//! pre-copy; prints how long `finish` (the critical section's copy) takes next to a full
//! `copy_tree`. The page cache is not dropped: both run warm.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use refreshd_copydata::{copy_tree, finish, precopy, Options};

const DIRS: usize = 100;
const FILES: usize = 100;
const SIZE: usize = 20_000;

fn build(root: &Path) {
    fs::create_dir(root).unwrap();
    let data = bytes(SIZE * 4, 42);
    for d in 0..DIRS {
        let dd = root.join(format!("d{d:03}"));
        fs::create_dir(&dd).unwrap();
        for f in 0..FILES {
            // Distinct content per file from one buffer.
            let off = (d * 31 + f * 17) % (SIZE * 3);
            fs::write(dd.join(format!("f{f:03}")), &data[off..off + SIZE]).unwrap();
        }
    }
}

/// 1% of the files: half rewritten in place (same size), a quarter new, a quarter deleted.
fn change_one_percent(root: &Path) -> usize {
    let n = DIRS * FILES / 100;
    for i in 0..n {
        let d = root.join(format!("d{:03}", (i * 7) % DIRS));
        match i % 4 {
            0 | 1 => {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(d.join(format!("f{:03}", i % FILES)))
                    .unwrap();
                f.write_at(&bytes(512, i as u64), 1000).unwrap();
            }
            2 => fs::write(d.join(format!("new{i}")), bytes(SIZE, i as u64)).unwrap(),
            _ => fs::remove_file(d.join(format!("f{:03}", (i + 50) % FILES))).unwrap(),
        }
    }
    n
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

#[test]
fn measure_finish_against_a_full_copy() {
    if !require_root("measure_finish_against_a_full_copy") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let t = Instant::now();
    build(&src);
    let built = t.elapsed();
    // Out of the pre-copy's racy window, and the set-up's dirty pages out of the timings.
    std::thread::sleep(Duration::from_millis(2100));
    syncfs(tmp.path());
    let opts = Options::default();

    // A full copy before as well: the first copies on a filesystem are often the slowest.
    let t = Instant::now();
    copy_tree(&src, &tmp.path().join("full0"), &opts, &mut no_progress()).unwrap();
    let full0_time = t.elapsed();
    syncfs(tmp.path());

    let staging = tmp.path().join(".next.staging");
    let t = Instant::now();
    let pre = precopy(&src, &staging, &opts, &mut no_progress()).unwrap();
    let pre_time = t.elapsed();
    let changed = change_one_percent(&src);
    syncfs(tmp.path());

    let t = Instant::now();
    let done = finish(
        &src,
        &staging,
        &tmp.path().join("next"),
        &opts,
        &mut no_progress(),
    )
    .unwrap();
    let finish_time = t.elapsed();
    syncfs(tmp.path());

    let t = Instant::now();
    let full = copy_tree(&src, &tmp.path().join("full"), &opts, &mut no_progress()).unwrap();
    let full_time = t.elapsed();

    println!(
        "MEASURE ({} files, {} MB, {changed} changed, warm cache, ext4 under /tmp; build {}):",
        pre.files,
        pre.bytes / 1_000_000,
        secs(built)
    );
    println!("MEASURE   precopy (apps running):     {}", secs(pre_time));
    println!(
        "MEASURE   finish (critical section):  {}  ({} copied, {} kept, {} removed)",
        secs(finish_time),
        done.files,
        done.unchanged,
        done.removed
    );
    println!(
        "MEASURE   full copy_tree:             {} before the pre-copy, {} after  ({} files)",
        secs(full0_time),
        secs(full_time),
        full.files
    );
    assert_eq!(done.files + done.unchanged, full.files);
}
