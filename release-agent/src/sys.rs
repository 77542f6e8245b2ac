//! Every `unsafe` of the library: thin, safe wrappers over the few libc calls the agent makes.
//!
//! Nothing here decides anything; the policy (which directory, which checks) is in `lib.rs`.

#![allow(unsafe_code)]

use core::ffi::{c_char, c_int, CStr};
use core::mem::MaybeUninit;

// With libc's `std` feature off, the libc crate emits its own link directives; with it on (feature
// unification in a workspace build) it leaves them to std, which a no_std binary does not link.
// Ask for the C library ourselves so the no_std binary links either way.
#[link(name = "c")]
extern "C" {}

/// An `errno` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub c_int);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);

    fn last() -> Errno {
        // SAFETY: `__errno_location` always returns a valid pointer to this thread's errno.
        Errno(unsafe { *libc::__errno_location() })
    }
}

/// sudo-rs's `cerr`: turns the C convention (-1 and errno) into a `Result`.
fn cerr(ret: c_int) -> Result<c_int, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// An owned file descriptor, closed on drop.
#[derive(Debug)]
pub struct Fd(c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: `self.0` was returned by a successful `open`/`openat` and is owned by this value
        // alone, so it is open and nobody else closes it.
        unsafe { libc::close(self.0) };
    }
}

/// A user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uid(pub u32);

impl Uid {
    pub const ROOT: Uid = Uid(0);
}

/// What the agent checks about a directory it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub owner: Uid,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
}

/// Whether opening a directory may follow a symbolic link in the last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    Yes,
    No,
}

/// Flags for opening a directory only to stat it and to name entries in it: never creates,
/// never reads, never becomes a controlling terminal, closed on exec.
fn dir_flags(follow: Follow) -> c_int {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    match follow {
        Follow::Yes => flags,
        // With O_DIRECTORY, a symlink in the last component fails with ENOTDIR.
        Follow::No => flags | libc::O_NOFOLLOW,
    }
}

/// Opens the directory at the absolute `path`.
pub fn open_dir(path: &CStr, follow: Follow) -> Result<Fd, Errno> {
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call and is not
    // kept after it; without O_CREAT or O_TMPFILE, `open` reads no mode argument.
    cerr(unsafe { libc::open(path.as_ptr(), dir_flags(follow)) }).map(Fd)
}

/// Opens the directory `name` relative to `dir`.
pub fn open_dir_at(dir: &Fd, name: &CStr, follow: Follow) -> Result<Fd, Errno> {
    // SAFETY: `dir.0` is an open descriptor borrowed for the call; `name` is a valid
    // NUL-terminated string not kept after it; without O_CREAT or O_TMPFILE, no mode is read.
    cerr(unsafe { libc::openat(dir.0, name.as_ptr(), dir_flags(follow)) }).map(Fd)
}

/// `fstat(fd)`: owner and mode (works on `O_PATH` descriptors, Linux 3.6+).
pub fn stat(fd: &Fd) -> Result<Stat, Errno> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd.0` is open; `st` points to writable memory the size of a `struct stat`.
    cerr(unsafe { libc::fstat(fd.0, st.as_mut_ptr()) })?;
    // SAFETY: `fstat` succeeded, so it filled in the whole structure.
    let st = unsafe { st.assume_init() };
    Ok(Stat {
        owner: Uid(st.st_uid),
        mode: st.st_mode,
    })
}

/// `unlinkat(dir, name, 0)`: removes a non-directory entry.
pub fn unlink_at(dir: &Fd, name: &CStr) -> Result<(), Errno> {
    // SAFETY: `dir.0` is open; `name` is a valid NUL-terminated string not kept after the call.
    cerr(unsafe { libc::unlinkat(dir.0, name.as_ptr(), 0) }).map(drop)
}

/// The one argument of a process started as `argv[0] ARG`, or None for any other `argc`.
///
/// # Safety
///
/// `argc` and `argv` must be what the C runtime passed to `main`: `argv` points to `argc`
/// pointers to NUL-terminated strings (followed by a null pointer) that live, unmodified, for
/// the rest of the process.
pub unsafe fn single_arg(argc: c_int, argv: *const *const c_char) -> Option<&'static [u8]> {
    if argc != 2 || argv.is_null() {
        return None;
    }
    // SAFETY: argc == 2, so `argv` has at least two elements (the caller's contract).
    let arg = unsafe { *argv.add(1) };
    if arg.is_null() {
        return None;
    }
    // SAFETY: `arg` is a non-null `argv` element: a NUL-terminated string that outlives us.
    Some(unsafe { CStr::from_ptr(arg) }.to_bytes())
}

/// Ends the process at once (the no_std binary's panic handler).
pub fn abort() -> ! {
    // SAFETY: `abort` has no preconditions.
    unsafe { libc::abort() }
}
