//! The crate's only `unsafe` code: the loop-device ioctls (linux/loop.h), which neither std nor
//! nix wrap. Each function takes borrowed fds so the caller keeps ownership and closing.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

// From linux/loop.h. These are "bad" ioctl numbers (not built with _IO*), so nix's encoding
// macros would not produce them.
const LOOP_CLR_FD: u32 = 0x4C01;
const LOOP_GET_STATUS64: u32 = 0x4C05;
const LOOP_CONFIGURE: u32 = 0x4C0A;
const LOOP_CTL_GET_FREE: u32 = 0x4C82;

/// The loop device refuses writes.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// The loop device unbinds itself when its last user (the mount) goes away.
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` (Linux 5.8+): binds the backing file and sets flags in one ioctl, so
/// there is no window where the device is bound but still writable or not yet auto-clearing.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

// The kernel ABI sizes; a mismatch here would be silent memory corruption at runtime.
const _: () = assert!(size_of::<LoopInfo64>() == 232);
const _: () = assert!(size_of::<LoopConfig>() == 304);

/// Turns a C `-1` return into the errno.
fn cerr(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: the number of an unbound loop device, created if
/// need be. Another process may bind it before we do.
pub fn loop_ctl_get_free(control: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and only returns an int; the fd is valid for
    // the duration of the call because it is borrowed.
    let n = cerr(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) })?;
    u32::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `LOOP_CONFIGURE`: binds `backing` to the loop device with `flags` (`LO_FLAGS_*`), recording
/// `file_name` (truncated) for tools like `losetup -l`.
pub fn loop_configure(
    device: BorrowedFd<'_>,
    backing: BorrowedFd<'_>,
    flags: u32,
    file_name: &[u8],
) -> io::Result<()> {
    let backing_fd = u32::try_from(backing.as_raw_fd())
        .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let mut name = [0u8; LO_NAME_SIZE];
    // Keep the last byte NUL: the kernel treats the field as a C string.
    let n = file_name.len().min(LO_NAME_SIZE - 1);
    name[..n].copy_from_slice(&file_name[..n]);
    let config = LoopConfig {
        fd: backing_fd,
        block_size: 0, // 0: the kernel picks the backing file's logical block size.
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: name,
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: `config` is a fully initialised `struct loop_config` with the kernel's layout
    // (sizes asserted above) that outlives the call; the kernel only reads it. Both fds are
    // borrowed, so they stay open for the call.
    cerr(unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_CONFIGURE as _,
            &config as *const LoopConfig,
        )
    })?;
    Ok(())
}

/// `LOOP_CLR_FD`: unbinds the backing file (or, while the device is still open elsewhere, marks
/// it to unbind on last close).
pub fn loop_clr_fd(device: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument; the fd is borrowed and so valid for the call.
    cerr(unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD as _) })?;
    Ok(())
}

/// `LOOP_GET_STATUS64`: the device and inode of the file bound to the loop device, as the
/// kernel holds it open — not the path it was bound by, which may name another file since.
pub fn loop_backing(device: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    // SAFETY: an all-zero `struct loop_info64` is a valid value (integers and byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: `info` has the kernel's layout (size asserted above), is writable and outlives
    // the call; the kernel only writes into it. The fd is borrowed, so it stays open.
    cerr(unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_GET_STATUS64 as _,
            &mut info as *mut LoopInfo64,
        )
    })?;
    Ok((info.lo_device, info.lo_inode))
}
