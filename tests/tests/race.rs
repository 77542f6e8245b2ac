//! Race stress: many concurrent launchers of short- and long-lived apps against repeated
//! critical sections. The apps record their own lifetimes, the daemon its critical sections;
//! no lifetime may overlap any critical section, and nothing may deadlock.
//!
//! `REFRESHD_RACE_SECS` sets the duration (default 60 s).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use refreshd_tests::*;

const LAUNCHERS: usize = 6;

fn racer_snap(out: &Path, version: &str) {
    SnapSrc::new(&format!(
        "name: racer\nversion: '{version}'\nsummary: Race stress\nrefresh-pending-behavior: block\napps:\n  run:\n    command: bin/run\n"
    ))
    .file(
        "bin/run",
        "#!/bin/sh\nstart=$(date +%s%N)\nsleep \"$1\"\nend=$(date +%s%N)\necho \"$start $end $SNAP_REVISION\" > \"$SNAP_COMMON/life.$$.$start\"\n",
        0o755,
    )
    .build(out);
}

#[test]
fn no_app_overlaps_a_critical_section() {
    if !mksquashfs_available() || !is_root() {
        skip("needs root and mksquashfs");
        return;
    }
    let secs: u64 = std::env::var("REFRESHD_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let overlaps = race("race", secs, &[]);
    assert_eq!(overlaps, 0);
}

/// The check is not vacuous: without tracking (`--tracking none`) refreshes do not wait for
/// running apps, and the same run finds the overlaps.
#[test]
fn overlaps_are_caught_without_tracking() {
    if !mksquashfs_available() || !is_root() {
        skip("needs root and mksquashfs");
        return;
    }
    let overlaps = race("race-none", 8, &["--tracking", "none"]);
    assert!(
        overlaps > 0,
        "an untracked refresh must overlap running apps"
    );
}

/// Runs launchers against repeated refreshes for `secs`; returns how many app lifetimes
/// overlapped a critical section.
fn race(tag: &str, secs: u64, daemon_args: &[&str]) -> usize {
    let root = Root::new(tag);
    let r = root.path().to_owned();
    let blobs: Vec<_> = (0..2)
        .map(|i| {
            let p = root.aux(&format!("racer{i}.snap"));
            racer_snap(&p, &format!("1.{i}"));
            p
        })
        .collect();
    // Payloads are extracted: a minute of refreshes makes many revisions, and loop devices are
    // a machine-wide resource the other tests share.
    let _d = Daemon::start_with(
        &r,
        DaemonOpts {
            extra_args: ["--extract"]
                .iter()
                .chain(daemon_args)
                .map(|s| s.to_string())
                .collect(),
            ..Default::default()
        },
    );
    assert!(ctl(&r, &["install", blobs[0].to_str().unwrap()])
        .status
        .success());

    let stop = Arc::new(AtomicBool::new(false));
    let launches = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    for i in 0..LAUNCHERS {
        let (r, stop, launches, done_tx) =
            (r.clone(), stop.clone(), launches.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A cheap deterministic mix: mostly short lives, every fifth a long one.
                n += 1;
                let secs = if (n + i as u64).is_multiple_of(5) {
                    format!("0.{}", 1 + (n * 7 + i as u64) % 4) // 0.1 .. 0.4 s
                } else {
                    format!("0.0{}", (n * 3 + i as u64) % 4) // 0 .. 0.03 s
                };
                let st = std::process::Command::new(r.join("snap/bin/racer.run"))
                    .arg(&secs)
                    .status()
                    .unwrap();
                assert!(st.success(), "launch failed: {st:?}");
                launches.fetch_add(1, Ordering::Relaxed);
            }
            done_tx.send(()).unwrap();
        });
    }
    drop(done_tx);

    let t0 = Instant::now();
    let mut changes = vec![];
    let mut k = 1;
    while t0.elapsed() < Duration::from_secs(secs) {
        let out = ctl(
            &r,
            &["install", blobs[k % 2].to_str().unwrap(), "--no-wait"],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let id = newest_change(&r);
        let ch = watch_until_ready(&r, id);
        assert_eq!(ch["status"], "Done", "refresh {k}: {ch}");
        changes.push(ch);
        k += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for _ in 0..LAUNCHERS {
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a launcher never came back: deadlock");
    }

    let sections: Vec<(u128, u128)> = changes
        .iter()
        .map(|c| {
            (
                logged_at(c, "wait-for-apps", "critical section entered").unwrap(),
                logged_at(c, "lift-inhibition", "critical section left").unwrap(),
            )
        })
        .collect();
    let common = r.join("var/snap/racer/common");
    let mut lives = vec![];
    for e in std::fs::read_dir(&common).unwrap().flatten() {
        let s = std::fs::read_to_string(e.path()).unwrap();
        let mut w = s.split_whitespace();
        let start: u128 = w.next().unwrap().parse().unwrap();
        let end: u128 = w.next().unwrap().parse().unwrap();
        lives.push((start, end));
    }
    let mut overlaps = 0;
    for &(s, e) in &lives {
        for &(a, b) in &sections {
            if s < b && a < e {
                overlaps += 1;
                if overlaps <= 5 {
                    eprintln!(
                        "{tag}: app lived {s}..{e}, overlapping the critical section {a}..{b}"
                    );
                }
            }
        }
    }
    let longest = sections.iter().map(|(a, b)| b - a).max().unwrap_or(0);
    println!(
        "{tag}: {secs} s, {LAUNCHERS} launchers, {} launches, {} app lifetimes recorded, {} critical sections (longest {:.1} ms), {overlaps} overlaps",
        launches.load(Ordering::Relaxed),
        lives.len(),
        sections.len(),
        longest as f64 / 1e6
    );
    assert_eq!(
        lives.len(),
        launches.load(Ordering::Relaxed),
        "every launch recorded its life"
    );
    assert!(
        sections.len() >= 3,
        "too few critical sections to mean anything"
    );
    overlaps
}
