//! Who is calling: the kernel's word (SO_PEERCRED), never the client's.

use refreshd_client::types::ErrorKind;
use tokio::net::UnixStream;

use super::{ApiError, ApiState};

/// The credentials of the process at the other end of the connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
}

/// A uid that is nobody's: used when the kernel could not tell, so nothing is allowed.
const UNKNOWN_UID: u32 = u32::MAX;

impl Peer {
    /// Who connected, as the kernel recorded it when they did.
    pub fn of(stream: &UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
            },
            Err(_) => Peer {
                uid: UNKNOWN_UID,
                gid: UNKNOWN_UID,
            },
        }
    }
}

impl Peer {
    /// Allows root, and members of the admin group; refuses anyone else with a 403 that says
    /// what `what` needs.
    pub fn require_admin(&self, st: &ApiState, what: &str) -> Result<(), ApiError> {
        if self.is_admin(st) {
            return Ok(());
        }
        let who = match st.admin_gid {
            Some(g) => format!("root or membership of group {}", group_name(g)),
            None => "root".to_owned(),
        };
        Err(ApiError::new(
            ErrorKind::Forbidden,
            format!("{what} requires {who}; try again with sudo"),
        ))
    }

    /// Root, or a member of the admin group.
    pub fn is_admin(&self, st: &ApiState) -> bool {
        self.uid == 0
            || st
                .admin_gid
                .is_some_and(|gid| self.gid == gid || user_in_group(self.uid, gid))
    }
}

fn user_in_group(uid: u32, gid: u32) -> bool {
    use nix::unistd::{getgrouplist, Gid, Uid, User};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    getgrouplist(&name, user.gid)
        .map(|groups| groups.contains(&Gid::from_raw(gid)))
        .unwrap_or(false)
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}
