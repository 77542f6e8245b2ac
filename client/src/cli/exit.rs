//! refreshctl's exit codes (documented in docs/api.md and `refreshctl --help`) and its one-line
//! error messages.

use std::io;

use crate::client::ClientError;
use crate::types::{Change, ErrorKind, Status};

pub const SUCCESS: i32 = 0;
/// The operation failed, including a change that ended in `Error` or `Undone`.
pub const FAILURE: i32 = 1;
/// Bad arguments (clap's own exit code for usage errors).
pub const USAGE: i32 = 2;
pub const UNREACHABLE: i32 = 3;
/// `403 forbidden`.
pub const FORBIDDEN: i32 = 4;
/// `409 conflict`.
pub const CONFLICT: i32 = 5;
/// Ctrl-C while waiting for a change, which goes on: the shell's code for SIGINT (128 + 2).
pub const INTERRUPTED: i32 = 130;

/// A change that became ready without achieving what was asked.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe_failure(.0))]
pub struct ChangeFailed(pub Box<Change>);

fn describe_failure(change: &Change) -> String {
    let what = format!("change {} ({})", change.id, change.summary);
    let error = change
        .error
        .as_deref()
        .map(|e| {
            e.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|e| !e.is_empty());
    let outcome = match change.status {
        Status::Hold => "was aborted before it started".to_string(),
        Status::Undone => match &error {
            Some(e) => format!("was undone: {e}"),
            None => "was undone".to_string(),
        },
        status => match &error {
            Some(e) => format!("failed: {e}"),
            None => format!("ended in {status}"),
        },
    };
    format!("{what} {outcome}; details: refreshctl tasks {}", change.id)
}

/// Arguments that parse but do not make sense together (clap cannot say so itself), found
/// before anything is asked of refreshd.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A request that conflicts with a change in progress, said by a note rather than a `409`
/// (`refresh NAME` of a snap that is busy).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InProgress(pub String);

/// Ctrl-C while refreshctl waited for changes (these ids), which go on in refreshd: only the
/// waiting stopped. Said as news, not as an error.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe_interrupted(.0))]
pub struct Interrupted(pub Vec<u64>);

fn describe_interrupted(ids: &[u64]) -> String {
    match ids {
        [] => "Stopped waiting".to_string(),
        [id] => format!(
            "Change {id} goes on in the background; follow it with: refreshctl watch {id} \
             (cancel: refreshctl abort {id})"
        ),
        ids => {
            let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
            format!(
                "Changes {} go on in the background; follow each with: refreshctl watch ID \
                 (cancel: refreshctl abort ID)",
                ids.join(", ")
            )
        }
    }
}

/// The [`Interrupted`] that ended the command, if that is what did.
pub fn interrupted(err: &anyhow::Error) -> Option<&Interrupted> {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<Interrupted>())
}

/// The exit code for an error that ended the command.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.downcast_ref::<Interrupted>().is_some() {
            return INTERRUPTED;
        }
        if let Some(err) = cause.downcast_ref::<ClientError>() {
            return client_exit_code(err);
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return USAGE;
        }
        if cause.downcast_ref::<InProgress>().is_some() {
            return CONFLICT;
        }
    }
    FAILURE
}

fn client_exit_code(err: &ClientError) -> i32 {
    match err {
        ClientError::Unreachable { .. } => UNREACHABLE,
        ClientError::Api { status, kind, .. } => match (status, kind) {
            (403, _) | (_, ErrorKind::Forbidden) => FORBIDDEN,
            (409, _) | (_, ErrorKind::Conflict) => CONFLICT,
            // Still shutting down once the client's retries ran out: not there, in effect.
            (503, _) | (_, ErrorKind::Unavailable) => UNREACHABLE,
            _ => FAILURE,
        },
        ClientError::Protocol(_) | ClientError::Io { .. } => FAILURE,
    }
}

/// True when the command ended because whoever reads our output went away (`| head`): not
/// worth a message.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes on one line, like `{:#}` (each cause is said once: see
/// docs/architecture.md, Errors), with the lines of a multi-line message joined by `; `.
pub fn one_line(err: &anyhow::Error) -> String {
    let line = err
        .chain()
        .map(|cause| cause.to_string().trim().to_owned())
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    let line = line
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // The daemon's messages quote what users and the store chose: escaped like all output.
    refreshd_snap::text::printable(&line).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use std::path::PathBuf;

    fn api(status: u16, kind: ErrorKind) -> ClientError {
        ClientError::Api {
            status,
            kind,
            message: "m".into(),
            change: None,
        }
    }

    fn change(status: Status, error: Option<&str>) -> Change {
        Change {
            id: 7,
            kind: "install".into(),
            summary: "Install \"hello\" from file".into(),
            snap: Some("hello".into()),
            status,
            ready: true,
            spawn_time: jiff::Timestamp::UNIX_EPOCH,
            ready_time: None,
            error: error.map(String::from),
            tasks: vec![],
        }
    }

    #[test]
    fn exit_codes() {
        let unreachable = || ClientError::Unreachable {
            socket: "/run/refreshd.socket".into(),
            error: io::Error::from(io::ErrorKind::NotFound),
        };
        let cases: Vec<(anyhow::Error, i32)> = vec![
            (unreachable().into(), UNREACHABLE),
            (
                anyhow::Error::new(unreachable()).context("cannot list snaps"),
                UNREACHABLE,
            ),
            (api(403, ErrorKind::Forbidden).into(), FORBIDDEN),
            (api(409, ErrorKind::Conflict).into(), CONFLICT),
            (api(404, ErrorKind::NotFound).into(), FAILURE),
            (api(400, ErrorKind::InvalidSnap).into(), FAILURE),
            (api(413, ErrorKind::TooLarge).into(), FAILURE),
            (api(500, ErrorKind::Internal).into(), FAILURE),
            (api(503, ErrorKind::Unavailable).into(), UNREACHABLE),
            (api(418, ErrorKind::Unknown).into(), FAILURE),
            (ClientError::Protocol("x".into()).into(), FAILURE),
            (
                ClientError::Io {
                    path: PathBuf::from("x.snap"),
                    error: io::Error::from(io::ErrorKind::NotFound),
                }
                .into(),
                FAILURE,
            ),
            (
                ChangeFailed(Box::new(change(Status::Error, Some("boom")))).into(),
                FAILURE,
            ),
            (anyhow::anyhow!("anything else"), FAILURE),
            (UsageError("--channel needs one NAME".into()).into(), USAGE),
            (Interrupted(vec![7]).into(), INTERRUPTED),
        ];
        for (err, code) in cases {
            assert_eq!(exit_code(&err), code, "{err:#}");
        }
        assert_eq!((SUCCESS, USAGE, INTERRUPTED), (0, 2, 130));
    }

    #[test]
    fn an_interruption_says_how_to_follow_what_goes_on() {
        assert_eq!(
            Interrupted(vec![7]).to_string(),
            "Change 7 goes on in the background; follow it with: refreshctl watch 7 \
             (cancel: refreshctl abort 7)"
        );
        assert_eq!(
            Interrupted(vec![7, 8]).to_string(),
            "Changes 7, 8 go on in the background; follow each with: refreshctl watch ID \
             (cancel: refreshctl abort ID)"
        );
        let err = anyhow::Error::new(Interrupted(vec![3])).context("follow change 3");
        assert_eq!(interrupted(&err).map(|i| i.0.clone()), Some(vec![3]));
        assert!(interrupted(&anyhow::anyhow!("other")).is_none());
    }

    #[test]
    fn failed_changes_say_what_and_what_next() {
        let cases = [
            (
                change(Status::Error, Some("cannot mount: busy\ncannot link: gone\n")),
                "change 7 (Install \"hello\" from file) failed: cannot mount: busy; cannot link: gone; details: refreshctl tasks 7",
            ),
            (
                change(Status::Undone, None),
                "change 7 (Install \"hello\" from file) was undone; details: refreshctl tasks 7",
            ),
            (
                change(Status::Hold, None),
                "change 7 (Install \"hello\" from file) was aborted before it started; details: refreshctl tasks 7",
            ),
        ];
        for (change, want) in cases {
            assert_eq!(ChangeFailed(Box::new(change)).to_string(), want);
        }
    }

    #[test]
    fn one_line_errors() {
        let err = anyhow::Error::new(ClientError::Unreachable {
            socket: "/run/refreshd.socket".into(),
            error: io::Error::new(io::ErrorKind::NotFound, "No such file or directory"),
        });
        assert_eq!(
            one_line(&err),
            "cannot reach refreshd at /run/refreshd.socket: No such file or directory; is refreshd running?"
        );

        // A cause quoted in its error's message is not its source too: said once.
        let err = anyhow::Error::new(ClientError::Io {
            path: "/x.snap".into(),
            error: io::Error::other("disk on fire"),
        })
        .context("cannot install /x.snap");
        assert_eq!(
            one_line(&err),
            "cannot install /x.snap: cannot read /x.snap: disk on fire"
        );

        let err: Result<(), io::Error> = Err(io::Error::other("disk on fire\nreally"));
        let err = err.context("cannot read x").unwrap_err();
        assert_eq!(one_line(&err), "cannot read x: disk on fire; really");

        let msg = "installing snaps requires root (or membership of the admin group); try again with sudo";
        let err = anyhow::Error::new(ClientError::Api {
            status: 403,
            kind: ErrorKind::Forbidden,
            message: msg.into(),
            change: None,
        });
        assert_eq!(one_line(&err), msg);
    }
}
