//! The signed store: The Update Framework (TUF) metadata over the static store layout.
//!
//! A signed store is the same tree of static files plus `tuf/`: `N.root.json` (every version,
//! so a client can walk from the root it trusts to the newest), `root.json` (a copy of the
//! newest), `N.targets.json`, `N.snapshot.json` and `timestamp.json` (consistent snapshots:
//! every file but the timestamp is immutable once written, so a CDN may cache it). The targets
//! are every index (`v1/snaps/NAME.json`, also served as `v1/snaps/SHA256.NAME.json`) and every
//! blob (`blobs/NAME_REV.snap`, its sha3-384 in the target's `custom`). docs/store.md.
//!
//! - [`client`]: refreshd's side: one pinned root, metadata verified with `tough`, kept so that
//!   versions never go backwards across restarts; indexes and blobs bound to their targets.
//! - [`repo`]: the publisher's side: `store init`, signing on publish, `resign`, key rotation,
//!   migration of an unsigned store.

pub(crate) mod client;
pub(crate) mod repo;

use std::future::Future;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Where the signed metadata lives in a store.
pub const META_DIR: &str = "tuf";

/// The largest metadata file read (root, timestamp, snapshot; targets is bounded by the
/// snapshot's signed length, up to this). Endless data stops here.
pub const MAX_META_SIZE: u64 = 16 << 20;

/// The TUF spec version written into metadata.
pub(crate) const SPEC_VERSION: &str = "1.0.0";

/// The target name of a snap's index.
pub(crate) fn index_target(name: &str) -> String {
    format!("v1/snaps/{name}.json")
}

/// Where the index with this sha256 is served, immutable: `v1/snaps/SHA256.NAME.json`.
pub(crate) fn hashed_index(name: &str, sha256_hex: &str) -> String {
    format!("v1/snaps/{sha256_hex}.{name}.json")
}

/// The key in a blob target's `custom` holding the snap's own digest.
pub(crate) const SHA3_KEY: &str = "sha3-384";

/// Runs one of tough's futures to completion on the store's own runtime: the store is blocking
/// everywhere (the daemon calls it from blocking threads, refreshctl from a blocking thread).
pub(crate) fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    Ok(runtime()?.block_on(fut))
}

/// One current-thread runtime for the process, made on first use and never dropped: making
/// one per look-up started a thread each time, and one kept in a `Store` would be dropped by
/// the daemon from async code, which panics.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Signing {
            reason: format!("cannot start the signing runtime: {e}"),
        })?;
    // Two first look-ups at once: one runtime is kept, the other (never used) is dropped here,
    // on a thread that may block.
    Ok(RUNTIME.get_or_init(|| rt))
}

/// A tough error as one line: its message and its sources', each once.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    crate::error::one_line(&out)
}
