//! `refreshctl boot-refresh`: early at boot (refreshd-boot.service), lets refreshes that were
//! waiting for apps to close go through before anyone logs in, and returns once each has left
//! its critical section.
//!
//! Nothing runs yet at that point of boot, so refreshd (started by this very request, through
//! socket activation) finds the apps gone and enters the critical section at once. This command
//! only waits for that to be over: it starts nothing itself. It waits for the end of the
//! critical section, not of the change, because the change then starts the snap's services,
//! which are ordered after refreshd-boot.service: waiting for them would wait for ourselves.

use std::time::Duration;

use anyhow::Result;
use refreshd_snap::text::printable;
use serde::Serialize;
use tokio::time::Instant;

use super::exit::ChangeFailed;
use crate::client::{Client, ClientError};
use crate::types::{Change, Select, Status};

/// The task that ends the critical section (docs/runctl-protocol.md).
const LIFT: &str = "lift-inhibition";
/// The task that fetches the new revision.
const DOWNLOAD: &str = "download";

/// What became of one pending refresh.
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Outcome {
    pub change: u64,
    pub snap: Option<String>,
    /// `applied`, `not-downloaded`, `still-running`, `failed`.
    pub result: &'static str,
    pub detail: String,
}

/// Whether a change in progress is a refresh this command should wait for now: one with a
/// critical section still ahead and nothing left to download. `Err(why)` says why not.
pub fn pending(change: &Change) -> Result<(), String> {
    let lift = change
        .tasks
        .iter()
        .find(|t| t.kind == LIFT)
        .ok_or_else(|| "it has no critical section".to_owned())?;
    if lift.status == Status::Done {
        return Err("its critical section is over".to_owned());
    }
    if let Some(dl) = change.tasks.iter().find(|t| t.kind == DOWNLOAD) {
        if dl.status != Status::Done {
            return Err("its revision is not downloaded yet: it goes on after boot".to_owned());
        }
    }
    Ok(())
}

/// True once the change left its critical section or can do nothing more.
fn past_critical(change: &Change) -> bool {
    change.ready
        || change
            .tasks
            .iter()
            .any(|t| t.kind == LIFT && t.status == Status::Done)
}

pub async fn run(client: &Client, timeout: Duration, json: bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let listed = client
        .changes(Select::InProgress, None)
        .await
        .map_err(doing("list the changes in progress"))?;
    let mut outcomes = vec![];
    for c in listed {
        let change = client
            .change(c.id)
            .await
            .map_err(doing(&format!("read change {}", c.id)))?;
        match pending(&change) {
            Ok(()) => outcomes.push(wait(client, change, deadline).await?),
            Err(why) if why.contains("downloaded") => outcomes.push(Outcome {
                change: change.id,
                snap: change.snap.clone(),
                result: "not-downloaded",
                detail: why,
            }),
            Err(_) => {}
        }
    }
    if json {
        println!("{}", super::format::json_for_terminal(&outcomes)?);
    } else if outcomes.is_empty() {
        println!("No refresh was waiting for apps to close.");
    } else {
        for o in &outcomes {
            let snap = printable(o.snap.as_deref().unwrap_or("?")).into_owned();
            println!("{snap}: {} (change {})", printable(&o.detail), o.change);
        }
    }
    // A failed refresh makes the unit fail, where an administrator sees it; boot goes on.
    if let Some(failed) = outcomes.iter().find(|o| o.result == "failed") {
        let change = client
            .change(failed.change)
            .await
            .map_err(doing(&format!("read change {}", failed.change)))?;
        return Err(ChangeFailed(Box::new(change)).into());
    }
    Ok(())
}

async fn wait(client: &Client, change: Change, deadline: Instant) -> Result<Outcome> {
    let id = change.id;
    let mut last = change;
    let mut watch = client.watch(id);
    let followed = tokio::time::timeout_at(deadline, async {
        while let Some(next) = watch.next().await {
            last = next.map_err(doing(&format!("follow change {id}")))?;
            if past_critical(&last) {
                return Ok::<_, anyhow::Error>(true);
            }
        }
        Ok(past_critical(&last))
    })
    .await;
    let (result, detail) = match followed {
        Ok(Ok(true)) if last.ready && last.status.is_failure() => (
            "failed",
            format!(
                "the refresh failed: {}",
                last.error.as_deref().unwrap_or("see refreshctl tasks")
            ),
        ),
        Ok(Ok(true)) => ("applied", "refreshed before login".to_owned()),
        Ok(Ok(false)) => (
            "still-running",
            "refreshd's watch ended early; the refresh goes on".to_owned(),
        ),
        Ok(Err(e)) => return Err(e),
        Err(_) => (
            "still-running",
            "still in progress at the deadline; it goes on in the background".to_owned(),
        ),
    };
    Ok(Outcome {
        change: id,
        snap: last.snap.clone(),
        result,
        detail,
    })
}

fn doing(what: &str) -> impl FnOnce(ClientError) -> anyhow::Error + '_ {
    move |err| match err {
        ClientError::Api { .. } | ClientError::Unreachable { .. } => err.into(),
        _ => anyhow::Error::new(err).context(format!("cannot {what}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Task;

    fn task(kind: &str, status: Status) -> Task {
        let mut t: Task = serde_json::from_value(serde_json::json!({
            "id": 1, "kind": kind, "summary": "", "status": "Do",
            "spawn-time": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        t.status = status;
        t
    }

    fn change(tasks: Vec<Task>) -> Change {
        let mut c: Change = serde_json::from_value(serde_json::json!({
            "id": 7, "kind": "refresh", "summary": "", "status": "Doing", "ready": false,
            "spawn-time": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        c.tasks = tasks;
        c
    }

    #[test]
    fn waits_only_for_downloaded_refreshes_before_their_critical_section() {
        let waiting = change(vec![
            task(DOWNLOAD, Status::Done),
            task("wait-for-apps", Status::Wait),
            task(LIFT, Status::Do),
        ]);
        assert_eq!(pending(&waiting), Ok(()));
        let downloading = change(vec![task(DOWNLOAD, Status::Doing), task(LIFT, Status::Do)]);
        assert!(pending(&downloading)
            .unwrap_err()
            .contains("not downloaded"));
        let over = change(vec![task(DOWNLOAD, Status::Done), task(LIFT, Status::Done)]);
        assert!(pending(&over).is_err());
        assert!(past_critical(&over));
        let install = change(vec![task("link", Status::Do)]);
        assert!(pending(&install).is_err());
        // A revert downloads nothing.
        let revert = change(vec![
            task("wait-for-apps", Status::Wait),
            task(LIFT, Status::Do),
        ]);
        assert_eq!(pending(&revert), Ok(()));
        assert!(!past_critical(&revert));
    }
}
