//! Where new revisions come from: a static snap store, read from a directory or over HTTP(S).
//!
//! A store is a tree of static files — `v1/snaps/NAME.json` (the index of a snap: its
//! revisions and channels) and the blobs the indexes point at — so any web server or CDN can
//! host one, and a directory is one too. The layout and format are in `docs/store.md`.
//!
//! - [`Store::open`] takes `DIR`, `file:///DIR`, `http://host:port/base` or `https://...`.
//! - [`Store::snap`] reads and validates an index; a hostile index (a blob path leaving the
//!   store, a bad size or hash) is refused before any blob is requested.
//! - [`Store::fetch`] downloads a blob: resumable, retried with backoff, at most the declared
//!   size, verified (sha3-384) before it is renamed into place.
//! - [`publish`] adds a snap file to a directory store as the next revision.
//!
//! Everything is synchronous and blocking; the daemon runs it on a blocking thread.

mod dir;
mod error;
mod fsutil;
mod http;
mod index;
mod location;
mod publish;
mod redirect;
mod source;
mod store;
pub mod tuf;

pub use error::{Error, Result};
pub use index::{
    validate_blob_path, validate_channel, Entry, SnapIndex, FORMAT, MAX_BLOB_SIZE, MAX_CHANNEL_LEN,
    MAX_INDEX_SIZE, MAX_PATH_LEN,
};
pub use publish::{publish, publish_signed, publish_with_progress, LOCK_FILE};
pub use store::{partial_path, Catalog, FetchStats, Store, StoreConfig, PARTIAL_SUFFIX};
pub use tough::schema::RoleType;
pub use tuf::client::TrustConfig;
pub use tuf::repo::{
    init, is_signed, lifetimes, migrate, resign, rotate_key, Expiries, InitOptions, Initialized,
    RoleKeys, Signed,
};
