//! A hostile user's tree copied as root: planted symlinks, a fifo, a device, a hard link to a
//! root file outside, and a thread that keeps swapping a directory for a symlink to an outside
//! directory (and a file for a fifo, and for a hard link to the outside file) while the copy
//! runs. Nothing from outside may end up in the copy, and no copy may block.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use refreshd_copydata::{copy_tree, finish, precopy, Error, NoteKind, Options, Stats, UserTree};

const UID: u32 = 1234;
/// Longest a single copy of the small tree may take before it counts as blocked.
const DEADLINE: Duration = Duration::from_secs(20);

fn canary() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("CANARY-{}-{nanos:x}", std::process::id())
}

/// Fails if any regular file under `dir` contains `canary`, or any device node exists.
fn assert_clean(dir: &Path, canary: &str) {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            assert!(
                !ft.is_char_device() && !ft.is_block_device(),
                "device node in a user's copy: {}",
                p.display()
            );
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let mut s = Vec::new();
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&p)
                    .unwrap()
                    .read_to_end(&mut s)
                    .unwrap();
                assert!(
                    !String::from_utf8_lossy(&s).contains(canary),
                    "outside data copied into {}",
                    p.display()
                );
            } else if ft.is_symlink() {
                let t = fs::read_link(&p).unwrap();
                assert!(!t.to_string_lossy().contains(canary));
            }
        }
    }
}

struct Setup {
    _home_dir: tempfile::TempDir,
    _outside_dir: tempfile::TempDir,
    home: PathBuf,
    app: PathBuf,
    tree: PathBuf,
    outside: PathBuf,
    canary: String,
}

fn setup() -> Setup {
    let home_dir = tempfile::tempdir().unwrap();
    let outside_dir = tempfile::tempdir().unwrap();
    let home = home_dir.path().to_owned();
    let outside = outside_dir.path().to_owned();
    let canary = canary();
    std::os::unix::fs::lchown(&home, Some(UID), Some(UID)).unwrap();

    // Outside the tree: root's files carrying the canary.
    file(&outside.join("secret"), canary.as_bytes(), 0o600, 0, 0);
    dir(&outside.join("dir"), 0o755, 0, 0);
    for i in 0..20 {
        file(
            &outside.join(format!("dir/f{i}")),
            format!("{canary} {i}").as_bytes(),
            0o644,
            0,
            0,
        );
    }
    // A root file the user hard-links into the tree (possible where protected_hardlinks is 0);
    // on the same filesystem as the home directory, so in the home directory's tmp sibling.
    let hardsrc = home.join("root-file");
    file(&hardsrc, canary.as_bytes(), 0o644, 0, 0);

    let app = home.join("snap/app");
    dir(&home.join("snap"), 0o755, UID, UID);
    dir(&app, 0o755, UID, UID);
    let tree = app.join("1");
    dir(&tree, 0o755, UID, UID);
    for i in 0..200 {
        file(
            &tree.join(format!("data{i}")),
            format!("user data {i}").as_bytes(),
            0o644,
            UID,
            UID,
        );
    }
    symlink("/etc/shadow", tree.join("evil-shadow")).unwrap();
    symlink(outside.join("dir"), tree.join("evil-outside")).unwrap();
    let rel: PathBuf = std::iter::repeat_n("..", tree.components().count())
        .collect::<PathBuf>()
        .join(outside.strip_prefix("/").unwrap());
    symlink(&rel, tree.join("evil-rel")).unwrap();
    runp("mkfifo", &[&tree.join("fifo")]);
    fs::hard_link(&hardsrc, tree.join("hl")).unwrap();
    run(
        "mknod",
        &[tree.join("dev").to_str().unwrap(), "c", "1", "3"],
    )
    .unwrap();
    dir(&tree.join("swapdir"), 0o755, UID, UID);
    for i in 0..50 {
        file(
            &tree.join(format!("swapdir/inside{i}")),
            b"mine",
            0o644,
            UID,
            UID,
        );
    }
    file(&tree.join("swapfile"), b"mine too", 0o644, UID, UID);
    file(&tree.join("swaplink"), b"mine as well", 0o644, UID, UID);
    for name in ["evil-shadow", "evil-outside", "evil-rel", "fifo"] {
        std::os::unix::fs::lchown(tree.join(name), Some(UID), Some(UID)).unwrap();
    }
    // Spares the race swaps in, outside the tree but on its filesystem.
    runp("mkfifo", &[&home.join("spare-fifo")]);
    fs::hard_link(&hardsrc, home.join("spare-link")).unwrap();
    Setup {
        _home_dir: home_dir,
        _outside_dir: outside_dir,
        home,
        app,
        tree,
        outside,
        canary,
    }
}

/// Swaps, as fast as it can until stopped: `swapdir` ↔ a symlink to the outside directory,
/// `swapfile` ↔ a fifo, `swaplink` ↔ a hard link to the root file.
fn race(s: &Setup, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    let tree = s.tree.clone();
    let home = s.home.clone();
    let outside_dir = s.outside.join("dir");
    std::thread::spawn(move || {
        let (d, dr) = (tree.join("swapdir"), home.join("swapdir.real"));
        let (f, fr, ff) = (
            tree.join("swapfile"),
            home.join("swapfile.real"),
            home.join("spare-fifo"),
        );
        let (l, lr, ll) = (
            tree.join("swaplink"),
            home.join("swaplink.real"),
            home.join("spare-link"),
        );
        while !stop.load(Ordering::Relaxed) {
            fs::rename(&d, &dr).unwrap();
            symlink(&outside_dir, &d).unwrap();
            fs::rename(&f, &fr).unwrap();
            fs::rename(&ff, &f).unwrap();
            fs::rename(&l, &lr).unwrap();
            fs::rename(&ll, &l).unwrap();
            std::thread::yield_now();
            fs::remove_file(&d).unwrap();
            fs::rename(&dr, &d).unwrap();
            fs::rename(&f, &ff).unwrap();
            fs::rename(&fr, &f).unwrap();
            fs::rename(&l, &ll).unwrap();
            fs::rename(&lr, &l).unwrap();
            rounds.fetch_add(1, Ordering::Relaxed);
        }
    })
}

fn user_opts(s: &Setup) -> Options {
    Options {
        user: Some(UserTree {
            uid: UID,
            home: s.home.clone(),
        }),
        ..Options::default()
    }
}

/// Runs `f` on a thread; fails the test if it does not return within `DEADLINE`.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => v,
        Err(_) => panic!("{what} blocked for more than {DEADLINE:?}"),
    }
}

fn check_notes(stats: &Stats) {
    assert!(stats.count(NoteKind::Device) >= 1, "{stats:?}");
    assert!(stats.count(NoteKind::ForeignHardLink) >= 1, "{stats:?}");
}

#[test]
fn hostile_tree_under_a_race() {
    if !require_root("hostile_tree_under_a_race") {
        return;
    }
    let s = setup();
    let opts = user_opts(&s);
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let racer = race(&s, stop.clone(), rounds.clone());

    let started = Instant::now();
    let mut copies = 0;
    let mut swapped = 0;
    let mut vanished = 0;
    while copies < 20 || started.elapsed() < Duration::from_secs(3) {
        let (src, dst, o) = (
            s.tree.clone(),
            s.app.join(format!("c{copies}")),
            opts.clone(),
        );
        let dst2 = dst.clone();
        let stats = bounded("copy_tree", move || {
            copy_tree(&src, &dst2, &o, &mut no_progress())
        })
        .unwrap();
        check_notes(&stats);
        swapped += stats.count(NoteKind::Swapped);
        vanished += stats.count(NoteKind::Vanished);
        assert_clean(&dst, &s.canary);
        // The planted entries are copied as what they are, never followed.
        assert_eq!(
            fs::read_link(dst.join("evil-shadow")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert!(fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(!dst.join("hl").exists() && !dst.join("dev").exists());
        assert_eq!(fs::symlink_metadata(dst.join("data7")).unwrap().uid(), UID);
        copies += 1;
    }

    // Pre-copy and finish under the same race.
    let staging = s.app.join(".p.staging");
    for pass in 0..3 {
        let (src, st, o) = (s.tree.clone(), staging.clone(), opts.clone());
        bounded("precopy", move || {
            precopy(&src, &st, &o, &mut no_progress())
        })
        .unwrap();
        assert!(pass < 3);
    }
    let (src, st, dst, o) = (
        s.tree.clone(),
        staging.clone(),
        s.app.join("p"),
        opts.clone(),
    );
    let stats = bounded("finish", move || {
        finish(&src, &st, &dst, &o, &mut no_progress())
    })
    .unwrap();
    check_notes(&stats);
    assert_clean(&s.app.join("p"), &s.canary);
    assert!(!staging.exists());

    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    println!(
        "{copies} copies in {:?} against {} swap rounds; entries skipped: {swapped} swapped, {vanished} vanished",
        started.elapsed(),
        rounds.load(Ordering::Relaxed)
    );
    // Nothing was written outside the tree.
    let outside: Vec<_> = fs::read_dir(&s.outside).unwrap().collect();
    assert_eq!(outside.len(), 2);
    assert!(temporaries(&s.app).is_empty());
}

#[test]
fn a_symlinked_parent_does_not_redirect_the_copy() {
    if !require_root("a_symlinked_parent_does_not_redirect_the_copy") {
        return;
    }
    let s = setup();
    let opts = user_opts(&s);
    // The user swaps their `snap/app` for a symlink to a root directory elsewhere that has
    // a `1` of its own: neither reading it nor writing next to it may happen.
    let target = s.outside.join("app");
    dir(&target, 0o755, 0, 0);
    dir(&target.join("1"), 0o755, 0, 0);
    file(&target.join("1/secret"), s.canary.as_bytes(), 0o600, 0, 0);
    fs::rename(&s.app, s.home.join("snap/app.real")).unwrap();
    symlink(&target, &s.app).unwrap();

    let e = copy_tree(
        &s.app.join("1"),
        &s.app.join("2"),
        &opts,
        &mut no_progress(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Open { .. }), "{e}");
    let e = precopy(
        &s.app.join("1"),
        &s.app.join(".2.staging"),
        &opts,
        &mut no_progress(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Open { .. }), "{e}");
    let names: Vec<_> = fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["1"], "nothing made in the symlink's target");

    // A staging directory the user made themselves is refused, not trusted.
    fs::remove_file(&s.app).unwrap();
    fs::rename(s.home.join("snap/app.real"), &s.app).unwrap();
    let fake = s.app.join(".3.staging");
    dir(&fake, 0o700, UID, UID);
    dir(&fake.join("tree"), 0o700, UID, UID);
    file(&fake.join("state"), b"forged", 0o600, UID, UID);
    file(
        &fake.join("tree/planted"),
        s.canary.as_bytes(),
        0o644,
        UID,
        UID,
    );
    let e = precopy(&s.tree, &fake, &opts, &mut no_progress()).unwrap_err();
    assert!(matches!(e, Error::NotStaging { .. }), "{e}");
    // finish neither trusts it nor lets it block the refresh: a whole copy instead.
    finish(&s.tree, &fake, &s.app.join("3"), &opts, &mut no_progress()).unwrap();
    assert!(!s.app.join("3/planted").exists());
    assert_clean(&s.app.join("3"), &s.canary);
    assert!(
        fake.join("tree/planted").exists(),
        "the user's directory is left alone"
    );
}
