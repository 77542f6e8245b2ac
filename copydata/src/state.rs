//! The pre-copy record: for every non-directory the staging copy holds, the source's state it
//! was copied from and the identity of the staging inode. Kept in memory during a pass and in a
//! small file in the staging directory between passes, so a daemon restart between `precopy`
//! and `finish` keeps the work done.
//!
//! File format (little-endian): the magic, the source root's and the staging tree's identities,
//! the record count, the records, and an FNV-1a hash of everything before it. A file that does
//! not parse, or whose hash or roots do not match, is ignored: `finish` then copies every file
//! again, which is slower but still right.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use crate::meta::{stat_fd, FileId, Meta, Time};
use crate::sys;

const MAGIC: &[u8; 16] = b"refreshd-pcopy1\n";
/// The state of a tree of millions of files is tens of megabytes; anything much bigger is not
/// ours.
const MAX_SIZE: u64 = 1 << 30;
pub(crate) const STATE: &CStr = c"state";
const STATE_NEW: &CStr = c"state.new";

/// The source's state a copy was taken from. Any change to an inode — data, mode, owner,
/// xattrs, link count, a rename — moves its ctime, which no user can set back; the other
/// fields catch a different inode put in its place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SrcKey {
    pub kind: u8,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub rdev: u64,
    pub id: FileId,
    pub mtime: Time,
    pub ctime: Time,
}

impl SrcKey {
    pub fn of(m: &Meta) -> SrcKey {
        SrcKey {
            kind: m.kind.code(),
            perm: m.perm,
            uid: m.uid,
            gid: m.gid,
            size: m.size,
            nlink: m.nlink,
            rdev: m.rdev,
            id: m.id,
            mtime: m.mtime,
            ctime: m.ctime,
        }
    }
}

/// The staging inode as the copy left it: untouched since as long as its ctime is the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DstKey {
    pub id: FileId,
    pub ctime: Time,
}

impl DstKey {
    pub fn of(m: &Meta) -> DstKey {
        DstKey {
            id: m.id,
            ctime: m.ctime,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub src: SrcKey,
    pub dst: DstKey,
}

/// Records by path relative to the roots (raw bytes).
pub(crate) type Records = HashMap<Vec<u8>, Record>;

#[derive(Debug, Default, PartialEq)]
pub(crate) struct State {
    pub src_root: Option<FileId>,
    pub tree_root: Option<FileId>,
    pub records: Records,
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn put_id(out: &mut Vec<u8>, id: FileId) {
    out.extend(id.dev.to_le_bytes());
    out.extend(id.ino.to_le_bytes());
}

fn put_time(out: &mut Vec<u8>, t: Time) {
    out.extend(t.sec.to_le_bytes());
    out.extend(t.nsec.to_le_bytes());
}

pub(crate) fn encode(src_root: FileId, tree_root: FileId, records: &Records) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + records.len() * 128);
    out.extend(MAGIC);
    put_id(&mut out, src_root);
    put_id(&mut out, tree_root);
    out.extend((records.len() as u64).to_le_bytes());
    for (path, r) in records {
        out.extend((path.len() as u32).to_le_bytes());
        out.extend(path);
        let s = &r.src;
        out.push(s.kind);
        for v in [s.perm, s.uid, s.gid] {
            out.extend(v.to_le_bytes());
        }
        for v in [s.size, s.nlink, s.rdev] {
            out.extend(v.to_le_bytes());
        }
        put_id(&mut out, s.id);
        put_time(&mut out, s.mtime);
        put_time(&mut out, s.ctime);
        put_id(&mut out, r.dst.id);
        put_time(&mut out, r.dst.ctime);
    }
    let hash = fnv1a(&out);
    out.extend(hash.to_le_bytes());
    out
}

/// A cursor that fails (returns None) instead of panicking on short input.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn id(&mut self) -> Option<FileId> {
        Some(FileId {
            dev: self.u64()?,
            ino: self.u64()?,
        })
    }
    fn time(&mut self) -> Option<Time> {
        Some(Time {
            sec: self.i64()?,
            nsec: self.u32()?,
        })
    }
}

pub(crate) fn decode(data: &[u8]) -> Option<State> {
    let body_len = data.len().checked_sub(8)?;
    let (body, hash) = data.split_at(body_len);
    if fnv1a(body).to_le_bytes() != hash {
        return None;
    }
    let mut c = Cursor(body);
    if c.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let src_root = c.id()?;
    let tree_root = c.id()?;
    let count = c.u64()?;
    let mut records = Records::new();
    for _ in 0..count {
        let len = c.u32()? as usize;
        let path = c.take(len)?.to_vec();
        let src = SrcKey {
            kind: c.u8()?,
            perm: c.u32()?,
            uid: c.u32()?,
            gid: c.u32()?,
            size: c.u64()?,
            nlink: c.u64()?,
            rdev: c.u64()?,
            id: c.id()?,
            mtime: c.time()?,
            ctime: c.time()?,
        };
        let dst = DstKey {
            id: c.id()?,
            ctime: c.time()?,
        };
        records.insert(path, Record { src, dst });
    }
    if !c.0.is_empty() {
        return None;
    }
    Some(State {
        src_root: Some(src_root),
        tree_root: Some(tree_root),
        records,
    })
}

/// Reads the state in the staging directory; None when absent or not trustworthy (not a plain
/// file of ours, too big, damaged).
pub(crate) fn load(container: BorrowedFd<'_>) -> Option<State> {
    let fd = sys::open_at(
        Some(container),
        STATE,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    )
    .ok()?;
    let m = stat_fd(fd.as_fd()).ok()?;
    if m.kind != crate::meta::Kind::File || m.uid != sys::effective_ids().0 || m.size > MAX_SIZE {
        return None;
    }
    let mut data = Vec::with_capacity(m.size as usize);
    File::from(fd).take(MAX_SIZE).read_to_end(&mut data).ok()?;
    decode(&data)
}

/// Writes the state atomically: a new file, flushed, renamed over the old one, and the
/// directory flushed, so a crash leaves the old state or the new one.
pub(crate) fn save(container: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    let fd = sys::open_at(
        Some(container),
        STATE_NEW,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
        0o600,
    )?;
    let mut file = File::from(fd);
    file.write_all(data)?;
    file.sync_all()?;
    sys::rename_at(container, STATE_NEW, container, STATE, 0)?;
    sys::fsync(container)
}

/// Removes the state (before the staging directory itself goes).
pub(crate) fn remove(container: BorrowedFd<'_>) -> io::Result<()> {
    for name in [STATE, STATE_NEW] {
        match sys::unlink_at(container, name, 0) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (FileId, FileId, Records) {
        let id = |ino| FileId { dev: 2049, ino };
        let t = |sec, nsec| Time { sec, nsec };
        let mut records = Records::new();
        for (i, path) in [&b"a"[..], b"dir/b\nwith newline", b""].iter().enumerate() {
            records.insert(
                path.to_vec(),
                Record {
                    src: SrcKey {
                        kind: 1,
                        perm: 0o4755,
                        uid: 1234,
                        gid: 5678,
                        size: 1 << 40,
                        nlink: 2,
                        rdev: 0,
                        id: id(100 + i as u64),
                        mtime: t(-5, 999_999_999),
                        ctime: t(1_700_000_000, 1),
                    },
                    dst: DstKey {
                        id: id(200 + i as u64),
                        ctime: t(1_700_000_001, 2),
                    },
                },
            );
        }
        (id(1), id(2), records)
    }

    #[test]
    fn round_trips() {
        let (s, t, records) = sample();
        let data = encode(s, t, &records);
        let state = decode(&data).unwrap();
        assert_eq!(state.src_root, Some(s));
        assert_eq!(state.tree_root, Some(t));
        assert_eq!(state.records, records);
    }

    #[test]
    fn rejects_damage() {
        let (s, t, records) = sample();
        let data = encode(s, t, &records);
        for cut in [0, 7, 8, 30, data.len() - 9, data.len() - 1] {
            assert!(decode(&data[..cut]).is_none(), "truncated at {cut}");
        }
        for flip in [0, 20, 60, data.len() - 12, data.len() - 1] {
            let mut bad = data.clone();
            bad[flip] ^= 0x40;
            assert!(decode(&bad).is_none(), "byte {flip} flipped");
        }
        let mut extra = data[..data.len() - 8].to_vec();
        extra.push(0);
        let h = fnv1a(&extra);
        extra.extend(h.to_le_bytes());
        assert!(decode(&extra).is_none(), "trailing bytes");
    }
}
