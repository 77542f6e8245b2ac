//! The release agent's argv (the kernel builds it from a cgroup path; a user who can create
//! cgroups chooses much of it): `refresh_release_agent::run` against a scratch tree, never the
//! real /run.
//!
//! The tree, made once per process under `$REFRESHD_FUZZ_SCRATCH` (or the temporary
//! directory) and removed at exit:
//!
//! ```text
//! runctl/                      the default runctl dir (root, 0755): markers and decoys
//! registry/                    the agent registry (root, 0755)
//!   0123456789abcdef -> ../other        a registered daemon's runctl dir
//!   fedcba9876543210 -> ../userowned    owned by nobody: must be refused
//!   aaaaaaaaaaaaaaaa -> ../file         not a directory
//!   bbbbbbbbbbbbbbbb -> ../missing      dangling
//! other/ userowned/ outside/   markers and decoys; outside/ is named by nothing
//! ```
//!
//! The first input byte picks how the rest becomes arguments: even, split at NUL (what a
//! kernel argv can hold, any count); odd, the rest as one argument, NULs included.
//!
//! Properties, checked by listing the whole tree after every run: nothing but one
//! `snap.NAME.running` is ever removed, only from `runctl/` (for `/refreshd/snap.NAME`) or
//! `other/` (for `/refreshd.0123456789abcdef/snap.NAME`), NAME being exactly the argument's
//! name; the outcome says `Removed` exactly when that happened; nothing is ever created; the
//! agent never reports `Impossible` and never panics.

#![no_main]

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use refresh_release_agent::{run, Outcome, Paths};

/// Instance names with markers in every directory.
const NAMES: &[&str] = &["hello", "hello_work", "a1", "x-y"];
/// Files that must survive whatever the argument, in every directory.
const DECOYS: &[&str] = &[
    "keep",
    "snap.hello",
    "snap.hello.running.old",
    "snap.Hello.running",
    "snap..running",
    "snap.-x.running",
    "snap.hello_.running",
    "running",
];
const REGISTERED: &str = "0123456789abcdef";

struct Tree {
    dir: PathBuf,
    runctl: CString,
    registry: CString,
    /// Every path in the tree at rest.
    all: BTreeSet<PathBuf>,
    /// Non-blocking inotify on every directory of the tree: no event, no change (a listing of
    /// the whole tree after every run would cost most of the run).
    inotify: i32,
}

static TREE: OnceLock<Tree> = OnceLock::new();

extern "C" fn remove_tree() {
    if let Some(t) = TREE.get() {
        let _ = fs::remove_dir_all(&t.dir);
    }
}

fn marker(name: &str) -> String {
    format!("snap.{name}.running")
}

fn populate(dir: &Path) {
    for n in NAMES {
        for suffix in ["running", "inhibited", "lock"] {
            fs::write(dir.join(format!("snap.{n}.{suffix}")), b"").unwrap();
        }
    }
    for d in DECOYS {
        fs::write(dir.join(d), b"").unwrap();
    }
    fs::create_dir(dir.join("sub")).unwrap();
    fs::write(dir.join("sub").join(marker("hello")), b"").unwrap();
}

fn tree() -> &'static Tree {
    TREE.get_or_init(|| {
        let base = std::env::var_os("REFRESHD_FUZZ_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("refreshd-fuzz-agent-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["runctl", "registry", "other", "userowned", "outside"] {
            fs::create_dir(dir.join(d)).unwrap();
            fs::set_permissions(dir.join(d), fs::Permissions::from_mode(0o755)).unwrap();
            if d != "registry" {
                populate(&dir.join(d));
            }
        }
        fs::write(dir.join("file"), b"").unwrap();
        let reg = dir.join("registry");
        symlink("../other", reg.join(REGISTERED)).unwrap();
        symlink("../userowned", reg.join("fedcba9876543210")).unwrap();
        symlink("../file", reg.join("aaaaaaaaaaaaaaaa")).unwrap();
        symlink("../missing", reg.join("bbbbbbbbbbbbbbbb")).unwrap();
        // SAFETY: plain libc calls with valid, NUL-terminated paths.
        let is_root = unsafe { libc::geteuid() } == 0;
        if is_root {
            let c = CString::new(dir.join("userowned").as_os_str().as_bytes()).unwrap();
            // SAFETY: as above.
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        } else {
            eprintln!("release_agent_argv: not root, so every runctl dir is refused as not root's; run as root to reach the removals");
        }
        // SAFETY: registers a plain `extern "C" fn()` to run at exit.
        unsafe { libc::atexit(remove_tree) };
        let runctl = CString::new(dir.join("runctl").as_os_str().as_bytes()).unwrap();
        let registry = CString::new(reg.as_os_str().as_bytes()).unwrap();
        let all = list(&dir);
        let t = Tree {
            dir,
            runctl,
            registry,
            all,
            inotify: -1,
        };
        if is_root {
            self_check(&t);
        }
        // SAFETY: plain libc calls; the paths are valid NUL-terminated strings.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1");
        let mask = libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE
            | libc::IN_MOVE_SELF
            | libc::IN_MODIFY
            | libc::IN_ATTRIB;
        for p in std::iter::once(&t.dir).chain(t.all.iter()).filter(|p| p.is_dir()) {
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            // SAFETY: as above.
            assert!(unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) } >= 0, "watch {p:?}");
        }
        Tree { inotify: fd, ..t }
    })
}

/// Reads and drops pending inotify events; whether there were any.
fn drain(fd: i32) -> bool {
    let mut any = false;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return any;
        }
        any = true;
    }
}

/// The tree is what the agent trusts (as root): a run that should remove does, one that should
/// be refused is. Otherwise the properties below would hold for the wrong reason.
fn self_check(t: &Tree) {
    let paths = Paths {
        default_runctl: &t.runctl,
        registry: &t.registry,
    };
    for (arg, want) in [
        ("/refreshd/snap.hello", Outcome::Removed),
        (
            "/refreshd.0123456789abcdef/snap.hello_work",
            Outcome::Removed,
        ),
        ("/refreshd.bbbbbbbbbbbbbbbb/snap.hello", Outcome::Absent),
        ("/refreshd/snap.zz", Outcome::Absent),
    ] {
        assert_eq!(run(&paths, [arg.as_bytes()].into_iter()), want, "{arg}");
    }
    assert!(matches!(
        run(
            &paths,
            [&b"/refreshd.fedcba9876543210/snap.hello"[..]].into_iter()
        ),
        Outcome::Refused(_)
    ));
    for (dir, name) in [("runctl", "hello"), ("other", "hello_work")] {
        fs::write(t.dir.join(dir).join(marker(name)), b"").unwrap();
    }
    assert_eq!(list(&t.dir), t.all, "the self-check left the tree changed");
}

fn list(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

/// Where `arg` may remove a marker, and which: `(runctl dir, marker file name)`.
fn allowed_removal(t: &Tree, arg: &[u8]) -> Option<PathBuf> {
    let s = std::str::from_utf8(arg).ok()?;
    let (parent, name) = s.strip_prefix('/')?.split_once('/')?;
    let name = name.strip_prefix("snap.")?;
    if !refreshd_runctl::valid_instance_name(name.as_bytes()) {
        return None;
    }
    let dir = match parent {
        "refreshd" => "runctl",
        p if p == format!("refreshd.{REGISTERED}") => "other",
        _ => return None,
    };
    Some(t.dir.join(dir).join(marker(name)))
}

fuzz_target!(|data: &[u8]| {
    let t = tree();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let args: Vec<&[u8]> = if mode % 2 == 1 {
        vec![rest]
    } else if rest.is_empty() {
        vec![]
    } else {
        rest.split(|&b| b == 0).collect()
    };
    let paths = Paths {
        default_runctl: &t.runctl,
        registry: &t.registry,
    };
    let outcome = run(&paths, args.iter().copied());
    assert_ne!(outcome, Outcome::Impossible, "args {args:?}");

    if !drain(t.inotify) {
        assert_ne!(
            outcome,
            Outcome::Removed,
            "args {args:?}: Removed but nothing changed"
        );
        return;
    }
    let now = list(&t.dir);
    let created: Vec<_> = now.difference(&t.all).collect();
    assert!(created.is_empty(), "args {args:?} created {created:?}");
    let removed: Vec<PathBuf> = t.all.difference(&now).cloned().collect();
    match removed.as_slice() {
        [] => assert_ne!(
            outcome,
            Outcome::Removed,
            "args {args:?}: Removed but nothing is gone"
        ),
        [one] => {
            let want = match args.as_slice() {
                [arg] => allowed_removal(t, arg),
                _ => None,
            };
            assert_eq!(Some(one), want.as_ref(), "args {args:?} removed {one:?}");
            assert_eq!(outcome, Outcome::Removed, "args {args:?}");
            fs::write(one, b"").unwrap();
        }
        many => panic!("args {args:?} removed {many:?}"),
    }
    drain(t.inotify);
    assert_eq!(
        list(&t.dir),
        t.all,
        "args {args:?} changed something in the tree"
    );
});
