//! Everything that can go wrong with a store, as one enum.
//!
//! Each message is one line that says what is wrong and what to do about it. Text that comes
//! from the store (index fields, server messages) is quoted with [`quote`] or flattened with
//! [`one_line`], so a hostile store cannot rewrite a terminal or flood a log.

use std::io;
use std::path::PathBuf;

use refreshd_snap::{ImageError, NameError};

/// A result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a store could not be opened, read, downloaded from or published to. Messages are printed
/// on their own, so each quotes its cause in a plain field rather than a `source()` (a printed
/// chain would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid store address {}: {reason}", quote(.url))]
    BadUrl { url: String, reason: String },

    #[error("cannot use the store directory {}: {error}; check the store address", .path.display())]
    StoreDir { path: PathBuf, error: io::Error },

    #[error(
        "cannot use the CA file {}: {detail}; give a PEM file of certificates",
        .path.display()
    )]
    CaFile { path: PathBuf, detail: String },

    #[error(transparent)]
    Name(#[from] NameError),

    #[error(
        "invalid channel {}: a channel is 1 to 3 parts separated by \"/\", each of letters, digits, \".\", \"_\" and \"-\" (\"stable\", \"latest/beta\")",
        quote(.channel)
    )]
    BadChannel { channel: String },

    /// The index breaks a rule; `field` names where (`revisions.3.path`).
    #[error(
        "invalid store index for {name}: {field}: {reason}; the store's operator must fix v1/snaps/{name}.json"
    )]
    Index {
        name: String,
        field: String,
        reason: String,
    },

    #[error(
        "store index for {name} is not valid JSON: {detail}; the store's operator must fix v1/snaps/{name}.json"
    )]
    IndexJson { name: String, detail: String },

    #[error(
        "store index for {name} has format {found} but this refreshd reads format {}: upgrade refreshd",
        crate::index::FORMAT
    )]
    IndexFormat { name: String, found: u64 },

    #[error(
        "store index for {name} is larger than {limit} bytes; the store's operator must fix v1/snaps/{name}.json"
    )]
    IndexTooLarge { name: String, limit: u64 },

    /// Transient failures (connection refused or reset, timeouts, 5xx) that outlasted the
    /// retries.
    #[error(
        "cannot reach the store at {url} after {attempts} attempts: {detail}; check the network and the store address, then try again (a download resumes where it stopped)"
    )]
    Unreachable {
        url: String,
        attempts: u32,
        detail: String,
    },

    /// A redirect refreshd does not follow (crate::redirect): to plain HTTP from HTTPS, to
    /// another scheme, to this machine from elsewhere, a loop or too many. Nothing was
    /// requested from where it leads.
    #[error(
        "refused the redirect from {url} to {}: {reason}; nothing was fetched from there: the store's operator must serve the file without that redirect",
        quote(.location)
    )]
    Redirect {
        url: String,
        location: String,
        reason: String,
    },

    /// An answer that retrying will not change (403, a TLS failure).
    #[error("cannot download {url}: {detail}; check the store address")]
    Transfer { url: String, detail: String },

    #[error(
        "the blob of {name} revision {revision} ({location}) is missing from the store: the store's operator must republish it"
    )]
    BlobMissing {
        name: String,
        revision: u32,
        location: String,
    },

    #[error(
        "the blob of {name} revision {revision} ({location}) is larger than the {size} bytes its index says{}: refused as corrupt or tampered with; the store's operator must republish it",
        actual_suffix(*.actual)
    )]
    BlobTooLarge {
        name: String,
        revision: u32,
        location: String,
        size: u64,
        actual: Option<u64>,
    },

    #[error(
        "the blob of {name} revision {revision} ({location}) is smaller than the {size} bytes its index says (it has {actual}): refused as truncated or tampered with; the store's operator must republish it"
    )]
    BlobTooSmall {
        name: String,
        revision: u32,
        location: String,
        size: u64,
        actual: u64,
    },

    #[error(
        "the blob of {name} revision {revision} ({location}) is corrupt or was tampered with: its sha3-384 is {}... but the index says {}...; the download was deleted: try again, and tell the store's operator if it happens again",
        &.actual[..16.min(.actual.len())],
        &.expected[..16.min(.expected.len())]
    )]
    Corrupt {
        name: String,
        revision: u32,
        location: String,
        expected: String,
        actual: String,
    },

    #[error("the store sent a wrong byte range for {url}: {detail}; try again")]
    BadRange { url: String, detail: String },

    #[error(
        "the download to {} was cancelled; the partial download is kept and the next fetch resumes it",
        .dest.display()
    )]
    Cancelled { dest: PathBuf },

    #[error("another download to {} is in progress: wait for it to finish", .partial.display())]
    Busy { partial: PathBuf },

    #[error("cannot publish {}: {error}", .snap.display())]
    Publish { snap: PathBuf, error: ImageError },

    #[error(
        "cannot publish {}: it is {size} bytes, more than the store's limit of {limit}",
        .snap.display()
    )]
    PublishTooLarge {
        snap: PathBuf,
        size: u64,
        limit: u64,
    },

    /// A file of a directory store that resolves outside it, through a symlink.
    #[error("refused a file of the store: {reason}; the store's operator must fix it")]
    OutsideStore { reason: String },

    /// What the store serves failed verification against its signed metadata (TUF): forged,
    /// replayed, expired, mixed from different moments, or longer than signed. `advice` says
    /// what to do (the operator's part, or the admin's).
    #[error(
        "refused what the store {url} serves: {reason}; nothing was installed or changed: {advice}"
    )]
    Untrusted {
        url: String,
        reason: String,
        advice: String,
    },

    /// The pinned root of a signed store cannot be used.
    #[error(
        "cannot use the pinned store root {}: {reason}; install the root.json the store's operator gives (refreshctl store init prints it), or pass --store-root FILE",
        .path.display()
    )]
    PinnedRoot { path: PathBuf, reason: String },

    /// The publisher's side of a signed store: its keys, its metadata, signing. The reason says
    /// what to do.
    #[error("{reason}")]
    Signing { reason: String },

    #[error("cannot {op} {}: {error}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

impl Error {
    /// The message already begins with `cannot publish FILE`: a caller that says which file it
    /// published adds that only to the others.
    pub fn says_publish(&self) -> bool {
        matches!(self, Error::Publish { .. } | Error::PublishTooLarge { .. })
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io {
            op,
            path,
            error: source,
        }
    }
}

fn actual_suffix(actual: Option<u64>) -> String {
    actual.map(|a| format!(" (it has {a})")).unwrap_or_default()
}

// Untrusted text (names, server messages) is quoted and flattened the way the snap crate does
// for snap files: one implementation for every message refreshd shows.
pub(crate) use refreshd_snap::text::{one_line, quote};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_cause_is_not_a_source_too() {
        use std::error::Error as _;
        let e = Error::StoreDir {
            path: "/srv/store".into(),
            error: io::Error::other("not a directory"),
        };
        assert!(e.source().is_none());
        assert_eq!(
            e.to_string(),
            "cannot use the store directory /srv/store: not a directory; check the store address"
        );
    }

    #[test]
    fn messages_are_one_line() {
        let e = Error::Corrupt {
            name: "hello".into(),
            revision: 3,
            location: "blobs/hello_3.snap".into(),
            expected: "a".repeat(96),
            actual: "b".repeat(96),
        };
        let msg = e.to_string();
        assert!(!msg.contains('\n'));
        assert!(msg.contains("corrupt or was tampered with"), "{msg}");
    }
}
