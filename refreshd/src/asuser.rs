//! Running a helper as a user: the desktop notification helper (`notify`) and each user's copy
//! of their own data (`usertree`). One way to drop to a user, so both get the same care.

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::Context as _;
use nix::sys::signal::Signal;

/// The groups a login of `user` (primary group `gid`) would have.
pub(crate) fn groups_of(user: &str, gid: u32) -> anyhow::Result<Vec<libc::gid_t>> {
    let name =
        CString::new(user).map_err(|_| anyhow::anyhow!("user name {user:?} holds a NUL byte"))?;
    let groups = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid))
        .with_context(|| format!("cannot list the groups of {user}"))?;
    Ok(groups.into_iter().map(|g| g.as_raw()).collect())
}

/// Makes `cmd` run as `uid`, `gid` and `groups`: groups, then gid, then uid (after that no more
/// changes are allowed), then a check that the drop stuck; and it dies with the thread that
/// starts it (which must wait for it), so nothing of a user's outlives refreshd's interest.
pub(crate) fn drop_to(cmd: &mut Command, uid: u32, gid: u32, groups: Vec<libc::gid_t>) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and makes only system calls
    // (setgroups, setresgid, setresuid, getresuid, prctl, getppid) on data prepared before the
    // fork: no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let (mut r, mut e, mut sv) = (0, 0, 0);
            if libc::getresuid(&mut r, &mut e, &mut sv) != 0 || r != uid || e != uid || sv != uid {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
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
