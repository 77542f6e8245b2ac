//! `environ`: no usable cgroup hierarchy. A snap's processes are those whose environment
//! carries the `SNAP` confine-hook gives every app, found by a scan of /proc; nothing says when
//! they are gone, so a waiting refresh looks again every poll interval.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::backend::{Backend, Notice};
use super::cgroups::Parents;
use super::Kind;
use crate::procfs;

pub struct Environ {
    parents: Parents,
    reason: String,
    /// `ROOT/snap`: the `SNAP` variable of a snap's apps lies under it.
    snaps: PathBuf,
    every: Duration,
}

impl Environ {
    pub fn new(parents: Parents, reason: String, snaps: PathBuf, every: Duration) -> Environ {
        Environ {
            parents,
            reason,
            snaps,
            every,
        }
    }
}

impl Backend for Environ {
    fn kind(&self) -> Kind {
        Kind::Environ
    }

    fn reason(&self) -> &str {
        &self.reason
    }

    fn parents(&self) -> &Parents {
        &self.parents
    }

    fn procs(&self, name: &str) -> io::Result<Vec<u32>> {
        procs_by_environment(&self.snaps.join(name))
    }

    fn notice(&self) -> Notice {
        Notice::Poll(self.every)
    }
}

/// The processes whose environment carries `SNAP=SNAP_DIR/REV`, which confine-hook gives every
/// app and children inherit. Best effort: a process that clears its environment, or a launch
/// between its check of the inhibition and its `execve`, is not seen
/// (docs/runctl-protocol.md, `none`). Processes that vanish mid-scan are skipped.
fn procs_by_environment(snap_dir: &Path) -> io::Result<Vec<u32>> {
    let mut want = b"SNAP=".to_vec();
    want.extend_from_slice(snap_dir.as_os_str().as_encoded_bytes());
    want.push(b'/');
    let mut found = vec![];
    for pid in procfs::pids()? {
        let Some(env) = procfs::environ(pid) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|var| var.starts_with(&want)) {
            found.push(pid);
        }
    }
    Ok(found)
}
