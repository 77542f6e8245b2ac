//! Squashfs images: checking the superblock in pure Rust, and reading, extracting and building
//! images with squashfs-tools (`unsquashfs`, `mksquashfs`).
//!
//! A `.snap` is an arbitrary upload until proven otherwise, so every tool failure becomes a
//! one-line error built from escaped tool output, and nothing half-written is left behind.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use crate::text::one_line;
use crate::yaml::{self, SnapYaml, YamlError};

/// Size of the squashfs 4.0 superblock at offset 0.
pub const SUPERBLOCK_SIZE: usize = 96;
/// `hsqs` read as a little-endian u32.
const MAGIC: u32 = 0x7371_7368;
/// The same bytes read big-endian: a squashfs from before 4.0, or a byte-swapped one.
const MAGIC_SWAPPED: u32 = 0x6873_7173;
/// Marks an optional table (fragments, export, xattrs) as absent.
const NO_TABLE: u64 = u64::MAX;

/// The largest file [`read_file`] returns; it is for metadata, not payloads.
pub const MAX_READ_FILE_SIZE: usize = 16 * 1024 * 1024;

/// How much of a tool's stderr is kept for an error message.
const STDERR_KEEP: usize = 64 * 1024;
/// How much of a tool's informational stdout is kept (it is discarded).
const STDOUT_KEEP: usize = 64 * 1024;

/// Compression of an image's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Lzma,
    Lzo,
    Xz,
    Lz4,
    Zstd,
}

impl Compression {
    fn from_id(id: u16) -> Option<Self> {
        Some(match id {
            1 => Compression::Gzip,
            2 => Compression::Lzma,
            3 => Compression::Lzo,
            4 => Compression::Xz,
            5 => Compression::Lz4,
            6 => Compression::Zstd,
            _ => return None,
        })
    }
}

/// The fields of a squashfs 4.0 superblock that say what the image is and how big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub inode_count: u32,
    /// Seconds since the epoch when the image was built.
    pub modification_time: u32,
    pub block_size: u32,
    pub fragment_count: u32,
    pub compression: Compression,
    pub flags: u16,
    pub id_count: u16,
    pub version_minor: u16,
    pub root_inode: u64,
    /// Bytes of the file the image occupies; mksquashfs pads the file beyond it to 4 KiB.
    pub bytes_used: u64,
    pub id_table_start: u64,
    pub xattr_id_table_start: u64,
    pub inode_table_start: u64,
    pub directory_table_start: u64,
    pub fragment_table_start: u64,
    pub export_table_start: u64,
}

/// Which squashfs-tools program failed; names it in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Unsquashfs,
    Mksquashfs,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Unsquashfs => "unsquashfs",
            Tool::Mksquashfs => "mksquashfs",
        }
    }
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an image could not be checked, read, extracted or built.
///
/// Messages about the image's contents leave out its path: the file is usually an upload in a
/// temporary location that means nothing to the person reading the message. The path is still
/// in the variant for logs. Messages are printed on their own, so each quotes its cause in a
/// plain field rather than a `source()` (a printed chain would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot open {}: {error}", path.display())]
    Open { path: PathBuf, error: io::Error },
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("not a squashfs image (the file is empty)")]
    Empty { path: PathBuf },
    #[error("not a squashfs image (bad magic)")]
    BadMagic { path: PathBuf },
    #[error(
        "snap file is truncated: the squashfs image needs {needed} bytes but the file has {actual}"
    )]
    Truncated {
        path: PathBuf,
        needed: u64,
        actual: u64,
    },
    #[error("unsupported squashfs version {major}.{minor}: only 4.0 is supported")]
    UnsupportedVersion {
        path: PathBuf,
        major: u16,
        minor: u16,
    },
    #[error("corrupt squashfs superblock: {reason}")]
    BadSuperblock { path: PathBuf, reason: String },
    #[error("{tool} not found: install squashfs-tools")]
    ToolMissing { tool: Tool },
    #[error("cannot run {tool}: {error}")]
    Spawn { tool: Tool, error: io::Error },
    #[error(
        "cannot read {inner:?} from a snap: the path must be relative, without \"..\" or wildcards"
    )]
    BadInnerPath { inner: String },
    #[error("snap has no {inner}")]
    MissingFile { image: PathBuf, inner: String },
    #[error("{inner} in the snap is larger than {limit} bytes")]
    FileTooLarge {
        image: PathBuf,
        inner: String,
        limit: usize,
    },
    #[error("cannot read {inner} from the snap: {detail}")]
    ReadFile {
        image: PathBuf,
        inner: String,
        detail: String,
    },
    #[error("{error}")]
    SnapYaml { image: PathBuf, error: YamlError },
    #[error("unsquashfs {version} can be made to write outside its destination by a crafted image; install squashfs-tools 4.5.1 or later")]
    UnsafeTool { version: String },
    #[error("cannot extract the snap to {}: it already exists", dest.display())]
    DestExists { dest: PathBuf },
    #[error("cannot extract the snap: {detail}")]
    Extract {
        image: PathBuf,
        dest: PathBuf,
        detail: String,
    },
    #[error("cannot pack {}: it has no meta/snap.yaml", dir.display())]
    PackNoSnapYaml { dir: PathBuf },
    #[error("cannot pack {}: {error}", dir.display())]
    PackSnapYaml { dir: PathBuf, error: YamlError },
    #[error("cannot pack {}: {detail}", dir.display())]
    Pack {
        dir: PathBuf,
        out: PathBuf,
        detail: String,
    },
    /// A filesystem step around the tools (temporary directories, renames, cleanup).
    #[error("cannot {op} {}: {error}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

impl ImageError {
    /// The message already begins with `cannot pack DIR`: a caller that says which directory it
    /// packed adds that only to the others.
    pub fn says_pack(&self) -> bool {
        matches!(
            self,
            ImageError::PackNoSnapYaml { .. }
                | ImageError::PackSnapYaml { .. }
                | ImageError::Pack { .. }
        )
    }
}

/// Checks that `path` holds a complete squashfs 4.0 image and returns its superblock.
///
/// This catches the common ways an upload goes wrong (not a snap, cut short) before any tool or
/// the kernel sees the file; it does not check the compressed contents.
pub fn check_image(path: &Path) -> Result<Superblock, ImageError> {
    let file = File::open(path).map_err(|source| ImageError::Open {
        path: path.to_owned(),
        error: source,
    })?;
    check_open_image(&file, path)
}

/// [`check_image`] on an open file (`path` is for messages), so a caller can check exactly the
/// file it goes on to use. Reads at offset 0 without moving the file position.
pub fn check_open_image(file: &File, path: &Path) -> Result<Superblock, ImageError> {
    let read_err = |source| ImageError::Read {
        path: path.to_owned(),
        error: source,
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(ImageError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mut buf = [0u8; SUPERBLOCK_SIZE];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(read_err(source)),
        }
    }
    // The length as read, not as stat'ed, decides "truncated" for short files: they agree
    // except for files that change underneath us, and then the read is what we checked.
    let len = meta.len().max(got as u64);
    parse_superblock(&buf[..got], len, path)
}

fn parse_superblock(b: &[u8], file_len: u64, path: &Path) -> Result<Superblock, ImageError> {
    let path = || path.to_owned();
    if b.is_empty() {
        return Err(ImageError::Empty { path: path() });
    }
    if b.len() < 4 || u32_at(b, 0) != MAGIC {
        if b.len() >= 4 && u32_at(b, 0) == MAGIC_SWAPPED {
            return Err(ImageError::BadSuperblock {
                path: path(),
                reason: "big-endian squashfs (from before version 4.0) is not supported".into(),
            });
        }
        return Err(ImageError::BadMagic { path: path() });
    }
    if b.len() < SUPERBLOCK_SIZE {
        return Err(ImageError::Truncated {
            path: path(),
            needed: SUPERBLOCK_SIZE as u64,
            actual: b.len() as u64,
        });
    }
    let sb = Superblock {
        inode_count: u32_at(b, 4),
        modification_time: u32_at(b, 8),
        block_size: u32_at(b, 12),
        fragment_count: u32_at(b, 16),
        compression: Compression::Gzip, // replaced below once checked
        flags: u16_at(b, 24),
        id_count: u16_at(b, 26),
        version_minor: u16_at(b, 30),
        root_inode: u64_at(b, 32),
        bytes_used: u64_at(b, 40),
        id_table_start: u64_at(b, 48),
        xattr_id_table_start: u64_at(b, 56),
        inode_table_start: u64_at(b, 64),
        directory_table_start: u64_at(b, 72),
        fragment_table_start: u64_at(b, 80),
        export_table_start: u64_at(b, 88),
    };
    let (major, minor) = (u16_at(b, 28), sb.version_minor);
    if major != 4 || minor != 0 {
        return Err(ImageError::UnsupportedVersion {
            path: path(),
            major,
            minor,
        });
    }
    let bad = |reason: String| ImageError::BadSuperblock {
        path: path(),
        reason,
    };
    let bs = sb.block_size;
    if !bs.is_power_of_two() || !(4096..=1024 * 1024).contains(&bs) {
        return Err(bad(format!(
            "block size {bs} is not a power of two from 4 KiB to 1 MiB"
        )));
    }
    let block_log = u16_at(b, 22);
    if u32::from(block_log) != bs.trailing_zeros() {
        return Err(bad(format!(
            "block log {block_log} does not match block size {bs}"
        )));
    }
    let compression_id = u16_at(b, 20);
    let compression = Compression::from_id(compression_id)
        .ok_or_else(|| bad(format!("unknown compression type {compression_id}")))?;
    if sb.bytes_used < SUPERBLOCK_SIZE as u64 {
        return Err(bad(format!(
            "the image claims to be {} bytes, less than its own superblock",
            sb.bytes_used
        )));
    }
    if sb.bytes_used > file_len {
        return Err(ImageError::Truncated {
            path: path(),
            needed: sb.bytes_used,
            actual: file_len,
        });
    }
    // Tables lie after the superblock and inside the image; inodes come before directories.
    // The kernel checks more, but these catch a superblock glued onto garbage.
    let inside = |start: u64| (SUPERBLOCK_SIZE as u64..sb.bytes_used).contains(&start);
    let checks = [
        ("inode table", inside(sb.inode_table_start)),
        ("directory table", inside(sb.directory_table_start)),
        (
            "inode and directory tables",
            sb.inode_table_start <= sb.directory_table_start,
        ),
        ("id table", inside(sb.id_table_start)),
        (
            "fragment table",
            sb.fragment_table_start == NO_TABLE || inside(sb.fragment_table_start),
        ),
        (
            "export table",
            sb.export_table_start == NO_TABLE || inside(sb.export_table_start),
        ),
        (
            "xattr table",
            sb.xattr_id_table_start == NO_TABLE || inside(sb.xattr_id_table_start),
        ),
    ];
    if let Some((what, _)) = checks.iter().find(|(_, ok)| !ok) {
        return Err(bad(format!("the {what} lies outside the image")));
    }
    if sb.inode_count == 0 {
        return Err(bad("the image has no inodes".into()));
    }
    Ok(Superblock { compression, ..sb })
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Where the squashfs-tools programs are; tests point these at missing binaries.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    unsquashfs: OsString,
    mksquashfs: OsString,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            unsquashfs: "unsquashfs".into(),
            mksquashfs: "mksquashfs".into(),
        }
    }
}

impl Tools {
    fn program(&self, tool: Tool) -> &OsStr {
        match tool {
            Tool::Unsquashfs => &self.unsquashfs,
            Tool::Mksquashfs => &self.mksquashfs,
        }
    }
}

/// Options the installed unsquashfs understands; `-cat` arrived in 4.5.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnsquashfsCaps {
    cat: bool,
    no_wildcards: bool,
    strict_errors: bool,
    /// The version from `unsquashfs -version`, when it says one.
    version: Option<Version>,
}

/// The first unsquashfs that keeps a crafted image's writes inside the destination: 4.5 checks
/// names for `/`, `.` and `..` (CVE-2021-40153); 4.5.1 refuses duplicate names, through which a
/// symlink planted first was written through (CVE-2021-41072).
const SAFE_UNSQUASHFS: Version = (4, 5, 1);

/// major, minor, patch
type Version = (u32, u32, u32);

impl UnsquashfsCaps {
    /// Whether this unsquashfs may unpack an image that nobody checked (every image).
    fn extracts_safely(&self) -> Result<(), ImageError> {
        match self.version {
            Some(v) if v >= SAFE_UNSQUASHFS => Ok(()),
            v => Err(ImageError::UnsafeTool {
                version: v.map_or_else(
                    || "of unknown version".to_owned(),
                    |(a, b, c)| format!("{a}.{b}.{c}"),
                ),
            }),
        }
    }
}

/// `unsquashfs version 4.5.1 (2022/03/17)` → (4, 5, 1).
fn parse_version(text: &str) -> Option<Version> {
    let rest = text.split("version ").nth(1)?;
    let word = rest.split_whitespace().next()?;
    let mut nums = word.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = nums.next()??;
    let minor = nums.next().flatten().unwrap_or(0);
    let patch = nums.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Probes the default unsquashfs once per process; a failed probe is not cached, so installing
/// squashfs-tools later works without a restart.
fn default_caps(tools: &Tools) -> Result<UnsquashfsCaps, ImageError> {
    static CAPS: OnceLock<UnsquashfsCaps> = OnceLock::new();
    if let Some(caps) = CAPS.get() {
        return Ok(*caps);
    }
    let caps = probe_caps(tools)?;
    Ok(*CAPS.get_or_init(|| caps))
}

fn probe_caps(tools: &Tools) -> Result<UnsquashfsCaps, ImageError> {
    // `-help` prints the option list (to stdout or stderr depending on the version) and may exit
    // non-zero; only the text matters.
    let out = run_tool(
        tools,
        Tool::Unsquashfs,
        &[OsStr::new("-help")],
        Stdout::Keep(STDOUT_KEEP),
    )?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&out.stderr);
    let version = run_tool(
        tools,
        Tool::Unsquashfs,
        &[OsStr::new("-version")],
        Stdout::Keep(STDOUT_KEEP),
    )?;
    let version = parse_version(&String::from_utf8_lossy(&version.stdout))
        .or_else(|| parse_version(&version.stderr));
    Ok(UnsquashfsCaps {
        cat: text.contains("-cat"),
        no_wildcards: text.contains("-no-wild"),
        strict_errors: text.contains("strict-errors"),
        version,
    })
}

/// Reads one file out of an image with `unsquashfs -cat`, at most [`MAX_READ_FILE_SIZE`] bytes.
///
/// `inner` is relative to the image root (`meta/snap.yaml`). A missing file is
/// [`ImageError::MissingFile`], so callers can tell "not a snap" from "broken snap".
pub fn read_file(image: &Path, inner: &str) -> Result<Vec<u8>, ImageError> {
    read_file_limited(image, inner, MAX_READ_FILE_SIZE)
}

/// [`read_file`] with a caller-chosen size limit.
pub fn read_file_limited(image: &Path, inner: &str, limit: usize) -> Result<Vec<u8>, ImageError> {
    let tools = Tools::default();
    let caps = default_caps(&tools)?;
    read_file_with(&tools, caps, image, inner, limit)
}

/// Reads and validates `meta/snap.yaml` from an image.
pub fn read_snap_yaml(image: &Path) -> Result<SnapYaml, ImageError> {
    let bytes = read_file_limited(image, "meta/snap.yaml", yaml::MAX_SNAP_YAML_SIZE)?;
    yaml::parse(&bytes).map_err(|source| ImageError::SnapYaml {
        image: image.to_owned(),
        error: source,
    })
}

pub(crate) fn read_file_with(
    tools: &Tools,
    caps: UnsquashfsCaps,
    image: &Path,
    inner: &str,
    limit: usize,
) -> Result<Vec<u8>, ImageError> {
    check_inner_path(inner)?;
    check_image(image)?;
    if !caps.cat {
        return read_file_by_extracting(tools, caps, image, inner, limit);
    }
    let mut args: Vec<&OsStr> = vec!["-no-progress".as_ref()];
    if caps.no_wildcards {
        args.push("-no-wildcards".as_ref());
    }
    if caps.strict_errors {
        args.push("-strict-errors".as_ref());
    }
    let image_arg = positional(image);
    args.extend(["-cat".as_ref(), image_arg.as_os_str(), inner.as_ref()]);
    let out = run_tool(tools, Tool::Unsquashfs, &args, Stdout::KillAbove(limit))?;
    if out.stdout_overflow {
        return Err(ImageError::FileTooLarge {
            image: image.to_owned(),
            inner: inner.to_owned(),
            limit,
        });
    }
    if out.status.success() {
        return Ok(out.stdout);
    }
    if out.stderr.contains("no matches for") {
        return Err(ImageError::MissingFile {
            image: image.to_owned(),
            inner: inner.to_owned(),
        });
    }
    Err(ImageError::ReadFile {
        image: image.to_owned(),
        inner: inner.to_owned(),
        detail: meaningful_line(&out.stderr, out.status),
    })
}

/// For unsquashfs before 4.5: extract just `inner` into a private temporary directory and read
/// it from there. The size limit applies to the read, not to what unsquashfs writes.
fn read_file_by_extracting(
    tools: &Tools,
    caps: UnsquashfsCaps,
    image: &Path,
    inner: &str,
    limit: usize,
) -> Result<Vec<u8>, ImageError> {
    caps.extracts_safely()?;
    let tmp = tempfile::Builder::new()
        .prefix("refreshd-unsquashfs-")
        .tempdir()
        .map_err(|source| ImageError::Io {
            op: "create a temporary directory in",
            path: std::env::temp_dir(),
            error: source,
        })?;
    let root = tmp.path().join("root");
    let mut args: Vec<&OsStr> = vec!["-no-progress".as_ref(), "-no-xattrs".as_ref()];
    if caps.no_wildcards {
        args.push("-no-wildcards".as_ref());
    }
    if caps.strict_errors {
        args.push("-strict-errors".as_ref());
    }
    let image_arg = positional(image);
    args.extend([
        "-d".as_ref(),
        root.as_os_str(),
        image_arg.as_os_str(),
        inner.as_ref(),
    ]);
    let out = run_tool(tools, Tool::Unsquashfs, &args, Stdout::Keep(STDOUT_KEEP))?;
    let read_err = |detail: String| ImageError::ReadFile {
        image: image.to_owned(),
        inner: inner.to_owned(),
        detail,
    };
    if !out.status.success() {
        return Err(read_err(meaningful_line(&out.stderr, out.status)));
    }
    let path = root.join(inner);
    // Never follow a symlink out of the temporary tree into the host.
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::MissingFile {
                image: image.to_owned(),
                inner: inner.to_owned(),
            })
        }
        Err(e) => return Err(read_err(e.to_string())),
    };
    if !meta.is_file() {
        return Err(read_err(format!("/{inner} is not a regular file")));
    }
    if meta.len() > limit as u64 {
        return Err(ImageError::FileTooLarge {
            image: image.to_owned(),
            inner: inner.to_owned(),
            limit,
        });
    }
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|f| f.take(limit as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| read_err(e.to_string()))?;
    if bytes.len() > limit {
        return Err(ImageError::FileTooLarge {
            image: image.to_owned(),
            inner: inner.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// Paths inside an image are program constants, but unsquashfs treats them as patterns, so keep
/// them to plain relative names.
fn check_inner_path(inner: &str) -> Result<(), ImageError> {
    let ok = !inner.is_empty()
        && inner
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-+@/".contains(&c))
        && inner
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.starts_with('-'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadInnerPath {
            inner: inner.to_owned(),
        })
    }
}

/// Unpacks an image into `dest`, which must not exist yet (`unsquashfs -d`). Used where loop
/// devices are unavailable.
///
/// The image is unpacked into a private directory beside `dest` (mode 0700: no one else can
/// reach into it meanwhile) and renamed into place, so `dest` either appears complete or not at
/// all. Before the rename the tree is made as immutable to users as a read-only loop mount,
/// whatever the image says ([`crate::payload::normalize`]): everything owned by this process's
/// user (root), no group or other write bits, no setuid, setgid or sticky bits, no device
/// nodes, fifos or sockets; xattrs (file capabilities) are not applied. A tree with hard links
/// to files outside it is refused.
///
/// What unsquashfs writes stays inside the staging directory: from squashfs-tools 4.5.1 it
/// refuses names with `/`, `.` or `..` and duplicate names (a symlink and then a file of the
/// same name, which older versions wrote through), and it links hard links only to files it
/// made itself.
pub fn extract(image: &Path, dest: &Path) -> Result<(), ImageError> {
    let tools = Tools::default();
    let caps = default_caps(&tools)?;
    extract_with(&tools, caps, image, dest)
}

pub(crate) fn extract_with(
    tools: &Tools,
    caps: UnsquashfsCaps,
    image: &Path,
    dest: &Path,
) -> Result<(), ImageError> {
    caps.extracts_safely()?;
    if fs::symlink_metadata(dest).is_ok() {
        return Err(ImageError::DestExists {
            dest: dest.to_owned(),
        });
    }
    check_image(image)?;
    let (parent, file_name) = split_parent(dest).ok_or_else(|| ImageError::Extract {
        image: image.to_owned(),
        dest: dest.to_owned(),
        detail: format!("{} has no parent directory", dest.display()),
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(&staging_prefix(file_name, "extract"))
        .tempdir_in(parent)
        .map_err(|source| ImageError::Io {
            op: "create a temporary directory in",
            path: parent.to_owned(),
            error: source,
        })?;
    let result = extract_into(tools, caps, image, dest, tmp.path());
    if let Err(e) = cleanup(tmp) {
        // Do not hide the real failure behind a cleanup failure.
        result?;
        return Err(e);
    }
    result
}

fn extract_into(
    tools: &Tools,
    caps: UnsquashfsCaps,
    image: &Path,
    dest: &Path,
    tmp: &Path,
) -> Result<(), ImageError> {
    let root = tmp.join("root");
    let mut args: Vec<&OsStr> = vec!["-no-progress".as_ref(), "-no-xattrs".as_ref()];
    if caps.strict_errors {
        args.push("-strict-errors".as_ref());
    }
    let image_arg = positional(image);
    args.extend(["-d".as_ref(), root.as_os_str(), image_arg.as_os_str()]);
    let out = run_tool(tools, Tool::Unsquashfs, &args, Stdout::Keep(STDOUT_KEEP))?;
    let fail = |detail: String| ImageError::Extract {
        image: image.to_owned(),
        dest: dest.to_owned(),
        detail,
    };
    if !out.status.success() {
        return Err(fail(meaningful_line(&out.stderr, out.status)));
    }
    // Still private (the staging directory is root's, mode 0700): made safe before anyone
    // can see it.
    let owner = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    crate::payload::normalize(&root, owner)
        .map_err(|e| fail(format!("cannot make the extracted tree safe: {e}")))?;
    fs::rename(&root, dest).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists
            || source.raw_os_error() == Some(libc::ENOTEMPTY)
        {
            ImageError::DestExists {
                dest: dest.to_owned(),
            }
        } else {
            ImageError::Io {
                op: "move the extracted snap to",
                path: dest.to_owned(),
                error: source,
            }
        }
    })
}

/// Builds an image of `dir` at `out` (snapd's mksquashfs options), after checking that
/// `dir/meta/snap.yaml` exists and is valid. `out` is replaced atomically.
pub fn pack(dir: &Path, out: &Path) -> Result<(), ImageError> {
    pack_with(&Tools::default(), dir, out, &mut |_| {})
}

/// How far [`pack_with_progress`] got: the regular files and their bytes in the directory, and
/// how many of those bytes mksquashfs has read (it compresses as it reads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackProgress {
    pub files: u64,
    pub bytes: u64,
    pub read: u64,
}

/// [`pack`], telling `progress` how far it got: once the directory is counted, a few times a
/// second while mksquashfs reads it, and once at the end (`read == bytes`). Called from a
/// thread of its own while mksquashfs runs.
pub fn pack_with_progress(
    dir: &Path,
    out: &Path,
    progress: &mut (dyn FnMut(PackProgress) + Send),
) -> Result<(), ImageError> {
    pack_with(&Tools::default(), dir, out, progress)
}

/// How often the bytes mksquashfs read are looked at.
const PACK_POLL: std::time::Duration = std::time::Duration::from_millis(100);

pub(crate) fn pack_with(
    tools: &Tools,
    dir: &Path,
    out: &Path,
    progress: &mut (dyn FnMut(PackProgress) + Send),
) -> Result<(), ImageError> {
    let snap_yaml = dir.join("meta/snap.yaml");
    // Not following a symlink: mksquashfs would store the link, not what we validated.
    let meta = match fs::symlink_metadata(&snap_yaml) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::PackNoSnapYaml {
                dir: dir.to_owned(),
            })
        }
        Err(source) => {
            return Err(ImageError::Read {
                path: snap_yaml,
                error: source,
            })
        }
    };
    if !meta.is_file() {
        return Err(ImageError::NotAFile { path: snap_yaml });
    }
    let mut bytes = Vec::new();
    File::open(&snap_yaml)
        .and_then(|f| {
            f.take(yaml::MAX_SNAP_YAML_SIZE as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|source| ImageError::Read {
            path: snap_yaml.clone(),
            error: source,
        })?;
    yaml::parse(&bytes).map_err(|source| ImageError::PackSnapYaml {
        dir: dir.to_owned(),
        error: source,
    })?;

    let pack_err = |detail: String| ImageError::Pack {
        dir: dir.to_owned(),
        out: out.to_owned(),
        detail,
    };
    let (parent, file_name) = split_parent(out)
        .ok_or_else(|| pack_err(format!("{} is not a file path", out.display())))?;
    // The staging directory beside `out` would end up inside the image it is building.
    if let (Ok(parent), Ok(dir)) = (fs::canonicalize(parent), fs::canonicalize(dir)) {
        if parent.starts_with(&dir) {
            return Err(pack_err(format!(
                "the output {} is inside the directory being packed",
                out.display()
            )));
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix(&staging_prefix(file_name, "pack"))
        .tempdir_in(parent)
        .map_err(|source| ImageError::Io {
            op: "create a temporary directory in",
            path: parent.to_owned(),
            error: source,
        })?;
    let staged = tmp.path().join("image.snap");
    let (files, bytes) = count_tree(dir);
    let mut shown = PackProgress {
        files,
        bytes,
        read: 0,
    };
    progress(shown);
    // mksquashfs says how far it got only to a terminal; what it has read, the kernel says.
    let mut watch = |pid: u32| {
        let read = bytes_read(pid).unwrap_or(0).min(bytes);
        // Monotonic: a figure read as the tool exits may be short.
        if read > shown.read {
            shown.read = read;
            progress(shown);
        }
    };
    let dir_arg = positional(dir);
    let args: Vec<&OsStr> = vec![
        dir_arg.as_os_str(),
        staged.as_os_str(),
        "-noappend".as_ref(),
        "-comp".as_ref(),
        "xz".as_ref(),
        "-no-fragments".as_ref(),
        "-no-progress".as_ref(),
        // Read no more than 8 MB ahead of the compression, so that what mksquashfs has read
        // says how far the packing got (and its memory stays small). The image is the same.
        "-read-queue".as_ref(),
        "8".as_ref(),
        "-all-root".as_ref(),
        // Host xattrs (SELinux labels, capabilities) do not belong in a portable image.
        "-no-xattrs".as_ref(),
    ];
    let ran = run_tool_watched(
        tools,
        Tool::Mksquashfs,
        &args,
        Stdout::Keep(STDOUT_KEEP),
        Some(&mut watch),
    );
    let result = ran.and_then(|output| {
        if !output.status.success() {
            return Err(pack_err(meaningful_line(&output.stderr, output.status)));
        }
        let io_err = |op, source| ImageError::Io {
            op,
            path: out.to_owned(),
            error: source,
        };
        File::open(&staged)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err("sync", e))?;
        fs::rename(&staged, out).map_err(|e| io_err("write", e))?;
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("sync the directory of", e))
    });
    if result.is_ok() && shown.read < bytes {
        shown.read = bytes;
        progress(shown);
    }
    if let Err(e) = cleanup(tmp) {
        result?;
        return Err(e);
    }
    result
}

/// The regular files under `dir` and their bytes, not following symbolic links; what cannot be
/// read is not counted (mksquashfs will say what is wrong with it).
fn count_tree(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) if m.is_file() => {
                    files += 1;
                    bytes += m.len();
                }
                _ => {}
            }
        }
    }
    (files, bytes)
}

/// The bytes process `pid` has read (`rchar` of `/proc/PID/io`), if it can be told.
fn bytes_read(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|n| n.trim().parse().ok())
}

/// `parent` and file name of a path, with `""` as parent meaning the current directory.
fn split_parent(p: &Path) -> Option<(&Path, &OsStr)> {
    let name = p.file_name()?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some((parent, name))
}

/// A hidden, recognisable name for a staging directory beside its final path.
fn staging_prefix(file_name: &OsStr, what: &str) -> String {
    format!(".{}.{what}-", file_name.to_string_lossy())
}

/// Removes a staging directory. unsquashfs may have created read-only directories in it, which
/// stop a non-root `remove_dir_all`; make them writable and try once more.
fn cleanup(tmp: tempfile::TempDir) -> Result<(), ImageError> {
    let path = tmp.path().to_owned();
    if let Err(first) = fs::remove_dir_all(&path) {
        if first.kind() == io::ErrorKind::NotFound {
            return Ok(());
        }
        make_dirs_writable(&path);
        fs::remove_dir_all(&path).map_err(|source| ImageError::Io {
            op: "remove",
            path: path.clone(),
            error: source,
        })?;
    }
    // The TempDir's own removal now finds nothing; dropping it is harmless.
    drop(tmp);
    Ok(())
}

fn make_dirs_writable(dir: &Path) {
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
}

/// A path given to a tool as a positional argument: one starting with `-` would be read as an
/// option, so spell it `./-name`.
fn positional(p: &Path) -> PathBuf {
    if p.as_os_str().as_bytes().first() == Some(&b'-') {
        Path::new(".").join(p)
    } else {
        p.to_owned()
    }
}

/// What to do with a tool's stdout.
#[derive(Debug, Clone, Copy)]
enum Stdout {
    /// It is the payload: keep up to the limit, kill the tool beyond it.
    KillAbove(usize),
    /// It is chatter: keep up to the limit, drain the rest.
    Keep(usize),
}

struct ToolOutput {
    status: ExitStatus,
    stdout: Vec<u8>,
    stdout_overflow: bool,
    stderr: String,
}

fn run_tool(
    tools: &Tools,
    tool: Tool,
    args: &[&OsStr],
    stdout_mode: Stdout,
) -> Result<ToolOutput, ImageError> {
    run_tool_watched(tools, tool, args, stdout_mode, None)
}

/// [`run_tool`], calling `watch` with the tool's pid every [`PACK_POLL`] while it runs (from a
/// thread of its own; never after the tool was reaped, so the pid is still the tool's).
fn run_tool_watched(
    tools: &Tools,
    tool: Tool,
    args: &[&OsStr],
    stdout_mode: Stdout,
    watch: Option<&mut (dyn FnMut(u32) + Send)>,
) -> Result<ToolOutput, ImageError> {
    let mut child = Command::new(tools.program(tool))
        .args(args)
        // Stable, parseable English messages.
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ImageError::ToolMissing { tool }
            } else {
                ImageError::Spawn {
                    tool,
                    error: source,
                }
            }
        })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    // Read stderr on its own thread so a tool blocked writing one pipe cannot deadlock us
    // while we read the other.
    let stderr_thread = std::thread::spawn(move || read_capped(stderr, STDERR_KEEP));
    let stdout = child.stdout.take().expect("stdout is piped");
    let pid = child.id();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (stdout, stdout_overflow) = std::thread::scope(|scope| {
        if let Some(watch) = watch {
            scope.spawn(move || loop {
                watch(pid);
                if stopped.recv_timeout(PACK_POLL)
                    != Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                {
                    return;
                }
            });
        }
        let read = match stdout_mode {
            Stdout::KillAbove(limit) => read_or_kill(&mut child, stdout, limit),
            Stdout::Keep(limit) => read_capped(stdout, limit),
        };
        // The watcher ends (and the scope joins it) before the tool is reaped below.
        drop(stop);
        read
    });
    let status = child.wait().map_err(|source| ImageError::Spawn {
        tool,
        error: source,
    })?;
    let (stderr, _) = stderr_thread.join().unwrap_or_default();
    Ok(ToolOutput {
        status,
        stdout,
        stdout_overflow,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Reads up to `limit` bytes and discards the rest; says whether there was more.
fn read_capped(mut r: impl Read, limit: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let _ = (&mut r).take(limit as u64).read_to_end(&mut buf);
    let extra = io::copy(&mut r, &mut io::sink()).unwrap_or(0);
    (buf, extra > 0)
}

/// Reads up to `limit` bytes; if the tool writes more, kills it rather than read the rest.
fn read_or_kill(child: &mut Child, r: impl Read, limit: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let _ = r.take(limit as u64 + 1).read_to_end(&mut buf);
    if buf.len() > limit {
        // Killing an already-exited child fails harmlessly.
        let _ = child.kill();
        buf.truncate(limit);
        return (buf, true);
    }
    (buf, false)
}

/// The line of a tool's stderr that says what went wrong, flattened and escaped.
fn meaningful_line(stderr: &str, status: ExitStatus) -> String {
    let noise = |l: &str| {
        l.is_empty()
            || l.starts_with("Parallel unsquashfs")
            || l.starts_with("created ")
            || l.starts_with('[')
            || l.contains("inodes (")
    };
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !noise(l))
        .collect();
    let chosen = lines
        .iter()
        .find_map(|l| l.strip_prefix("FATAL ERROR:"))
        .or_else(|| lines.first().copied());
    match chosen {
        Some(line) => {
            let line = line.trim();
            one_line(line.strip_prefix("cat: ").unwrap_or(line))
        }
        None => match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "killed by a signal".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{symlink, MetadataExt};

    const SNAP_YAML: &str =
        "name: hello\nversion: \"1.0\"\napps:\n  hello:\n    command: bin/hello\n";

    /// A snap tree with compressible but irregular payload, so corrupting the middle of the image
    /// hits xz-compressed data.
    fn snap_tree(root: &Path) -> PathBuf {
        let dir = root.join("tree");
        fs::create_dir_all(dir.join("meta")).unwrap();
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("meta/snap.yaml"), SNAP_YAML).unwrap();
        fs::write(dir.join("bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
        let mut words = String::new();
        let mut x: u32 = 12345;
        while words.len() < 600_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            words.push_str(["alpha ", "beta ", "gamma\n", "delta "][(x >> 16) as usize % 4]);
        }
        fs::write(dir.join("bin/data"), &words).unwrap();
        dir
    }

    fn build(root: &Path) -> PathBuf {
        let dir = snap_tree(root);
        let out = root.join("hello.snap");
        pack(&dir, &out).unwrap();
        out
    }

    fn copy_with(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = fs::read(src).unwrap();
        edit(&mut bytes);
        fs::write(dst, bytes).unwrap();
    }

    #[test]
    fn check_image_accepts_a_real_image() {
        let tmp = tempfile::tempdir().unwrap();
        let image = build(tmp.path());
        let sb = check_image(&image).unwrap();
        assert_eq!(sb.compression, Compression::Xz);
        assert_eq!(sb.block_size, 128 * 1024);
        assert!(sb.bytes_used <= fs::metadata(&image).unwrap().len());
        assert!(sb.inode_count >= 5, "{sb:?}");
    }

    #[test]
    fn check_image_rejections() {
        let tmp = tempfile::tempdir().unwrap();
        let image = build(tmp.path());
        let good = fs::read(&image).unwrap();
        let used = u64_at(&good, 40);
        let set16 = |at: usize, v: u16| {
            move |b: &mut Vec<u8>| b[at..at + 2].copy_from_slice(&v.to_le_bytes())
        };
        let set32 = |at: usize, v: u32| {
            move |b: &mut Vec<u8>| b[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        let set64 = |at: usize, v: u64| {
            move |b: &mut Vec<u8>| b[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Edit, String)> = vec![
            ("empty", Box::new(|b: &mut Vec<u8>| b.clear()), "not a squashfs image (the file is empty)".into()),
            ("junk", Box::new(|b: &mut Vec<u8>| *b = b"this is not a snap, just some text\n".repeat(100)), "not a squashfs image (bad magic)".into()),
            ("three bytes", Box::new(|b: &mut Vec<u8>| b.truncate(3)), "not a squashfs image (bad magic)".into()),
            ("zip", Box::new(|b: &mut Vec<u8>| *b = b"PK\x03\x04".repeat(50)), "not a squashfs image (bad magic)".into()),
            (
                "superblock cut short",
                Box::new(|b: &mut Vec<u8>| b.truncate(50)),
                "snap file is truncated: the squashfs image needs 96 bytes but the file has 50".into(),
            ),
            (
                "cut in half",
                Box::new(move |b: &mut Vec<u8>| b.truncate(used as usize / 2)),
                format!("snap file is truncated: the squashfs image needs {used} bytes but the file has {}", used / 2),
            ),
            (
                "last byte missing",
                Box::new(move |b: &mut Vec<u8>| b.truncate(used as usize - 1)),
                format!("snap file is truncated: the squashfs image needs {used} bytes but the file has {}", used - 1),
            ),
            ("big-endian", Box::new(|b: &mut Vec<u8>| b[..4].copy_from_slice(b"sqsh")), "corrupt squashfs superblock: big-endian squashfs (from before version 4.0) is not supported".into()),
            ("version 3", Box::new(set16(28, 3)), "unsupported squashfs version 3.0: only 4.0 is supported".into()),
            ("version 4.1", Box::new(set16(30, 1)), "unsupported squashfs version 4.1: only 4.0 is supported".into()),
            ("block size 3000", Box::new(set32(12, 3000)), "corrupt squashfs superblock: block size 3000 is not a power of two from 4 KiB to 1 MiB".into()),
            ("block size 2 MiB", Box::new(set32(12, 2 << 20)), "corrupt squashfs superblock: block size 2097152 is not a power of two from 4 KiB to 1 MiB".into()),
            ("block size 2 KiB", Box::new(set32(12, 2048)), "corrupt squashfs superblock: block size 2048 is not a power of two from 4 KiB to 1 MiB".into()),
            ("block log", Box::new(set16(22, 12)), "corrupt squashfs superblock: block log 12 does not match block size 131072".into()),
            ("compression", Box::new(set16(20, 9)), "corrupt squashfs superblock: unknown compression type 9".into()),
            ("tiny bytes_used", Box::new(set64(40, 10)), "corrupt squashfs superblock: the image claims to be 10 bytes, less than its own superblock".into()),
            (
                "huge bytes_used",
                Box::new(set64(40, u64::MAX)),
                format!("snap file is truncated: the squashfs image needs {} bytes but the file has {}", u64::MAX, good.len()),
            ),
            ("inode table outside", Box::new(set64(64, u64::MAX - 5)), "corrupt squashfs superblock: the inode table lies outside the image".into()),
            ("id table outside", Box::new(set64(48, 0)), "corrupt squashfs superblock: the id table lies outside the image".into()),
            ("fragment table outside", Box::new(move |b: &mut Vec<u8>| b[80..88].copy_from_slice(&(used + 1).to_le_bytes())), "corrupt squashfs superblock: the fragment table lies outside the image".into()),
            ("no inodes", Box::new(set32(4, 0)), "corrupt squashfs superblock: the image has no inodes".into()),
        ];
        for (what, edit, want) in cases {
            let path = tmp.path().join("case.snap");
            copy_with(&image, &path, edit);
            match check_image(&path) {
                Ok(sb) => panic!("{what}: accepted {sb:?}"),
                Err(e) => assert_eq!(e.to_string(), want, "{what}"),
            }
        }

        let err = check_image(&tmp.path().join("missing.snap")).unwrap_err();
        assert!(matches!(err, ImageError::Open { .. }), "{err:?}");
        let err = check_image(tmp.path()).unwrap_err();
        assert!(matches!(err, ImageError::NotAFile { .. }), "{err:?}");
    }

    #[test]
    fn read_file_reads_and_distinguishes_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let image = build(tmp.path());
        assert_eq!(
            read_file(&image, "meta/snap.yaml").unwrap(),
            SNAP_YAML.as_bytes()
        );
        let y = read_snap_yaml(&image).unwrap();
        assert_eq!(y.name, "hello");

        let err = read_file(&image, "meta/nope.yaml").unwrap_err();
        assert!(matches!(err, ImageError::MissingFile { .. }), "{err:?}");
        assert_eq!(err.to_string(), "snap has no meta/nope.yaml");

        let err = read_file(&image, "meta").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read meta from the snap: /meta is a directory"
        );

        let err = read_file_limited(&image, "bin/data", 1000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bin/data in the snap is larger than 1000 bytes"
        );
        assert_eq!(
            read_file_limited(&image, "bin/hello", 21).unwrap().len(),
            21
        );
        assert!(read_file_limited(&image, "bin/hello", 20).is_err());
    }

    #[test]
    fn read_file_refuses_pattern_like_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let image = build(tmp.path());
        for inner in [
            "",
            "/meta/snap.yaml",
            "meta/*",
            "meta/snap.yam?",
            "meta/[s]nap.yaml",
            "../etc/passwd",
            "meta/../meta/snap.yaml",
            "meta//snap.yaml",
            "./meta/snap.yaml",
            "meta/snap.yaml\n",
            "-cat",
        ] {
            let err = read_file(&image, inner).unwrap_err();
            assert!(
                matches!(err, ImageError::BadInnerPath { .. }),
                "{inner:?}: {err:?}"
            );
        }
    }

    #[test]
    fn read_file_does_not_follow_symlinks() {
        // A link to a host file must not be read from the host, with -cat or by extracting.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tree");
        fs::create_dir_all(dir.join("meta")).unwrap();
        fs::write(dir.join("meta/snap.yaml"), SNAP_YAML).unwrap();
        symlink("/etc/hostname", dir.join("meta/host")).unwrap();
        let image = tmp.path().join("links.snap");
        pack(&dir, &image).unwrap();
        let caps = default_caps(&Tools::default()).unwrap();
        for caps in [caps, UnsquashfsCaps { cat: false, ..caps }] {
            let err =
                read_file_with(&Tools::default(), caps, &image, "meta/host", 1000).unwrap_err();
            assert!(
                matches!(err, ImageError::ReadFile { .. }),
                "{caps:?}: {err:?}"
            );
        }
    }

    #[test]
    fn read_file_fallback_without_cat() {
        let tmp = tempfile::tempdir().unwrap();
        let image = build(tmp.path());
        let tools = Tools::default();
        let caps = UnsquashfsCaps {
            cat: false,
            ..default_caps(&tools).unwrap()
        };
        assert_eq!(
            read_file_with(&tools, caps, &image, "meta/snap.yaml", 4096).unwrap(),
            SNAP_YAML.as_bytes()
        );
        let err = read_file_with(&tools, caps, &image, "meta/nope.yaml", 4096).unwrap_err();
        assert!(matches!(err, ImageError::MissingFile { .. }), "{err:?}");
        let err = read_file_with(&tools, caps, &image, "bin/data", 4096).unwrap_err();
        assert!(matches!(err, ImageError::FileTooLarge { .. }), "{err:?}");
        let err = read_file_with(&tools, caps, &image, "meta", 4096).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read meta from the snap: /meta is not a regular file"
        );
    }

    #[test]
    fn corrupt_images_fail_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let image = build(tmp.path());
        let good = fs::read(&image).unwrap();
        let sb = check_image(&image).unwrap();

        // Garbage over the middle of the compressed payload: the superblock still checks out,
        // reading the damaged file does not.
        let middle = tmp.path().join("middle.snap");
        copy_with(&image, &middle, |b| {
            let at = b.len() / 3;
            for (i, byte) in b[at..at + 1024].iter_mut().enumerate() {
                *byte = (i as u8).wrapping_mul(151) ^ 0xa5;
            }
        });
        check_image(&middle).unwrap();
        let err = read_file(&middle, "bin/data").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot read bin/data from the snap: "),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        let dest = tmp.path().join("middle-out");
        let err = extract(&middle, &dest).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot extract the snap: "),
            "{err}"
        );
        assert!(!dest.exists(), "partial extraction left behind");

        // Garbage over the metadata (inode and directory tables): nothing is readable.
        let tables = tmp.path().join("tables.snap");
        copy_with(&image, &tables, |b| {
            let from = sb.inode_table_start as usize;
            let to = sb.id_table_start as usize;
            for byte in &mut b[from..to] {
                *byte = 0x5a;
            }
        });
        check_image(&tables).unwrap();
        let err = read_file(&tables, "meta/snap.yaml").unwrap_err();
        assert!(matches!(err, ImageError::ReadFile { .. }), "{err:?}");
        let dest = tmp.path().join("tables-out");
        assert!(extract(&tables, &dest).is_err());
        assert!(!dest.exists());

        // The original is untouched by all this.
        assert_eq!(fs::read(&image).unwrap(), good);
        // And no staging directories were left beside the destinations.
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn bad_files_are_refused_before_any_tool_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let image = build(tmp.path());
        let empty = tmp.path().join("empty.snap");
        File::create(&empty).unwrap();
        let junk = tmp.path().join("junk.snap");
        let mut f = File::create(&junk).unwrap();
        let mut x: u64 = 7;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.write_all(&x.to_le_bytes()).unwrap();
        }
        drop(f);
        let truncated = tmp.path().join("truncated.snap");
        copy_with(&image, &truncated, |b| b.truncate(b.len() / 2));

        for (path, want) in [
            (&empty, "not a squashfs image (the file is empty)"),
            (&junk, "not a squashfs image (bad magic)"),
            (&truncated, "snap file is truncated"),
        ] {
            let err = read_file(path, "meta/snap.yaml").unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
            let dest = tmp.path().join("out");
            let err = extract(path, &dest).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
            assert!(!dest.exists());
        }
    }

    #[test]
    fn extract_unpacks_and_defuses() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = snap_tree(tmp.path());
        let suid = dir.join("bin/suid");
        fs::write(&suid, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
        symlink("hello", dir.join("bin/link")).unwrap();
        // What a hostile image carries: a directory anyone may write, a user's files, a fifo.
        fs::create_dir(dir.join("open")).unwrap();
        fs::set_permissions(dir.join("open"), fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(dir.join("open/app"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.join("open/app"), fs::Permissions::from_mode(0o777)).unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            std::os::unix::fs::chown(dir.join("open/app"), Some(4242), Some(4242)).unwrap();
        }
        nix::unistd::mkfifo(
            &dir.join("open/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        )
        .unwrap();
        let image = tmp.path().join("x.snap");
        pack(&dir, &image).unwrap();

        let dest = tmp.path().join("-dest");
        extract(&image, &dest).unwrap();
        assert_eq!(
            fs::read_to_string(dest.join("meta/snap.yaml")).unwrap(),
            SNAP_YAML
        );
        assert_eq!(
            fs::read(dest.join("bin/data")).unwrap(),
            fs::read(dir.join("bin/data")).unwrap()
        );
        assert_eq!(
            fs::read_link(dest.join("bin/link")).unwrap(),
            Path::new("hello")
        );
        let mode = fs::metadata(dest.join("bin/suid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "setuid bit survived: {mode:o}");
        for (p, want) in [("open", 0o755), ("open/app", 0o755), ("", 0o755)] {
            let md = fs::symlink_metadata(dest.join(p)).unwrap();
            assert_eq!(md.permissions().mode() & 0o7777, want, "{p}");
            let me = (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            );
            assert_eq!((md.uid(), md.gid()), me, "{p}");
        }
        assert!(fs::symlink_metadata(dest.join("open/fifo")).is_err());

        let err = extract(&image, &dest).unwrap_err();
        assert!(matches!(err, ImageError::DestExists { .. }), "{err:?}");
        // The existing tree was not touched.
        assert!(dest.join("meta/snap.yaml").exists());

        let err = extract(&image, &tmp.path().join("no/such/parent/dest")).unwrap_err();
        assert!(matches!(err, ImageError::Io { .. }), "{err:?}");
    }

    #[test]
    fn pack_checks_snap_yaml_and_replaces_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = snap_tree(tmp.path());
        let out = tmp.path().join("out.snap");
        fs::write(&out, "old contents").unwrap();
        pack(&dir, &out).unwrap();
        check_image(&out).unwrap();
        assert_eq!(
            read_snap_yaml(&out).unwrap().apps["hello"].command,
            "bin/hello"
        );

        fs::write(dir.join("meta/snap.yaml"), "name: Bad\nversion: 1\n").unwrap();
        let before = fs::read(&out).unwrap();
        let err = pack(&dir, &out).unwrap_err();
        assert!(
            err.to_string()
                .contains("snap.yaml: field \"name\": invalid snap name \"Bad\""),
            "{err}"
        );
        assert_eq!(
            fs::read(&out).unwrap(),
            before,
            "failed pack touched the output"
        );

        fs::remove_file(dir.join("meta/snap.yaml")).unwrap();
        let err = pack(&dir, &out).unwrap_err();
        assert!(matches!(err, ImageError::PackNoSnapYaml { .. }), "{err:?}");

        let err = pack(&tmp.path().join("nope"), &out).unwrap_err();
        assert!(matches!(err, ImageError::PackNoSnapYaml { .. }), "{err:?}");

        // A snap.yaml that is a link is refused: the image would hold the link, not the file.
        fs::write(tmp.path().join("elsewhere.yaml"), SNAP_YAML).unwrap();
        symlink(
            tmp.path().join("elsewhere.yaml"),
            dir.join("meta/snap.yaml"),
        )
        .unwrap();
        let err = pack(&dir, &out).unwrap_err();
        assert!(matches!(err, ImageError::NotAFile { .. }), "{err:?}");
        fs::remove_file(dir.join("meta/snap.yaml")).unwrap();

        // Packing into the tree itself is refused.
        fs::write(dir.join("meta/snap.yaml"), SNAP_YAML).unwrap();
        let err = pack(&dir, &dir.join("self.snap")).unwrap_err();
        assert!(
            err.to_string()
                .contains("is inside the directory being packed"),
            "{err}"
        );
        assert!(!dir.join("self.snap").exists());
    }

    #[test]
    fn pack_reports_progress_up_to_the_whole_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = snap_tree(tmp.path());
        // A link is not a file to read: not counted.
        symlink("hello", dir.join("bin/alias")).unwrap();
        let bytes: u64 = ["meta/snap.yaml", "bin/hello", "bin/data"]
            .iter()
            .map(|f| fs::metadata(dir.join(f)).unwrap().len())
            .sum();
        let mut seen = vec![];
        pack_with_progress(&dir, &tmp.path().join("out.snap"), &mut |p| seen.push(p)).unwrap();
        let first = PackProgress {
            files: 3,
            bytes,
            read: 0,
        };
        assert_eq!(seen.first(), Some(&first), "{seen:?}");
        assert_eq!(
            seen.last(),
            Some(&PackProgress {
                read: bytes,
                ..first
            })
        );
        assert!(seen.windows(2).all(|w| w[0].read < w[1].read), "{seen:?}");
    }

    #[test]
    fn missing_tools_say_what_to_install() {
        let tmp = tempfile::tempdir().unwrap();
        let image = build(tmp.path());
        let tools = Tools {
            unsquashfs: "/nonexistent/unsquashfs".into(),
            mksquashfs: "/nonexistent/mksquashfs".into(),
        };
        let err = probe_caps(&tools).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsquashfs not found: install squashfs-tools"
        );
        let caps = default_caps(&Tools::default()).unwrap();
        let err = read_file_with(&tools, caps, &image, "meta/snap.yaml", 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsquashfs not found: install squashfs-tools"
        );
        let err = extract_with(&tools, caps, &image, &tmp.path().join("d")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsquashfs not found: install squashfs-tools"
        );
        let err = pack_with(
            &tools,
            &snap_tree(&tmp.path().join("p")),
            &tmp.path().join("o.snap"),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "mksquashfs not found: install squashfs-tools"
        );
    }

    #[test]
    fn installed_unsquashfs_has_cat() {
        // The brief's minimum is squashfs-tools 4.5; the fallback is tested separately.
        let caps = default_caps(&Tools::default()).unwrap();
        assert!(caps.cat, "{caps:?}");
    }

    #[test]
    fn unsquashfs_versions() {
        let table: &[(&str, Option<Version>)] = &[
            (
                "unsquashfs version 4.5.1 (2022/03/17)\ncopyright",
                Some((4, 5, 1)),
            ),
            ("unsquashfs version 4.6.1 (2023/03/25)", Some((4, 6, 1))),
            ("unsquashfs version 4.4 (2019/08/29)", Some((4, 4, 0))),
            ("unsquashfs version 4.5-git (2021/07/22)", Some((4, 5, 0))),
            ("something else", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_version(text), *want, "{text}");
        }
        let caps = |v| UnsquashfsCaps {
            cat: true,
            no_wildcards: true,
            strict_errors: true,
            version: v,
        };
        assert!(caps(Some((4, 5, 1))).extracts_safely().is_ok());
        assert!(caps(Some((5, 0, 0))).extracts_safely().is_ok());
        for v in [Some((4, 5, 0)), Some((4, 4, 9)), None] {
            let e = caps(v).extracts_safely().unwrap_err().to_string();
            assert!(e.contains("install squashfs-tools 4.5.1 or later"), "{e}");
        }
        // The installed one is new enough for the tests to extract at all.
        default_caps(&Tools::default())
            .unwrap()
            .extracts_safely()
            .unwrap();
    }

    #[test]
    fn meaningful_lines() {
        use std::os::unix::process::ExitStatusExt;
        let status = ExitStatus::from_raw(1 << 8);
        let cases: &[(&str, &str)] = &[
            (
                "xz uncompress failed with error code 9\nFATAL ERROR: cat: failed to read/uncompress file /bin/big\n",
                "failed to read/uncompress file /bin/big",
            ),
            ("Parallel unsquashfs: Using 2 processors\n\ncat: /meta is a directory\n", "/meta is a directory"),
            ("Read on filesystem failed because EOF\nFATAL ERROR: Can't find a valid SQUASHFS superblock on x\n", "Can't find a valid SQUASHFS superblock on x"),
            ("weird \u{1b}[31m output\n", "weird \\u{1b}[31m output"),
            ("", "exited with status 1"),
        ];
        for (stderr, want) in cases {
            assert_eq!(meaningful_line(stderr, status), *want, "{stderr:?}");
        }
    }
}
