//! What the two transports have in common: a blob opened at an offset, and failures sorted
//! into "try again" and "give up".

use std::io::Read;

use crate::error::Error;

/// Why an attempt failed.
pub(crate) enum Failure {
    /// Worth another attempt (a reset connection, a timeout, a 503); the detail ends up in
    /// [`Error::Unreachable`] if the retries run out.
    Retry(String),
    /// Another attempt would meet the same answer.
    Fatal(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Fatal(e)
    }
}

/// A blob opened for reading.
pub(crate) struct Opened {
    pub(crate) reader: Box<dyn Read>,
    /// The offset of the first byte `reader` yields: the offset asked for, or 0 when the source
    /// ignored the range.
    pub(crate) start: u64,
    /// Whether the source declared the body's length. If it did, a clean end before the
    /// declared size means the blob is short; if not, the connection may just have dropped.
    pub(crate) length_known: bool,
}
