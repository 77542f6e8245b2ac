//! The one table of task status transitions.
//!
//! Every status change the engine makes goes through [`next`]; anything not listed is a bug and
//! comes back as [`Disallowed`]. The engine commits the new status before it acts on it.

pub use refreshd_state::Status;

/// What happened to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The engine is about to run the task's handler (do or undo).
    Start,
    /// The handler finished its work.
    Succeeded,
    /// The handler failed for good.
    Failed,
    /// The handler hit a transient failure; run it again later.
    Retry,
    /// The handler must wait for an event or a time before it can go on.
    Park,
    /// The event or time a parked task waited for has come.
    Wake,
    /// The change is being aborted (by request or because a task failed).
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task in status {state} cannot take event {event:?}")]
pub struct Disallowed {
    pub state: Status,
    pub event: Event,
}

pub fn next(state: Status, event: Event) -> Result<Status, Disallowed> {
    use Event::*;
    use Status::*;
    Ok(match (state, event) {
        // Forward.
        (Do, Start) => Doing,
        // A task found Doing at start-up was interrupted by a crash: run it again; handlers
        // are idempotent.
        (Doing, Start) => Doing,
        (Doing, Succeeded) => Done,
        (Doing, Failed) => Error,
        (Doing, Retry) => Do,
        (Doing, Park) => Wait,
        (Wait, Wake) => Do,

        // Abort: what never started is held; what ran (fully, or up to a wait) is undone.
        (Do, Abort) => Hold,
        (Wait, Abort) => Undo,
        (Done, Abort) => Undo,

        // Backward.
        (Undo, Start) => Undoing,
        (Undoing, Start) => Undoing,
        (Undoing, Succeeded) => Undone,
        // A failed undo is recorded and shown, never swallowed.
        (Undoing, Failed) => Error,
        (Undoing, Retry) => Undo,

        (state, event) => return Err(Disallowed { state, event }),
    })
}

/// True when an abort moves a task in this status (a running task finishes first).
pub fn can_abort(s: Status) -> bool {
    next(s, Event::Abort).is_ok()
}

/// True while a task in this status may still make progress.
pub fn is_active(s: Status) -> bool {
    matches!(
        s,
        Status::Do | Status::Doing | Status::Undo | Status::Undoing | Status::Wait
    )
}

/// A change's status, derived from its tasks: the most "alive" status wins while anything can
/// still move (running beats waiting beats not yet started); once nothing can, the outcome.
pub fn change_status(tasks: &[Status]) -> Status {
    let any = |s: Status| tasks.contains(&s);
    if any(Status::Undoing) || any(Status::Undo) {
        Status::Undoing
    } else if any(Status::Doing) {
        Status::Doing
    } else if any(Status::Wait) {
        // Tasks still in Do are then blocked behind the waiting one.
        Status::Wait
    } else if any(Status::Do) {
        Status::Do
    } else if any(Status::Error) {
        Status::Error
    } else if any(Status::Undone) {
        Status::Undone
    } else if any(Status::Hold) {
        Status::Hold
    } else {
        Status::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event::*;
    use Status::*;

    #[test]
    fn table() {
        let allowed = [
            (Do, Start, Doing),
            (Doing, Start, Doing),
            (Doing, Succeeded, Done),
            (Doing, Failed, Error),
            (Doing, Retry, Do),
            (Doing, Park, Wait),
            (Wait, Wake, Do),
            (Do, Abort, Hold),
            (Wait, Abort, Undo),
            (Done, Abort, Undo),
            (Undo, Start, Undoing),
            (Undoing, Start, Undoing),
            (Undoing, Succeeded, Undone),
            (Undoing, Failed, Error),
            (Undoing, Retry, Undo),
        ];
        let events = [Start, Succeeded, Failed, Retry, Park, Wake, Abort];
        for s in Status::ALL {
            for e in events {
                let want = allowed
                    .iter()
                    .find(|(a, b, _)| *a == s && *b == e)
                    .map(|t| t.2);
                match (next(s, e), want) {
                    (Ok(got), Some(want)) => assert_eq!(got, want, "{s} + {e:?}"),
                    (Err(d), None) => assert_eq!(d, Disallowed { state: s, event: e }),
                    (got, want) => panic!("{s} + {e:?}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn final_statuses_are_inactive() {
        for s in Status::ALL {
            assert_eq!(s.is_final(), !is_active(s), "{s}");
        }
        assert!(!can_abort(Doing), "a running task finishes first");
        assert!(!can_abort(Error));
    }

    #[test]
    fn derived_change_status() {
        assert_eq!(change_status(&[Done, Done]), Done);
        assert_eq!(change_status(&[Done, Doing, Do]), Doing);
        assert_eq!(change_status(&[Done, Wait, Do]), Wait);
        assert_eq!(change_status(&[Done, Do]), Do);
        assert_eq!(change_status(&[Done, Wait]), Wait);
        assert_eq!(change_status(&[Undone, Error, Hold]), Error);
        assert_eq!(change_status(&[Undone, Undoing, Error]), Undoing);
        assert_eq!(change_status(&[Undone, Undone, Hold]), Undone);
        assert_eq!(change_status(&[Hold, Hold]), Hold);
    }
}
