//! `copy_tree`: a whole copy, built beside the destination and renamed into place.

use std::os::fd::AsFd;
use std::path::Path;

use crate::dir;
use crate::error::Result;
use crate::resolve;
use crate::state::Records;
use crate::stats::{Progress, Stats};
use crate::walk::Walk;
use crate::Options;

/// Copies the directory tree `src` to `dst`, which must not exist.
///
/// The copy is built in a temporary directory beside `dst` (`.DST.refreshd-tmp-…`, root's and
/// closed to everyone until done), flushed with `syncfs`, and renamed to `dst` without
/// replacing anything; the parent directory is flushed after. A crash leaves either no `dst`
/// or a complete one, plus perhaps a temporary for the start-up sweep. On error the temporary
/// is removed and `dst` does not exist.
///
/// `progress` is called after every entry.
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Stats> {
    resolve::not_inside(dst, src)?;
    let src_root = resolve::open_src(src, opts)?;
    let (parent, name) = resolve::open_parent(dst, opts)?;
    resolve::ensure_absent(parent.as_fd(), &name, dst)?;
    let tmp = resolve::make_temp_dir(parent.as_fd(), &name, dst)?;
    let result = (|| {
        let mut walk = Walk::new(
            opts,
            progress,
            src,
            &tmp.path,
            tmp.fd.as_fd(),
            Records::new(),
            false,
        )?;
        walk.run(src_root.as_fd(), tmp.fd.as_fd(), true)?;
        let (stats, _) = walk.finish();
        // Data first on disk, then the name that says the copy is complete.
        resolve::syncfs(tmp.fd.as_fd(), &tmp.path)?;
        resolve::publish(
            parent.as_fd(),
            &tmp.name,
            &tmp.path,
            parent.as_fd(),
            &name,
            dst,
            tmp.id,
        )?;
        Ok(stats)
    })();
    if result.is_err() {
        // Best effort: what is left carries the marker the start-up sweep removes.
        let _ = dir::remove_tree(parent.as_fd(), &tmp.name, Some(tmp.id));
    }
    result
}
