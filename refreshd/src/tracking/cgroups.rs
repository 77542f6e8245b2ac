//! Finding the cgroup hierarchies (from /proc/self/mountinfo, never an assumed layout).

use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone)]
pub struct Mounts {
    /// Mount point of the cgroup v1 hierarchy with the freezer controller.
    pub freezer: Option<PathBuf>,
    /// Mount point of the cgroup2 hierarchy.
    pub unified: Option<PathBuf>,
}

impl Mounts {
    pub fn read() -> io::Result<Mounts> {
        Ok(Self::parse(&String::from_utf8_lossy(
            &crate::procfs::mountinfo()?,
        )))
    }

    /// With the parser confine-hook uses too: both must see the same hierarchies.
    pub fn parse(text: &str) -> Mounts {
        let m = refreshd_runctl::cgroup_mounts(text.as_bytes());
        let path = |raw: &[u8]| {
            let mut v = Vec::with_capacity(raw.len());
            refreshd_runctl::unescape(raw, |b| v.push(b));
            PathBuf::from(std::ffi::OsString::from_vec(v))
        };
        Mounts {
            freezer: m.freezer.map(path),
            unified: m.unified.map(path),
        }
    }
}

/// The v1 parent: created with `notify_on_release` set, which its children inherit.
pub fn make_v1_parent(parent: &Path) -> io::Result<()> {
    match fs::create_dir(parent) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    fs::write(parent.join("notify_on_release"), "1")
}

/// This root's parent groups (`PARENT`) in each hierarchy that is mounted and usable. The
/// launcher joins every hierarchy present whatever the backend, so every backend has them.
#[derive(Debug, Default, Clone)]
pub struct Parents {
    /// `FREEZER/PARENT`.
    pub v1: Option<PathBuf>,
    /// `UNIFIED/PARENT`.
    pub v2: Option<PathBuf>,
}

impl Parents {
    fn each(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.v1, &self.v2].into_iter().flatten()
    }

    /// The snap's groups, `PARENT/snap.NAME`, in every hierarchy.
    pub fn groups(&self, name: &str) -> Vec<PathBuf> {
        self.each()
            .map(|p| p.join(format!("snap.{name}")))
            .collect()
    }

    /// Every process in the snap's groups (the union over the hierarchies; a group that does
    /// not exist is empty).
    pub fn procs(&self, name: &str) -> io::Result<Vec<u32>> {
        let mut all = vec![];
        for g in self.groups(name) {
            match fs::read_to_string(g.join("cgroup.procs")) {
                Ok(s) => all.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    /// Instance names that have a group in some hierarchy.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .each()
            .filter_map(|p| fs::read_dir(p).ok())
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("snap.")
                    .map(str::to_owned)
            })
            .filter(|n| refreshd_runctl::valid_instance_name(n.as_bytes()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Removes the parents if nothing is left in them.
    pub fn remove_parents(&self) {
        for p in self.each() {
            remove_group(p);
        }
    }
}

/// Removes a group if it is empty; one that stays is said at debug level.
pub fn remove_group(g: &Path) {
    if let Err(e) = fs::remove_dir(g) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!(group = %g.display(), "group stays: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_hierarchies() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 1 0:40 / /mnt/with\\040space rw - cgroup2 cgroup2 rw";
        let m = Mounts::parse(text);
        assert_eq!(
            m.freezer.as_deref(),
            Some(Path::new("/sys/fs/cgroup/freezer"))
        );
        assert_eq!(
            m.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        let pure_v2 =
            Mounts::parse("30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate");
        assert!(pure_v2.freezer.is_none());
        assert_eq!(
            pure_v2.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup"))
        );
    }
}
