//! What a copy did: counters, and notes about entries it left out or treated specially.

use std::path::PathBuf;

/// At most this many notes are kept; a hostile tree with a million sockets must not make the
/// daemon keep a million paths. The rest are only counted (`Stats::notes_dropped`).
pub const MAX_NOTES: usize = 1000;

/// Counters of one copy. Paths in notes are relative to the source root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Regular files written (copied or reflinked; hard links not included).
    pub files: u64,
    /// Directories made or brought up to date.
    pub dirs: u64,
    pub symlinks: u64,
    /// Fifos and device nodes recreated with `mknodat`.
    pub specials: u64,
    /// Names made as hard links to an earlier copy (same source inode).
    pub hard_links: u64,
    /// Logical size of the regular files written.
    pub bytes: u64,
    /// Regular files whose data was shared with `FICLONE` (reflink).
    pub reflinked_files: u64,
    pub reflinked_bytes: u64,
    /// Data bytes moved with `copy_file_range` or read/write (holes are not counted: they
    /// stay holes).
    pub copied_bytes: u64,
    /// Extended attributes set (ACLs and `security.*` included).
    pub xattrs: u64,
    /// Extended attributes the destination refused with `ENOTSUP`. (Without `/proc` mounted,
    /// the xattrs of symlinks and special files cannot be reached by fd and are not copied.)
    pub xattrs_unsupported: u64,
    /// Pre-copy: entries of the staging copy found still equal to the source and kept.
    pub unchanged: u64,
    /// Pre-copy: staging entries removed (gone from the source, or replaced).
    pub removed: u64,
    /// Entries left out or changed on purpose, with why.
    pub notes: Vec<Note>,
    /// Notes beyond `MAX_NOTES`, counted only.
    pub notes_dropped: u64,
}

impl Stats {
    pub(crate) fn note(&mut self, path: PathBuf, kind: NoteKind) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(Note { path, kind });
        } else {
            self.notes_dropped += 1;
        }
    }

    /// How many notes of this kind were kept.
    pub fn count(&self, kind: NoteKind) -> usize {
        self.notes.iter().filter(|n| n.kind == kind).count()
    }
}

/// One entry the copy left out or changed on purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Relative to the source root.
    pub path: PathBuf,
    pub kind: NoteKind,
}

/// Why an entry was left out or changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// A socket: it means nothing without the process that bound it.
    Socket,
    /// A device node in a user's tree: a user cannot make one, so it is not theirs to carry.
    Device,
    /// In a user's tree, a file another user owns that has more than one link: its data may
    /// live outside the tree (a planted hard link), so it is not read.
    ForeignHardLink,
    /// A mount point: what is mounted there is not the tree's data.
    MountPoint,
    /// The entry disappeared between listing and copying.
    Vanished,
    /// The entry changed type or identity between listing and opening (a race, possibly
    /// hostile): it was skipped, never followed.
    Swapped,
    /// A directory was moved away while the copy was inside it; its remaining entries were
    /// skipped.
    DirectoryMoved,
    /// The source could not be read (in a user's tree, where a user can make that happen, this
    /// skips the entry instead of failing the copy). The value is the errno.
    Unreadable(i32),
    /// The file changed while it was being copied (the copy may be torn; a later pre-copy pass
    /// or `finish` copies it again).
    ChangedWhileCopied,
    /// In a user's tree, a file another user owns lost its setuid/setgid bits and file
    /// capabilities in the copy.
    PrivilegesStripped,
}

impl NoteKind {
    /// Whether the entry is missing from the copy; otherwise it is there, altered as the note
    /// says.
    pub fn left_out(self) -> bool {
        !matches!(
            self,
            NoteKind::ChangedWhileCopied | NoteKind::PrivilegesStripped
        )
    }

    /// What happened to the entry, for logs.
    pub fn describe(self) -> String {
        match self {
            NoteKind::Socket => "left out: a socket".into(),
            NoteKind::Device => "left out: a device node in a user's tree".into(),
            NoteKind::ForeignHardLink => {
                "left out: another user's file with more than one link".into()
            }
            NoteKind::MountPoint => "left out: a mount point".into(),
            NoteKind::Vanished => "left out: it disappeared during the copy".into(),
            NoteKind::Swapped => {
                "left out: it was swapped for something else during the copy".into()
            }
            NoteKind::DirectoryMoved => {
                "left out: its directory was moved away during the copy".into()
            }
            NoteKind::Unreadable(errno) => format!(
                "left out: unreadable ({})",
                std::io::Error::from_raw_os_error(errno)
            ),
            NoteKind::ChangedWhileCopied => {
                "copied while it changed: kept, its data and metadata may be from two moments"
                    .into()
            }
            NoteKind::PrivilegesStripped => {
                "copied without its setuid/setgid bits and file capabilities".into()
            }
        }
    }
}

/// Reported after every entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Entries handled so far (copied, kept or skipped).
    pub entries: u64,
    /// Bytes of regular files handled so far (kept ones included).
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_say_whether_the_entry_is_in_the_copy() {
        // A file that changed while it was copied is in the copy (maybe torn): the log must not
        // say it was left out.
        for kept in [NoteKind::ChangedWhileCopied, NoteKind::PrivilegesStripped] {
            assert!(!kept.left_out());
            assert!(!kept.describe().starts_with("left out"), "{kept:?}");
        }
        for gone in [
            NoteKind::Socket,
            NoteKind::Device,
            NoteKind::ForeignHardLink,
            NoteKind::MountPoint,
            NoteKind::Vanished,
            NoteKind::Swapped,
            NoteKind::DirectoryMoved,
            NoteKind::Unreadable(libc::EACCES),
        ] {
            assert!(gone.left_out());
            assert!(gone.describe().starts_with("left out"), "{gone:?}");
        }
        assert!(NoteKind::Unreadable(libc::EACCES)
            .describe()
            .contains("Permission denied"));
    }
}
