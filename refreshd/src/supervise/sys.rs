//! Every `unsafe` of refreshd, each block with why it is sound: what a forked child does before
//! it executes its program, and taking the sockets systemd passed. The rest of the crate denies
//! `unsafe` (lib.rs).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::Signal;

use super::User;

/// Makes `cmd`'s child, before it executes: drop to `user` if given (groups, then gid, then uid,
/// after which no more changes are allowed, then a check that the drop stuck), and die with the
/// thread that starts it (which must wait for it), so that nothing refreshd runs outlives its
/// interest: if refreshd dies, so does the child, rather than run on unbounded.
pub(super) fn before_exec(cmd: &mut Command, user: Option<&User>) {
    let parent = nix::unistd::getpid();
    let user = user.map(|u| (u.uid, u.gid, u.groups.clone()));
    // SAFETY: the closure runs in the forked child before exec and makes only system calls
    // (setgroups, setresgid, setresuid, getresuid, prctl, getppid) on data prepared before the
    // fork, and builds io::Errors from raw errnos: no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid, groups)) = &user {
                let (uid, gid) = (*uid, *gid);
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                let (mut r, mut e, mut sv) = (0, 0, 0);
                if libc::getresuid(&mut r, &mut e, &mut sv) != 0
                    || r != uid
                    || e != uid
                    || sv != uid
                {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            // Set after the uid change, which clears it. The signal follows the thread that
            // forked.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The sockets systemd passed (`LISTEN_FDS`), owned. Must run before any thread starts: it
/// unsets the `LISTEN_*` variables, so children do not inherit them and a second call finds
/// none.
pub(crate) fn listen_fds() -> io::Result<Vec<OwnedFd>> {
    let fds = sd_notify::listen_fds()?;
    // SAFETY: systemd passed these descriptors to this process alone, open, and nothing else in
    // the process owns them: the LISTEN_* variables that named them are now unset.
    Ok(fds.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect())
}
