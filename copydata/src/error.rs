//! The crate's errors: each names the path it concerns and carries the system error as its
//! `source()`, which the message does not repeat: print them with their chain.

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read the metadata of {path}")]
    Stat { path: PathBuf, source: io::Error },
    #[error("cannot list directory {path}")]
    ReadDir { path: PathBuf, source: io::Error },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot create {path}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot copy the data of {from} to {to}")]
    CopyData {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot set the owner, mode or times of {path}")]
    SetMetadata { path: PathBuf, source: io::Error },
    #[error("cannot read extended attribute {name} of {path}")]
    GetXattr {
        path: PathBuf,
        name: String,
        source: io::Error,
    },
    #[error("cannot set extended attribute {name} on {path}")]
    SetXattr {
        path: PathBuf,
        name: String,
        source: io::Error,
    },
    #[error("cannot link {path} to the earlier copy {target}")]
    Link {
        path: PathBuf,
        target: PathBuf,
        source: io::Error,
    },
    #[error("cannot remove {path}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("cannot rename {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot flush {path} to disk")]
    Sync { path: PathBuf, source: io::Error },
    #[error("{path} already exists")]
    Exists { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: {reason}")]
    InvalidPath { path: PathBuf, reason: &'static str },
    #[error("{path} changed under the copy ({what}); refusing to continue")]
    Tampered { path: PathBuf, what: &'static str },
    #[error("{path} is not a staging directory made by refreshd (not root's, or open to others)")]
    NotStaging { path: PathBuf },
    #[error("{path} is in use by another copy")]
    Busy { path: PathBuf },
    #[error("cannot write the pre-copy state {path}")]
    State { path: PathBuf, source: io::Error },
}

impl Error {
    /// The message and its causes on one line (`cannot open P: Permission denied`), for
    /// whoever prints the error to people without anyhow's `{:#}`.
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }

    /// The underlying system error, if there is one.
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            Error::Open { source, .. }
            | Error::Stat { source, .. }
            | Error::ReadDir { source, .. }
            | Error::Read { source, .. }
            | Error::Create { source, .. }
            | Error::Write { source, .. }
            | Error::CopyData { source, .. }
            | Error::SetMetadata { source, .. }
            | Error::GetXattr { source, .. }
            | Error::SetXattr { source, .. }
            | Error::Link { source, .. }
            | Error::Remove { source, .. }
            | Error::Rename { source, .. }
            | Error::Sync { source, .. }
            | Error::State { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The destination filesystem ran out of space or quota.
    pub fn is_no_space(&self) -> bool {
        matches!(
            self.io().and_then(io::Error::raw_os_error),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        )
    }

    /// The path the error concerns (for two-path errors, the destination side).
    pub fn path(&self) -> &Path {
        match self {
            Error::Open { path, .. }
            | Error::Stat { path, .. }
            | Error::ReadDir { path, .. }
            | Error::Read { path, .. }
            | Error::Create { path, .. }
            | Error::Write { path, .. }
            | Error::SetMetadata { path, .. }
            | Error::GetXattr { path, .. }
            | Error::SetXattr { path, .. }
            | Error::Link { path, .. }
            | Error::Remove { path, .. }
            | Error::Sync { path, .. }
            | Error::Exists { path }
            | Error::NotADirectory { path }
            | Error::InvalidPath { path, .. }
            | Error::Tampered { path, .. }
            | Error::NotStaging { path }
            | Error::Busy { path }
            | Error::State { path, .. } => path,
            Error::CopyData { to, .. } | Error::Rename { to, .. } => to,
        }
    }
}

/// An error and every `source()` under it, joined by `: ` like anyhow's `{:#}`.
pub struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_says_the_cause_once() {
        let e = Error::Remove {
            path: "/d/.2.staging".into(),
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        let eio = io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(e.to_string(), "cannot remove /d/.2.staging");
        assert_eq!(
            e.chain().to_string(),
            format!("cannot remove /d/.2.staging: {eio}")
        );
        let e = Error::Busy { path: "/d".into() };
        assert_eq!(e.chain().to_string(), "/d is in use by another copy");
    }
}
