//! The crate's only `unsafe` code: thin wrappers over the libc calls std does not offer
//! (`*at` file operations, credentials, `flock`, inotify, `getpwuid_r`, syslog, `execve`).
//!
//! Every wrapper returns `io::Result` (via [`cerr`]) and takes borrowed fds, so callers own and
//! close their descriptors through `OwnedFd`. Every fd this module opens is `O_CLOEXEC`, so
//! nothing of the privileged part leaks into the app.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A user id. Kept distinct from [`Gid`] so the two can never be swapped in a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uid(pub libc::uid_t);

/// A group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gid(pub libc::gid_t);

impl Uid {
    pub const ROOT: Uid = Uid(0);
}

impl Gid {
    pub const ROOT: Gid = Gid(0);
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The C convention "-1 means failure, errno says why" turned into a `Result`.
pub trait CReturn: Copy + PartialEq {
    const FAILED: Self;
}
impl CReturn for libc::c_int {
    const FAILED: Self = -1;
}
impl CReturn for libc::ssize_t {
    const FAILED: Self = -1;
}

/// Turns a C `-1` return into the errno.
pub fn cerr<T: CReturn>(ret: T) -> io::Result<T> {
    if ret == T::FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials

pub fn getuid() -> Uid {
    // SAFETY: getuid has no preconditions and cannot fail.
    Uid(unsafe { libc::getuid() })
}

pub fn getgid() -> Gid {
    // SAFETY: getgid has no preconditions and cannot fail.
    Gid(unsafe { libc::getgid() })
}

pub fn geteuid() -> Uid {
    // SAFETY: geteuid has no preconditions and cannot fail.
    Uid(unsafe { libc::geteuid() })
}

/// The supplementary groups of the calling process.
pub fn getgroups() -> io::Result<Vec<Gid>> {
    // SAFETY: with size 0 the list pointer is not accessed; returns the group count.
    let n = cerr(unsafe { libc::getgroups(0, std::ptr::null_mut()) })?;
    let mut groups: Vec<libc::gid_t> = vec![0; n as usize];
    // SAFETY: `groups` has room for exactly `n` entries and we pass that size; the kernel
    // writes at most that many (EINVAL if the set grew meanwhile, which we report).
    let m = cerr(unsafe { libc::getgroups(n, groups.as_mut_ptr()) })?;
    groups.truncate(m as usize);
    Ok(groups.into_iter().map(Gid).collect())
}

pub fn setgroups(groups: &[Gid]) -> io::Result<()> {
    let raw: Vec<libc::gid_t> = groups.iter().map(|g| g.0).collect();
    // SAFETY: `raw` holds `raw.len()` valid gids and outlives the call.
    cerr(unsafe { libc::setgroups(raw.len(), raw.as_ptr()) })?;
    Ok(())
}

/// Sets real, effective and saved gid to `gid`.
pub fn setresgid(gid: Gid) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cerr(unsafe { libc::setresgid(gid.0, gid.0, gid.0) })?;
    Ok(())
}

/// Sets real, effective and saved uid to `uid`.
pub fn setresuid(uid: Uid) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cerr(unsafe { libc::setresuid(uid.0, uid.0, uid.0) })?;
    Ok(())
}

/// Runs `f` with the effective uid `uid` (real and saved uids unchanged), then restores the
/// effective uid. An error when either switch fails: the caller must not go on then.
pub fn with_euid<T>(uid: Uid, f: impl FnOnce() -> T) -> io::Result<T> {
    let saved = geteuid();
    if saved == uid {
        return Ok(f());
    }
    // -1: leave unchanged.
    let keep = libc::uid_t::MAX;
    // SAFETY: plain integer arguments.
    cerr(unsafe { libc::setresuid(keep, uid.0, keep) })?;
    let out = f();
    // SAFETY: plain integer arguments; the saved uid (root) allows switching back.
    cerr(unsafe { libc::setresuid(keep, saved.0, keep) })?;
    Ok(out)
}

/// `setuid(2)`: used only to prove that regaining root fails after the drop.
pub fn setuid(uid: Uid) -> io::Result<()> {
    // SAFETY: plain integer argument.
    cerr(unsafe { libc::setuid(uid.0) })?;
    Ok(())
}

pub fn getresuid() -> io::Result<[Uid; 3]> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers point to live, writable locals.
    cerr(unsafe { libc::getresuid(&mut r, &mut e, &mut s) })?;
    Ok([Uid(r), Uid(e), Uid(s)])
}

pub fn getresgid() -> io::Result<[Gid; 3]> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers point to live, writable locals.
    cerr(unsafe { libc::getresgid(&mut r, &mut e, &mut s) })?;
    Ok([Gid(r), Gid(e), Gid(s)])
}

/// Sets the file mode creation mask and returns the previous one.
pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) }
}

/// The passwd fields the launcher needs.
pub struct Passwd {
    pub name: Vec<u8>,
    pub home: Vec<u8>,
}

/// `getpwuid_r`; `Ok(None)` when there is no entry for `uid`.
pub fn getpwuid(uid: Uid) -> io::Result<Option<Passwd>> {
    let mut size = 1024usize;
    loop {
        let mut buf = vec![0u8; size];
        // SAFETY: an all-zero `struct passwd` is a valid value (null pointers, zero ids); it
        // is only read after getpwuid_r filled it in.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `pw`, `buf` (of `size` bytes) and `result` are live and writable for the
        // call; the strings in `pw` point into `buf`, which we keep until we copied them.
        let rc =
            unsafe { libc::getpwuid_r(uid.0, &mut pw, buf.as_mut_ptr().cast(), size, &mut result) };
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success pw_name and pw_dir are NUL-terminated strings inside `buf`,
        // which is still alive here.
        let (name, home) = unsafe {
            (
                CStr::from_ptr(pw.pw_name).to_bytes().to_vec(),
                CStr::from_ptr(pw.pw_dir).to_bytes().to_vec(),
            )
        };
        return Ok(Some(Passwd { name, home }));
    }
}

/// Whether process `pid` exists (`kill(pid, 0)`; EPERM still means it exists).
pub fn process_exists(pid: libc::pid_t) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission checks.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

// ---------------------------------------------------------------------------------------------
// Files

/// `openat(2)` (`dir` None means AT_FDCWD); `O_CLOEXEC` is always added.
pub fn openat(
    dir: Option<BorrowedFd<'_>>,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `path` is NUL-terminated and outlives the call; `dirfd` is a live descriptor
    // (borrowed) or AT_FDCWD.
    let fd = cerr(unsafe {
        libc::openat(
            dirfd,
            path.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    })?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is a live descriptor.
    cerr(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })?;
    Ok(())
}

/// `renameat(2)` within one directory.
pub fn renameat(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; `dir` is a live descriptor.
    cerr(unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) })?;
    Ok(())
}

/// `unlinkat(2)` of a file.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is a live descriptor.
    cerr(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
    Ok(())
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`, blocking only before the pool
/// is first initialised at boot).
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe the writable `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Connects a Unix stream socket to `path`, waiting at most `timeout`: a listener that never
/// accepts (its backlog full) would block `connect(2)` for ever, and the socket may be a user's.
/// A timeout shows as `WouldBlock`.
pub fn connect_unix(
    path: &std::path::Path,
    timeout: std::time::Duration,
) -> io::Result<std::os::unix::net::UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain integer arguments.
    let fd =
        cerr(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let stream = std::os::unix::net::UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // A Unix socket's connect waits no longer than its send timeout.
    stream.set_write_timeout(Some(timeout.max(std::time::Duration::from_micros(1))))?;
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    loop {
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; the descriptor is live.
        let rc = unsafe {
            libc::connect(
                stream.as_raw_fd(),
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        match cerr(rc) {
            Ok(_) => return Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The fields of `struct stat` the launcher checks.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub uid: Uid,
    pub size: i64,
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            uid: Uid(st.st_uid),
            size: st.st_size,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    // SAFETY: an all-zero `struct stat` is a valid value; fstat overwrites it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is live and writable; `fd` is a live descriptor.
    cerr(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Stat::from_raw(&st))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    // SAFETY: an all-zero `struct stat` is a valid value; fstatat overwrites it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated, `st` writable, `dir` a live descriptor.
    cerr(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(Stat::from_raw(&st))
}

/// `stat(2)` (follows symlinks): used on `/proc/self/exe`.
pub fn stat(path: &CStr) -> io::Result<Stat> {
    // SAFETY: an all-zero `struct stat` is a valid value; stat overwrites it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` writable.
    cerr(unsafe { libc::stat(path.as_ptr(), &mut st) })?;
    Ok(Stat::from_raw(&st))
}

/// `readlinkat(2)` of at most `max` bytes; a longer target is ENAMETOOLONG.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max + 1];
    // SAFETY: `buf` has `buf.len()` writable bytes; `name` is NUL-terminated.
    let n = cerr(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })? as usize;
    if n > max {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(buf)
}

/// `flock(fd, LOCK_EX)`, retried on EINTR.
pub fn flock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    flock(fd, libc::LOCK_EX)
}

/// `flock(fd, LOCK_SH)`, retried on EINTR.
pub fn flock_shared(fd: BorrowedFd<'_>) -> io::Result<()> {
    flock(fd, libc::LOCK_SH)
}

fn flock(fd: BorrowedFd<'_>, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: `fd` is a live descriptor.
        match cerr(unsafe { libc::flock(fd.as_raw_fd(), op) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// Sets the effective gid (real and saved unchanged): what files and cgroups made from now on
/// are owned by.
pub fn setegid(gid: Gid) -> io::Result<()> {
    // -1: leave unchanged.
    let keep = libc::gid_t::MAX;
    // SAFETY: plain integer arguments.
    cerr(unsafe { libc::setresgid(keep, gid.0, keep) })?;
    Ok(())
}

/// A new inotify instance (`IN_CLOEXEC`, blocking reads).
pub fn inotify_init() -> io::Result<OwnedFd> {
    // SAFETY: plain flag argument.
    let fd = cerr(unsafe { libc::inotify_init1(libc::IN_CLOEXEC) })?;
    // SAFETY: inotify_init1 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds a watch; returns its descriptor.
pub fn inotify_add_watch(ino: BorrowedFd<'_>, path: &CStr, mask: u32) -> io::Result<libc::c_int> {
    // SAFETY: `path` is NUL-terminated; `ino` is a live inotify descriptor.
    cerr(unsafe { libc::inotify_add_watch(ino.as_raw_fd(), path.as_ptr(), mask) })
}

pub fn inotify_rm_watch(ino: BorrowedFd<'_>, wd: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integer arguments; `ino` is a live inotify descriptor.
    cerr(unsafe { libc::inotify_rm_watch(ino.as_raw_fd(), wd) })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Signals, syslog, exec

/// Restores the default SIGPIPE action. Rust's runtime ignores SIGPIPE at start-up, and an
/// ignored disposition survives `execve`; `std::process::Command` undoes it for its children,
/// and so must we before our own `execve`.
pub fn default_sigpipe() -> io::Result<()> {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE; no handler code is installed.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes one line to syslog (facility user, ident `confine-hook`, with the pid). Silently
/// does nothing when no syslog daemon listens, as syslog(3) does.
pub fn syslog_notice(msg: &str) {
    let Ok(msg) = CString::new(msg) else { return };
    // SAFETY: the ident is a static NUL-terminated string (openlog keeps the pointer); the
    // format is a static "%s" and `msg` is NUL-terminated and alive for the call.
    unsafe {
        libc::openlog(c"confine-hook".as_ptr(), libc::LOG_PID, libc::LOG_USER);
        libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), msg.as_ptr());
        libc::closelog();
    }
}

/// `execve(2)`; returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: `path` and every string are NUL-terminated and alive (borrowed from the
    // caller); both pointer arrays are NULL-terminated and alive for the call.
    unsafe { libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    io::Error::last_os_error()
}

/// `fstatvfs(2)`: whether the mount `fd` is on is read-only (`ST_RDONLY`).
pub fn on_readonly_mount(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: an all-zero `struct statvfs` is a valid value; fstatvfs overwrites it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is live and writable; `fd` is a live descriptor.
    cerr(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

/// `openat2(2)` of `path` beneath `dir` with `flags | O_CLOEXEC` and the `RESOLVE_*` bits in
/// `resolve`. ENOSYS on kernels before 5.6.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero `struct open_how` is a valid value (three integers).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: `path` is NUL-terminated and outlives the call; `how` is a live, initialised
    // `struct open_how` whose size is passed with it; `dir` is a live descriptor.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    // A descriptor, or -1: both fit an int.
    let fd = cerr(ret as libc::c_int)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A listener that never accepts, its backlog full: connect gives up at its timeout.
    #[test]
    fn a_connect_nobody_accepts_ends_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // SAFETY: plain arguments on a live descriptor.
        cerr(unsafe { libc::listen(listener.as_raw_fd(), 0) }).unwrap();
        // Fill the backlog (it holds one more than asked for).
        let mut held = vec![];
        let t = Instant::now();
        let e = loop {
            match connect_unix(&path, Duration::from_millis(200)) {
                Ok(s) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 8, "the backlog never filled");
        };
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let long = std::path::PathBuf::from("/".repeat(200));
        assert_eq!(
            connect_unix(&long, Duration::from_millis(1))
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
