//! `v1-poll`: the cgroup v1 freezer without refreshd's release agent (another program owns
//! the hierarchy's `release_agent`, or inotify is not to be had): a waiting refresh re-reads
//! `cgroup.procs` every poll interval.

use std::time::Duration;

use super::backend::{Backend, Notice};
use super::cgroups::Parents;
use super::v1::Registration;
use super::Kind;

pub struct V1Poll {
    parents: Parents,
    reason: String,
    every: Duration,
    /// The release agent, when it was registered before inotify turned out to be missing.
    agent: Option<Registration>,
}

impl V1Poll {
    pub fn new(
        parents: Parents,
        reason: String,
        every: Duration,
        agent: Option<Registration>,
    ) -> V1Poll {
        V1Poll {
            parents,
            reason,
            every,
            agent,
        }
    }
}

impl Backend for V1Poll {
    fn kind(&self) -> Kind {
        Kind::V1Poll
    }

    fn reason(&self) -> &str {
        &self.reason
    }

    fn parents(&self) -> &Parents {
        &self.parents
    }

    fn notice(&self) -> Notice {
        Notice::Poll(self.every)
    }

    fn unregister_agent(&self) {
        if let Some(a) = &self.agent {
            a.unregister();
        }
    }
}
