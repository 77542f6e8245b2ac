//! `saved`, `restore`, `forget`, and what `remove` says of the snapshot it kept.

use refreshd_snap::text::printable;

use super::commands::{conclude, print, print_json, Doing as _};
use super::format::{for_terminal, table, Clock};
use crate::client::Client;
use crate::types::Snapshot;
use anyhow::Result;

use super::args::{ChangeJson, JsonFlag, NoWait};

/// `refreshctl saved [NAME]`.
pub async fn saved(
    client: &Client,
    clock: &Clock,
    name: Option<&str>,
    json: JsonFlag,
) -> Result<()> {
    let sets = client.snapshots(name).await.doing("list snapshots")?;
    if json.json {
        return print_json(&sets);
    }
    if sets.is_empty() {
        match name {
            Some(n) => eprintln!("No snapshots of snap {}.", printable(n)),
            None => eprintln!("No snapshots."),
        }
        return Ok(());
    }
    print(&list(&sets, clock))
}

/// The table of `saved`: one set per line.
pub fn list(sets: &[Snapshot], clock: &Clock) -> String {
    let sets = for_terminal(&sets.to_vec());
    let rows: Vec<Vec<String>> = sets
        .iter()
        .map(|s| {
            vec![
                s.set.to_string(),
                s.snap.clone(),
                s.revision.clone(),
                s.version.clone(),
                clock.time(s.time),
                s.expires
                    .map_or_else(|| "-".to_string(), |t| clock.relative(t)),
                if s.users.is_empty() {
                    "-".to_string()
                } else {
                    s.users.join(",")
                },
            ]
        })
        .collect();
    table(
        &["Set", "Snap", "Rev", "Version", "Saved", "Expires", "Users"],
        &rows,
    )
}

/// `refreshctl restore SET`.
pub async fn restore(client: &Client, set: u64, no_wait: NoWait, json: ChangeJson) -> Result<()> {
    let id = client
        .restore(set)
        .await
        .doing(&format!("restore snapshot {set}"))?;
    if conclude(client, id, no_wait, json.json).await?.is_none() {
        return Ok(());
    }
    // The data it replaced was saved too: the restore can be undone.
    let undo = client
        .snapshots(None)
        .await
        .ok()
        .and_then(|sets| sets.into_iter().find(|s| s.set == id));
    match undo {
        Some(s) => print(&format!(
            "Restored snapshot {set} of {}; the data it replaced is snapshot {id} (refreshctl restore {id} puts it back)\n",
            printable(&s.snap)
        )),
        None => print(&format!("Restored snapshot {set}\n")),
    }
}

/// `refreshctl forget SET`.
pub async fn forget(client: &Client, set: u64, json: JsonFlag) -> Result<()> {
    let done = client
        .forget(set)
        .await
        .doing(&format!("forget snapshot {set}"))?;
    if json.json {
        return print_json(&done);
    }
    for l in &done.left {
        eprintln!("warning: {}", printable(l));
    }
    print(&format!("Snapshot {set} deleted\n"))
}

/// What `remove` says once done: the snapshot it kept, and how to bring it back.
pub async fn after_remove(client: &Client, clock: &Clock, name: &str, change: u64) -> String {
    let kept = client
        .snapshots(Some(name))
        .await
        .ok()
        .and_then(|sets| sets.into_iter().find(|s| s.set == change));
    match kept {
        Some(s) => format!(
            "Removed {name}; its data is kept as snapshot {} until {} (refreshctl restore {} after installing it again; refreshctl forget {} to delete it now)\n",
            s.set,
            s.expires.map_or_else(|| "forgotten".to_string(), |t| clock.time(t)),
            s.set,
            s.set,
            name = printable(name),
        ),
        None => format!("Removed {}\n", printable(name)),
    }
}
