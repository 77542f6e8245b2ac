//! Directories by fd: opening without following, listing with getdents64, and removing a tree
//! without ever resolving a path through it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::meta::{stat_fd, FileId};
use crate::sys;

/// How many directory levels keep their fds open while a walk is deeper; above them the fds
/// are closed and reopened through `..` on the way back (checked by inode). A hostile user can
/// nest directories far deeper than the fd limit allows, and must not make the copy fail.
pub const FD_WINDOW: usize = 64;

/// Opens directory `name` in `dir` without following a symlink there. `O_NOATIME` keeps the
/// walk from moving the source's atimes (root may always use it; fall back if refused).
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    open_noatime(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )
}

/// `openat` with `O_NOATIME`, retried without it where the kernel refuses it (`EPERM` when
/// not the owner and without CAP_FOWNER).
pub(crate) fn open_noatime(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    match sys::open_at(Some(dir), name, flags | libc::O_NOATIME, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => sys::open_at(Some(dir), name, flags, 0),
        r => r,
    }
}

/// The names in a directory, `.` and `..` left out. Read from offset 0 whatever the fd's
/// position.
pub fn read_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    sys::lseek(fd, 0, libc::SEEK_SET)?;
    let mut buf = vec![0u8; 32 * 1024];
    let mut names = Vec::new();
    loop {
        let n = sys::getdents(fd, &mut buf)?;
        if n == 0 {
            return Ok(names);
        }
        parse_dirents(&buf[..n], &mut names)?;
    }
}

/// Parses `struct linux_dirent64` records: u64 ino, i64 off, u16 reclen, u8 type, name + NUL.
fn parse_dirents(buf: &[u8], names: &mut Vec<CString>) -> io::Result<()> {
    const NAME_AT: usize = 19;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed directory record");
    let mut off = 0;
    while off < buf.len() {
        let rec = buf.get(off..).ok_or_else(bad)?;
        let reclen = usize::from(u16::from_ne_bytes([
            *rec.get(16).ok_or_else(bad)?,
            *rec.get(17).ok_or_else(bad)?,
        ]));
        if reclen <= NAME_AT || reclen > rec.len() {
            return Err(bad());
        }
        let raw = &rec[NAME_AT..reclen];
        let end = raw.iter().position(|&b| b == 0).ok_or_else(bad)?;
        let name = &raw[..end];
        if name != b"." && name != b".." {
            names.push(CString::new(name).map_err(|_| bad())?);
        }
        off += reclen;
    }
    Ok(())
}

/// Removes `name` in `dir`, whatever it is, without following symlinks; a directory with all
/// it contains. Absent is fine.
pub(crate) fn remove_any(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match sys::unlink_at(dir, name, 0) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => remove_tree(dir, name, None),
        Err(e) => Err(e),
    }
}

/// One directory being emptied.
struct Level {
    fd: Option<OwnedFd>,
    id: FileId,
    name: CString,
    subdirs: Vec<CString>,
}

impl Level {
    /// Unlinks every non-directory at once; keeps the subdirectories for later.
    fn open(fd: OwnedFd, name: CString) -> io::Result<Level> {
        let id = stat_fd(fd.as_fd())?.id;
        let mut subdirs = Vec::new();
        for entry in read_dir(fd.as_fd())? {
            match sys::unlink_at(fd.as_fd(), &entry, 0) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) if e.raw_os_error() == Some(libc::EISDIR) => subdirs.push(entry),
                Err(e) => return Err(e),
            }
        }
        Ok(Level {
            fd: Some(fd),
            id,
            name,
            subdirs,
        })
    }
}

/// Removes `name` in `dir` — a symlink or file is unlinked, a directory removed with all it
/// contains — by file descriptor only: no symlink is followed, no path is resolved, and a
/// directory moved away mid-way is noticed. A mount point anywhere inside stops the removal
/// before anything under it is touched (`EBUSY`): deleting through a mount would delete what
/// it shows. Absent is fine.
///
/// This is the way root deletes inside a tree a user can write (their `~/snap/NAME`).
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match sys::unlink_at(dir, name, 0) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let root = match sys::open_at(
        Some(dir),
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        // Swapped for a non-directory since the unlink: unlink that.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
            return sys::unlink_at(dir, name, 0);
        }
        Err(e) => return Err(e),
    };
    let m = stat_fd(root.as_fd())?;
    if m.mount_root {
        return Err(mounted(name));
    }
    drop(root);
    remove_tree_inner(dir, name, Some(m.id), Some(m.id.dev))
}

fn mounted(name: &CStr) -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!(
            "something is mounted at {:?}: it is left as it is",
            name.to_string_lossy()
        ),
    )
}

/// Removes directory `name` in `dir` and everything below it, by fd only. With `expect`, the
/// directory must be that inode (it is about to be removed wholesale, so it must be ours).
pub(crate) fn remove_tree(
    dir: BorrowedFd<'_>,
    name: &CStr,
    expect: Option<FileId>,
) -> io::Result<()> {
    remove_tree_inner(dir, name, expect, None)
}

/// [`remove_tree`]; with `device`, a directory on another device or at a mount root stops the
/// removal (`EBUSY`) before anything in it is touched.
fn remove_tree_inner(
    dir: BorrowedFd<'_>,
    name: &CStr,
    expect: Option<FileId>,
    device: Option<u64>,
) -> io::Result<()> {
    let root = match sys::open_at(
        Some(dir),
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        // Not a directory (any more): a plain unlink does.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
            return if expect.is_some() {
                Err(replaced())
            } else {
                sys::unlink_at(dir, name, 0)
            };
        }
        Err(e) => return Err(e),
    };
    if let Some(id) = expect {
        if stat_fd(root.as_fd())?.id != id {
            return Err(replaced());
        }
    }
    let mut stack = vec![Level::open(root, name.to_owned())?];
    loop {
        let top = stack
            .last_mut()
            .expect("the stack holds the root until the end");
        if let Some(sub) = top.subdirs.pop() {
            let parent = top.fd.as_ref().expect("the top level is open").as_fd();
            let fd = match sys::open_at(
                Some(parent),
                &sub,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            ) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
                    sys::unlink_at(parent, &sub, 0)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(dev) = device {
                let m = stat_fd(fd.as_fd())?;
                if m.mount_root || m.id.dev != dev {
                    return Err(mounted(&sub));
                }
            }
            stack.push(Level::open(fd, sub)?);
            if stack.len() > FD_WINDOW + 1 {
                let i = stack.len() - 1 - FD_WINDOW;
                if i > 0 {
                    stack[i].fd = None;
                }
            }
            continue;
        }
        let done = stack.pop().expect("checked above");
        let Some(parent) = stack.last_mut() else {
            return sys::unlink_at(dir, name, libc::AT_REMOVEDIR);
        };
        if parent.fd.is_none() {
            let child = done.fd.as_ref().expect("the top level is open").as_fd();
            let fd = sys::open_at(
                Some(child),
                c"..",
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            if stat_fd(fd.as_fd())?.id != parent.id {
                return Err(replaced());
            }
            parent.fd = Some(fd);
        }
        let parent_fd = parent.fd.as_ref().expect("reopened above").as_fd();
        match sys::unlink_at(parent_fd, &done.name, libc::AT_REMOVEDIR) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
    }
}

fn replaced() -> io::Error {
    io::Error::other("the directory was replaced while it was being removed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &[u8]) -> Vec<u8> {
        let reclen = (19 + name.len() + 1).next_multiple_of(8);
        let mut r = vec![0u8; reclen];
        r[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
        r[19..19 + name.len()].copy_from_slice(name);
        r
    }

    #[test]
    fn parses_records_and_drops_dots() {
        let mut buf = Vec::new();
        for n in [
            &b"."[..],
            b"..",
            b"a",
            b"with space\n",
            b"x".repeat(255).as_slice(),
        ] {
            buf.extend(record(n));
        }
        let mut names = Vec::new();
        parse_dirents(&buf, &mut names).unwrap();
        let names: Vec<&[u8]> = names.iter().map(|n| n.to_bytes()).collect();
        assert_eq!(names.len(), 3);
        assert_eq!(names[0], b"a");
        assert_eq!(names[1], b"with space\n");
        assert_eq!(names[2].len(), 255);
    }

    #[test]
    fn rejects_malformed_records() {
        let mut bad = record(b"a");
        bad[16..18].copy_from_slice(&0u16.to_ne_bytes());
        assert!(parse_dirents(&bad, &mut Vec::new()).is_err());
        let mut long = record(b"a");
        long[16..18].copy_from_slice(&4096u16.to_ne_bytes());
        assert!(parse_dirents(&long, &mut Vec::new()).is_err());
    }
}
