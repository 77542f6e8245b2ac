//! The crate's only `unsafe` code: thin wrappers over the `*at` system calls, statx, extended
//! attributes, FICLONE, copy_file_range, SEEK_DATA/SEEK_HOLE, syncfs and getdents64, which std
//! does not expose relative to a directory fd. Every function borrows its fds, so the caller keeps
//! ownership and closing; every path is a `&CStr`, so no allocation hides in here.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

/// Turns a C `-1` return into the errno.
fn cerr(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same for calls returning `ssize_t`.
fn cerr_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// The raw fd of an optional directory, `AT_FDCWD` for none (paths then resolve normally).
fn dir_raw(dir: Option<BorrowedFd<'_>>) -> RawFd {
    dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd())
}

/// `openat(2)`. `O_CLOEXEC` is always added: a concurrent fork+exec in the daemon must not
/// inherit fds into user trees.
pub fn open_at(
    dir: Option<BorrowedFd<'_>>,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid NUL-terminated string for the call; `dir` is borrowed and so
    // open for the call. The kernel returns a new fd that nothing else owns.
    let fd = cerr(unsafe {
        libc::openat(
            dir_raw(dir),
            path.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `statx(2)` with the basic fields and the mount id, synced like `stat`.
pub fn statx_at(
    dir: Option<BorrowedFd<'_>>,
    path: &CStr,
    flags: libc::c_int,
) -> io::Result<libc::statx> {
    // SAFETY: an all-zero statx is a valid value of this plain-data struct.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated, `buf` is a writable statx that outlives the call, `dir`
    // is borrowed.
    cerr(unsafe {
        libc::statx(
            dir_raw(dir),
            path.as_ptr(),
            flags | libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            &mut buf,
        )
    })?;
    Ok(buf)
}

/// `statx` of the file an fd refers to (an `O_PATH` fd works, and a symlink's is its own).
pub fn statx_fd(fd: BorrowedFd<'_>) -> io::Result<libc::statx> {
    statx_at(
        Some(fd),
        c"",
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
    )
}

/// `mkdirat(2)`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is borrowed.
    cerr(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })?;
    Ok(())
}

/// `mknodat(2)`: fifos and device nodes (never opened by this crate).
pub fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is borrowed.
    cerr(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) })?;
    Ok(())
}

/// `symlinkat(2)`.
pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; `dir` is borrowed.
    cerr(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
    Ok(())
}

/// The target of the symlink an `O_PATH|O_NOFOLLOW` fd refers to (`readlinkat(fd, "")`), so the
/// link read is exactly the inode that was checked.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `buf` is writable for `buf.len()` bytes for the call; "" is NUL-terminated.
        let n = cerr_size(unsafe {
            libc::readlinkat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        // A full buffer may mean truncation: grow and read again.
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// `linkat(2)` without following a symlink at `old`.
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; both fds are borrowed.
    cerr(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

/// `unlinkat(2)`; `flags` is 0 or `AT_REMOVEDIR`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is borrowed.
    cerr(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

/// `renameat2(2)`; `flags` is 0 or `RENAME_NOREPLACE`.
pub fn rename_at(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; both fds are borrowed.
    cerr(unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })?;
    Ok(())
}

/// `fchown(2)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments; the fd is borrowed.
    cerr(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    Ok(())
}

/// `fchownat(2)`; with `AT_SYMLINK_NOFOLLOW` this is `lchown` relative to a directory fd.
pub fn chown_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: u32,
    gid: u32,
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is borrowed.
    cerr(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) })?;
    Ok(())
}

/// `fchmod(2)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: plain integer arguments; the fd is borrowed.
    cerr(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
    Ok(())
}

/// `fchmodat(2)` (follows a symlink at `name`: only used on nodes this crate just created).
pub fn chmod_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is borrowed.
    cerr(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })?;
    Ok(())
}

/// `utimensat(2)` relative to a directory fd; with `AT_SYMLINK_NOFOLLOW` a symlink's own times.
pub fn utimens_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    times: &[libc::timespec; 2],
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated, `times` points to two timespecs; `dir` is borrowed.
    cerr(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) })?;
    Ok(())
}

/// `futimens(3)`.
pub fn futimens(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: `times` points to two timespecs; the fd is borrowed.
    cerr(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?;
    Ok(())
}

/// Calls a size-then-fill system call (the xattr family) until the buffer fits: the value may
/// grow between the two calls (`ERANGE`), so loop.
fn fill(mut call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let want = cerr_size(call(ptr::null_mut(), 0))?;
        if want == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; want];
        match cerr_size(call(buf.as_mut_ptr().cast(), buf.len())) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Where an xattr call goes: an open fd, or a path (used with `/proc/self/fd/N` of an `O_PATH`
/// fd, which resolves to exactly that inode — symlink, fifo or device — without opening it).
#[derive(Clone, Copy)]
pub enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a CStr),
}

/// `flistxattr` / `listxattr`: the NUL-separated list of names.
pub fn list_xattrs(target: XattrTarget<'_>) -> io::Result<Vec<u8>> {
    fill(|buf, len| match target {
        // SAFETY: `buf` is null with `len` 0 or writable for `len` bytes (see `fill`).
        XattrTarget::Fd(fd) => unsafe { libc::flistxattr(fd.as_raw_fd(), buf.cast(), len) },
        // SAFETY: as above; the path is NUL-terminated.
        XattrTarget::Path(p) => unsafe { libc::listxattr(p.as_ptr(), buf.cast(), len) },
    })
}

/// `fgetxattr` / `getxattr`.
pub fn get_xattr(target: XattrTarget<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    fill(|buf, len| match target {
        // SAFETY: `buf` is null with `len` 0 or writable for `len` bytes; `name` is
        // NUL-terminated.
        XattrTarget::Fd(fd) => unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf, len) },
        // SAFETY: as above; the path is NUL-terminated.
        XattrTarget::Path(p) => unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), buf, len) },
    })
}

/// `fsetxattr` / `setxattr` (create or replace).
pub fn set_xattr(target: XattrTarget<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    let ret = match target {
        // SAFETY: `value` is readable for its length; `name` is NUL-terminated.
        XattrTarget::Fd(fd) => unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        },
        // SAFETY: as above; the path is NUL-terminated.
        XattrTarget::Path(p) => unsafe {
            libc::setxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        },
    };
    cerr(ret)?;
    Ok(())
}

/// `fremovexattr` / `removexattr`.
pub fn remove_xattr(target: XattrTarget<'_>, name: &CStr) -> io::Result<()> {
    let ret = match target {
        // SAFETY: `name` is NUL-terminated; the fd is borrowed.
        XattrTarget::Fd(fd) => unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) },
        // SAFETY: both strings are NUL-terminated.
        XattrTarget::Path(p) => unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) },
    };
    cerr(ret)?;
    Ok(())
}

/// `ioctl(dst, FICLONE, src)`: share all of `src`'s extents with `dst` (a reflink).
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its integer argument; both fds are borrowed.
    cerr(unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) })?;
    Ok(())
}

/// `copy_file_range(2)` at explicit offsets (the fds' own offsets are left alone).
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    src_off: &mut i64,
    dst: BorrowedFd<'_>,
    dst_off: &mut i64,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: the offsets are valid `loff_t`s the kernel updates; both fds are borrowed.
    cerr_size(unsafe {
        libc::copy_file_range(src.as_raw_fd(), src_off, dst.as_raw_fd(), dst_off, len, 0)
    })
}

/// `lseek(2)`; used with `SEEK_DATA` / `SEEK_HOLE`.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: libc::c_int) -> io::Result<i64> {
    // SAFETY: plain integer arguments; the fd is borrowed.
    let ret = unsafe { libc::lseek64(fd.as_raw_fd(), offset, whence) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `pread(2)`.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: i64) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; the fd is borrowed.
    cerr_size(unsafe { libc::pread64(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) })
}

/// `pwrite(2)`.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: i64) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length; the fd is borrowed.
    cerr_size(unsafe { libc::pwrite64(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset) })
}

/// `ftruncate(2)`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: i64) -> io::Result<()> {
    // SAFETY: plain integer arguments; the fd is borrowed.
    cerr(unsafe { libc::ftruncate64(fd.as_raw_fd(), len) })?;
    Ok(())
}

/// `fsync(2)` (works on directory fds too).
pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the fd is borrowed.
    cerr(unsafe { libc::fsync(fd.as_raw_fd()) })?;
    Ok(())
}

/// `syncfs(2)`: flushes only the filesystem `fd` is on — never a global `sync`.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the fd is borrowed.
    cerr(unsafe { libc::syncfs(fd.as_raw_fd()) })?;
    Ok(())
}

/// `getdents64(2)`: fills `buf` with `struct linux_dirent64` records (parsed in safe code by the
/// caller); 0 at the end of the directory.
pub fn getdents(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; the fd is borrowed. The kernel writes at most
    // `buf.len()` bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `flock(2)`.
pub fn flock(fd: BorrowedFd<'_>, op: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integer arguments; the fd is borrowed.
    cerr(unsafe { libc::flock(fd.as_raw_fd(), op) })?;
    Ok(())
}

/// The effective uid and gid: temporaries are made as, and checked to be, this process's.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    unsafe { (libc::geteuid(), libc::getegid()) }
}
