//! Shared test helpers: capability checks, scratch filesystems that clean up after themselves,
//! a tree builder, and a snapshot of a tree (lstat, content, xattrs, hard-link groups) to
//! compare two trees entry by entry. No `unsafe` here: commands and std do the system work.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::hash::{DefaultHasher, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// The effective uid, from /proc (no libc call needed).
pub fn euid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX)
}

/// True when running as root; otherwise prints why the test is skipped.
pub fn require_root(test: &str) -> bool {
    if euid() == 0 {
        return true;
    }
    println!("SKIP: {test}: needs root (ownership, mknod, mounts)");
    false
}

/// Whether a command exists on PATH (or in /usr/sbin, /sbin).
pub fn have(cmd: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .any(|d| Path::new(d).join(cmd).is_file());
    found
}

/// Runs a command; Err with its output on failure.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn runp(cmd: &str, args: &[&Path]) {
    let args: Vec<&str> = args.iter().map(|p| p.to_str().unwrap()).collect();
    run(cmd, &args).unwrap();
}

/// A filesystem mounted in a scratch directory; unmounted on drop (loop devices made with
/// `mount -o loop` carry autoclear, so they detach with the unmount), even when the test
/// fails.
pub struct Mount {
    pub path: PathBuf,
    mounted: bool,
    _dir: TempDir,
}

impl Mount {
    /// A loop-mounted image of `size_mb` MiB (sparse) made with `mkfs.FSTYPE mkfs_args`.
    pub fn loopfs(fstype: &str, size_mb: u64, mkfs_args: &[&str]) -> Result<Mount, String> {
        let mkfs = format!("mkfs.{fstype}");
        if !have(&mkfs) {
            return Err(format!("{mkfs} is not installed"));
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("no /dev/loop-control".into());
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("copydata-{fstype}-"))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let img = dir.path().join("image");
        File::create(&img)
            .and_then(|f| f.set_len(size_mb << 20))
            .map_err(|e| e.to_string())?;
        let mut args: Vec<&str> = mkfs_args.to_vec();
        args.push(img.to_str().unwrap());
        run(&mkfs, &args)?;
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        run(
            "mount",
            &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()],
        )?;
        Ok(Mount {
            path: mnt,
            mounted: true,
            _dir: dir,
        })
    }

    /// A tmpfs with `mount -t tmpfs -o OPTIONS`.
    pub fn tmpfs(options: &str) -> Result<Mount, String> {
        let dir = tempfile::Builder::new()
            .prefix("copydata-tmpfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        run(
            "mount",
            &["-t", "tmpfs", "-o", options, "tmpfs", mnt.to_str().unwrap()],
        )?;
        Ok(Mount {
            path: mnt,
            mounted: true,
            _dir: dir,
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let p = self.path.to_str().unwrap().to_owned();
        for _ in 0..20 {
            if run("umount", &[&p]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Still busy: detach lazily so the scratch directory can go.
        let _ = run("umount", &["-l", &p]);
    }
}

/// Now, in seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Sets atime and mtime of `path` without following a symlink, with nanoseconds.
pub fn set_times(path: &Path, atime: (i64, u32), mtime: (i64, u32)) {
    let p = path.to_str().unwrap();
    let a = format!("@{}.{:09}", atime.0, atime.1);
    let m = format!("@{}.{:09}", mtime.0, mtime.1);
    run("touch", &["-h", "-a", "-d", &a, p]).unwrap();
    run("touch", &["-h", "-m", "-d", &m, p]).unwrap();
}

/// Gives every entry under `root` (root included, children before parents) distinct times
/// in the past hour with nanoseconds, atime after mtime, so `relatime` leaves them alone.
pub fn settle_times(root: &Path) {
    let base = now() - 3 * 3600;
    let mut all = Vec::new();
    collect(root, &mut all);
    all.push(root.to_owned());
    // Deepest first, so setting a child never moves its parent's times afterwards.
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut regular = Vec::new();
    let mut other = Vec::new();
    for (i, p) in all.iter().enumerate() {
        let m = (base + i as i64, (i as u32 * 7919) % 1_000_000_000);
        let a = (base + 3600 + i as i64, (i as u32 * 104_729) % 1_000_000_000);
        let md = fs::symlink_metadata(p).unwrap();
        if md.is_file() || md.is_dir() {
            regular.push((p.clone(), a, m));
        } else {
            other.push((p.clone(), a, m));
        }
    }
    for (p, a, m) in regular {
        let f = File::open(&p).unwrap();
        let t = fs::FileTimes::new()
            .set_accessed(UNIX_EPOCH + Duration::new(a.0 as u64, a.1))
            .set_modified(UNIX_EPOCH + Duration::new(m.0 as u64, m.1));
        f.set_times(t).unwrap();
    }
    for (p, a, m) in other {
        set_times(&p, a, m);
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            collect(&p, out);
        }
        out.push(p);
    }
}

/// Writes `data` to a new file with `mode`, owned by `uid:gid`.
pub fn file(path: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn dir(path: &Path, mode: u32, uid: u32, gid: u32) {
    fs::create_dir(path).unwrap();
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn setfattr(path: &Path, name: &str, value: &str) {
    run(
        "setfattr",
        &["-h", "-n", name, "-v", value, path.to_str().unwrap()],
    )
    .unwrap();
}

/// Deterministic bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One entry of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files and symlinks (a directory's size is the filesystem's business).
    pub size: Option<u64>,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub rdev: Option<u64>,
    pub target: Option<PathBuf>,
    pub hash: Option<u64>,
    pub xattrs: Vec<(String, String)>,
    /// For names of a multiply-linked inode within the tree: the first such name.
    pub link_group: Option<PathBuf>,
}

pub type Snapshot = BTreeMap<PathBuf, Entry>;

fn kind_of(ft: &fs::FileType) -> char {
    if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_socket() {
        's'
    } else {
        'f'
    }
}

/// Hashes a file's content, read without moving its atime.
pub fn content_hash(path: &Path) -> u64 {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .unwrap();
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    h.finish()
}

/// Every entry under `root` (root itself as "."), each lstat'ed before its directory is read.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut snap = Snapshot::new();
    let mut groups: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::from(".")];
    let root_md = fs::symlink_metadata(root).unwrap();
    snap.insert(PathBuf::from("."), entry(root, &root_md));
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = if rel == Path::new(".") {
                PathBuf::from(&n)
            } else {
                rel.join(&n)
            };
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p).unwrap();
            if !md.is_dir() && md.nlink() > 1 {
                groups
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(r.clone());
            }
            snap.insert(r.clone(), entry(&p, &md));
            if md.is_dir() {
                stack.push(r);
            }
        }
    }
    // Links are read only now: reading one may move its atime (relatime), and every name of a
    // hard-linked symlink must have been lstat'ed before.
    for (rel, e) in snap.iter_mut() {
        if e.kind == 'l' {
            e.target = Some(fs::read_link(root.join(rel)).unwrap());
        }
    }
    for names in groups.values() {
        if names.len() > 1 {
            let first = names.iter().min().unwrap().clone();
            for n in names {
                snap.get_mut(n).unwrap().link_group = Some(first.clone());
            }
        }
    }
    if have("getfattr") {
        for (path, attrs) in xattrs(root) {
            let rel = path
                .strip_prefix(root)
                .map(|r| {
                    if r.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        r.to_owned()
                    }
                })
                .unwrap();
            if let Some(e) = snap.get_mut(&rel) {
                e.xattrs = attrs;
            }
        }
    }
    snap
}

fn entry(path: &Path, md: &fs::Metadata) -> Entry {
    let kind = kind_of(&md.file_type());
    Entry {
        kind,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: matches!(kind, 'f' | 'l').then(|| md.size()),
        atime: (md.atime(), md.atime_nsec()),
        mtime: (md.mtime(), md.mtime_nsec()),
        rdev: matches!(kind, 'c' | 'b').then(|| md.rdev()),
        target: None,
        hash: (kind == 'f').then(|| content_hash(path)),
        xattrs: Vec::new(),
        link_group: None,
    }
}

/// getfattr's escaping of unusual bytes in names: `\ooo` octal.
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let octal = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x");
            if let Ok(v) = u8::from_str_radix(octal, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// All xattrs under `root`, by absolute path, from one `getfattr -R` run.
fn xattrs(root: &Path) -> BTreeMap<PathBuf, Vec<(String, String)>> {
    let out = Command::new("getfattr")
        .args([
            "-R",
            "-P",
            "-h",
            "-d",
            "-m",
            "-",
            "-e",
            "hex",
            "--absolute-names",
        ])
        .arg(root)
        .output()
        .unwrap();
    let mut map: BTreeMap<PathBuf, Vec<(String, String)>> = BTreeMap::new();
    let mut current: Option<PathBuf> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(p) = line.strip_prefix("# file: ") {
            current = Some(unescape(p));
        } else if let (Some(c), Some((k, v))) = (&current, line.split_once('=')) {
            map.entry(c.clone())
                .or_default()
                .push((k.to_owned(), v.to_owned()));
        }
    }
    for v in map.values_mut() {
        v.sort();
    }
    map
}

/// Compares two snapshots; returns the differences, one line each.
pub fn diff(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (k, ea) in a {
        match b.get(k) {
            None => out.push(format!("only in first: {}", k.display())),
            Some(eb) if ea != eb => out.push(format!("{}:\n  {ea:?}\n  {eb:?}", k.display())),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.push(format!("only in second: {}", k.display()));
        }
    }
    out
}

/// Asserts two trees are equal entry by entry, printing the differences.
pub fn assert_same(a: &Snapshot, b: &Snapshot, what: &str) {
    let d = diff(a, b);
    assert!(
        d.is_empty(),
        "{what}: {} differences:\n{}",
        d.len(),
        d.join("\n")
    );
}

/// Entries of a directory whose names carry the temporary marker.
pub fn temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.contains(".refreshd-tmp").then_some(n)
        })
        .collect()
}

/// `sync -f`: flush the filesystem of `path` (so a timing does not pay for the set-up).
pub fn syncfs(path: &Path) {
    run("sync", &["-f", path.to_str().unwrap()]).unwrap();
}

pub fn no_progress() -> impl FnMut(refreshd_copydata::Progress) {
    |_| {}
}

/// Size of the sparse file in the rich tree, and its data chunks (offset, length).
pub const SPARSE_SIZE: u64 = 64 << 20;
pub const SPARSE_CHUNKS: [(u64, usize); 3] =
    [(0, 4096), (32 << 20, 8192), ((64 << 20) - 4096, 4096)];
/// Nesting of the deep branch: beyond `FD_WINDOW`, so the walk must come back up through `..`.
pub const DEEP: usize = 150;

/// What the rich tree could include on this system.
pub struct Rich {
    pub xattrs: bool,
    pub acl: bool,
}

/// A tree with every file type, modes (setuid, setgid, sticky, none), owners, hard links
/// (to files and to a symlink), symlinks (absolute, relative, dangling, to a directory), a
/// fifo, devices, a socket, xattrs and ACLs where the tools exist, a sparse file, odd names and
/// a deep branch; then distinct past times on everything.
pub fn build_rich_tree(root: &Path) -> Rich {
    use std::os::unix::fs::{symlink, FileExt};
    let rich = Rich {
        xattrs: have("setfattr") && have("getfattr"),
        acl: have("setfacl"),
    };
    dir(root, 0o755, 1234, 1234);
    file(&root.join("plain.txt"), b"hello\n", 0o644, 1234, 1234);
    file(&root.join("empty"), b"", 0o600, 1234, 1234);
    file(
        &root.join("exec"),
        b"#!/bin/sh\necho hi\n",
        0o755,
        1234,
        1234,
    );
    file(&root.join("setuid-root"), b"\x7fELF", 0o4755, 0, 0);
    file(&root.join("setgid"), b"sg", 0o2755, 1234, 5678);
    file(&root.join("noperm"), b"secret", 0o000, 1234, 1234);
    file(&root.join("big.bin"), &bytes(3 << 20, 1), 0o644, 1234, 1234);
    file(
        &root.join("with space & newline\n"),
        b"odd",
        0o644,
        1234,
        1234,
    );
    let sparse = File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(SPARSE_SIZE).unwrap();
    for (i, (off, len)) in SPARSE_CHUNKS.iter().enumerate() {
        sparse.write_at(&bytes(*len, 100 + i as u64), *off).unwrap();
    }
    drop(sparse);
    std::os::unix::fs::lchown(root.join("sparse.img"), Some(1234), Some(1234)).unwrap();

    dir(&root.join("sticky"), 0o1777, 0, 0);
    file(&root.join("sticky/f"), b"f", 0o666, 4321, 4321);
    dir(&root.join("sgdir"), 0o2775, 1234, 5678);
    file(&root.join("sgdir/g"), b"g", 0o664, 1234, 5678);
    let mut p = root.join("nested");
    for part in ["a", "b", "c", "d"] {
        dir(&p, 0o750, 1234, 1234);
        p.push(part);
    }
    dir(&p, 0o700, 1234, 1234);
    file(&p.join("file"), b"deep", 0o640, 1234, 1234);

    let links = root.join("links");
    dir(&links, 0o755, 1234, 1234);
    file(&links.join("one"), &bytes(10_000, 2), 0o640, 1234, 1234);
    fs::hard_link(links.join("one"), links.join("two")).unwrap();
    fs::hard_link(links.join("one"), root.join("nested/three")).unwrap();
    symlink("/etc/hostname", links.join("sym-abs")).unwrap();
    symlink("../plain.txt", links.join("sym-rel")).unwrap();
    symlink("does/not/exist", links.join("sym-dangling")).unwrap();
    symlink("../nested", links.join("sym-dir")).unwrap();
    // linkat without AT_SYMLINK_FOLLOW: a second name of the symlink itself.
    fs::hard_link(links.join("sym-rel"), links.join("sym-hard")).unwrap();
    for l in ["sym-abs", "sym-rel", "sym-dangling", "sym-dir"] {
        std::os::unix::fs::lchown(links.join(l), Some(1234), Some(5678)).unwrap();
    }

    let special = root.join("special");
    dir(&special, 0o755, 1234, 1234);
    runp("mkfifo", &[&special.join("fifo")]);
    std::os::unix::fs::lchown(special.join("fifo"), Some(1234), Some(1234)).unwrap();
    fs::set_permissions(special.join("fifo"), fs::Permissions::from_mode(0o640)).unwrap();
    run(
        "mknod",
        &[special.join("null").to_str().unwrap(), "c", "1", "3"],
    )
    .unwrap();
    fs::set_permissions(special.join("null"), fs::Permissions::from_mode(0o666)).unwrap();
    run(
        "mknod",
        &[special.join("blk").to_str().unwrap(), "b", "7", "250"],
    )
    .unwrap();
    std::os::unix::fs::lchown(special.join("blk"), Some(0), Some(6)).unwrap();
    fs::set_permissions(special.join("blk"), fs::Permissions::from_mode(0o660)).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(special.join("sock")).unwrap();
    drop(sock);

    if rich.xattrs {
        let x = root.join("xattrs");
        dir(&x, 0o755, 1234, 1234);
        file(&x.join("file"), b"x", 0o644, 1234, 1234);
        setfattr(&x.join("file"), "user.comment", "a comment");
        setfattr(&x.join("file"), "user.bin", "0x00ff10fe");
        setfattr(&x.join("file"), "trusted.secret", "root only");
        setfattr(&x, "user.dirattr", "on a directory");
        symlink("file", x.join("link")).unwrap();
        setfattr(&x.join("link"), "trusted.linkattr", "on a symlink");
        runp("mkfifo", &[&x.join("fifo")]);
        setfattr(&x.join("fifo"), "trusted.fifoattr", "on a fifo");
        file(&x.join("aclfile"), b"acl", 0o640, 1234, 1234);
        dir(&x.join("acldir"), 0o750, 1234, 1234);
        if rich.acl {
            let f = x.join("aclfile");
            run(
                "setfacl",
                &["-m", "u:2000:rw-,g:5678:r--", f.to_str().unwrap()],
            )
            .unwrap();
            let d = x.join("acldir");
            run("setfacl", &["-m", "u:2000:r-x", d.to_str().unwrap()]).unwrap();
            run(
                "setfacl",
                &["-d", "-m", "u:2000:rwx,g::r-x", d.to_str().unwrap()],
            )
            .unwrap();
        } else {
            // No setfacl: the ACL bytes themselves (version 2; USER_OBJ rw-, USER 2000 rw-,
            // GROUP_OBJ r--, MASK rw-, OTHER ---).
            setfattr(
                &x.join("aclfile"),
                "system.posix_acl_access",
                "0x0200000001000600ffffffff02000600d007000004000400ffffffff10000600ffffffff20000000ffffffff",
            );
        }
    }

    let mut d = root.join("deep");
    dir(&d, 0o755, 1234, 1234);
    for _ in 0..DEEP {
        d.push("d");
        dir(&d, 0o755, 1234, 1234);
    }
    file(&d.join("leaf"), b"bottom", 0o644, 1234, 1234);
    settle_times(root);
    rich
}

/// Allocated bytes of a file.
pub fn allocated(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().blocks() * 512
}
