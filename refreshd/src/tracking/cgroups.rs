//! Finding the cgroup hierarchies (from /proc/self/mountinfo, never an assumed layout).

use std::fs;
use std::io;
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
        Ok(Self::parse(&fs::read_to_string("/proc/self/mountinfo")?))
    }

    /// mountinfo lines: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER`.
    pub fn parse(text: &str) -> Mounts {
        let mut m = Mounts::default();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut r = right.split(' ');
            let (fstype, _source, opts) =
                (r.next().unwrap_or(""), r.next(), r.next().unwrap_or(""));
            let point = PathBuf::from(unescape(point));
            match fstype {
                "cgroup" if opts.split(',').any(|o| o == "freezer") && m.freezer.is_none() => {
                    m.freezer = Some(point)
                }
                "cgroup2" if m.unified.is_none() => m.unified = Some(point),
                _ => {}
            }
        }
        m
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The v1 parent: created with `notify_on_release` set, which its children inherit.
pub fn make_v1_parent(parent: &Path) -> io::Result<()> {
    match fs::create_dir(parent) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    fs::write(parent.join("notify_on_release"), "1")
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
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
        let pure_v2 =
            Mounts::parse("30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate");
        assert!(pure_v2.freezer.is_none());
        assert_eq!(
            pure_v2.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup"))
        );
    }
}
