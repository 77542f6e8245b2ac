//! The caller's credentials, captured before anything else, and the irrevocable drop back to
//! them (supplementary groups → gid → uid, then proof that it stuck).

use crate::error::{fail, Result};
use crate::sys::{self, Gid, Uid};

/// Proof that the process runs with the caller's credentials only: what works in the caller's
/// own trees (their data directories) takes one, so it cannot be called as root by mistake.
pub struct Dropped(());

#[cfg(test)]
impl Dropped {
    /// Unit tests run as whoever runs them; they only touch their own scratch trees.
    pub fn for_tests() -> Dropped {
        Dropped(())
    }
}

/// Who started the launcher: its real uid and gid and its supplementary groups.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

impl Caller {
    /// Captures the real credentials. Call first thing in `main`.
    pub fn capture() -> Result<Caller> {
        let groups = sys::getgroups().map_err(|e| fail!("cannot read the caller's groups: {e}"))?;
        Ok(Caller {
            uid: sys::getuid(),
            gid: sys::getgid(),
            groups,
        })
    }

    /// Drops every privilege for good: supplementary groups, then gid, then uid (after the
    /// uid change we could no longer change the others), then checks that real, effective
    /// and saved ids all are the caller's and, for a non-root caller, that root cannot be
    /// regained. A drop that did not stick aborts the process.
    pub fn drop_privileges(&self) -> Result<Dropped> {
        sys::setgroups(&self.groups)
            .map_err(|e| fail!("cannot drop privileges (setgroups): {e}"))?;
        sys::setresgid(self.gid).map_err(|e| fail!("cannot drop privileges (setresgid): {e}"))?;
        sys::setresuid(self.uid).map_err(|e| fail!("cannot drop privileges (setresuid): {e}"))?;
        self.assert_dropped();
        Ok(Dropped(()))
    }

    fn assert_dropped(&self) {
        let uids = sys::getresuid().ok();
        let gids = sys::getresgid().ok();
        let mut want = self.groups.clone();
        want.sort_unstable();
        want.dedup();
        let mut have = sys::getgroups().ok();
        if let Some(h) = &mut have {
            h.sort_unstable();
            h.dedup();
        }
        let ok = uids == Some([self.uid; 3])
            && gids == Some([self.gid; 3])
            && have.as_ref() == Some(&want)
            && (self.uid == Uid::ROOT || sys::setuid(Uid::ROOT).is_err());
        if !ok {
            // Never continue with privileges we meant to give up.
            eprintln!(
                "confine-hook: dropping privileges did not stick (uids {uids:?}, gids {gids:?}, \
                 groups {have:?}); aborting"
            );
            std::process::abort();
        }
    }
}
