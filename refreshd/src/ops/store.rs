//! Installing a snap from the store by name (refreshes are [`super::refresh`]'s).

use refreshd_snap::InstanceName;
use refreshd_state::ChangeId;

use super::{OpError, Ops, Result};
use crate::tasks::{Download, SnapSetup};

/// Installs `name` from the store: looks up the channel's revision (`stable` unless given) and
/// makes a change that downloads it. The store is asked outside any transaction; whether the
/// snap is installed, and the revisions kept, are read again in the transaction that makes the
/// change.
pub async fn install(
    ops: &Ops,
    uid: u32,
    key: Option<String>,
    name: &str,
    channel: Option<&str>,
) -> Result<ChangeId> {
    const REQUEST: &str = "install";
    if let Some(k) = &key {
        let k2 = k.clone();
        // A retry answers before the store is asked again.
        if let Some((req, id)) = ops.read(move |s| s.idempotency_key(uid, &k2)).await? {
            if req == REQUEST {
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
    // A first look, to fail at once, before the store is asked.
    let n = instance.as_str().to_owned();
    let row = ops.read(move |s| s.snap(&n)).await?;
    not_installed_yet(name, row.is_some_and(|r| r.current.is_some()))?;
    let channel = channel.unwrap_or("stable").to_owned();

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
        .make(uid, key, REQUEST, move |s| {
            let row = s.snap(instance.as_str())?;
            not_installed_yet(&name, row.as_ref().is_some_and(|r| r.current.is_some()))?;
            let rev = entry.revision.to_string();
            if let Some(kept) = s
                .revision(instance.as_str(), &rev)?
                .filter(|k| k.sha3_384 != entry.sha3_384)
            {
                return Err(OpError::Invalid(replayed(&name, &entry, &kept.sha3_384)));
            }
            let ss = store_setup(&instance, None, &entry, channel, &url);
            Ok(crate::tasks::install_change(&ss))
        })
        .await?;
    Ok(created.id())
}

/// An install of a snap already installed is refused: it is refreshed instead. Not a conflict
/// (nothing is in progress): the request asked for the wrong thing.
fn not_installed_yet(name: &str, installed: bool) -> Result<()> {
    if installed {
        return Err(OpError::Invalid(format!(
            "snap {name} is already installed; refresh it with: refreshctl refresh {name}"
        )));
    }
    Ok(())
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
