//! Read-only loop mounts of squashfs images, done with the loop ioctls directly.
//!
//! Each loop device is configured with `LO_FLAGS_AUTOCLEAR`, so the kernel frees it when the
//! mount goes away: unmounting is all the cleanup there is, and a crash between configuring and
//! mounting leaks nothing once our fd closes.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::mountinfo::{self, MountEntry};
use crate::squashfs::{check_open_image, ImageError};
use crate::sys;

const LOOP_CONTROL: &str = "/dev/loop-control";
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// How often to retry when another process binds the free loop device we were given.
const CONFIGURE_ATTEMPTS: u32 = 8;
/// How often to retry an unmount that fails with EBUSY before detaching lazily.
const UNMOUNT_ATTEMPTS: u32 = 5;
const UNMOUNT_BACKOFF: Duration = Duration::from_millis(50);

/// Why a mount, unmount or mount-table query failed. One line each, which quotes its cause
/// (a plain field, not a `source()`, so a printed chain does not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount {}: {error}", image.display())]
    Image { image: PathBuf, error: ImageError },
    #[error("cannot use {} as a mount point: {error}", path.display())]
    Target { path: PathBuf, error: io::Error },
    #[error("cannot use {} as a mount point: not a directory", path.display())]
    TargetNotDir { path: PathBuf },
    #[error("cannot mount {} on {}: {mounted} is already mounted there", image.display(), target.display())]
    TargetBusy {
        image: PathBuf,
        target: PathBuf,
        mounted: String,
    },
    #[error("cannot open {LOOP_CONTROL}: {error}")]
    LoopControl { error: io::Error },
    #[error("cannot get a free loop device: {error}")]
    GetFree { error: io::Error },
    #[error("cannot open {}: {error}", device.display())]
    OpenDevice { device: PathBuf, error: io::Error },
    #[error("cannot attach {} to {}: {error}", image.display(), device.display())]
    Configure {
        image: PathBuf,
        device: PathBuf,
        error: io::Error,
    },
    #[error("cannot attach {} to a loop device: other processes took {attempts} free devices in a row", image.display())]
    NoFreeDevice { image: PathBuf, attempts: u32 },
    #[error("cannot mount {} on {}: {error}{}", image.display(), target.display(), mount_hint(error))]
    Mount {
        image: PathBuf,
        target: PathBuf,
        device: PathBuf,
        error: io::Error,
    },
    #[error("cannot unmount {}: {error}", target.display())]
    Unmount { target: PathBuf, error: io::Error },
    #[error("cannot read {}: {error}", path.display())]
    MountTable { path: PathBuf, error: io::Error },
}

/// What a mount(2) errno usually means for a squashfs image, since the bare errno
/// ("Invalid argument") does not say.
fn mount_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EINVAL) => {
            " (the kernel could not read the image: corrupt, or built with unsupported options)"
        }
        Some(libc::ENODEV) => " (this kernel has no squashfs support)",
        _ => "",
    }
}

/// Whether this process can make loop mounts: root, and a usable `/dev/loop-control`.
/// Where it cannot, refreshd extracts images instead.
pub fn loop_available() -> bool {
    nix::unistd::geteuid().is_root()
        && OpenOptions::new()
            .read(true)
            .write(true)
            .open(LOOP_CONTROL)
            .is_ok()
}

/// Mounts a squashfs image read-only (`ro,nodev,nosuid`) on `target`, an existing directory.
///
/// Idempotent: if `target` already has this same image (same file, by device and inode)
/// mounted, this succeeds without mounting again, so a retried install step is harmless.
/// Anything else mounted there is refused ([`MountError::TargetBusy`]); see
/// [`mount_squashfs_replacing`] to replace it.
pub fn mount_squashfs(image: &Path, target: &Path) -> Result<(), MountError> {
    let (backing, id) = open_image(image)?;
    check_target(target)?;
    if let Some(top) = top_mount_at(target)? {
        if loop_backing_of(&top) == Some(id) {
            return Ok(());
        }
        return Err(MountError::TargetBusy {
            image: image.to_owned(),
            target: target.to_owned(),
            mounted: describe(&top),
        });
    }
    mount_backing(image, &backing, target)
}

/// What [`mount_squashfs_replacing`] found at the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mounted {
    /// The image was already mounted there: nothing was done.
    Already,
    /// Nothing was mounted there; now the image is.
    Fresh,
    /// Other mounts were there (described as `SOURCE (FSTYPE)`, topmost first): they were
    /// unmounted — `detached`: at least one lazily, as something still used it — and the
    /// image mounted (or found under them).
    Replaced { stale: Vec<String>, detached: bool },
}

/// How many stacked mounts at one target [`mount_squashfs_replacing`] takes off at most.
const REPLACE_LIMIT: usize = 16;

/// Makes `target` show exactly `image`: a mount there is kept only if its loop device is bound
/// to this very file (device and inode, as the kernel holds it: a mount of another file that
/// since moved to the image's path, or was deleted, does not count). Anything else mounted
/// there is unmounted first (lazily when busy), so an earlier, different image at the same
/// place is never taken for this one.
pub fn mount_squashfs_replacing(image: &Path, target: &Path) -> Result<Mounted, MountError> {
    let (backing, id) = open_image(image)?;
    check_target(target)?;
    let mut stale = vec![];
    let mut detached = false;
    while let Some(top) = top_mount_at(target)? {
        if loop_backing_of(&top) == Some(id) {
            return Ok(if stale.is_empty() {
                Mounted::Already
            } else {
                Mounted::Replaced { stale, detached }
            });
        }
        if stale.len() >= REPLACE_LIMIT {
            return Err(MountError::TargetBusy {
                image: image.to_owned(),
                target: target.to_owned(),
                mounted: format!("{} and {} more mounts", describe(&top), stale.len()),
            });
        }
        stale.push(describe(&top));
        match unmount_reporting(target)? {
            Unmounted::Detached => detached = true,
            Unmounted::Done => {}
            // The table named a mount that umount2 says is not there: do not loop on it.
            Unmounted::NotMounted => {
                return Err(MountError::TargetBusy {
                    image: image.to_owned(),
                    target: target.to_owned(),
                    mounted: describe(&top),
                })
            }
        }
    }
    mount_backing(image, &backing, target)?;
    Ok(if stale.is_empty() {
        Mounted::Fresh
    } else {
        Mounted::Replaced { stale, detached }
    })
}

/// Opens and checks an image; returns it with its (device, inode).
fn open_image(image: &Path) -> Result<(File, (u64, u64)), MountError> {
    let image_err = |source| MountError::Image {
        image: image.to_owned(),
        error: source,
    };
    let backing = File::open(image).map_err(|source| {
        image_err(ImageError::Open {
            path: image.to_owned(),
            error: source,
        })
    })?;
    // Refuse truncated or foreign files before the kernel sees them (the squashfs driver would
    // mount a truncated image and fail only on reads). Checking the fd we will attach means the
    // file cannot be swapped between check and mount.
    check_open_image(&backing, image).map_err(image_err)?;
    let meta = backing.metadata().map_err(|source| {
        image_err(ImageError::Read {
            path: image.to_owned(),
            error: source,
        })
    })?;
    Ok((backing, (meta.dev(), meta.ino())))
}

fn check_target(target: &Path) -> Result<(), MountError> {
    let target_meta = fs::metadata(target).map_err(|source| MountError::Target {
        path: target.to_owned(),
        error: source,
    })?;
    if !target_meta.is_dir() {
        return Err(MountError::TargetNotDir {
            path: target.to_owned(),
        });
    }
    Ok(())
}

fn describe(e: &MountEntry) -> String {
    format!("{} ({})", e.source, e.fstype)
}

/// Attaches the checked `backing` file to a loop device and mounts it on `target`.
fn mount_backing(image: &Path, backing: &File, target: &Path) -> Result<(), MountError> {
    let (device_path, device) = attach(image, backing)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if let Err(errno) = nix::mount::mount(
        Some(device_path.as_path()),
        target,
        Some("squashfs"),
        flags,
        None::<&str>,
    ) {
        // AUTOCLEAR would free the device when we close it, but say so explicitly: on every
        // kernel, this is what makes a failed mount leak no loop device.
        let _ = sys::loop_clr_fd(device.as_fd());
        drop(device);
        return Err(MountError::Mount {
            image: image.to_owned(),
            target: target.to_owned(),
            device: device_path,
            error: io::Error::from_raw_os_error(errno as i32),
        });
    }
    // The mount now holds the device; closing ours leaves the mount as its last user.
    drop(device);
    Ok(())
}

/// Binds `backing` to a free loop device, read-only and auto-clearing. Returns the device path
/// and an open fd, which must stay open until the device is mounted (or is released).
fn attach(image: &Path, backing: &File) -> Result<(PathBuf, File), MountError> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .map_err(|source| MountError::LoopControl { error: source })?;
    let name = image.as_os_str().as_bytes();
    for _ in 0..CONFIGURE_ATTEMPTS {
        let n = sys::loop_ctl_get_free(control.as_fd())
            .map_err(|source| MountError::GetFree { error: source })?;
        let device_path = PathBuf::from(format!("/dev/loop{n}"));
        let device = open_device(&device_path)?;
        match sys::loop_configure(
            device.as_fd(),
            backing.as_fd(),
            sys::LO_FLAGS_READ_ONLY | sys::LO_FLAGS_AUTOCLEAR,
            name,
        ) {
            Ok(()) => return Ok((device_path, device)),
            // Someone bound it between GET_FREE and CONFIGURE; ask for another.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(source) => {
                return Err(MountError::Configure {
                    image: image.to_owned(),
                    device: device_path,
                    error: source,
                })
            }
        }
    }
    Err(MountError::NoFreeDevice {
        image: image.to_owned(),
        attempts: CONFIGURE_ATTEMPTS,
    })
}

fn open_device(path: &Path) -> Result<File, MountError> {
    let open = |write| OpenOptions::new().read(true).write(write).open(path);
    // Read-write like losetup, falling back for read-only /dev setups; the device is made
    // read-only by its flags either way.
    open(true)
        .or_else(|e| match e.raw_os_error() {
            Some(libc::EROFS) | Some(libc::EACCES) => open(false),
            _ => Err(e),
        })
        .map_err(|source| MountError::OpenDevice {
            device: path.to_owned(),
            error: source,
        })
}

/// The block devices' major number of loop devices (linux/major.h).
const LOOP_MAJOR: u32 = 7;

/// The (device, inode) of the file bound to the loop device a mount entry shows, as the kernel
/// holds it (`LOOP_GET_STATUS64`); `None` if the entry is not a loop device or cannot be asked.
/// Not the recorded path (sysfs `backing_file`): that may name another file by now.
fn loop_backing_of(entry: &MountEntry) -> Option<(u64, u64)> {
    if entry.major != LOOP_MAJOR {
        return None;
    }
    let device = File::open(&entry.source).ok()?;
    let meta = device.metadata().ok()?;
    // The source is only a name: the node opened must be the very device mounted.
    let want = libc::makedev(entry.major, entry.minor);
    if !meta.file_type().is_block_device() || meta.rdev() != want {
        return None;
    }
    sys::loop_backing(device.as_fd()).ok()
}

/// How an [`unmount_reporting`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// The mount is gone (and with it, the loop device).
    Done,
    /// Nothing was mounted there.
    NotMounted,
    /// It stayed busy, so it was detached lazily (`MNT_DETACH`): it has left the tree, but the
    /// loop device lives until the last process using it lets go.
    Detached,
}

/// Unmounts `target`. Succeeds when nothing is mounted there; when the mount stays busy, detaches
/// it lazily. See [`unmount_reporting`] to learn which happened.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    unmount_reporting(target).map(drop)
}

/// [`unmount`], telling the caller whether it had to detach lazily (worth a log line: the old
/// revision is still in use by some process).
pub fn unmount_reporting(target: &Path) -> Result<Unmounted, MountError> {
    let fail = |errno: Errno| MountError::Unmount {
        target: target.to_owned(),
        error: io::Error::from_raw_os_error(errno as i32),
    };
    // NOFOLLOW: a symlink planted at the target must not redirect us to another mount.
    let mut attempt = 0;
    loop {
        match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => return Ok(Unmounted::Done),
            Err(Errno::ENOENT) => return Ok(Unmounted::NotMounted),
            Err(Errno::EINVAL) => {
                // EINVAL means "not a mount point" unless the table says otherwise.
                return if is_mountpoint(target)? {
                    Err(fail(Errno::EINVAL))
                } else {
                    Ok(Unmounted::NotMounted)
                };
            }
            Err(Errno::EBUSY) if attempt + 1 < UNMOUNT_ATTEMPTS => {
                attempt += 1;
                sleep(UNMOUNT_BACKOFF * attempt);
            }
            Err(Errno::EBUSY) => break,
            Err(e) => return Err(fail(e)),
        }
    }
    nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(fail)?;
    Ok(Unmounted::Detached)
}

/// Whether something is mounted exactly at `path`, per `/proc/self/mountinfo`. A path that does
/// not exist is not a mount point.
pub fn is_mountpoint(path: &Path) -> Result<bool, MountError> {
    Ok(top_mount_at(path)?.is_some())
}

/// Mount points at or below `dir`, deepest first (and, at one path, the most recently mounted
/// first), so unmounting them in order always works.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, MountError> {
    let Some(dir) = canonical(dir)? else {
        return Ok(Vec::new());
    };
    let mut found: Vec<PathBuf> = read_mountinfo()?
        .into_iter()
        .rev()
        .map(|e| e.mount_point)
        .filter(|p| p.starts_with(&dir))
        .collect();
    // Stable sort: equal depths keep the newest-first order from above.
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}

/// The topmost mount at exactly `path`, if any.
fn top_mount_at(path: &Path) -> Result<Option<MountEntry>, MountError> {
    let Some(path) = canonical(path)? else {
        return Ok(None);
    };
    Ok(read_mountinfo()?
        .into_iter()
        .rev()
        .find(|e| e.mount_point == path))
}

/// mountinfo lists resolved paths, so resolve ours the same way; `None` if it does not exist.
fn canonical(path: &Path) -> Result<Option<PathBuf>, MountError> {
    match fs::canonicalize(path) {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MountError::Target {
            path: path.to_owned(),
            error: source,
        }),
    }
}

fn read_mountinfo() -> Result<Vec<MountEntry>, MountError> {
    let text = fs::read(MOUNTINFO).map_err(|source| MountError::MountTable {
        path: MOUNTINFO.into(),
        error: source,
    })?;
    Ok(mountinfo::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use crate::squashfs::{check_image, pack};

    /// Unmounts everything under a test's scratch directory even when an assertion fails, so a
    /// failing test leaks neither mounts nor loop devices.
    struct Cleanup(PathBuf);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Ok(mounts) = mounts_under(&self.0) {
                for m in mounts {
                    if let Err(e) = unmount(&m) {
                        eprintln!("cleanup: {e}");
                    }
                }
            }
        }
    }

    /// Root-only tests print why they skip instead of failing on an unprivileged machine.
    fn can_run(test: &str) -> bool {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP {test}: needs root for loop mounts");
            return false;
        }
        if !loop_available() {
            println!("SKIP {test}: {LOOP_CONTROL} is not usable");
            return false;
        }
        true
    }

    fn build_image(root: &Path, name: &str, greeting: &str) -> PathBuf {
        let tree = root.join(format!("{name}-tree"));
        fs::create_dir_all(tree.join("meta")).unwrap();
        fs::write(
            tree.join("meta/snap.yaml"),
            format!("name: {name}\nversion: \"1.0\"\n"),
        )
        .unwrap();
        fs::write(tree.join("greeting"), greeting).unwrap();
        let image = root.join(format!("{name}.snap"));
        pack(&tree, &image).unwrap();
        image
    }

    /// Loop devices still bound to `image`, per sysfs.
    fn loops_backed_by(image: &Path) -> Vec<String> {
        let image = fs::canonicalize(image).unwrap();
        let mut found = Vec::new();
        for entry in fs::read_dir("/sys/block").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            if let Ok(text) = fs::read(entry.path().join("loop/backing_file")) {
                let text = text.strip_suffix(b"\n").unwrap_or(&text);
                if Path::new(std::ffi::OsStr::from_bytes(text)) == image {
                    found.push(name);
                }
            }
        }
        found
    }

    /// Auto-clear happens on the last close, which may be a moment after umount returns (udev
    /// probes new devices); wait for it rather than race it.
    fn assert_released(image: &Path) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = loops_backed_by(image);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "loop devices still bound to {}: {left:?}",
                image.display()
            );
            sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn mount_read_unmount_releases_the_loop_device() {
        if !can_run("mount_read_unmount_releases_the_loop_device") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let _cleanup = Cleanup(tmp.path().to_owned());
        let image = build_image(tmp.path(), "hello", "hi there\n");
        // A space in the path exercises mountinfo's octal escapes.
        let target = tmp.path().join("mnt with space");
        fs::create_dir(&target).unwrap();

        assert!(!is_mountpoint(&target).unwrap());
        mount_squashfs(&image, &target).unwrap();
        assert!(is_mountpoint(&target).unwrap());
        assert_eq!(
            fs::read_to_string(target.join("greeting")).unwrap(),
            "hi there\n"
        );
        assert_eq!(loops_backed_by(&image).len(), 1);

        // Read-only, with device nodes and setuid bits neutralised.
        let err = fs::write(target.join("new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        let entry = top_mount_at(&target).unwrap().unwrap();
        assert_eq!(entry.fstype, "squashfs");
        let options: Vec<&str> = entry.options.split(',').collect();
        for want in ["ro", "nodev", "nosuid"] {
            assert!(options.contains(&want), "{want} missing from {options:?}");
        }

        // Mounting the same image again is a no-op, not a second mount or loop device.
        mount_squashfs(&image, &target).unwrap();
        assert_eq!(
            mounts_under(tmp.path()).unwrap(),
            std::slice::from_ref(&target)
        );
        assert_eq!(loops_backed_by(&image).len(), 1);

        // A different image on the same target is refused.
        let other = build_image(tmp.path(), "other", "bye\n");
        let err = mount_squashfs(&other, &target).unwrap_err();
        assert!(matches!(err, MountError::TargetBusy { .. }), "{err:?}");
        assert!(
            err.to_string().contains("is already mounted there"),
            "{err}"
        );
        assert!(loops_backed_by(&other).is_empty());

        assert_eq!(unmount_reporting(&target).unwrap(), Unmounted::Done);
        assert!(!is_mountpoint(&target).unwrap());
        assert_released(&image);
        // Unmounting again is fine.
        assert_eq!(unmount_reporting(&target).unwrap(), Unmounted::NotMounted);
        assert_eq!(
            unmount_reporting(&tmp.path().join("missing")).unwrap(),
            Unmounted::NotMounted
        );
    }

    /// A mount of another image at the target is replaced, even when that image's file was
    /// deleted and a new one put at its path (what a failed change followed by a new change of
    /// the same revision leaves): the kernel's device and inode decide, not the path.
    #[test]
    fn a_stale_mount_is_replaced_not_reused() {
        if !can_run("a_stale_mount_is_replaced_not_reused") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let _cleanup = Cleanup(tmp.path().to_owned());
        let target = tmp.path().join("mnt");
        fs::create_dir(&target).unwrap();
        let path = tmp.path().join("blob.snap");
        let old = build_image(tmp.path(), "old", "old\n");
        fs::rename(&old, &path).unwrap();
        mount_squashfs(&path, &target).unwrap();
        // A process still in the stale payload: it must be detached lazily.
        let held = File::open(target.join("greeting")).unwrap();
        fs::remove_file(&path).unwrap();
        let new = build_image(tmp.path(), "new", "new\n");
        fs::rename(&new, &path).unwrap();

        // The plain mount refuses it rather than taking it for the new file.
        let err = mount_squashfs(&path, &target).unwrap_err();
        assert!(matches!(err, MountError::TargetBusy { .. }), "{err:?}");
        let got = mount_squashfs_replacing(&path, &target).unwrap();
        assert!(
            matches!(&got, Mounted::Replaced { stale, detached: true } if stale.len() == 1),
            "{got:?}"
        );
        assert_eq!(
            fs::read_to_string(target.join("greeting")).unwrap(),
            "new\n"
        );
        assert_eq!(io::read_to_string(&held).unwrap(), "old\n");
        drop(held);
        assert_eq!(mounts_under(tmp.path()).unwrap().len(), 1);
        assert_eq!(
            mount_squashfs_replacing(&path, &target).unwrap(),
            Mounted::Already
        );

        // Stacked mounts: everything above the right one goes, the right one stays.
        nix::mount::mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let got = mount_squashfs_replacing(&path, &target).unwrap();
        assert!(
            matches!(&got, Mounted::Replaced { stale, detached: false } if stale[0].contains("tmpfs")),
            "{got:?}"
        );
        assert_eq!(
            fs::read_to_string(target.join("greeting")).unwrap(),
            "new\n"
        );
        unmount(&target).unwrap();
        assert_eq!(
            mount_squashfs_replacing(&path, &target).unwrap(),
            Mounted::Fresh
        );
        unmount(&target).unwrap();
        assert_released(&path);
    }

    #[test]
    fn busy_mount_is_detached_lazily() {
        if !can_run("busy_mount_is_detached_lazily") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let _cleanup = Cleanup(tmp.path().to_owned());
        let image = build_image(tmp.path(), "busy", "in use\n");
        let target = tmp.path().join("mnt");
        fs::create_dir(&target).unwrap();
        mount_squashfs(&image, &target).unwrap();

        let held = File::open(target.join("greeting")).unwrap();
        assert_eq!(unmount_reporting(&target).unwrap(), Unmounted::Detached);
        assert!(!is_mountpoint(&target).unwrap());
        // The detached mount lives on for the open file...
        assert_eq!(loops_backed_by(&image).len(), 1);
        assert_eq!(
            io::read_to_string(&held).unwrap(),
            "in use\n",
            "open file stopped working"
        );
        // ...and the device goes with the last user.
        drop(held);
        assert_released(&image);
    }

    #[test]
    fn corrupt_image_fails_cleanly_without_leaking_a_device() {
        if !can_run("corrupt_image_fails_cleanly_without_leaking_a_device") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let _cleanup = Cleanup(tmp.path().to_owned());
        let image = build_image(tmp.path(), "broken", "x\n");
        let target = tmp.path().join("mnt");
        fs::create_dir(&target).unwrap();

        // Metadata garbage passes the superblock check, so the kernel gets to refuse it, and the
        // configured loop device must be released.
        let sb = check_image(&image).unwrap();
        let mut bytes = fs::read(&image).unwrap();
        for b in &mut bytes[sb.inode_table_start as usize..sb.id_table_start as usize] {
            *b = 0xff;
        }
        let corrupt = tmp.path().join("corrupt.snap");
        fs::write(&corrupt, &bytes).unwrap();
        let err = mount_squashfs(&corrupt, &target).unwrap_err();
        assert!(matches!(err, MountError::Mount { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("the kernel could not read the image"),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'));
        assert!(!is_mountpoint(&target).unwrap());
        assert_released(&corrupt);

        // A truncated image never reaches a loop device.
        let truncated = tmp.path().join("truncated.snap");
        fs::write(&truncated, &bytes[..sb.bytes_used as usize / 2]).unwrap();
        let err = mount_squashfs(&truncated, &target).unwrap_err();
        assert!(err.to_string().contains("snap file is truncated"), "{err}");
        assert!(loops_backed_by(&truncated).is_empty());

        // Junk, and a target that is not a directory.
        let junk = tmp.path().join("junk.snap");
        fs::write(&junk, b"not squashfs at all").unwrap();
        let err = mount_squashfs(&junk, &target).unwrap_err();
        assert!(
            err.to_string().contains("not a squashfs image (bad magic)"),
            "{err}"
        );
        let err = mount_squashfs(&image, &junk).unwrap_err();
        assert!(matches!(err, MountError::TargetNotDir { .. }), "{err:?}");
        let err = mount_squashfs(&image, &tmp.path().join("absent")).unwrap_err();
        assert!(matches!(err, MountError::Target { .. }), "{err:?}");
    }

    #[test]
    fn parallel_mounts_each_get_a_device() {
        if !can_run("parallel_mounts_each_get_a_device") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let _cleanup = Cleanup(tmp.path().to_owned());
        let jobs: Vec<(PathBuf, PathBuf)> = (0..6)
            .map(|i| {
                let image = build_image(tmp.path(), &format!("par{i}"), &format!("{i}\n"));
                let target = tmp.path().join(format!("mnt{i}"));
                fs::create_dir(&target).unwrap();
                (image, target)
            })
            .collect();
        // Concurrent LOOP_CTL_GET_FREE calls hand out the same device; the EBUSY retry sorts
        // that out.
        std::thread::scope(|s| {
            for (image, target) in &jobs {
                s.spawn(move || mount_squashfs(image, target).unwrap());
            }
        });
        for (i, (image, target)) in jobs.iter().enumerate() {
            assert_eq!(
                fs::read_to_string(target.join("greeting")).unwrap(),
                format!("{i}\n")
            );
            assert_eq!(loops_backed_by(image).len(), 1);
        }
        let mounted = mounts_under(tmp.path()).unwrap();
        assert_eq!(mounted.len(), jobs.len());
        for m in &mounted {
            unmount(m).unwrap();
        }
        for (image, _) in &jobs {
            assert_released(image);
        }
    }

    #[test]
    fn mounts_under_lists_deepest_first() {
        if !can_run("mounts_under_lists_deepest_first") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let _cleanup = Cleanup(tmp.path().to_owned());
        let outer_img = build_image(tmp.path(), "outer", "o\n");
        let inner_img = build_image(tmp.path(), "inner", "i\n");
        // A tmpfs gives the nested mount point somewhere writable to live.
        let base = tmp.path().join("base");
        fs::create_dir(&base).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &base,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let outer = base.join("outer");
        let inner = base.join("inner/deeper");
        fs::create_dir_all(&outer).unwrap();
        fs::create_dir_all(&inner).unwrap();
        mount_squashfs(&outer_img, &outer).unwrap();
        mount_squashfs(&inner_img, &inner).unwrap();

        let found = mounts_under(tmp.path()).unwrap();
        assert_eq!(found[0], inner);
        assert_eq!(found.len(), 3);
        assert_eq!(found[2], base);
        assert_eq!(
            mounts_under(&tmp.path().join("nope")).unwrap(),
            Vec::<PathBuf>::new()
        );
        // A sibling whose name merely starts the same is not "under".
        assert!(mounts_under(&tmp.path().join("bas")).unwrap().is_empty());

        for m in found {
            unmount(&m).unwrap();
        }
        assert_released(&outer_img);
        assert_released(&inner_img);
    }
}
