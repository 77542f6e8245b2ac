//! The traversal every operation shares: the source and the destination walked together by fd,
//! one directory level at a time, with an explicit stack (no recursion, a bounded number of open
//! fds however deep the tree).
//!
//! For each source entry: `statx` by name without following; leave it out if policy says so
//! (sockets, mount points, in a user's tree devices and others' multiply-linked files); a
//! directory is opened with `O_DIRECTORY|O_NOFOLLOW` and descended into; anything else is
//! opened (`O_NOFOLLOW`, `O_NONBLOCK` for regular files, `O_PATH` for the rest), `fstat`ed and
//! checked to be the type the name said, and copied from that fd. A destination entry that
//! already exists (a staging copy) is kept when the pre-copy record proves it equal to the
//! source, else replaced; destination names the source lacks are removed. A directory's
//! owner, mode, xattrs and times are set once its contents are done, so writing into it does
//! not move its times and a default ACL does not leak onto the copies made inside it.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::data::{DataCopier, DataError};
use crate::dir::{self, FD_WINDOW};
use crate::error::{Error, Result};
use crate::meta::{stat_at, stat_fd, FileId, Kind, Meta};
use crate::state::{DstKey, Record, Records, SrcKey};
use crate::stats::{NoteKind, Progress, Stats};
use crate::sys::{self, XattrTarget};
use crate::xattr::{self, Xattr};
use crate::{Options, Owners, Reflink};

/// A file whose ctime is this recent may still change within the same timestamp tick without
/// its ctime moving (kernels stamp times from a coarse clock), so the pre-copy does not vouch
/// for it: `finish` copies it again. Two seconds also covers coarse-grained filesystems.
const RACY_NANOS: i128 = 2_000_000_000;

/// The first copy of a multiply-linked source inode; later names link to it.
struct Linked {
    /// Where the copy is, relative to the destination root.
    rel: PathBuf,
    dst: FileId,
    /// Every name made for it so far, for updating their records when a new link moves the
    /// inode's ctime.
    paths: Vec<Vec<u8>>,
}

/// One directory being copied.
struct Frame {
    /// None while closed by the fd window (reopened through `..`) or once lost.
    src: Option<OwnedFd>,
    dst: Option<OwnedFd>,
    src_id: FileId,
    dst_id: FileId,
    /// The source directory as opened, for when it cannot be reached any more.
    src_meta: Meta,
    entries: Vec<CString>,
    next: usize,
    /// Destination names that match a source name and have not been visited yet.
    existing: HashSet<CString>,
    /// The source directory was moved away during the copy: nothing more is read from it.
    lost: bool,
}

/// What a walk needs to know beyond the two roots.
pub(crate) struct Walk<'a> {
    opts: &'a Options,
    progress: &'a mut dyn FnMut(Progress),
    stats: Stats,
    entries_seen: u64,
    bytes_seen: u64,
    /// For messages only; the walk never resolves these.
    src_path: PathBuf,
    dst_path: PathBuf,
    /// The destination root, for linking to earlier copies.
    dst_root: OwnedFd,
    /// The current entry, relative to both roots.
    rel: PathBuf,
    links: HashMap<FileId, Linked>,
    old: Records,
    new: Option<Records>,
    data: DataCopier,
    /// `/proc/self/fd` works: xattrs of symlinks and special files can be reached by fd.
    proc_fd: bool,
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// `/proc/self/fd/N`: the inode an `O_PATH` fd holds, reachable by the path-based xattr calls
/// without resolving any name in the tree.
fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

impl<'a> Walk<'a> {
    pub fn new(
        opts: &'a Options,
        progress: &'a mut dyn FnMut(Progress),
        src_path: &Path,
        dst_path: &Path,
        dst_root: BorrowedFd<'_>,
        old: Records,
        recording: bool,
    ) -> Result<Walk<'a>> {
        let dst_root = dst_root
            .try_clone_to_owned()
            .map_err(|source| Error::Open {
                path: dst_path.to_owned(),
                source,
            })?;
        Ok(Walk {
            opts,
            progress,
            stats: Stats::default(),
            entries_seen: 0,
            bytes_seen: 0,
            src_path: src_path.to_owned(),
            dst_path: dst_path.to_owned(),
            dst_root,
            rel: PathBuf::new(),
            links: HashMap::new(),
            old,
            new: recording.then(Records::new),
            data: DataCopier::new(opts.reflink == Reflink::Auto),
            proc_fd: sys::statx_at(None, c"/proc/self/fd", 0).is_ok(),
        })
    }

    /// The counters, and the records made if this walk was recording.
    pub fn finish(self) -> (Stats, Option<Records>) {
        (self.stats, self.new)
    }

    fn src_full(&self) -> PathBuf {
        self.src_path.join(&self.rel)
    }

    fn dst_full(&self) -> PathBuf {
        self.dst_path.join(&self.rel)
    }

    fn rel_key(&self) -> Vec<u8> {
        self.rel.as_os_str().as_bytes().to_vec()
    }

    fn note(&mut self, kind: NoteKind) {
        let path = self.rel.clone();
        self.stats.note(path, kind);
    }

    fn user_uid(&self) -> Option<u32> {
        self.opts.user.as_ref().map(|u| u.uid)
    }

    /// A source-side failure on one entry: the entry vanished or was swapped (a race, noted
    /// and skipped, never followed), or in a user's tree was made unreadable (noted: a user
    /// must not be able to fail everyone's refresh); anything else is an error.
    fn source_trouble(
        &mut self,
        e: io::Error,
        make: fn(PathBuf, io::Error) -> Error,
    ) -> Result<()> {
        match errno(&e) {
            libc::ENOENT => self.note(NoteKind::Vanished),
            libc::ELOOP | libc::ENOTDIR | libc::ENXIO | libc::EAGAIN => {
                self.note(NoteKind::Swapped)
            }
            n @ (libc::EACCES | libc::EPERM) if self.opts.user.is_some() => {
                self.note(NoteKind::Unreadable(n))
            }
            _ => return Err(make(self.src_full(), e)),
        }
        Ok(())
    }

    /// Why an entry is not copied at all, if it is not.
    fn leave_out(&self, m: &Meta) -> Option<NoteKind> {
        if m.mount_root {
            return Some(NoteKind::MountPoint);
        }
        match m.kind {
            Kind::Socket => return Some(NoteKind::Socket),
            Kind::CharDevice | Kind::BlockDevice if self.opts.user.is_some() => {
                return Some(NoteKind::Device)
            }
            _ => {}
        }
        match self.user_uid() {
            // Another user's file with a second name somewhere: reading it could copy data
            // from outside the tree into it (a planted hard link), so it is not read at all.
            Some(uid) if m.kind != Kind::Dir && m.uid != uid && m.nlink > 1 => {
                Some(NoteKind::ForeignHardLink)
            }
            _ => None,
        }
    }

    fn linkable(m: &Meta) -> bool {
        m.kind != Kind::Dir && m.nlink > 1
    }

    fn racy(m: &Meta) -> bool {
        now_nanos() - m.ctime.as_nanos() < RACY_NANOS
    }

    fn record(&mut self, m: &Meta, dst: DstKey) {
        let key = self.rel_key();
        if let Some(new) = &mut self.new {
            new.insert(
                key,
                Record {
                    src: SrcKey::of(m),
                    dst,
                },
            );
        }
    }

    fn tick(&mut self) {
        self.entries_seen += 1;
        (self.progress)(Progress {
            entries: self.entries_seen,
            bytes: self.bytes_seen,
        });
    }

    /// Copies the source root's contents into the destination root (`fresh`: made empty for
    /// this walk, so nothing in it needs checking), then the root's own metadata.
    pub fn run(
        &mut self,
        src_root: BorrowedFd<'_>,
        dst_root: BorrowedFd<'_>,
        fresh: bool,
    ) -> Result<()> {
        let src = src_root
            .try_clone_to_owned()
            .map_err(|source| Error::Open {
                path: self.src_full(),
                source,
            })?;
        let dst = dst_root
            .try_clone_to_owned()
            .map_err(|source| Error::Open {
                path: self.dst_full(),
                source,
            })?;
        let src_meta = stat_fd(src.as_fd()).map_err(|source| Error::Stat {
            path: self.src_full(),
            source,
        })?;
        let mut stack = vec![self.open_frame(src, dst, fresh, src_meta)?];
        loop {
            let top = stack.last_mut().expect("the root stays until the end");
            if top.next < top.entries.len() {
                let name = std::mem::take(&mut top.entries[top.next]);
                top.next += 1;
                if let Some(child) = self.visit(top, &name)? {
                    stack.push(child);
                    // Keep fds open for the deepest levels only; the root always stays open.
                    if stack.len() > FD_WINDOW + 1 {
                        let i = stack.len() - 1 - FD_WINDOW;
                        if i > 0 {
                            stack[i].src = None;
                            stack[i].dst = None;
                        }
                    }
                }
                continue;
            }
            let done = stack.pop().expect("checked above");
            self.leave_dir(&done)?;
            let Some(parent) = stack.last_mut() else {
                return Ok(());
            };
            self.rel.pop();
            self.reopen(parent, &done)?;
        }
    }

    /// Lists a directory pair; in a destination that existed, removes what the source lacks.
    fn open_frame(
        &mut self,
        src: OwnedFd,
        dst: OwnedFd,
        fresh: bool,
        src_meta: Meta,
    ) -> Result<Frame> {
        let entries = dir::read_dir(src.as_fd()).map_err(|source| Error::ReadDir {
            path: self.src_full(),
            source,
        })?;
        let dst_id = stat_fd(dst.as_fd())
            .map_err(|source| Error::Stat {
                path: self.dst_full(),
                source,
            })?
            .id;
        let mut existing = HashSet::new();
        if !fresh {
            let names = dir::read_dir(dst.as_fd()).map_err(|source| Error::ReadDir {
                path: self.dst_full(),
                source,
            })?;
            let wanted: HashSet<&CStr> = entries.iter().map(CString::as_c_str).collect();
            for name in names {
                if wanted.contains(name.as_c_str()) {
                    existing.insert(name);
                    continue;
                }
                dir::remove_any(dst.as_fd(), &name).map_err(|source| Error::Remove {
                    path: self.dst_full().join(OsStr::from_bytes(name.to_bytes())),
                    source,
                })?;
                self.stats.removed += 1;
            }
        }
        Ok(Frame {
            src: Some(src),
            dst: Some(dst),
            src_id: src_meta.id,
            dst_id,
            src_meta,
            entries,
            next: 0,
            existing,
            lost: false,
        })
    }

    /// Handles one entry of the top frame; returns the frame to descend into for a directory.
    fn visit(&mut self, frame: &mut Frame, name: &CStr) -> Result<Option<Frame>> {
        if frame.lost {
            return Ok(None);
        }
        let has_dst = frame.existing.remove(name);
        let src = frame.src.as_ref().expect("the top frame is open").as_fd();
        let dst = frame.dst.as_ref().expect("the top frame is open").as_fd();
        self.rel.push(OsStr::from_bytes(name.to_bytes()));
        let result = self.visit_entry(src, dst, name, has_dst);
        // A directory keeps its component until its frame is done.
        if !matches!(result, Ok(Some(_))) {
            self.rel.pop();
        }
        self.tick();
        result
    }

    fn visit_entry(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        has_dst: bool,
    ) -> Result<Option<Frame>> {
        let pre = match stat_at(src, name) {
            Ok(m) => m,
            Err(e) => {
                self.source_trouble(e, |path, source| Error::Stat { path, source })?;
                return self.drop_dst(dst, name, has_dst).map(|()| None);
            }
        };
        #[cfg(test)]
        hook::after_stat(&self.rel);
        if let Some(why) = self.leave_out(&pre) {
            self.note(why);
            return self.drop_dst(dst, name, has_dst).map(|()| None);
        }
        if pre.kind == Kind::Dir {
            return self.enter_dir(src, dst, name, has_dst);
        }
        if has_dst {
            let d = stat_at(dst, name).map_err(|source| Error::Stat {
                path: self.dst_full(),
                source,
            })?;
            if self.keep(dst, name, &pre, &d)? {
                return Ok(None);
            }
            self.drop_dst(dst, name, true)?;
        }
        match pre.kind {
            Kind::File => self.copy_file(src, dst, name)?,
            kind => self.copy_special(src, dst, name, kind)?,
        }
        Ok(None)
    }

    fn drop_dst(&mut self, dst: BorrowedFd<'_>, name: &CStr, has_dst: bool) -> Result<()> {
        if has_dst {
            dir::remove_any(dst, name).map_err(|source| Error::Remove {
                path: self.dst_full(),
                source,
            })?;
            self.stats.removed += 1;
        }
        Ok(())
    }

    /// Whether an existing destination entry already is the copy of `pre` (brings its times
    /// up to date if so: readers move a source's atime without changing anything else).
    fn keep(&mut self, dst: BorrowedFd<'_>, name: &CStr, pre: &Meta, d: &Meta) -> Result<bool> {
        if d.kind != pre.kind {
            return Ok(false);
        }
        let key = self.rel_key();
        if Self::linkable(pre) {
            if let Some(linked) = self.links.get_mut(&pre.id) {
                // A later name of an inode this walk already handled: right if it is a link
                // to that copy.
                if d.id != linked.dst {
                    return Ok(false);
                }
                linked.paths.push(key);
                self.stats.unchanged += 1;
                if !Self::racy(pre) {
                    self.record(pre, DstKey::of(d));
                }
                return Ok(true);
            }
        }
        let Some(rec) = self.old.get(&key) else {
            return Ok(false);
        };
        if rec.src != SrcKey::of(pre) || rec.dst != DstKey::of(d) {
            return Ok(false);
        }
        let mut dkey = DstKey::of(d);
        if d.atime != pre.atime || d.mtime != pre.mtime {
            sys::utimens_at(dst, name, &pre.times(), libc::AT_SYMLINK_NOFOLLOW).map_err(
                |source| Error::SetMetadata {
                    path: self.dst_full(),
                    source,
                },
            )?;
            dkey = DstKey::of(&stat_at(dst, name).map_err(|source| Error::Stat {
                path: self.dst_full(),
                source,
            })?);
        }
        self.stats.unchanged += 1;
        if pre.kind == Kind::File {
            self.bytes_seen += pre.size;
        }
        self.record(pre, dkey);
        if Self::linkable(pre) {
            self.links.insert(
                pre.id,
                Linked {
                    rel: self.rel.clone(),
                    dst: dkey.id,
                    paths: vec![key],
                },
            );
        }
        Ok(true)
    }

    /// Opens the destination directory holding `rel`, from the destination root, never
    /// following a symlink.
    fn open_dst_parent(&self, rel: &Path) -> Result<(OwnedFd, CString)> {
        let mut fd = self.dst_root.try_clone().map_err(|source| Error::Open {
            path: self.dst_path.clone(),
            source,
        })?;
        let mut components: Vec<&OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let last = components.pop().expect("a linked path has a name");
        let mut at = self.dst_path.clone();
        for c in components {
            at.push(c);
            let name = CString::new(c.as_bytes()).expect("names come from getdents");
            fd = sys::open_at(
                Some(fd.as_fd()),
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .map_err(|source| Error::Open {
                path: at.clone(),
                source,
            })?;
        }
        Ok((
            fd,
            CString::new(last.as_bytes()).expect("names come from getdents"),
        ))
    }

    /// Makes `name` a hard link to this walk's earlier copy of the same source inode. False
    /// when there is none, or the filesystem's link limit is reached (then it is copied).
    fn link_existing(&mut self, dst: BorrowedFd<'_>, name: &CStr, m: &Meta) -> Result<bool> {
        let Some(linked) = self.links.get(&m.id) else {
            return Ok(false);
        };
        let (target_rel, target_id) = (linked.rel.clone(), linked.dst);
        let (dir, target) = self.open_dst_parent(&target_rel)?;
        match sys::link_at(dir.as_fd(), &target, dst, name) {
            Ok(()) => {}
            Err(e) if errno(&e) == libc::EMLINK => return Ok(false),
            Err(source) => {
                return Err(Error::Link {
                    path: self.dst_full(),
                    target: self.dst_path.join(&target_rel),
                    source,
                })
            }
        }
        let d = stat_at(dst, name).map_err(|source| Error::Stat {
            path: self.dst_full(),
            source,
        })?;
        if d.id != target_id {
            return Err(Error::Tampered {
                path: self.dst_full(),
                what: "a hard link did not reach the earlier copy",
            });
        }
        let key = self.rel_key();
        let linked = self.links.get_mut(&m.id).expect("looked up above");
        linked.paths.push(key);
        // The new link moved the inode's ctime: every name's record must say so.
        if let Some(new) = &mut self.new {
            for p in &linked.paths {
                if let Some(r) = new.get_mut(p) {
                    r.dst.ctime = d.ctime;
                }
            }
        }
        if !Self::racy(m) {
            self.record(m, DstKey::of(&d));
        }
        self.stats.hard_links += 1;
        Ok(true)
    }

    /// In a user's tree, another user's file keeps its owner and data but loses what would
    /// let the tree's owner gain that user's privileges through the copy.
    fn strip_privileges(&mut self, m: &Meta, attrs: &mut Vec<Xattr>) -> u32 {
        let mut perm = m.perm;
        if let Some(uid) = self.user_uid() {
            let has_caps = attrs.iter().any(|a| a.name.as_c_str() == xattr::CAPABILITY);
            let has_ids = perm & (libc::S_ISUID | libc::S_ISGID) != 0;
            if m.kind != Kind::Dir && m.uid != uid && (has_ids || has_caps) {
                perm &= !(libc::S_ISUID | libc::S_ISGID);
                attrs.retain(|a| a.name.as_c_str() != xattr::CAPABILITY);
                self.note(NoteKind::PrivilegesStripped);
            }
        }
        perm
    }

    fn set_xattrs(&mut self, target: XattrTarget<'_>, attrs: &[Xattr], sync: bool) -> Result<()> {
        let applied = if sync {
            xattr::sync(target, attrs)
        } else {
            xattr::write_all(target, attrs)
        };
        let applied = applied.map_err(|(name, source)| Error::SetXattr {
            path: self.dst_full(),
            name,
            source,
        })?;
        self.stats.xattrs += applied.set;
        self.stats.xattrs_unsupported += applied.unsupported;
        Ok(())
    }

    fn read_xattrs(&self, target: XattrTarget<'_>) -> Result<Vec<Xattr>> {
        let mut attrs = xattr::read_all(target).map_err(|(name, source)| Error::GetXattr {
            path: self.src_full(),
            name,
            source,
        })?;
        if self.opts.owners == Owners::Caller {
            attrs.retain(xattr::settable_by_owner);
        }
        Ok(attrs)
    }

    /// Gives `fd` the owner and group of `m`, unless the copy's entries are the caller's.
    fn chown(&self, fd: BorrowedFd<'_>, m: &Meta) -> io::Result<()> {
        match self.opts.owners {
            Owners::Preserve => sys::fchown(fd, m.uid, m.gid),
            Owners::Caller => Ok(()),
        }
    }

    fn copy_file(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, name: &CStr) -> Result<()> {
        // O_NONBLOCK: a fifo swapped in after the stat opens at once instead of waiting for a
        // writer (and is then refused below); O_NOCTTY: a terminal cannot become ours.
        let fd = match dir::open_noatime(
            src,
            name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        ) {
            Ok(fd) => fd,
            Err(e) => return self.source_trouble(e, |path, source| Error::Open { path, source }),
        };
        let m = match stat_fd(fd.as_fd()) {
            Ok(m) => m,
            Err(e) => return self.source_trouble(e, |path, source| Error::Stat { path, source }),
        };
        if m.kind != Kind::File {
            self.note(NoteKind::Swapped);
            return Ok(());
        }
        // Decide on what was opened, not on what the name said a moment ago.
        if let Some(why) = self.leave_out(&m) {
            self.note(why);
            return Ok(());
        }
        self.bytes_seen += m.size;
        if Self::linkable(&m) && self.link_existing(dst, name, &m)? {
            return Ok(());
        }
        let out = sys::open_at(
            Some(dst),
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )
        .map_err(|source| Error::Create {
            path: self.dst_full(),
            source,
        })?;
        let copied = self
            .data
            .copy(fd.as_fd(), out.as_fd(), m.size)
            .map_err(|e| match e {
                DataError::Read(source) => Error::Read {
                    path: self.src_full(),
                    source,
                },
                DataError::Write(source) => Error::Write {
                    path: self.dst_full(),
                    source,
                },
                DataError::Copy(source) => Error::CopyData {
                    from: self.src_full(),
                    to: self.dst_full(),
                    source,
                },
            })?;
        let mut attrs = self.read_xattrs(XattrTarget::Fd(fd.as_fd()))?;
        let after = stat_fd(fd.as_fd()).map_err(|source| Error::Stat {
            path: self.src_full(),
            source,
        })?;
        let perm = self.strip_privileges(&m, &mut attrs);
        // Owner first (chown clears setuid bits and capabilities), then xattrs (ACLs), then
        // the mode, then times (every step before moves them).
        let meta_err = |w: &Self, source| Error::SetMetadata {
            path: w.dst_full(),
            source,
        };
        self.chown(out.as_fd(), &m).map_err(|e| meta_err(self, e))?;
        self.set_xattrs(XattrTarget::Fd(out.as_fd()), &attrs, false)?;
        sys::fchmod(out.as_fd(), perm).map_err(|e| meta_err(self, e))?;
        sys::futimens(out.as_fd(), &m.times()).map_err(|e| meta_err(self, e))?;
        self.stats.files += 1;
        self.stats.bytes += m.size;
        if copied.reflinked {
            self.stats.reflinked_files += 1;
            self.stats.reflinked_bytes += copied.bytes;
        } else {
            self.stats.copied_bytes += copied.bytes;
        }
        let d = stat_fd(out.as_fd()).map_err(|source| Error::Stat {
            path: self.dst_full(),
            source,
        })?;
        if !m.same_state(&after) {
            self.note(NoteKind::ChangedWhileCopied);
        } else if !Self::racy(&m) {
            self.record(&m, DstKey::of(&d));
        }
        self.remember_link(&m, d.id);
        Ok(())
    }

    /// Remembers a copied entry that may have hard links, so its other names link to the copy.
    fn remember_link(&mut self, m: &Meta, dst: FileId) {
        if Self::linkable(m) {
            self.links.insert(
                m.id,
                Linked {
                    rel: self.rel.clone(),
                    dst,
                    paths: vec![self.rel_key()],
                },
            );
        }
    }

    /// Symlinks, fifos and device nodes: never opened for reading (an `O_PATH` fd only pins
    /// the inode), recreated from their metadata.
    fn copy_special(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        kind: Kind,
    ) -> Result<()> {
        let fd = match sys::open_at(Some(src), name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(e) => return self.source_trouble(e, |path, source| Error::Open { path, source }),
        };
        let mut m = match stat_fd(fd.as_fd()) {
            Ok(m) => m,
            Err(e) => return self.source_trouble(e, |path, source| Error::Stat { path, source }),
        };
        if m.kind != kind {
            self.note(NoteKind::Swapped);
            return Ok(());
        }
        if let Some(why) = self.leave_out(&m) {
            self.note(why);
            return Ok(());
        }
        if Self::linkable(&m) && self.link_existing(dst, name, &m)? {
            return Ok(());
        }
        let create_err = |w: &Self, source| Error::Create {
            path: w.dst_full(),
            source,
        };
        if kind == Kind::Symlink {
            let target = match sys::readlink_fd(fd.as_fd()) {
                Ok(t) => t,
                Err(e) => {
                    return self.source_trouble(e, |path, source| Error::Read { path, source })
                }
            };
            // Reading a link may move its atime: take the times after.
            m = stat_fd(fd.as_fd()).map_err(|source| Error::Stat {
                path: self.src_full(),
                source,
            })?;
            let target = CString::new(target).map_err(|_| Error::Read {
                path: self.src_full(),
                source: io::ErrorKind::InvalidData.into(),
            })?;
            sys::symlink_at(&target, dst, name).map_err(|e| create_err(self, e))?;
            self.stats.symlinks += 1;
        } else {
            sys::mknod_at(dst, name, kind.format_bits() | 0o600, m.rdev)
                .map_err(|e| create_err(self, e))?;
            self.stats.specials += 1;
        }
        let mut attrs = if self.proc_fd {
            self.read_xattrs(XattrTarget::Path(&proc_path(fd.as_fd())))?
        } else {
            Vec::new()
        };
        let perm = self.strip_privileges(&m, &mut attrs);
        let meta_err = |w: &Self, source| Error::SetMetadata {
            path: w.dst_full(),
            source,
        };
        if self.opts.owners == Owners::Preserve {
            sys::chown_at(dst, name, m.uid, m.gid, libc::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| meta_err(self, e))?;
        }
        if !attrs.is_empty() {
            let node = sys::open_at(Some(dst), name, libc::O_PATH | libc::O_NOFOLLOW, 0).map_err(
                |source| Error::Open {
                    path: self.dst_full(),
                    source,
                },
            )?;
            self.set_xattrs(XattrTarget::Path(&proc_path(node.as_fd())), &attrs, false)?;
        }
        if kind != Kind::Symlink {
            // The node was made by this walk in a directory only root can enter yet.
            sys::chmod_at(dst, name, perm).map_err(|e| meta_err(self, e))?;
        }
        sys::utimens_at(dst, name, &m.times(), libc::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| meta_err(self, e))?;
        let d = stat_at(dst, name).map_err(|source| Error::Stat {
            path: self.dst_full(),
            source,
        })?;
        if !Self::racy(&m) {
            self.record(&m, DstKey::of(&d));
        }
        self.remember_link(&m, d.id);
        Ok(())
    }

    /// Opens a source directory and its destination (made if need be) as a new frame.
    fn enter_dir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        has_dst: bool,
    ) -> Result<Option<Frame>> {
        let fd = match dir::open_dir(src, name) {
            Ok(fd) => fd,
            Err(e) => {
                self.source_trouble(e, |path, source| Error::Open { path, source })?;
                return self.drop_dst(dst, name, has_dst).map(|()| None);
            }
        };
        let m = match stat_fd(fd.as_fd()) {
            Ok(m) => m,
            Err(e) => {
                self.source_trouble(e, |path, source| Error::Stat { path, source })?;
                return self.drop_dst(dst, name, has_dst).map(|()| None);
            }
        };
        if let Some(why) = self.leave_out(&m) {
            self.note(why);
            return self.drop_dst(dst, name, has_dst).map(|()| None);
        }
        let mut fresh = true;
        if has_dst {
            let d = stat_at(dst, name).map_err(|source| Error::Stat {
                path: self.dst_full(),
                source,
            })?;
            if d.kind == Kind::Dir {
                fresh = false;
            } else {
                self.drop_dst(dst, name, true)?;
            }
        }
        if fresh {
            // Root-only until its contents are done and its own mode is set.
            sys::mkdir_at(dst, name, 0o700).map_err(|source| Error::Create {
                path: self.dst_full(),
                source,
            })?;
        }
        let out = sys::open_at(
            Some(dst),
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|source| Error::Open {
            path: self.dst_full(),
            source,
        })?;
        self.open_frame(fd, out, fresh, m).map(Some)
    }

    /// A directory's contents are done: give it the source's owner, xattrs, mode and times.
    fn leave_dir(&mut self, frame: &Frame) -> Result<()> {
        let dst = frame.dst.as_ref().expect("the top frame is open").as_fd();
        let (m, attrs) = match (&frame.src, frame.lost) {
            (Some(src), false) => {
                let m = stat_fd(src.as_fd()).map_err(|source| Error::Stat {
                    path: self.src_full(),
                    source,
                })?;
                (m, Some(self.read_xattrs(XattrTarget::Fd(src.as_fd()))?))
            }
            _ => (frame.src_meta, None),
        };
        let meta_err = |w: &Self, source| Error::SetMetadata {
            path: w.dst_full(),
            source,
        };
        self.chown(dst, &m).map_err(|e| meta_err(self, e))?;
        if let Some(attrs) = attrs {
            self.set_xattrs(XattrTarget::Fd(dst), &attrs, true)?;
        }
        sys::fchmod(dst, m.perm).map_err(|e| meta_err(self, e))?;
        sys::futimens(dst, &m.times()).map_err(|e| meta_err(self, e))?;
        self.stats.dirs += 1;
        Ok(())
    }

    /// Back in `parent` after `child`: reopens its fds if the window closed them, through
    /// `..` of the child, checked to be the same directories as before.
    fn reopen(&mut self, parent: &mut Frame, child: &Frame) -> Result<()> {
        if parent.dst.is_none() {
            let c = child
                .dst
                .as_ref()
                .expect("the child was the top frame")
                .as_fd();
            let fd = sys::open_at(
                Some(c),
                c"..",
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .map_err(|source| Error::Open {
                path: self.dst_full(),
                source,
            })?;
            let id = stat_fd(fd.as_fd())
                .map_err(|source| Error::Stat {
                    path: self.dst_full(),
                    source,
                })?
                .id;
            if id != parent.dst_id {
                return Err(Error::Tampered {
                    path: self.dst_full(),
                    what: "a directory of the copy moved",
                });
            }
            parent.dst = Some(fd);
        }
        if parent.src.is_none() && !parent.lost {
            let reopened = match (&child.src, child.lost) {
                (Some(c), false) => dir::open_dir(c.as_fd(), c"..")
                    .ok()
                    .filter(|fd| stat_fd(fd.as_fd()).is_ok_and(|m| m.id == parent.src_id)),
                _ => None,
            };
            match reopened {
                Some(fd) => parent.src = Some(fd),
                None => {
                    // The user moved the directory elsewhere: whatever `..` is now is not
                    // the tree. Stop reading it.
                    parent.lost = true;
                    self.note(NoteKind::DirectoryMoved);
                }
            }
        }
        Ok(())
    }
}

/// Lets tests act in the window between an entry's stat and its open, where a hostile user
/// would swap it.
#[cfg(test)]
pub(crate) mod hook {
    use std::cell::RefCell;
    use std::path::Path;

    type Hook = Box<dyn FnMut(&Path)>;

    thread_local! {
        static AFTER_STAT: RefCell<Option<Hook>> = RefCell::new(None);
    }

    pub fn set(f: Option<Hook>) {
        AFTER_STAT.with(|h| *h.borrow_mut() = f);
    }

    pub fn after_stat(rel: &Path) {
        AFTER_STAT.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f(rel)
            }
        });
    }
}
