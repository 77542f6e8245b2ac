//! What the crate knows about a file: one `statx`, taken by name without following or on an
//! open fd, turned into plain values.

use std::ffi::CStr;
use std::io;
use std::os::fd::BorrowedFd;

use crate::sys;

/// The type of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

impl Kind {
    fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFSOCK => Kind::Socket,
            // S_IFREG, and nothing else exists on Linux.
            _ => Kind::File,
        }
    }

    /// The `S_IF*` bits, for `mknodat`.
    pub fn format_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::CharDevice => libc::S_IFCHR,
            Kind::BlockDevice => libc::S_IFBLK,
            Kind::Socket => libc::S_IFSOCK,
        }
    }

    /// A stable number for the state file.
    pub(crate) fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Fifo => 4,
            Kind::CharDevice => 5,
            Kind::BlockDevice => 6,
            Kind::Socket => 7,
        }
    }
}

/// An inode's identity: device and inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// A timestamp with nanoseconds, as the kernel keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    fn from_statx(t: libc::statx_timestamp) -> Time {
        Time {
            sec: t.tv_sec,
            nsec: t.tv_nsec,
        }
    }

    pub(crate) fn timespec(self) -> libc::timespec {
        libc::timespec {
            tv_sec: self.sec as libc::time_t,
            tv_nsec: self.nsec as libc::c_long,
        }
    }

    pub(crate) fn as_nanos(self) -> i128 {
        i128::from(self.sec) * 1_000_000_000 + i128::from(self.nsec)
    }
}

/// One file's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub nlink: u64,
    pub id: FileId,
    pub rdev: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// The entry is the root of a mount (a mount point seen from its parent).
    pub mount_root: bool,
}

impl Meta {
    fn from_statx(s: &libc::statx) -> Meta {
        let mode = u32::from(s.stx_mode);
        let mount_attr = libc::STATX_ATTR_MOUNT_ROOT as u64;
        Meta {
            kind: Kind::from_mode(mode),
            perm: mode & 0o7777,
            uid: s.stx_uid,
            gid: s.stx_gid,
            size: s.stx_size,
            blocks: s.stx_blocks,
            nlink: u64::from(s.stx_nlink),
            id: FileId {
                dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
                ino: s.stx_ino,
            },
            rdev: libc::makedev(s.stx_rdev_major, s.stx_rdev_minor),
            atime: Time::from_statx(s.stx_atime),
            mtime: Time::from_statx(s.stx_mtime),
            ctime: Time::from_statx(s.stx_ctime),
            mount_root: s.stx_attributes_mask & mount_attr != 0
                && s.stx_attributes & mount_attr != 0,
        }
    }

    /// `[atime, mtime]` for `utimensat`/`futimens`.
    pub(crate) fn times(&self) -> [libc::timespec; 2] {
        [self.atime.timespec(), self.mtime.timespec()]
    }

    /// Whether the data and metadata a copy takes are the same in both (atime aside, which
    /// readers move without changing the file).
    pub(crate) fn same_state(&self, other: &Meta) -> bool {
        self.kind == other.kind
            && self.id == other.id
            && self.size == other.size
            && self.mtime == other.mtime
            && self.ctime == other.ctime
    }
}

/// `statx` of `name` in `dir`, not following a symlink (`lstat`).
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Meta> {
    sys::statx_at(Some(dir), name, libc::AT_SYMLINK_NOFOLLOW).map(|s| Meta::from_statx(&s))
}

/// `statx` of an open fd (an `O_PATH` fd included).
pub(crate) fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<Meta> {
    sys::statx_fd(fd).map(|s| Meta::from_statx(&s))
}
