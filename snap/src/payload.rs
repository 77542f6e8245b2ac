//! A revision's payload as refreshd trusts it: what an extracted image is made into, and the
//! check made before refreshd runs a program from a payload.
//!
//! A loop-mounted payload is read-only to everyone. An extracted one lives on a writable
//! filesystem, so it gets the same property from owners and modes: [`normalize`] makes the
//! tree the daemon's (root's), with no group or other write bits, no setuid, setgid or sticky
//! bits, and no device nodes, fifos or sockets — whatever the image says — and refuses a tree
//! whose hard links lead outside it. [`open_trusted`] checks a program and every directory
//! leading to it before it is run: each is on a read-only mount, or owned by the daemon's user
//! and not writable by group or others, so no user can have written it or can swap it.
//!
//! Everything is done through descriptors opened without following symlinks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, FileStat, Mode, SFlag};
use nix::sys::statvfs::{fstatvfs, FsFlags};
use nix::unistd::{fchown, fchownat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Directories nested deeper than this are refused (the walk holds one descriptor per level).
pub const MAX_DEPTH: usize = 256;

/// The mode bits a payload keeps: no setuid/setgid/sticky, no group or other write.
const KEEP: u32 = 0o755;

/// Why a payload could not be made safe, or a program in it is not run. The cause is quoted in
/// the message, not a `source()` (a printed chain would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("cannot {op} {}: {error}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the image links {} to a file outside it ({links} hard links, {seen} inside); refusing it",
        path.display()
    )]
    OutsideLink {
        path: PathBuf,
        links: u64,
        seen: u64,
    },
    #[error("{} is on another filesystem than the payload; refusing it", path.display())]
    OtherFilesystem { path: PathBuf },
    #[error("the image nests directories deeper than {MAX_DEPTH} ({}); refusing it", path.display())]
    TooDeep { path: PathBuf },
    #[error("{} {why}", path.display())]
    Untrusted { path: PathBuf, why: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> PayloadError + 'a {
    move |e| PayloadError::Io {
        op,
        path: path.to_owned(),
        error: std::io::Error::from_raw_os_error(e as i32),
    }
}

/// What [`normalize`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Normalized {
    /// Entries whose owner, group or mode changed.
    pub changed: u64,
    /// Device nodes, fifos and sockets removed.
    pub removed: u64,
}

/// Makes an extracted tree at `root` (a private directory no one else can reach yet) as
/// immutable to users as a read-only mount: every entry owned by `owner` (uid, gid), modes cut
/// to `0755` (no setuid, setgid or sticky bit, nothing writable by group or others), device
/// nodes, fifos and sockets removed. Nothing in it is followed. A tree with a hard link to a
/// file outside it, or a mount inside it, is refused before anything is changed.
pub fn normalize(root: &Path, owner: (u32, u32)) -> Result<Normalized, PayloadError> {
    let top = open_dir(None, root.as_os_str(), root)?;
    let st = fstat(&top).map_err(io_err("stat", root))?;
    let mut scan = Scan {
        dev: st.st_dev,
        links: HashMap::new(),
        removed: 0,
    };
    scan.dir(top, root, 0)?;
    for (path, links, seen) in scan.links.into_values() {
        if seen < links {
            return Err(PayloadError::OutsideLink { path, links, seen });
        }
    }
    let top = open_dir(None, root.as_os_str(), root)?;
    let mut out = Normalized {
        removed: scan.removed,
        ..Default::default()
    };
    fix(top.as_fd(), &st, root, owner, &mut out)?;
    fix_dir(top, root, owner, &mut out)?;
    Ok(out)
}

fn open_dir(
    at: Option<BorrowedFd<'_>>,
    name: &OsStr,
    path: &Path,
) -> Result<OwnedFd, PayloadError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let r = match at {
        Some(d) => nix::fcntl::openat(d, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    };
    r.map_err(io_err("open", path))
}

/// The names in a directory (without `.` and `..`), read from its own descriptor.
fn names(dir: &OwnedFd, path: &Path) -> Result<Vec<Vec<u8>>, PayloadError> {
    let dup = dir.try_clone().map_err(|source| PayloadError::Io {
        op: "read",
        path: path.to_owned(),
        error: source,
    })?;
    let mut d = Dir::from_fd(dup).map_err(io_err("read", path))?;
    let mut out = vec![];
    for e in d.iter() {
        let e = e.map_err(io_err("read", path))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// The first pass: counts hard links, removes special files, refuses other filesystems.
struct Scan {
    dev: u64,
    /// inode → (a path, its link count, links seen inside the tree)
    links: HashMap<u64, (PathBuf, u64, u64)>,
    removed: u64,
}

impl Scan {
    fn dir(&mut self, dir: OwnedFd, path: &Path, depth: usize) -> Result<(), PayloadError> {
        if depth > MAX_DEPTH {
            return Err(PayloadError::TooDeep {
                path: path.to_owned(),
            });
        }
        for name in names(&dir, path)? {
            let name = OsStr::from_bytes(&name);
            let child = path.join(name);
            let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(io_err("stat", &child))?;
            if st.st_dev != self.dev {
                return Err(PayloadError::OtherFilesystem { path: child });
            }
            match kind(&st) {
                SFlag::S_IFDIR => {
                    let sub = open_dir(Some(dir.as_fd()), name, &child)?;
                    self.dir(sub, &child, depth + 1)?;
                }
                SFlag::S_IFREG if st.st_nlink > 1 => {
                    let e = self
                        .links
                        .entry(st.st_ino)
                        .or_insert_with(|| (child.clone(), st.st_nlink, 0));
                    e.2 += 1;
                }
                SFlag::S_IFREG | SFlag::S_IFLNK => {}
                // Devices, fifos, sockets: what a nodev mount would neutralise, and more.
                _ => {
                    unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)
                        .map_err(io_err("remove", &child))?;
                    self.removed += 1;
                }
            }
        }
        Ok(())
    }
}

/// Gives the entry open as `fd` (stat `st`) its owner and mode.
fn fix(
    fd: BorrowedFd<'_>,
    st: &FileStat,
    path: &Path,
    (uid, gid): (u32, u32),
    out: &mut Normalized,
) -> Result<(), PayloadError> {
    let mode = st.st_mode & 0o7777;
    if st.st_uid != uid || st.st_gid != gid {
        fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(io_err("change the owner of", path))?;
    }
    // After chown, which may have cleared setuid/setgid already: set the mode in any case
    // when it was not already the kept subset.
    if mode & !KEEP != 0 || st.st_uid != uid || st.st_gid != gid {
        fchmod(fd, Mode::from_bits_truncate(mode & KEEP))
            .map_err(io_err("change the mode of", path))?;
        out.changed += 1;
    }
    Ok(())
}

/// The second pass: owners and modes of everything below `dir`.
fn fix_dir(
    dir: OwnedFd,
    path: &Path,
    owner: (u32, u32),
    out: &mut Normalized,
) -> Result<(), PayloadError> {
    for name in names(&dir, path)? {
        let name = OsStr::from_bytes(&name);
        let child = path.join(name);
        let st =
            fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io_err("stat", &child))?;
        match kind(&st) {
            SFlag::S_IFLNK => {
                // A symlink's own mode means nothing; its owner is made the same as the rest.
                if st.st_uid != owner.0 || st.st_gid != owner.1 {
                    fchownat(
                        &dir,
                        name,
                        Some(Uid::from_raw(owner.0)),
                        Some(Gid::from_raw(owner.1)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(io_err("change the owner of", &child))?;
                    out.changed += 1;
                }
            }
            SFlag::S_IFDIR => {
                let sub = open_dir(Some(dir.as_fd()), name, &child)?;
                let st = fstat(&sub).map_err(io_err("stat", &child))?;
                fix(sub.as_fd(), &st, &child, owner, out)?;
                fix_dir(sub, &child, owner, out)?;
            }
            SFlag::S_IFREG => {
                let f = nix::fcntl::openat(
                    &dir,
                    name,
                    OFlag::O_RDONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_NONBLOCK
                        | OFlag::O_NOCTTY
                        | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io_err("open", &child))?;
                let st = fstat(&f).map_err(io_err("stat", &child))?;
                if kind(&st) != SFlag::S_IFREG {
                    return Err(PayloadError::Untrusted {
                        path: child,
                        why: "changed while it was made safe".into(),
                    });
                }
                fix(f.as_fd(), &st, &child, owner, out)?;
            }
            // The first pass removed everything else; nothing else can add entries here.
            _ => {
                return Err(PayloadError::Untrusted {
                    path: child,
                    why: "appeared while the payload was made safe".into(),
                })
            }
        }
    }
    Ok(())
}

/// What a payload is checked against: who may own what refreshd runs from it.
#[derive(Debug, Clone, Copy)]
pub struct Trust {
    /// The daemon's own uid (root): the only owner a writable entry may have.
    pub owner: u32,
}

impl Trust {
    /// The running process's effective uid.
    pub fn this_process() -> Trust {
        Trust {
            owner: nix::unistd::geteuid().as_raw(),
        }
    }

    /// Whether the entry open as `fd` is beyond users' reach: on a read-only mount, or owned by
    /// the trusted owner and not writable by group or others. Returns its stat.
    pub fn check(&self, fd: BorrowedFd<'_>, path: &Path) -> Result<FileStat, PayloadError> {
        let st = fstat(fd).map_err(io_err("stat", path))?;
        let ro = fstatvfs(fd)
            .map_err(io_err("stat the filesystem of", path))?
            .flags()
            .contains(FsFlags::ST_RDONLY);
        if ro {
            return Ok(st);
        }
        if st.st_uid != self.owner {
            return Err(PayloadError::Untrusted {
                path: path.to_owned(),
                why: format!(
                    "is owned by uid {} (not {}) on a writable filesystem",
                    st.st_uid, self.owner
                ),
            });
        }
        if st.st_mode & 0o022 != 0 {
            return Err(PayloadError::Untrusted {
                path: path.to_owned(),
                why: format!(
                    "is writable by group or others (mode {:o})",
                    st.st_mode & 0o7777
                ),
            });
        }
        Ok(st)
    }

    /// Opens `dir` (an absolute or relative path, its last component not followed) as an
    /// `O_PATH` descriptor and checks it is a trusted directory; `None` if it does not exist.
    pub fn open_dir(&self, dir: &Path) -> Result<Option<OwnedFd>, PayloadError> {
        self.open_at(None, dir.as_os_str(), dir, true)
    }

    /// Opens `name` (one component, not followed) in the trusted directory `at` and checks it;
    /// `dir` says whether it must be a directory. `None` if it does not exist.
    pub fn open_at(
        &self,
        at: Option<BorrowedFd<'_>>,
        name: &OsStr,
        path: &Path,
        dir: bool,
    ) -> Result<Option<OwnedFd>, PayloadError> {
        // Not O_DIRECTORY: a symlink is opened as itself, and then named as one.
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let r = match at {
            Some(d) => nix::fcntl::openat(d, name, flags, Mode::empty()),
            None => nix::fcntl::open(name, flags, Mode::empty()),
        };
        let fd = match r {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io_err("open", path)(e)),
        };
        let st = fstat(&fd).map_err(io_err("stat", path))?;
        let k = kind(&st);
        if k == SFlag::S_IFLNK {
            return Err(PayloadError::Untrusted {
                path: path.to_owned(),
                why: "is a symbolic link".into(),
            });
        }
        if dir && k != SFlag::S_IFDIR {
            return Err(PayloadError::Untrusted {
                path: path.to_owned(),
                why: "is not a directory".into(),
            });
        }
        self.check(fd.as_fd(), path)?;
        Ok(Some(fd))
    }
}

/// Opens the program `rel` (components separated by `/`; none may be empty, a symlink, `.` or
/// `..`) under the directory `base`, checking `base`, every directory on the way and the file
/// itself with [`Trust::check`]; each is opened from its parent's descriptor. Returns the open
/// file (`O_PATH`) and its stat; `None` when an entry on the way does not exist.
///
/// Give `base` and `rel` so that `base` is the outermost directory that must be trusted (for a
/// hook: `ROOT/snap` and `NAME/REV/meta/hooks/HOOK`).
pub fn open_trusted(
    trust: &Trust,
    base: &Path,
    rel: &str,
) -> Result<Option<(OwnedFd, FileStat)>, PayloadError> {
    let Some(mut dir) = trust.open_dir(base)? else {
        return Ok(None);
    };
    let parts: Vec<&str> = rel.split('/').collect();
    let mut path = base.to_owned();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() || *part == "." || *part == ".." {
            return Err(PayloadError::Untrusted {
                path: base.join(rel),
                why: "is not a plain path inside the payload".into(),
            });
        }
        path.push(part);
        let last = i + 1 == parts.len();
        let Some(fd) = trust.open_at(Some(dir.as_fd()), OsStr::new(part), &path, !last)? else {
            return Ok(None);
        };
        if last {
            let st = fstat(&fd).map_err(io_err("stat", &path))?;
            return Ok(Some((fd, st)));
        }
        dir = fd;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn normalize_makes_the_tree_immutable_to_users() {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP normalize_makes_the_tree_immutable_to_users: needs root for chown");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        fs::create_dir_all(t.join("open/deeper")).unwrap();
        fs::set_permissions(t.join("open"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(t.join("open/deeper/app"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            t.join("open/deeper/app"),
            fs::Permissions::from_mode(0o6777),
        )
        .unwrap();
        std::os::unix::fs::chown(t.join("open/deeper/app"), Some(4242), Some(4242)).unwrap();
        fs::write(t.join("data"), "x").unwrap();
        fs::hard_link(t.join("data"), t.join("open/data-link")).unwrap();
        symlink("/etc/passwd", t.join("link")).unwrap();
        std::os::unix::fs::lchown(t.join("link"), Some(4242), Some(4242)).unwrap();
        nix::unistd::mkfifo(&t.join("fifo"), Mode::from_bits_truncate(0o666)).unwrap();
        let outside = d.path().join("outside");
        fs::write(&outside, "secret").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();

        let got = normalize(&t, (0, 0)).unwrap();
        assert_eq!(got.removed, 1);
        assert!(fs::symlink_metadata(t.join("fifo")).is_err());
        assert_eq!(mode(&t.join("open")), 0o755);
        assert_eq!(mode(&t.join("open/deeper/app")), 0o755);
        let md = fs::symlink_metadata(t.join("open/deeper/app")).unwrap();
        assert_eq!((md.uid(), md.gid()), (0, 0));
        let md = fs::symlink_metadata(t.join("link")).unwrap();
        assert_eq!((md.uid(), md.gid()), (0, 0));
        // The symlink was not followed.
        assert_eq!(fs::metadata("/etc/passwd").unwrap().mode() & 0o7777, 0o644);

        // A hard link to a file outside the tree: refused before anything changes.
        fs::hard_link(&outside, t.join("escape")).unwrap();
        fs::set_permissions(t.join("open"), fs::Permissions::from_mode(0o777)).unwrap();
        let err = normalize(&t, (0, 0)).unwrap_err();
        assert!(matches!(err, PayloadError::OutsideLink { .. }), "{err}");
        assert_eq!(mode(&outside), 0o600, "the outside file was changed");
        assert_eq!(mode(&t.join("open")), 0o777, "changed before refusing");
    }

    #[test]
    fn programs_are_trusted_only_beyond_users_reach() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("payload");
        fs::create_dir_all(p.join("meta/hooks")).unwrap();
        fs::write(p.join("meta/hooks/x"), "#!/bin/sh\n").unwrap();
        let trust = Trust::this_process();
        let open = |rel: &str| open_trusted(&trust, d.path(), &format!("payload/{rel}"));
        let err = |rel: &str| open(rel).unwrap_err().to_string();
        assert!(open("meta/hooks/x").unwrap().is_some());
        assert!(open("meta/hooks/none").unwrap().is_none());
        assert!(open("meta/none/x").unwrap().is_none());
        for (path, m) in [("meta/hooks/x", 0o757), ("meta/hooks", 0o775), ("", 0o777)] {
            // "": the payload directory itself.
            let f = p.join(path);
            let before = mode(&f);
            fs::set_permissions(&f, fs::Permissions::from_mode(m)).unwrap();
            let e = err("meta/hooks/x");
            assert!(e.contains("is writable by group or others"), "{path}: {e}");
            fs::set_permissions(&f, fs::Permissions::from_mode(before)).unwrap();
        }
        symlink("x", p.join("meta/hooks/y")).unwrap();
        assert!(err("meta/hooks/y").contains("is a symbolic link"));
        symlink("hooks", p.join("meta/h")).unwrap();
        assert!(err("meta/h/x").contains("is a symbolic link"));
        assert!(err("meta/../meta/hooks/x").contains("not a plain path"));
        assert!(err("meta/hooks/x/y").contains("not a directory"));
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(p.join("meta"), Some(4242), None).unwrap();
            assert!(err("meta/hooks/x").contains("is owned by uid 4242"));
        }
    }
}
