//! The release agent installed where refreshd accepts it, for tests (shared with the agent's own
//! tests through `#[path]`).
//!
//! refreshd registers only an agent on a path that root alone controls, every directory up to
//! `/` included (refreshd/src/tracking/agent.rs), and the kernel runs it as root for every
//! daemon on the machine. A checkout may live anywhere — CI may clone it under /tmp — so tests
//! never register the agent where cargo built it: they install a copy under `/run` and pass
//! that (`refreshd --release-agent`).

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the copies go: root's, 0755, under /run (root's, 0755), emptied at boot — as the
/// kernel's `release_agent` is.
pub const SAFE_AGENT_DIR: &str = "/run/refreshd-tests";

/// Installs the agent binary `built` as `SAFE_AGENT_DIR/agent-HASH/refresh-release-agent`,
/// HASH naming `built`'s path (one copy per checkout and profile), root's, mode 0755, and
/// returns that path. A copy that differs from `built` (a new build) is replaced atomically: a
/// registration naming it never sees it missing. Copies are never removed: a daemon killed by a
/// test may leave `release_agent` naming one.
pub fn install_release_agent(built: &Path) -> io::Result<PathBuf> {
    let built = fs::canonicalize(built)?;
    let base = Path::new(SAFE_AGENT_DIR);
    root_dir(base)?;
    let dir = base.join(format!(
        "agent-{:016x}",
        fnv1a(built.as_os_str().as_encoded_bytes())
    ));
    root_dir(&dir)?;
    let dest = dir.join("refresh-release-agent");
    let bytes = fs::read(&built)?;
    if fs::read(&dest).is_ok_and(|have| have == bytes) {
        return Ok(dest);
    }
    let tmp = dir.join(format!(
        ".refresh-release-agent.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::os::unix::fs::chown(&tmp, Some(0), Some(0))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// `dir`, made if missing, root's and mode 0755 (fixed if it is not).
fn root_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = fs::symlink_metadata(dir)?;
    if !md.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if md.uid() != 0 || md.gid() != 0 {
        std::os::unix::fs::chown(dir, Some(0), Some(0))?;
    }
    if md.mode() & 0o7777 != 0o755 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// FNV-1a, 64 bits: the same name for the same path in every process and build.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
