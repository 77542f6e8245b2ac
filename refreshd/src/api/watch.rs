//! Watch streams (`GET /v1/changes/ID/watch`), shared: each change being watched has one hub,
//! a task that reads the change once each time the engine says it changed and publishes the
//! snapshot, serialized once per view ([`View`]); every watcher of the change takes the newest
//! snapshot from it. So the cost of a change's step is one read, however many watch it, and
//! no watcher reads the state on its own.
//!
//! A watcher that reads slowly skips to the newest snapshot (every line is a whole state). A hub
//! lives while it has watchers and the change is not ready.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use refreshd_client::types::{self as api, ErrorBody};
use refreshd_state::ChangeId;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tracing::debug;

use super::changes::{load_both, View};
use super::limits::Slot;
use super::{ApiError, ApiState};

/// How long a hub waits before reading again after a read failed.
const RETRY: Duration = Duration::from_secs(1);

/// The hubs of the changes being watched.
#[derive(Default)]
pub struct Watches {
    hubs: Mutex<HashMap<ChangeId, Weak<Hub>>>,
}

struct Hub {
    tx: watch::Sender<Snapshot>,
}

/// What a hub has to say about its change.
#[derive(Clone)]
enum Snapshot {
    /// Not read yet.
    Loading,
    /// There is no such change (never was, or pruned).
    Missing,
    /// The first read failed: the watcher is answered with this error.
    Failed(ErrorBody),
    Change(Arc<Frame>),
}

/// One state of the change, as a line of each view.
struct Frame {
    full: Bytes,
    public: Bytes,
    ready: bool,
}

impl Frame {
    fn new(full: &api::Change, public: &api::Change) -> Frame {
        let line = |c: &api::Change| {
            let mut v = serde_json::to_vec(c).expect("a change serializes");
            v.push(b'\n');
            Bytes::from(v)
        };
        Frame {
            full: line(full),
            public: line(public),
            ready: full.ready,
        }
    }

    fn line(&self, view: View) -> Bytes {
        match view {
            View::Full => self.full.clone(),
            View::Public => self.public.clone(),
        }
    }
}

impl Watches {
    /// A receiver of change `id`'s snapshots, from its hub (started when there is none).
    fn subscribe(&self, st: &Arc<ApiState>, id: ChangeId) -> watch::Receiver<Snapshot> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hub) = hubs.get(&id).and_then(Weak::upgrade) {
            return hub.tx.subscribe();
        }
        let (tx, rx) = watch::channel(Snapshot::Loading);
        let hub = Arc::new(Hub { tx });
        hubs.insert(id, Arc::downgrade(&hub));
        // Subscribed before the first read: no step between the two is missed.
        let changed = st.ops.engine.subscribe();
        tokio::spawn(run(st.clone(), id, hub, changed));
        rx
    }

    /// Drops the entry of `hub`, which is ending (unless another hub took its place).
    fn forget(&self, id: ChangeId, hub: &Arc<Hub>) {
        let mut hubs = self.hubs.lock().unwrap_or_else(|e| e.into_inner());
        if hubs
            .get(&id)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(hub)))
        {
            hubs.remove(&id);
        }
    }
}

/// A hub: reads the change, publishes it, and waits for the engine to say it changed; until it
/// is ready, gone, or nobody watches any more.
async fn run(
    st: Arc<ApiState>,
    id: ChangeId,
    hub: Arc<Hub>,
    mut changed: broadcast::Receiver<ChangeId>,
) {
    let mut first = true;
    loop {
        match load_both(&st, id).await {
            Ok(Some((full, public))) => {
                let frame = Frame::new(&full, &public);
                let ready = frame.ready;
                hub.tx.send_if_modified(|cur| match cur {
                    Snapshot::Change(f) if f.full == frame.full => false,
                    _ => {
                        *cur = Snapshot::Change(Arc::new(frame));
                        true
                    }
                });
                if ready {
                    break;
                }
            }
            Ok(None) => {
                hub.tx.send_replace(Snapshot::Missing);
                break;
            }
            Err(e) if first => {
                hub.tx.send_replace(Snapshot::Failed(e.body));
                break;
            }
            Err(e) => {
                debug!(change = id, "watch: cannot read the change: {:?}", e.body);
                tokio::select! {
                    _ = st.ops.shutdown.cancelled() => break,
                    _ = hub.tx.closed() => break,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        }
        first = false;
        if !next_step(&st, &hub, &mut changed, id).await {
            break;
        }
    }
    st.watches.forget(id, &hub);
}

/// Waits until the engine says change `id` changed (true), or the hub should end (false).
async fn next_step(
    st: &ApiState,
    hub: &Hub,
    changed: &mut broadcast::Receiver<ChangeId>,
    id: ChangeId,
) -> bool {
    loop {
        let r = tokio::select! {
            _ = st.ops.shutdown.cancelled() => return false,
            _ = hub.tx.closed() => return false,
            r = changed.recv() => r,
        };
        match r {
            Ok(c) if c != id => continue,
            // Missed some: reading again shows whatever they were.
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return false,
        }
        // A step comes with several notices (its status, its log lines): one read for all of
        // those already queued.
        loop {
            match changed.try_recv() {
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return true,
            }
        }
    }
}

/// The lines of a watch of change `id` as `view` shows it: the current state at once, then a
/// line whenever it changes, until it is ready. None when there is no such change. `slot` is
/// the watcher's stream share, held as long as the stream is.
pub async fn lines(
    st: Arc<ApiState>,
    id: ChangeId,
    view: View,
    slot: Option<Slot>,
) -> Result<Option<impl Stream<Item = Result<Bytes, Infallible>>>, ApiError> {
    let mut rx = st.watches.subscribe(&st, id);
    loop {
        let snap = rx.borrow_and_update().clone();
        match snap {
            Snapshot::Change(_) => break,
            Snapshot::Missing => return Ok(None),
            Snapshot::Failed(body) => return Err(ApiError { body }),
            Snapshot::Loading => {}
        }
        tokio::select! {
            _ = st.ops.shutdown.cancelled() => return Err(shutting_down()),
            r = rx.changed() => if r.is_err() { rx = st.watches.subscribe(&st, id) },
        }
    }
    struct W {
        st: Arc<ApiState>,
        id: ChangeId,
        view: View,
        rx: watch::Receiver<Snapshot>,
        last: Option<Bytes>,
        done: bool,
        _slot: Option<Slot>,
    }
    let w = W {
        st,
        id,
        view,
        rx,
        last: None,
        done: false,
        _slot: slot,
    };
    Ok(Some(futures_util::stream::unfold(w, |mut w| async move {
        loop {
            if w.done {
                return None;
            }
            let snap = w.rx.borrow_and_update().clone();
            match snap {
                Snapshot::Change(frame) => {
                    let line = frame.line(w.view);
                    if w.last.as_ref() != Some(&line) {
                        w.last = Some(line.clone());
                        w.done = frame.ready;
                        return Some((Ok(line), w));
                    }
                }
                // Pruned while watched, or unreadable after its hub started again.
                Snapshot::Missing | Snapshot::Failed(_) => return None,
                Snapshot::Loading => {}
            }
            tokio::select! {
                _ = w.st.ops.shutdown.cancelled() => return None,
                r = w.rx.changed() => {
                    // The hub ended before the change was ready (it could not read it, or it
                    // ended just as this watcher came): a new one takes over.
                    if r.is_err() {
                        w.rx = w.st.watches.subscribe(&w.st, w.id);
                    }
                }
            }
        }
    })))
}

fn shutting_down() -> ApiError {
    ApiError::new(
        refreshd_client::types::ErrorKind::Unavailable,
        "refreshd is shutting down; try again when it is back",
    )
}
