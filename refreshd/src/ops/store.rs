//! Installing or refreshing one snap from the store by name.

use refreshd_snap::{InstanceName, Revision};
use refreshd_state::{ChangeId, Created, IdempotencyKey};

use super::{OpError, Ops, Result};
use crate::tasks::{Download, SnapSetup};

/// Installs (`refresh` false) or refreshes `name` from the store: looks up the channel's
/// revision and makes a change that downloads it. An older revision than the current one is
/// never an update. The store is asked outside any transaction; what the change is made from
/// (the current revision it replaces, the revisions kept) is read again in the transaction
/// that makes it, so a change of the snap finished meanwhile is never undone by this one.
pub async fn from_store(
    ops: &Ops,
    uid: u32,
    key: Option<String>,
    name: &str,
    channel: Option<&str>,
    refresh: bool,
) -> Result<ChangeId> {
    let request = if refresh { "refresh" } else { "install" };
    if let Some(k) = &key {
        let k2 = k.clone();
        if let Some((req, id)) = ops.write(move |s| s.idempotency_key(uid, &k2)).await? {
            if req == request {
                return Ok(id);
            }
        }
    }
    ops.open_for_work()?;
    let store = ops.store()?;
    let instance: InstanceName = name
        .parse()
        .map_err(|e: refreshd_snap::NameError| OpError::Invalid(e.to_string()))?;
    if let Some(ch) = channel {
        refreshd_store::validate_channel(ch).map_err(|e| OpError::Invalid(e.to_string()))?;
    }
    // A first look, to fail at once (before the store is asked) and to know the channel.
    let n = instance.as_str().to_owned();
    let row = ops.read(move |s| s.snap(&n)).await?;
    installed_as_asked(
        name,
        refresh,
        row.as_ref().is_some_and(|r| r.current.is_some()),
    )?;
    let channel = channel
        .map(str::to_owned)
        .or_else(|| row.as_ref().and_then(|r| r.channel.clone()))
        .unwrap_or_else(|| "stable".to_owned());

    let snap_name = instance.snap_name().to_owned();
    let (s2, sn) = (store.clone(), snap_name.clone());
    let index = ops
        .workers
        .run(move || s2.snap(&sn))
        .await?
        .map_err(|e| OpError::Store(e.to_string()))?
        .ok_or_else(|| {
            OpError::NotFound(format!(
                "snap {snap_name} is not in the store {}",
                store.url()
            ))
        })?;
    let entry = index.channel(&channel).cloned().ok_or_else(|| {
        OpError::NotFound(format!(
            "snap {snap_name} has no revision in channel {channel} of the store"
        ))
    })?;

    let (name, url) = (name.to_owned(), store.url().to_owned());
    let created = ops
        .write(move |s| -> Result<Created> {
            let row = s.snap(instance.as_str())?;
            installed_as_asked(&name, refresh, row.as_ref().is_some_and(|r| r.current.is_some()))?;
            let rev = entry.revision.to_string();
            if let Some(kept) = s
                .revision(instance.as_str(), &rev)?
                .filter(|k| k.sha3_384 != entry.sha3_384)
            {
                return Err(OpError::Invalid(replayed(&name, &entry, &kept.sha3_384)));
            }
            let previous = row.and_then(|r| r.current);
            if let Some(Revision::Store(cur)) = previous.as_deref().and_then(|p| p.parse().ok()) {
                if entry.revision == cur {
                    return Err(OpError::Invalid(format!(
                        "snap {name} is up to date: revision {cur} is the newest in channel {channel}"
                    )));
                }
                if entry.revision < cur {
                    return Err(OpError::Invalid(format!(
                        "the store offers revision {} of {name}, older than the installed {cur}; not an update (reverting is a separate, explicit action)",
                        entry.revision
                    )));
                }
            }
            let ss = store_setup(&instance, previous, &entry, channel, &url);
            let new = crate::tasks::install_change(&ss);
            let key = key.as_deref().map(|k| IdempotencyKey {
                uid,
                key: k,
                request,
            });
            Ok(s.create_change(&new, key)?)
        })
        .await?;
    ops.engine.ensure();
    Ok(created.id())
}

/// An install of a snap already installed, or a refresh of one that is not, is refused.
fn installed_as_asked(name: &str, refresh: bool, installed: bool) -> Result<()> {
    match (refresh, installed) {
        (false, true) => Err(OpError::Conflict(format!(
            "snap {name} is already installed; refresh it with: refreshctl refresh {name}"
        ))),
        (true, false) => Err(OpError::NotFound(not_installed(name))),
        _ => Ok(()),
    }
}

/// The message for a snap that is not installed.
pub fn not_installed(name: &str) -> String {
    format!(
        "snap {} is not installed; refreshctl list shows what is",
        refreshd_snap::text::quote(name)
    )
}

/// Why a store revision whose number is kept here with other content is refused: a revision
/// never changes, so it is a replay, a tampered index, or a republished number.
pub fn replayed(name: &str, entry: &refreshd_store::Entry, kept_sha3: &str) -> String {
    format!(
        "the store offers revision {} of {name} with other content than the revision {} kept here (sha3-384 {}... against {}...); refused: a revision never changes, so the store's operator must publish a new revision",
        entry.revision,
        entry.revision,
        &entry.sha3_384[..16.min(entry.sha3_384.len())],
        &kept_sha3[..16.min(kept_sha3.len())]
    )
}

/// The setup of a change that installs (`previous` None) or refreshes `instance` to the store
/// revision `entry` of `channel`.
pub fn store_setup(
    instance: &InstanceName,
    previous: Option<String>,
    entry: &refreshd_store::Entry,
    channel: String,
    store_url: &str,
) -> SnapSetup {
    SnapSetup {
        instance: instance.as_str().to_owned(),
        snap_name: instance.snap_name().to_owned(),
        instance_key: instance.instance_key().map(str::to_owned),
        revision: entry.revision.to_string(),
        previous,
        sha3_384: entry.sha3_384.clone(),
        size: entry.size,
        upload: None,
        download: Some(Download {
            store: store_url.to_owned(),
            revision: entry.revision,
            version: entry.version.clone(),
            path: entry.path.clone(),
        }),
        channel: Some(channel),
        manifest: String::new(),
        version: entry.version.clone(),
        summary: None,
        block_launches: false,
    }
}
