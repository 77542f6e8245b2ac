//! Pre-copy: the data is copied while the app still runs, so the refresh's critical section
//! copies only what changed after. Prints the critical section's copy next to a full copy of the
//! same tree (a measurement; it never fails on time).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use refreshd_tests::*;

const FILES: usize = 10_000;
const TOTAL: usize = 200 << 20;

/// 200 MB in 10,000 files over 100 directories, of mixed sizes.
fn fill(dir: &Path) {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let per = TOTAL / FILES;
    for i in 0..FILES {
        let d = dir.join(format!("d{:03}", i % 100));
        fs::create_dir_all(&d).unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let size = per / 2 + (rng as usize % per);
        let mut f = fs::File::create(d.join(format!("f{i:05}"))).unwrap();
        let chunk = vec![(i % 251) as u8; size];
        f.write_all(&chunk).unwrap();
    }
}

#[test]
fn critical_section_copies_only_what_changed() {
    if !mksquashfs_available() || !is_root() {
        skip("needs root and mksquashfs");
        return;
    }
    let root = Root::new("precopy");
    let r = root.path();
    let (b1, b2) = (root.aux("t1.snap"), root.aux("t2.snap"));
    tracking_snap(&b1, "tracked", "1.0", false);
    tracking_snap(&b2, "tracked", "2.0", false);
    let _d = Daemon::start(r);
    assert!(ctl(r, &["install", b1.to_str().unwrap()]).status.success());
    let data = r.join("var/snap/tracked/x1");
    let t = Instant::now();
    fill(&data);
    println!(
        "precopy: made {FILES} files, {} MB in {:.1} s",
        TOTAL >> 20,
        t.elapsed().as_secs_f64()
    );
    // Data an app wrote within the last two seconds is never trusted by the pre-copy (kernel
    // timestamps are coarse, see refreshd-copydata): let this data be as old as real data is.
    std::thread::sleep(std::time::Duration::from_millis(2500));

    let app = App::launch(r, "tracked.hold");
    assert!(ctl(r, &["install", b2.to_str().unwrap(), "--no-wait"])
        .status
        .success());
    let id = newest_change(r);
    let waiting = watch_until(r, id, |c| task(c, "wait-for-apps")["status"] == "Wait");
    assert_eq!(
        task(&waiting, "precopy-data")["status"],
        "Done",
        "{waiting}"
    );
    // The app writes 1% of its files before it exits.
    for i in (0..FILES).step_by(100) {
        let f = data.join(format!("d{:03}/f{i:05}", i % 100));
        fs::write(&f, format!("changed by the app {i}")).unwrap();
    }
    app.release();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    let entered = logged_at(&done, "wait-for-apps", "critical section entered").unwrap();
    let left = logged_at(&done, "lift-inhibition", "critical section left").unwrap();
    let copy_log: Vec<String> = task(&done, "setup-data")["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    println!("precopy: setup-data: {copy_log:?}");

    // The result equals the source at the moment the app exited.
    let new = r.join("var/snap/tracked/x2");
    for i in (0..FILES).step_by(97) {
        let rel = format!("d{:03}/f{i:05}", i % 100);
        assert_eq!(
            fs::read(data.join(&rel)).unwrap(),
            fs::read(new.join(&rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(
        snapshot(&data, &[]).len(),
        snapshot(&new, &[]).len(),
        "same entries in the copy"
    );

    // Baseline: a full copy of the same tree on the same filesystem.
    let full = root.aux("full-copy");
    let t = Instant::now();
    refreshd_copydata::copy_tree(&data, &full, &Default::default(), &mut |_| {}).unwrap();
    let full_ms = t.elapsed().as_secs_f64() * 1e3;
    let cs_ms = (left - entered) as f64 / 1e6;
    println!(
        "precopy: critical section {cs_ms:.1} ms (1% changed) vs a full copy {full_ms:.1} ms: {:.1}x shorter",
        full_ms / cs_ms
    );
}
