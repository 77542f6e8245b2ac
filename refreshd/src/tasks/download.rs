//! Fetching a revision from the store, before anything waits for apps: streamed, resumed
//! after a broken connection (a GET is idempotent), size-bounded and verified (sha3-384) before
//! the blob is used.

use std::fmt::Write as _;

use anyhow::Context as _;
use refreshd_store::{Entry, Error as StoreError};

use super::{setup, Ctx, SnapSetup};
use crate::engine::{Outcome, Phase, TaskCtx};
use crate::fsutil;

/// Transient failures are retried this many times (with the engine's backoff) before the
/// change gives up; each attempt itself resumes and retries inside the store client.
const MAX_RETRIES: u32 = 8;

pub fn download(c: &Ctx, t: &TaskCtx, phase: Phase) -> anyhow::Result<Outcome> {
    let ss: SnapSetup = setup(t)?;
    let d = ss
        .download
        .as_ref()
        .context("change has nothing to download")?;
    let blob = c.layout.blob(&ss.instance, &ss.revision);
    if phase == Phase::Undo {
        fsutil::remove_file_if_exists(&blob)?;
        if let Ok(p) = refreshd_store::partial_path(&blob) {
            fsutil::remove_file_if_exists(&p)?;
        }
        return Ok(Outcome::Done);
    }
    let store = c
        .store
        .as_ref()
        .context("refreshd has no store configured (refreshd --store URL)")?;
    let entry = Entry {
        name: ss.snap_name.clone(),
        revision: d.revision,
        version: d.version.clone(),
        sha3_384: ss.sha3_384.clone(),
        size: ss.size,
        path: d.path.clone(),
    };
    // A blob already here (a crash after the download) is checked, not fetched again.
    if let Ok((hash, size)) = crate::blob::sha3_file(&blob) {
        if hash == ss.sha3_384 && size == ss.size {
            return Ok(Outcome::Done);
        }
        fsutil::remove_file_if_exists(&blob)?;
    }
    let mut last = std::time::Instant::now();
    let mut progress = |done: u64, total: u64| {
        crate::engine::failpoint::hit_at("mid-download", done);
        if done > 0 && done < total {
            crate::engine::failpoint::pause("mid-download");
        }
        // Recorded a few times a second, not per chunk: each record is a commit.
        if last.elapsed().as_millis() >= 200 || done == total {
            last = std::time::Instant::now();
            t.progress("download", done, total);
        }
    };
    match store.fetch(&entry, &blob, &mut progress, &|| t.cancelled()) {
        Ok(stats) => {
            let mut msg = format!(
                "downloaded {} bytes from {}",
                stats.bytes_fetched,
                store.url()
            );
            if stats.resumed_from > 0 {
                let _ = write!(msg, " (resumed at byte {})", stats.resumed_from);
            }
            t.log(msg);
            Ok(Outcome::Done)
        }
        Err(
            e @ (StoreError::Unreachable { .. }
            | StoreError::Transfer { .. }
            | StoreError::Busy { .. }
            | StoreError::Cancelled { .. }),
        ) if t.task.retry_count < MAX_RETRIES => Ok(Outcome::Retry {
            reason: e.to_string(),
            after: None,
        }),
        Err(e) => {
            // A failed download is not undone (only done tasks are): its partial goes now, or
            // a disk it filled would stay full for everything else on it, state.db included.
            if let Ok(p) = refreshd_store::partial_path(&blob) {
                let _ = fsutil::remove_file_if_exists(&p);
            }
            Ok(Outcome::Failed(e.to_string()))
        }
    }
}
