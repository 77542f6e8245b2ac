//! Unit tests on scratch trees ([`Paths`] pointed at a temporary directory). The binaries are
//! driven against the real paths by `tests/agent.rs`.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

fn is_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0)
}

fn stat(owner: u32, mode: u32) -> Stat {
    Stat {
        owner: Uid(owner),
        mode,
    }
}

#[test]
fn registry_checks() {
    use Dir::Registry as R;
    let table = [
        (stat(0, 0o040_755), Ok(())),
        (stat(0, 0o040_700), Ok(())),
        (stat(0, 0o041_755), Ok(())),
        (stat(0, 0o040_775), Err(Refusal::Writable(R))),
        (stat(0, 0o040_757), Err(Refusal::Writable(R))),
        (stat(0, 0o041_777), Err(Refusal::Writable(R))),
        (stat(1000, 0o040_755), Err(Refusal::Owner(R, Uid(1000)))),
        (stat(0, 0o120_777), Err(Refusal::NotDirectory(R))),
        (stat(0, 0o100_644), Err(Refusal::NotDirectory(R))),
    ];
    for (st, want) in table {
        assert_eq!(check_registry(st), want, "{st:?}");
    }
}

#[test]
fn runctl_checks() {
    use Dir::Runctl as C;
    let table = [
        (stat(0, 0o040_755), Ok(())),
        (stat(0, 0o040_775), Ok(())),
        (stat(65534, 0o040_755), Err(Refusal::Owner(C, Uid(65534)))),
        (stat(0, 0o120_777), Err(Refusal::NotDirectory(C))),
    ];
    for (st, want) in table {
        assert_eq!(check_runctl(st), want, "{st:?}");
    }
}

#[test]
fn exit_codes() {
    assert_eq!(Outcome::Ignored.exit_code(), 0);
    assert_eq!(
        Outcome::Refused(Refusal::Writable(Dir::Registry)).exit_code(),
        0
    );
    assert_eq!(
        Outcome::Failed(Dir::Runctl, Errno(libc::EIO)).exit_code(),
        0
    );
    assert_ne!(Outcome::Impossible.exit_code(), 0);
}

#[test]
fn nul_termination() {
    let mut buf = [0u8; 4];
    assert_eq!(with_nul(b"abc", &mut buf), Some(c"abc"));
    assert_eq!(with_nul(b"abcd", &mut buf), None);
    assert_eq!(with_nul(b"a\0c", &mut buf), None);
    assert_eq!(with_nul(b"", &mut buf), Some(c""));
}

/// `DIR/default` (the default runctl), `DIR/registry/ID -> DIR/other`.
struct Tree {
    dir: tempfile::TempDir,
    default_runctl: CString,
    registry: CString,
}

const ID: &str = "0123456789abcdef";

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["default", "registry", "other"] {
            fs::create_dir(d.join(sub)).unwrap();
            fs::set_permissions(d.join(sub), fs::Permissions::from_mode(0o755)).unwrap();
        }
        symlink(d.join("other"), d.join("registry").join(ID)).unwrap();
        for f in ["default/snap.hello.running", "other/snap.hello.running"] {
            fs::write(d.join(f), "").unwrap();
        }
        let c = |p: PathBuf| CString::new(p.as_os_str().as_bytes()).unwrap();
        Tree {
            default_runctl: c(d.join("default")),
            registry: c(d.join("registry")),
            dir,
        }
    }

    fn paths(&self) -> Paths<'_> {
        Paths {
            default_runctl: &self.default_runctl,
            registry: &self.registry,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

#[test]
fn removes_and_ignores() {
    let t = Tree::new();
    let p = t.paths();
    if !is_root() {
        // Scratch directories are not root's: refused before anything is removed.
        let uid = fs::metadata(t.path("default")).unwrap().uid();
        assert_eq!(
            release(&p, b"/refreshd/snap.hello"),
            Outcome::Refused(Refusal::Owner(Dir::Runctl, Uid(uid)))
        );
        assert_eq!(
            release(&p, format!("/refreshd.{ID}/snap.hello").as_bytes()),
            Outcome::Refused(Refusal::Owner(Dir::Registry, Uid(uid)))
        );
        assert!(exists(&t.path("default/snap.hello.running")));
        assert!(exists(&t.path("other/snap.hello.running")));
        println!("SKIP: not root: removal on scratch trees needs root-owned directories");
        return;
    }
    assert_eq!(release(&p, b"/other/snap.hello"), Outcome::Ignored);
    assert_eq!(release(&p, b"/refreshd/snap.hello"), Outcome::Removed);
    assert!(!exists(&t.path("default/snap.hello.running")));
    assert!(exists(&t.path("other/snap.hello.running")));
    assert_eq!(release(&p, b"/refreshd/snap.hello"), Outcome::Absent);

    let with_id = format!("/refreshd.{ID}/snap.hello");
    assert_eq!(release(&p, with_id.as_bytes()), Outcome::Removed);
    assert!(!exists(&t.path("other/snap.hello.running")));
    assert_eq!(release(&p, with_id.as_bytes()), Outcome::Absent);
    assert_eq!(
        release(&p, b"/refreshd.fedcba9876543210/snap.hello"),
        Outcome::Absent
    );

    // `run` takes exactly one argument.
    fs::write(t.path("default/snap.hello.running"), "").unwrap();
    let two: [&[u8]; 2] = [b"/refreshd/snap.hello", b"/refreshd/snap.hello"];
    assert_eq!(run(&p, two.into_iter()), Outcome::Ignored);
    assert_eq!(run(&p, [].into_iter()), Outcome::Ignored);
    assert!(exists(&t.path("default/snap.hello.running")));
    assert_eq!(run(&p, two[..1].iter().copied()), Outcome::Removed);
}

#[test]
fn refuses_untrusted_directories() {
    if !is_root() {
        println!("SKIP: not root: needs chown");
        return;
    }
    let t = Tree::new();
    let p = t.paths();
    let with_id = format!("/refreshd.{ID}/snap.hello");

    // A group-writable registry: anyone in the group could have planted the entry.
    fs::set_permissions(t.path("registry"), fs::Permissions::from_mode(0o775)).unwrap();
    assert_eq!(
        release(&p, with_id.as_bytes()),
        Outcome::Refused(Refusal::Writable(Dir::Registry))
    );
    fs::set_permissions(t.path("registry"), fs::Permissions::from_mode(0o755)).unwrap();

    // A registry that is itself a symlink.
    let real = t.path("registry");
    let moved = t.path("registry.real");
    fs::rename(&real, &moved).unwrap();
    symlink(&moved, &real).unwrap();
    assert_eq!(
        release(&p, with_id.as_bytes()),
        Outcome::Failed(Dir::Registry, Errno(libc::ENOTDIR))
    );
    fs::remove_file(&real).unwrap();
    fs::rename(&moved, &real).unwrap();

    // A runctl directory someone else owns.
    std::os::unix::fs::chown(t.path("other"), Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(t.path("default"), Some(65534), Some(65534)).unwrap();
    assert_eq!(
        release(&p, with_id.as_bytes()),
        Outcome::Refused(Refusal::Owner(Dir::Runctl, Uid(65534)))
    );
    assert_eq!(
        release(&p, b"/refreshd/snap.hello"),
        Outcome::Refused(Refusal::Owner(Dir::Runctl, Uid(65534)))
    );

    // A default runctl that is a symlink is not followed.
    fs::remove_file(t.path("default/snap.hello.running")).unwrap();
    fs::remove_dir(t.path("default")).unwrap();
    symlink(t.path("other"), t.path("default")).unwrap();
    std::os::unix::fs::chown(t.path("other"), Some(0), Some(0)).unwrap();
    assert_eq!(
        release(&p, b"/refreshd/snap.hello"),
        Outcome::Failed(Dir::Runctl, Errno(libc::ENOTDIR))
    );

    // A registry entry that is a file, not a directory.
    fs::remove_file(t.path(&format!("registry/{ID}"))).unwrap();
    fs::write(t.path(&format!("registry/{ID}")), "").unwrap();
    assert_eq!(
        release(&p, with_id.as_bytes()),
        Outcome::Failed(Dir::Runctl, Errno(libc::ENOTDIR))
    );
    assert!(exists(&t.path("other/snap.hello.running")));
}

#[test]
fn constants_match_the_contract() {
    assert_eq!(DEFAULT_RUNCTL_C.to_str().unwrap(), runctl::DEFAULT_RUNCTL);
    assert_eq!(AGENT_REGISTRY_C.to_str().unwrap(), runctl::AGENT_REGISTRY);
}
