//! Parsing `/proc/self/mountinfo` (proc(5)), the kernel's own account of what is mounted where.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of mountinfo: the fields refreshd needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub major: u32,
    pub minor: u32,
    pub mount_point: PathBuf,
    /// Per-mount options (`ro,nosuid,nodev,relatime`).
    pub options: String,
    pub fstype: String,
    pub source: String,
}

/// Parses mountinfo text, in kernel order (a later line can be stacked on an earlier one).
/// Lines that do not have the documented shape are skipped rather than guessed at.
pub(crate) fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_line)
        .collect()
}

// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
// (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    if fields.len() < 10 {
        return None;
    }
    let dev = std::str::from_utf8(fields[2]).ok()?;
    let (major, minor) = dev.split_once(':')?;
    let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
    let mount_point = PathBuf::from(OsString::from_vec(unescape(fields[4])));
    // Optional fields (7) run up to a lone "-".
    let sep = fields[6..].iter().position(|f| *f == b"-")? + 6;
    let fstype = fields.get(sep + 1)?;
    let source = fields.get(sep + 2)?;
    Some(MountEntry {
        major,
        minor,
        mount_point,
        options: String::from_utf8_lossy(fields[5]).into_owned(),
        fstype: String::from_utf8_lossy(&unescape(fstype)).into_owned(),
        source: String::from_utf8_lossy(&unescape(source)).into_owned(),
    })
}

/// Undoes the kernel's `\ooo` octal escapes (space, tab, newline and backslash in paths).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() && is_octal_triplet(&field[i + 1..i + 4]) {
            let v = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn is_octal_triplet(b: &[u8]) -> bool {
    b.len() == 3 && b.iter().all(|d| (b'0'..=b'7').contains(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let text = b"22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n\
36 35 98:0 /mnt1 /mnt\\040with\\040space rw,noatime master:1 shared:2 - ext3 /dev/root rw\n\
40 22 7:3 / /snap/hello/x1 ro,nodev - squashfs /dev/loop3 ro,errors=continue\n\
41 22 7:4 / /tab\\011and\\012newline\\134back ro - squashfs /dev/loop4 ro\n\
garbage line\n\
42 22 7:5 / /no-separator ro squashfs /dev/loop5 ro\n\
43 22 x:5 / /bad-dev ro - squashfs /dev/loop5 ro\n\
44 22 7:6 / /trailing\\0 ro - squashfs /dev/loop6 ro\n";
        let got = parse(text);
        let points: Vec<_> = got.iter().map(|e| e.mount_point.clone()).collect();
        assert_eq!(
            points,
            [
                PathBuf::from("/proc"),
                PathBuf::from("/mnt with space"),
                PathBuf::from("/snap/hello/x1"),
                PathBuf::from("/tab\tand\nnewline\\back"),
                PathBuf::from("/trailing\\0"),
            ]
        );
        assert_eq!(
            got[2],
            MountEntry {
                major: 7,
                minor: 3,
                mount_point: "/snap/hello/x1".into(),
                options: "ro,nodev".into(),
                fstype: "squashfs".into(),
                source: "/dev/loop3".into(),
            }
        );
        assert_eq!(got[1].fstype, "ext3");
    }

    #[test]
    fn unescapes() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"plain", b"plain"),
            (b"a\\040b", b"a b"),
            (b"\\134", b"\\"),
            (b"end\\04", b"end\\04"),
            (b"\\999", b"\\999"),
            (b"\\377x", b"\xffx"),
            (b"\\", b"\\"),
        ];
        for (input, want) in cases {
            assert_eq!(unescape(input), *want, "{input:?}");
        }
    }

    #[test]
    fn parses_the_real_file() {
        let text = std::fs::read("/proc/self/mountinfo").unwrap();
        let entries = parse(&text);
        assert!(
            entries
                .iter()
                .any(|e| e.mount_point == std::path::Path::new("/")),
            "no root mount in {entries:?}"
        );
    }
}
