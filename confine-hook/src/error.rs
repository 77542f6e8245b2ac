//! The launcher's one error type: a complete sentence for the user (what is wrong and what to
//! do) plus the exit status. `main` prints it once as `confine-hook: MESSAGE`.

use std::fmt;
use std::io;

/// Exit status for every refusal and failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit status when the app's program does not exist (as shells report "command not found").
pub const EXIT_NOT_FOUND: i32 = 127;

#[derive(Debug)]
pub struct Error {
    msg: String,
    code: i32,
}

impl Error {
    pub fn new(msg: impl Into<String>) -> Error {
        Error {
            msg: msg.into(),
            code: EXIT_FAILURE,
        }
    }

    pub fn with_code(mut self, code: i32) -> Error {
        self.code = code;
        self
    }

    pub fn code(&self) -> i32 {
        self.code
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Builds an [`Error`] from a format string.
macro_rules! fail {
    ($($arg:tt)*) => {
        $crate::error::Error::new(format!($($arg)*))
    };
}
pub(crate) use fail;

/// Adds "what we were doing" to an `io::Error`.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::new(format!("{}: {}", what(), e)))
    }
}

/// Shows a byte string (a path, a name) lossily for messages.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
