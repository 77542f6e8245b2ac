//! Joining the snap's tracking cgroups: `MOUNT/PARENT/snap.NAME` in the cgroup v1 freezer
//! hierarchy and in the cgroup v2 hierarchy, whichever are mounted (found in
//! `/proc/self/mountinfo`, never assumed). PARENT is `refreshd` or `refreshd.ID`
//! (`refreshd_runctl::cgroup_parent`).

use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsFd;

use refreshd_runctl::{cgroup_parent, ID_LEN};

use crate::error::{fail, show, Result};
use crate::root::join;
use crate::sys;

/// Where the hierarchies the launcher cares about are mounted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mounts {
    /// A cgroup v1 hierarchy with the freezer controller.
    pub freezer: Option<Vec<u8>>,
    /// The cgroup v2 hierarchy.
    pub unified: Option<Vec<u8>>,
}

/// Finds the first freezer (v1) and the first cgroup2 mount in mountinfo text, with the parser
/// refreshd uses too (`refreshd_runctl::cgroup_mounts`): both must see the same hierarchies.
pub fn parse_mountinfo(text: &[u8]) -> Mounts {
    let m = refreshd_runctl::cgroup_mounts(text);
    let owned = |raw: &[u8]| {
        let mut v = Vec::with_capacity(raw.len());
        refreshd_runctl::unescape(raw, |b| v.push(b));
        v
    };
    Mounts {
        freezer: m.freezer.map(owned),
        unified: m.unified.map(owned),
    }
}

/// Which hierarchies the launch joined.
#[derive(Debug, Default)]
pub struct Joined {
    pub v1: bool,
    pub v2: bool,
}

/// Reads a /proc file whole. procfs reports size 0, so `fs::read` would start from a tiny
/// buffer and double it a read at a time (about ten syscalls on every launch); a page or two
/// is what these files hold.
fn read_proc(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut text = Vec::with_capacity(8192);
    std::fs::File::open(path)?.read_to_end(&mut text)?;
    Ok(text)
}

/// Joins this process to `PARENT/snap.NAME` in every available hierarchy — but cgroup2's when
/// `systemd` is PID 1: that tree is systemd's, and the launch joins a scope of it instead
/// (`scope`). A hierarchy that exists but cannot be joined is an error: an untracked process
/// could be cut off by a refresh.
pub fn join_all(root: &[u8], name: &[u8], systemd: bool) -> Result<Joined> {
    let text = read_proc("/proc/self/mountinfo")
        .map_err(|e| fail!("cannot read /proc/self/mountinfo to find the cgroups: {e}"))?;
    let mounts = parse_mountinfo(&text);
    let mut pbuf = [0u8; 9 + 1 + ID_LEN];
    let parent = cgroup_parent(root, &mut pbuf);
    let leaf = [b"snap.", name].concat();
    let pid = std::process::id().to_string();
    let mut joined = Joined::default();
    if let Some(mnt) = &mounts.freezer {
        join_one(mnt, parent, &leaf, true, pid.as_bytes())?;
        joined.v1 = true;
    }
    if let Some(mnt) = mounts.unified.as_ref().filter(|_| !systemd) {
        join_one(mnt, parent, &leaf, false, pid.as_bytes())?;
        joined.v2 = true;
    }
    Ok(joined)
}

/// Whether this process is the snap's service, started by systemd: it is in the unit's cgroup
/// `/system.slice/snap.INSTANCE.APP.service` (v2 or the `name=systemd` v1 hierarchy), as seen
/// from PID 1's cgroup namespace. Only root makes cgroups there, and a namespace of a user's own
/// (where the path could be faked) is not PID 1's. A service stays in its unit's cgroup:
/// systemd tracks and stops it, and refreshd stops it before a refresh's critical section.
pub fn in_service_unit(instance: &[u8], app: &[u8]) -> bool {
    let Ok(text) = read_proc("/proc/self/cgroup") else {
        return false;
    };
    let unit = [b"/system.slice/snap.", instance, b".", app, b".service"].concat();
    unit_in(&text, &unit) && same_cgroup_ns()
}

/// Whether `/proc/self/cgroup` text puts the process in `unit` in a hierarchy systemd manages.
fn unit_in(text: &[u8], unit: &[u8]) -> bool {
    text.split(|&c| c == b'\n').any(|line| {
        let mut parts = line.splitn(3, |&c| c == b':');
        let (_, ctrl, path) = (parts.next(), parts.next(), parts.next());
        matches!(ctrl, Some(b"") | Some(b"name=systemd")) && path == Some(unit)
    })
}

/// Whether this process is in PID 1's cgroup namespace (where the paths of systemd's units
/// mean what they say).
pub fn same_cgroup_ns() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/cgroup"),
        std::fs::read_link("/proc/1/ns/cgroup"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn join_one(mnt: &[u8], parent: &[u8], leaf: &[u8], v1: bool, pid: &[u8]) -> Result<()> {
    let path = join(&join(mnt, parent), leaf);
    let kind = if v1 { "cgroup v1 freezer" } else { "cgroup v2" };
    let err = |what: &str, e: std::io::Error| {
        fail!(
            "cannot join the {kind} group {} ({what}: {e}); the app was not started because \
             refreshd could not track it: check that {} is writable by root",
            show(&path),
            show(mnt)
        )
    };
    let c = |b: &[u8]| CString::new(b).map_err(|_| fail!("NUL in cgroup path {}", show(b)));
    let dirflags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let m = sys::openat(None, &c(mnt)?, libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .map_err(|e| err("open the mount", e))?;
    mkdir_exists_ok(m.as_fd(), &c(parent)?).map_err(|e| err("create the parent", e))?;
    let p = sys::openat(Some(m.as_fd()), &c(parent)?, dirflags, 0)
        .map_err(|e| err("open the parent", e))?;
    if v1 {
        // Before the child exists: children inherit notify_on_release at creation.
        write_at(p.as_fd(), c"notify_on_release", b"1")
            .map_err(|e| err("set notify_on_release on the parent", e))?;
    }
    mkdir_exists_ok(p.as_fd(), &c(leaf)?).map_err(|e| err("create the group", e))?;
    let g = sys::openat(Some(p.as_fd()), &c(leaf)?, dirflags, 0)
        .map_err(|e| err("open the group", e))?;
    if v1 {
        write_at(g.as_fd(), c"notify_on_release", b"1")
            .map_err(|e| err("set notify_on_release", e))?;
    }
    write_at(g.as_fd(), c"cgroup.procs", pid).map_err(|e| err("write cgroup.procs", e))
}

fn mkdir_exists_ok(dir: std::os::fd::BorrowedFd<'_>, name: &std::ffi::CStr) -> std::io::Result<()> {
    match sys::mkdirat(dir, name, 0o755) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

fn write_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
    data: &[u8],
) -> std::io::Result<()> {
    let fd = sys::openat(Some(dir), name, libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
    std::fs::File::from(fd).write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const THIS_MACHINE: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo() {
        let table: &[(&str, Option<&str>, Option<&str>)] = &[
            (
                THIS_MACHINE,
                Some("/sys/fs/cgroup/freezer"),
                Some("/sys/fs/cgroup/unified"),
            ),
            // Pure v2 (systemd's unified layout), with optional fields before the separator.
            (
                "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
                None,
                Some("/sys/fs/cgroup"),
            ),
            // Co-mounted controllers; escaped spaces; a freezer named only in mount options.
            (
                "1 2 0:1 / /c\\040g rw shared:1 master:2 - cgroup cgroup rw,cpu,freezer\n\
                 3 2 0:2 / /fake rw,freezer - tmpfs tmpfs rw\n",
                Some("/c g"),
                None,
            ),
            // First match wins.
            (
                "1 2 0:1 / /a rw - cgroup2 cgroup2 rw\n3 2 0:2 / /b rw - cgroup2 cgroup2 rw\n",
                None,
                Some("/a"),
            ),
            // Named hierarchies are not the freezer; garbage and truncated lines are skipped.
            (
                "1 2 0:1 / /s rw - cgroup cgroup rw,name=freezer\ngarbage\n- cgroup2\n1 2 - x\n",
                None,
                None,
            ),
            ("", None, None),
        ];
        for (text, freezer, unified) in table {
            let m = parse_mountinfo(text.as_bytes());
            assert_eq!(m.freezer.as_deref(), freezer.map(str::as_bytes), "{text}");
            assert_eq!(m.unified.as_deref(), unified.map(str::as_bytes), "{text}");
        }
    }

    #[test]
    fn service_units() {
        let unit = b"/system.slice/snap.svc.d.service";
        let yes: &[&[u8]] = &[
            b"0::/system.slice/snap.svc.d.service\n",
            b"12:freezer:/\n1:name=systemd:/system.slice/snap.svc.d.service\n0::/\n",
        ];
        let no: &[&[u8]] = &[
            b"0::/system.slice/snap.svc.d.service/child\n",
            b"0::/user.slice/user-1000.slice/user@1000.service/app.slice/snap.svc.d.service\n",
            b"0::/system.slice/snap.svc.dd.service\n",
            b"3:cpu:/system.slice/snap.svc.d.service\n0::/user.slice\n",
            b"1:name=other:/system.slice/snap.svc.d.service\n",
            b"",
        ];
        for t in yes {
            assert!(unit_in(t, unit), "{}", String::from_utf8_lossy(t));
        }
        for t in no {
            assert!(!unit_in(t, unit), "{}", String::from_utf8_lossy(t));
        }
    }

    #[test]
    fn escapes() {
        let unescape = |raw: &[u8]| {
            let mut v = vec![];
            refreshd_runctl::unescape(raw, |b| v.push(b));
            v
        };
        assert_eq!(unescape(b"/a\\040b\\011c"), b"/a b\tc");
        assert_eq!(unescape(b"/a\\0"), b"/a\\0");
        assert_eq!(unescape(b"\\999"), b"\\999");
    }
}
