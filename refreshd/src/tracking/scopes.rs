//! `systemd`: systemd is PID 1, and every launch is in a transient scope of a systemd manager —
//! its user's (`user@UID.service/app.slice/…`) or the system's — recorded by the launcher in
//! `RUNCTL/units/UNIT` (docs/runctl-protocol.md, "The systemd world"). A snap's processes are
//! those of its units' cgroups (and of its freezer group, when a freezer is mounted); inotify on
//! the registry says when a unit appears, and on each unit's `cgroup.events` when it empties.
//! Nothing of ours is made in the cgroup2 tree: systemd makes and removes the scopes' cgroups.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tracing::debug;

use super::backend::{watch_or_poll, Backend, Events, Notice};
use super::cgroups::Parents;
use super::markers::Markers;
use super::Kind;

/// The largest registry entry read (a cgroup path).
const MAX_ENTRY: u64 = 4096;

/// How many cgroups of one scope are read, at most. A user's scope is theirs to subdivide (and
/// the check runs under the snap's lock): the bound keeps one user from making it slow.
const MAX_CGROUPS: usize = 4096;

pub struct Scopes {
    parents: Parents,
    reason: String,
    registry: Registry,
    events: Mutex<Option<inotify::Inotify>>,
    polled: Option<Duration>,
}

/// The launchers' record of the units they joined, and where their cgroups are.
#[derive(Clone)]
pub struct Registry {
    /// `RUNCTL/units`.
    pub dir: PathBuf,
    /// The cgroup2 mount.
    pub unified: PathBuf,
}

/// One recorded unit.
#[derive(Clone)]
pub struct Unit {
    /// The entry's (and the unit's) name.
    pub name: String,
    /// The instance it belongs to.
    pub instance: String,
    /// Its cgroup on this machine (the mount joined with the recorded path).
    pub cgroup: PathBuf,
}

impl Registry {
    /// Every unit recorded, or of one instance. Entries that are not ours (temporaries, names
    /// of no scope of ours, unreadable or odd contents) are skipped.
    pub fn units(&self, of: Option<&str>) -> io::Result<Vec<Unit>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let mut out = vec![];
        for e in rd {
            let e = e?;
            let Some(u) = self.unit(e.file_name().as_bytes()) else {
                continue;
            };
            if of.is_none_or(|n| n == u.instance) {
                out.push(u);
            }
        }
        Ok(out)
    }

    /// The entry `name`, if it is one of ours.
    pub fn unit(&self, name: &[u8]) -> Option<Unit> {
        let instance = refreshd_runctl::scope_instance(name)?;
        let name = std::str::from_utf8(name).ok()?.to_owned();
        let instance = std::str::from_utf8(instance).ok()?.to_owned();
        let text = read_capped(&self.dir.join(&name)).ok()?;
        let path = text.strip_suffix(b"\n")?;
        // Root wrote it, from /proc/self/cgroup; still, it must stay under the mount.
        let ok = path.starts_with(b"/")
            && !path.contains(&0)
            && !path.split(|&c| c == b'/').any(|p| p == b"..")
            && path.ends_with(format!("/{name}").as_bytes());
        if !ok {
            debug!(
                "ignoring the registry entry {name}: {:?}",
                String::from_utf8_lossy(path)
            );
            return None;
        }
        let rel = Path::new(std::ffi::OsStr::from_bytes(&path[1..]));
        Some(Unit {
            name,
            instance,
            cgroup: self.unified.join(rel),
        })
    }

    /// Removes the entries of units whose cgroup is gone or empty. Safe at any time: a unit's
    /// name is never reused, and nothing joins a scope once its launch has (its processes'
    /// children are born in it).
    pub fn prune(&self, of: Option<&str>) {
        for u in self.units(of).unwrap_or_default() {
            if !populated(&u.cgroup) {
                debug!(unit = %u.name, "its scope is gone or empty: forgetting it");
                let _ = fs::remove_file(self.dir.join(&u.name));
            }
        }
    }
}

/// Whether a unit's cgroup has a process in its subtree (`cgroup.events`); a cgroup that is
/// gone has none.
pub fn populated(cgroup: &Path) -> bool {
    fs::read_to_string(cgroup.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

fn read_capped(p: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut v = vec![];
    // Only root writes there; a link would still not be an entry of a launch's.
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)?
        .take(MAX_ENTRY)
        .read_to_end(&mut v)?;
    Ok(v)
}

/// Every process in a unit's cgroup and the cgroups below it (an app may make its own inside
/// its scope), read breadth first, at most [`MAX_CGROUPS`] of them. A cgroup that is gone has
/// none. A scope the kernel says is populated but whose processes are past the bound is an
/// error, never "empty".
fn unit_procs(unit: &Path, out: &mut Vec<u32>) -> io::Result<()> {
    let before = out.len();
    let mut queue = std::collections::VecDeque::from([unit.to_path_buf()]);
    let mut seen = 0;
    while let Some(cg) = queue.pop_front() {
        seen += 1;
        if seen > MAX_CGROUPS {
            break;
        }
        match fs::read_to_string(cg.join("cgroup.procs")) {
            Ok(s) => out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        let Ok(rd) = fs::read_dir(&cg) else { continue };
        // One past the bound at most, so that reaching it is seen.
        let room = (MAX_CGROUPS + 1).saturating_sub(seen + queue.len());
        queue.extend(
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .take(room),
        );
    }
    if seen > MAX_CGROUPS && out.len() == before && populated(unit) {
        return Err(io::Error::other(format!(
            "{} has processes below more than {MAX_CGROUPS} cgroups; they are not read",
            unit.display()
        )));
    }
    Ok(())
}

/// Watches the registry for units being recorded (the watcher then adds each unit's
/// `cgroup.events`).
pub fn setup(parents: Parents, registry: Registry, poll_interval: Duration) -> Scopes {
    let mut reason = format!(
        "systemd is PID 1: apps are in scopes of systemd's managers, recorded in {}",
        registry.dir.display()
    );
    let mask = inotify::WatchMask::CREATE | inotify::WatchMask::MOVED_TO;
    let (events, polled) = watch_or_poll(&registry.dir, mask, poll_interval, &mut reason);
    Scopes {
        parents,
        reason,
        registry,
        events: Mutex::new(events),
        polled,
    }
}

impl Backend for Scopes {
    fn kind(&self) -> Kind {
        Kind::Systemd
    }

    fn reason(&self) -> &str {
        &self.reason
    }

    fn parents(&self) -> &Parents {
        &self.parents
    }

    fn procs(&self, name: &str) -> io::Result<Vec<u32>> {
        let mut all = self.parents.procs(name)?;
        for u in self.registry.units(Some(name))? {
            unit_procs(&u.cgroup, &mut all)?;
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    fn groups(&self, name: &str) -> Vec<PathBuf> {
        let mut g = self.parents.groups(name);
        g.extend(
            self.registry
                .units(Some(name))
                .unwrap_or_default()
                .into_iter()
                .map(|u| u.cgroup),
        );
        g
    }

    fn tracked_names(&self) -> Vec<String> {
        let mut names = self.parents.names();
        names.extend(
            self.registry
                .units(None)
                .unwrap_or_default()
                .into_iter()
                .map(|u| u.instance),
        );
        names.sort();
        names.dedup();
        names
    }

    fn notice(&self) -> Notice {
        self.polled.map_or(Notice::Events, Notice::Poll)
    }

    fn take_events(&self) -> Option<Events> {
        let inotify = self.events.lock().unwrap().take()?;
        Some(Events::Units {
            inotify,
            registry: self.registry.clone(),
        })
    }

    fn forget(&self, markers: &Markers, name: &str) {
        for g in self.parents.groups(name) {
            let _ = fs::remove_dir(g);
        }
        self.registry.prune(Some(name));
        let _ = self.disarm(markers, name);
    }

    fn remove_unused_groups(&self, markers: &Markers) {
        // The scopes are systemd's to remove; their entries go once they are empty.
        self.registry.prune(None);
        for name in self.parents.names() {
            let Ok(Some(_lock)) = markers.try_lock(&name) else {
                continue;
            };
            if self.procs(&name).is_ok_and(|p| p.is_empty()) {
                for g in self.parents.groups(&name) {
                    super::cgroups::remove_group(&g);
                }
            }
        }
        self.parents.remove_parents();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "snap.hello.hello.refreshd-0123456789abcdef.scope";

    fn cgroup(dir: &Path, procs: &str, populated: bool) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("cgroup.procs"), procs).unwrap();
        let p = u8::from(populated);
        fs::write(
            dir.join("cgroup.events"),
            format!("populated {p}\nfrozen 0\n"),
        )
        .unwrap();
    }

    #[test]
    fn entries_are_read_only_when_they_are_ours_and_stay_under_the_mount() {
        let t = tempfile::tempdir().unwrap();
        let reg = Registry {
            dir: t.path().join("units"),
            unified: t.path().join("cg"),
        };
        fs::create_dir_all(&reg.dir).unwrap();
        let path = format!("/user.slice/app.slice/{UNIT}");
        fs::write(reg.dir.join(UNIT), format!("{path}\n")).unwrap();
        let u = reg.unit(UNIT.as_bytes()).unwrap();
        assert_eq!(u.instance, "hello");
        assert_eq!(u.cgroup, reg.unified.join(&path[1..]));
        let other = "snap.hello.hello.refreshd-1123456789abcdef.scope";
        for bad in [
            "relative/x\n".to_owned(),
            format!("/a/../../etc/{other}\n"),
            format!("/a/{UNIT}\n"),
            format!("/a/{other}"),
        ] {
            fs::write(reg.dir.join(other), bad.as_bytes()).unwrap();
            assert!(reg.unit(other.as_bytes()).is_none(), "{bad:?}");
        }
        fs::write(reg.dir.join(".x.tmp"), "/x\n").unwrap();
        fs::write(reg.dir.join("run-r1.scope"), "/run-r1.scope\n").unwrap();
        let names: Vec<_> = reg
            .units(None)
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, [UNIT]);

        // An empty or gone scope's entry goes; a populated one's stays.
        cgroup(&u.cgroup, "42\n", true);
        reg.prune(None);
        assert!(reg.dir.join(UNIT).exists());
        cgroup(&u.cgroup, "", false);
        reg.prune(Some("hello"));
        assert!(!reg.dir.join(UNIT).exists());
    }

    #[test]
    fn a_scope_is_read_with_the_cgroups_below_it_within_a_bound() {
        let t = tempfile::tempdir().unwrap();
        let unit = t.path().join(UNIT);
        cgroup(&unit, "1\n2\n", true);
        cgroup(&unit.join("inner"), "3\n", true);
        cgroup(&unit.join("inner/deeper"), "4\n", true);
        let mut all = vec![];
        unit_procs(&unit, &mut all).unwrap();
        all.sort_unstable();
        assert_eq!(all, [1, 2, 3, 4]);
        let mut none = vec![];
        unit_procs(&t.path().join("gone"), &mut none).unwrap();
        assert!(none.is_empty());

        // Processes hidden past the bound: an error, never "empty".
        let wide = t.path().join("wide");
        cgroup(&wide, "", true);
        for i in 0..MAX_CGROUPS {
            fs::create_dir(wide.join(format!("c{i}"))).unwrap();
        }
        let mut found = vec![];
        let e = unit_procs(&wide, &mut found).unwrap_err();
        assert!(e.to_string().contains("not read"), "{e}");
    }
}
