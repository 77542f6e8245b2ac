//! `none` (`--tracking none`): running apps are not waited for. Launches are still kept out of
//! a critical section, and the groups launchers join are still read for `refreshctl status`.

use super::backend::{Backend, Notice};
use super::cgroups::Parents;
use super::Kind;

pub struct Untracked {
    parents: Parents,
    reason: String,
}

impl Untracked {
    pub fn new(parents: Parents, reason: String) -> Untracked {
        Untracked { parents, reason }
    }
}

impl Backend for Untracked {
    fn kind(&self) -> Kind {
        Kind::None
    }

    fn reason(&self) -> &str {
        &self.reason
    }

    fn parents(&self) -> &Parents {
        &self.parents
    }

    fn notice(&self) -> Notice {
        Notice::Never
    }
}
