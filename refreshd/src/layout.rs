//! Where everything lives under the root (documented in docs/layout.md).
//!
//! The shape is snapd's, so snaps find what they expect; every path hangs off one root so that
//! several daemons can run side by side on scratch roots.

use std::path::{Path, PathBuf};

/// Ends the name of the record beside an extracted payload (`snap/NAME/.REV.refreshd-payload`).
pub const PAYLOAD_RECORD: &str = ".refreshd-payload";

/// The name a snapshot's data has beside the snap's own, in `var/snap` and in each
/// `HOME/snap`: `.saved-SET-INSTANCE` (a dot name is never a snap's).
pub fn saved_entry(set: u64, instance: &str) -> String {
    format!(".saved-{set}-{instance}")
}

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.at("var/lib/refreshd")
    }
    /// The signed store's root metadata this machine trusts (`--store-root` overrides it).
    pub fn store_root(&self) -> PathBuf {
        self.at("etc/refreshd/store-root.json")
    }
    /// What refreshd verified of the signed store: versions never go back from here.
    pub fn store_trust(&self) -> PathBuf {
        self.at("var/lib/refreshd/store-trust")
    }
    pub fn state_db(&self) -> PathBuf {
        self.at("var/lib/refreshd/state.db")
    }
    pub fn blobs(&self) -> PathBuf {
        self.at("var/lib/refreshd/blobs")
    }
    /// Uploaded files wait here until their change takes them (same filesystem as blobs/, so
    /// taking them is a rename).
    pub fn uploads(&self) -> PathBuf {
        self.at("var/lib/refreshd/uploads")
    }
    pub fn blob(&self, name: &str, rev: &str) -> PathBuf {
        self.blobs().join(format!("{name}_{rev}.snap"))
    }
    pub fn snaps_dir(&self) -> PathBuf {
        self.at("snap")
    }
    pub fn snap_dir(&self, name: &str) -> PathBuf {
        self.at("snap").join(name)
    }
    pub fn rev_dir(&self, name: &str, rev: &str) -> PathBuf {
        self.snap_dir(name).join(rev)
    }
    /// Extract mode: which blob (its sha3-384) the tree at `rev_dir` was unpacked from; root's,
    /// beside the tree, written only once the tree is complete and in place.
    pub fn payload_record(&self, name: &str, rev: &str) -> PathBuf {
        self.snap_dir(name).join(format!(".{rev}{PAYLOAD_RECORD}"))
    }
    pub fn current_link(&self, name: &str) -> PathBuf {
        self.snap_dir(name).join("current")
    }
    pub fn bin_dir(&self) -> PathBuf {
        self.at("snap/bin")
    }
    pub fn at_var_snap(&self) -> PathBuf {
        self.at("var/snap")
    }
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.at("var/snap").join(name)
    }
    pub fn data_rev(&self, name: &str, rev: &str) -> PathBuf {
        self.data_dir(name).join(rev)
    }
    pub fn data_common(&self, name: &str) -> PathBuf {
        self.data_dir(name).join("common")
    }
    /// Snapshot `set` of `name`'s system data (docs/layout.md, "Snapshots"): beside the snap's
    /// own data, so saving it is a rename on one filesystem.
    pub fn saved_data(&self, set: u64, name: &str) -> PathBuf {
        self.at_var_snap().join(saved_entry(set, name))
    }
    pub fn data_current(&self, name: &str) -> PathBuf {
        self.data_dir(name).join("current")
    }
    /// Markers and locks shared with confine-hook and the release agent.
    pub fn runctl_dir(&self) -> PathBuf {
        self.at(refreshd_runctl::RUNCTL_DIR)
    }
    /// Launch descriptions for confine-hook: `launch/INSTANCE/REV/APP`.
    pub fn launch_dir(&self, name: &str) -> PathBuf {
        self.at(refreshd_runctl::LAUNCH_DIR).join(name)
    }
    /// Where confine-hook is installed; launchers are symlinks to it.
    pub fn hook(&self) -> PathBuf {
        self.at(refreshd_runctl::HOOK_PATH)
    }
    /// Where services' unit files are written (`snap.NAME.APP.service`).
    pub fn unit_dir(&self) -> PathBuf {
        self.at("etc/systemd/system")
    }
    pub fn runtime_dir(&self) -> PathBuf {
        self.at("run/refreshd")
    }
    pub fn socket(&self) -> PathBuf {
        self.at("run/refreshd.socket")
    }
    /// Held (flock) by the running daemon: one daemon per root.
    pub fn daemon_lock(&self) -> PathBuf {
        self.at("run/refreshd/daemon.lock")
    }
    /// Users' runtime directories (`run/user/UID`, made by logind at login; user-controlled).
    pub fn user_runtime_dirs(&self) -> PathBuf {
        self.at("run/user")
    }
    /// A logged-in user's session bus socket: `run/user/UID/bus`.
    pub fn user_bus(&self, uid: u32) -> PathBuf {
        self.user_runtime_dirs().join(uid.to_string()).join("bus")
    }
    /// Present when snapd manages this root; refreshd then refuses to start.
    pub fn snapd_state(&self) -> PathBuf {
        self.at("var/lib/snapd/state.json")
    }

    /// Creates the directories the daemon writes to.
    pub fn ensure_dirs(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for (dir, mode) in [
            (self.state_dir(), 0o755),
            (self.blobs(), 0o700),
            (self.uploads(), 0o700),
            (self.snaps_dir(), 0o755),
            (self.bin_dir(), 0o755),
            (self.at("var/snap"), 0o755),
            (self.runtime_dir(), 0o755),
            (self.at(refreshd_runctl::LAUNCH_DIR), 0o755),
            (self.unit_dir(), 0o755),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)?;
        }
        Ok(())
    }
}
