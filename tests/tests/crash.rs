//! Failures without a crash: a task that fails at any point of a refresh, a failed reinstall,
//! a data copy that runs out of space. Each is undone, checked by the same invariant checker
//! as the crash matrix (crash_matrix.rs, which kills the daemon at every task boundary and
//! inside the copies and the download).

mod crash_common;

use std::fs;
use std::path::Path;

use crash_common::*;
use refreshd_tests::*;

/// A failed refresh of an installed snap (x1 → x2) is undone back to x1, data intact.
#[test]
fn failed_reinstall_returns_to_the_previous_revision() {
    if !root_with("loop mounts and a setuid launcher", &[]) {
        return;
    }
    let root = Root::new("reinstall");
    let r = root.path();
    let (src1, src2) = (snap_src("again", "1.0"), snap_src("again", "2.0"));
    let (blob1, blob2) = (root.aux("again1.snap"), root.aux("again2.snap"));
    src1.build(&blob1);
    src2.build(&blob2);
    {
        let _d = Daemon::start(r);
        assert!(ctl(r, &["install", blob1.to_str().unwrap()])
            .status
            .success());
        fs::write(system_dir(r, "again", "x1").join("state"), "precious").unwrap();
        fill(&home_dir(r, "again", "x1"), &mut Rng::new(7), 20);
    }
    let data = data_now(r, "again", "x1");
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            failpoints: Some("fail-do:launchers"),
            ..Default::default()
        },
    );
    let out = ctl(r, &["install", blob2.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed change exits 1: {}",
        text(&out.stderr)
    );
    let x1 = Want::Installed {
        rev: Some("x1"),
        payload: src1.dir.path(),
        data: &data,
    };
    check(r, "again", &x1).unwrap();
    assert!(!system_dir(r, "again", "x2").exists());
    assert!(!home_dir(r, "again", "x2").exists());
    drop(d);

    // And without the failure, x2 becomes current with x1's data copied.
    let _d = Daemon::start(r);
    let out = ctl(r, &["install", blob2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let x2 = Want::Installed {
        rev: Some("x2"),
        payload: src2.dir.path(),
        data: &data,
    };
    check(r, "again", &x2).unwrap();
}

/// A root with `crashy` revision 1 installed from a directory store, data written (system and
/// root's home), and revision 2 published. Returns (root, store, revision 1's source, revision
/// 2's, revision 1's data).
fn refreshable() -> (Root, std::path::PathBuf, SnapSrc, SnapSrc, Data) {
    let root = Root::new("crash-refresh");
    let r = root.path();
    let store = root.aux("store");
    fs::create_dir(&store).unwrap();
    let (mut src1, mut src2) = (None, None);
    for v in ["1.0", "2.0"] {
        let src = snap_src("crashy", v);
        let blob = root.aux(&format!("crashy-{v}.snap"));
        src.build(&blob);
        refreshd_store::publish(&store, &blob, "stable").unwrap();
        if v == "1.0" {
            let _d = Daemon::start_with(r, store_opts(store.to_str().unwrap(), None));
            let out = ctl(r, &["install", "crashy"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let mut rng = Rng::new(1);
            fill(&system_dir(r, "crashy", "1"), &mut rng, 100);
            fill(&home_dir(r, "crashy", "1"), &mut rng, 20);
            src1 = Some(src);
        } else {
            src2 = Some(src);
        }
    }
    let data = data_now(r, "crashy", "1");
    (root, store, src1.unwrap(), src2.unwrap(), data)
}

/// A failure at any task of a refresh undoes it: revision 1 current, its data intact, the
/// inhibition lifted, nothing of revision 2 left.
#[test]
fn failure_at_every_refresh_task_is_undone() {
    if !root_with("loop mounts and a setuid launcher", &[]) {
        return;
    }
    let mut faults = 0;
    for task in REFRESH_TASKS {
        let (root, store, src1, _, data) = refreshable();
        let r = root.path();
        let fp = format!("fail-do:{task}");
        let _d = Daemon::start_with(r, store_opts(store.to_str().unwrap(), Some(&fp)));
        let out = ctl(r, &["refresh", "crashy"]);
        assert_eq!(out.status.code(), Some(1), "{fp}: {}", text(&out.stderr));
        let id = the_change(r, "refresh");
        let ch = ctl_json(r, &["tasks", &id.to_string(), "--json"]);
        assert_eq!(ch["status"], "Error", "{fp}: {ch}");
        let want = Want::Installed {
            rev: Some("1"),
            payload: src1.dir.path(),
            data: &data,
        };
        if let Err(e) = check(r, "crashy", &want) {
            panic!("after {fp}: {e}");
        }
        for gone in [
            "snap/crashy/2",
            "var/snap/crashy/2",
            "root/snap/crashy/2",
            "var/lib/refreshd/blobs/crashy_2.snap",
        ] {
            assert!(!r.join(gone).exists(), "{fp}: {gone} left");
        }
        faults += 1;
    }
    println!("figures: crash-faults: faults_injected={faults} undone={faults}");
}

/// A refresh whose data copy runs out of space (a small loop-mounted ext4 holding the snap's
/// data) fails and is undone: revision 1 current, its data intact, the inhibition lifted, and
/// nothing of the failed copy left taking space.
#[test]
fn enospc_during_copy_data_is_undone() {
    if !root_with(
        "loop mounts of a small filesystem",
        &[("mkfs.ext4", "e2fsprogs")],
    ) {
        return;
    }
    let root = Root::new("enospc");
    let r = root.path();
    let store = root.aux("store");
    fs::create_dir(&store).unwrap();
    let img = root.aux("data.img");
    fs::File::create(&img).unwrap().set_len(24 << 20).unwrap();
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0"])
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    let data = r.join("var/snap/crashy");
    fs::create_dir_all(&data).unwrap();
    // Unmounted by the Root guard on drop, like every mount under the root.
    let st = std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success(), "mount the small filesystem");

    let mut srcs = vec![];
    for v in ["1.0", "2.0"] {
        let src = snap_src("crashy", v);
        let blob = root.aux(&format!("crashy-{v}.snap"));
        src.build(&blob);
        refreshd_store::publish(&store, &blob, "stable").unwrap();
        srcs.push(src);
    }
    let _d = Daemon::start_with(r, store_opts(store.to_str().unwrap(), None));
    // Installs the channel's newest (revision 2); revision 3 comes later as the update.
    let out = ctl(r, &["install", "crashy"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let current = fs::read_link(r.join("snap/crashy/current")).unwrap();
    let current = current.to_str().unwrap().to_owned();
    let big: Vec<u8> = (0..14u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    fs::write(data.join(&current).join("big"), &big).unwrap();
    let before = data_now(r, "crashy", &current);
    let src3 = snap_src("crashy", "3.0");
    let blob = root.aux("crashy-3.0.snap");
    src3.build(&blob);
    refreshd_store::publish(&store, &blob, "stable").unwrap();

    let out = ctl(r, &["refresh", "crashy"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let ch = ctl_json(
        r,
        &["tasks", &the_change(r, "refresh").to_string(), "--json"],
    );
    assert_eq!(task(&ch, "setup-data")["status"], "Error", "{ch}");
    let err = ch["error"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("space"), "the error says why: {err}");
    println!("enospc: {err}");
    let want = Want::Installed {
        rev: Some(&current),
        payload: srcs[1].dir.path(),
        data: &before,
    };
    check(r, "crashy", &want).unwrap();
    let left: Vec<String> = snapshot(&data, &[])
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with('3'))
        .collect();
    assert!(left.is_empty(), "the failed copy is gone: {left:?}");
    assert!(!Path::new(&data.join("3")).exists());
}

/// The pid of a `confine-hook --prepare-data SNAP` run from this root, if one runs.
fn preparing(root: &Path, snap: &str) -> Option<i32> {
    let hook = root.join("usr/lib/refreshd/confine-hook");
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        (args.first() == Some(&hook.as_os_str().as_encoded_bytes())
            && args.get(1) == Some(&&b"--prepare-data"[..])
            && args.get(2) == Some(&snap.as_bytes()))
        .then_some(pid)
    })
}

/// The `user-data` task's copy of root's data is killed midway (SIGKILL, as a user may do to
/// their own copy, or a crash would). The refresh still completes, saying root's data was not
/// made; the partial copy is never taken as complete: root's next launch removes it and copies
/// again, and the data is whole, nothing left behind.
#[test]
fn a_users_copy_killed_midway_is_never_taken_as_complete() {
    if !root_with("loop mounts and a setuid launcher", &[]) {
        return;
    }
    let (root, store, _, src2, _) = refreshable();
    let r = root.path();
    // Enough of root's data that the copy is still running when it is found.
    fill(
        &home_dir(r, "crashy", "1").join("bulk"),
        &mut Rng::new(3),
        10_000,
    );
    let data = data_now(r, "crashy", "1");
    let _d = Daemon::start_with(r, store_opts(store.to_str().unwrap(), None));
    let out = ctl(r, &["refresh", "crashy", "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = the_change(r, "refresh");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // No event says the copy started: look for its process.
    let pid = loop {
        if let Some(pid) = preparing(r, "crashy") {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no copy of root's data was started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    // Our daemon's child (refreshd waits for it, so the pid is still its): let it copy a bit.
    std::thread::sleep(std::time::Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let done = watch_until_ready(r, id);
    assert_eq!(done["status"], "Done", "{done}");
    let log = task_log(&done, "user-data").join("\n");
    println!("user-data: {log}");
    assert!(log.contains("not ready"), "{log}");
    assert!(
        !home_dir(r, "crashy", "2").exists(),
        "a partial copy stands under the revision's name"
    );
    let partial: Vec<_> = fs::read_dir(r.join("root/snap/crashy"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".refreshd-tmp"))
        .collect();
    println!("left by the killed copy: {partial:?}");
    // Root's next launch makes it (the invariant checker launches the app first thing).
    let out = std::process::Command::new(r.join("snap/bin/crashy"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = Want::Installed {
        rev: Some("2"),
        payload: src2.dir.path(),
        data: &data,
    };
    check(r, "crashy", &want).unwrap();
    println!("figures: crash-faults: faults_injected=1 undone=0 recovered=1");
}
