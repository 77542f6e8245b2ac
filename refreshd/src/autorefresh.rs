//! Auto-refresh: every EVERY (`refreshd --auto-refresh EVERY`), refresh every snap with an
//! update, like `refreshctl refresh` without names. Held snaps are skipped, and nothing is
//! forced: each change waits for the snap's apps to exit like any refresh.
//!
//! The time of the last attempt is kept in the state's settings, so a restart does not refresh
//! again at once: the first run after a start is due EVERY after the last one (at once if that
//! time is past, or if there never was one).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use refreshd_client::types::NoteKind;
use refreshd_snap::text::format_duration;
use refreshd_state::now_ms;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::ops::refresh::refresh_snaps;
use crate::ops::Ops;

/// When auto-refresh last started a run (unix ms): kept across restarts.
const LAST: &str = "auto-refresh.last";
/// When the next run is due (unix ms), and how often runs are (`6h`); absent when off. They
/// are what `GET /v1/system-info` shows.
const NEXT: &str = "auto-refresh.next";
const EVERY: &str = "auto-refresh.every";

/// What `GET /v1/system-info` says about auto-refresh.
#[derive(Debug, Default, PartialEq)]
pub struct Status {
    pub every: Option<String>,
    pub next: Option<Timestamp>,
    pub last: Option<Timestamp>,
}

pub fn status(s: &refreshd_state::State) -> refreshd_state::Result<Status> {
    let time = |key| -> refreshd_state::Result<Option<Timestamp>> {
        Ok(s.setting(key)?
            .and_then(|v| v.parse().ok())
            .and_then(|ms| Timestamp::from_millisecond(ms).ok()))
    };
    Ok(Status {
        every: s.setting(EVERY)?,
        next: time(NEXT)?,
        last: time(LAST)?,
    })
}

/// When the next run is due (unix ms): `every` after the last one, or `now` if that is past or
/// there was none. A last run in the future (the clock was set back) counts as one now, so a
/// clock change cannot put auto-refresh off for longer than `every`.
pub fn next_run(last: Option<i64>, now: i64, every: Duration) -> i64 {
    let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
    match last {
        None => now,
        Some(last) => last.min(now).saturating_add(every).max(now),
    }
}

/// Starts auto-refresh every `every`, or records that it is off (`None`, or no store to
/// refresh from). The schedule is recorded before this returns, so the API, served after,
/// never shows a previous daemon's. The task ends when the daemon shuts down.
pub async fn start(ops: Arc<Ops>, every: Option<Duration>) -> JoinHandle<()> {
    let every = match every {
        Some(_) if ops.ctx.store.is_none() => {
            warn!("auto-refresh is off: refreshd has no store to refresh from (--store URL)");
            None
        }
        Some(every) => Some(every),
        None => {
            info!("auto-refresh is off (refreshd --auto-refresh EVERY turns it on)");
            None
        }
    };
    let now = now_ms();
    let saved = ops
        .engine
        .db()
        .call(move |s| {
            let last = s.setting(LAST)?.and_then(|v| v.parse().ok());
            let next = every.map(|every| next_run(last, now, every).to_string());
            s.set_setting(EVERY, every.map(format_duration).as_deref())?;
            s.set_setting(NEXT, next.as_deref())
        })
        .await;
    if let Err(e) = saved {
        warn!("cannot record the auto-refresh schedule: {e}");
    }
    tokio::spawn(async move {
        if let Some(every) = every {
            run(ops, every).await;
        }
    })
}

async fn run(ops: Arc<Ops>, every: Duration) {
    let shutdown = ops.shutdown.clone();
    let mut first = true;
    loop {
        let now = now_ms();
        let scheduled = ops
            .engine
            .db()
            .call(move |s| {
                let last = s.setting(LAST)?.and_then(|v| v.parse().ok());
                let next = next_run(last, now, every);
                s.set_setting(NEXT, Some(&next.to_string()))?;
                Ok::<_, refreshd_state::Error>(next)
            })
            .await;
        let next = match scheduled {
            Ok(next) => next,
            Err(e) => {
                // The database failed: try again after a full interval rather than spin.
                warn!("auto-refresh cannot read its schedule: {e}");
                now.saturating_add(every.as_millis() as i64)
            }
        };
        if first {
            info!(
                "auto-refresh every {}; next at {}",
                format_duration(every),
                Timestamp::from_millisecond(next).unwrap_or(Timestamp::UNIX_EPOCH)
            );
            first = false;
        }
        let wait = Duration::from_millis(next.saturating_sub(now).max(0) as u64);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        // Recorded before the run, so a crash during it does not make the next start run again.
        let started = now_ms();
        let recorded = ops
            .engine
            .db()
            .call(move |s| s.set_setting(LAST, Some(&started.to_string())))
            .await;
        if let Err(e) = recorded {
            warn!("auto-refresh cannot record its run: {e}");
        }
        // A run in flight is dropped at shutdown: whatever it made is committed whole or not
        // at all, and the store may take long to answer.
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = refresh_snaps(&ops, 0, None, &[], None) => r,
        };
        match result {
            Ok(result) => report(&result),
            Err(e) => warn!("auto-refresh failed: {e}"),
        }
    }
}

/// One log line for a run that did or skipped something; the rest at debug level.
fn report(result: &refreshd_client::types::RefreshResult) {
    let mut told = false;
    for note in &result.notes {
        match note.kind {
            NoteKind::Refreshing => {
                info!(snap = %note.snap, change = note.change, "auto-refresh: {}", note.message);
                told = true;
            }
            NoteKind::Held | NoteKind::Busy => {
                info!(snap = %note.snap, "auto-refresh: {}", note.message);
                told = true;
            }
            NoteKind::Error | NoteKind::Unknown => {
                warn!(snap = %note.snap, "auto-refresh: {}", note.message);
                told = true;
            }
            NoteKind::UpToDate | NoteKind::NotFromStore => {
                debug!(snap = %note.snap, "auto-refresh: {}", note.message)
            }
        }
    }
    if !told {
        debug!("auto-refresh: nothing to refresh");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn the_schedule_keeps_to_the_last_run() {
        let every = Duration::from_secs(6 * 3600);
        let now = 1_000 * H;
        let cases = [
            // Never ran: now.
            (None, now),
            // Ran an hour ago (a restart since): five hours from now, not at once.
            (Some(now - H), now + 5 * H),
            // Ran just now.
            (Some(now), now + 6 * H),
            // Due while the daemon was down: now.
            (Some(now - 6 * H), now),
            (Some(now - 100 * H), now),
            // The clock went back: the last run counts as now.
            (Some(now + 50 * H), now + 6 * H),
        ];
        for (last, want) in cases {
            assert_eq!(next_run(last, now, every), want, "last {last:?}");
        }
        assert_eq!(
            next_run(Some(now), now, Duration::MAX),
            i64::MAX,
            "saturates"
        );
    }

    #[test]
    fn a_restart_keeps_the_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let every = Duration::from_secs(3600);
        let ran = 500 * H;
        {
            let mut s = refreshd_state::State::open(&path).unwrap();
            s.set_setting(LAST, Some(&ran.to_string())).unwrap();
        }
        let s = refreshd_state::State::open(&path).unwrap();
        let last = s.setting(LAST).unwrap().and_then(|v| v.parse().ok());
        assert_eq!(next_run(last, ran + H / 2, every), ran + H);
        assert_eq!(
            status(&s).unwrap().last,
            Some(Timestamp::from_millisecond(ran).unwrap())
        );
    }
}
