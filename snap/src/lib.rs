//! The snap format for refreshd: names and revisions, `meta/snap.yaml`, squashfs images, and
//! read-only loop mounts of them.
//!
//! Everything here is synchronous and blocking; callers in async code run it on a blocking
//! thread. All `unsafe` lives in the private `sys` module.

#![deny(unsafe_code)]

pub mod mount;
pub mod name;
pub mod payload;
pub mod squashfs;
pub mod yaml;

mod mountinfo;
#[allow(unsafe_code)]
mod sys;
pub mod text;

pub use mount::{
    is_mountpoint, loop_available, mount_squashfs, mount_squashfs_replacing, mounts_under, unmount,
    unmount_reporting, MountError, Mounted, Unmounted,
};
pub use name::{
    validate_app_name, validate_hook_name, validate_instance_key, validate_instance_name,
    validate_snap_name, validate_version, InstanceName, NameError, Revision,
};
pub use squashfs::{
    check_image, extract, pack, pack_with_progress, read_file, read_file_limited, read_snap_yaml,
    Compression, ImageError, PackProgress, Superblock,
};
pub use yaml::{App, DaemonKind, Hook, RefreshMode, RefreshPendingBehavior, SnapYaml, YamlError};
