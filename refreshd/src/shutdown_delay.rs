//! Shutdown delay locks (logind's "delay" inhibitor locks for `shutdown`) while a refresh is
//! in its critical section, so that a power-off waits (up to logind's `InhibitDelayMaxSec`, 5 s
//! by default) rather than cut a data copy or a revision switch in half. Called delays here, so
//! that "inhibit" only ever means the runctl marker that keeps launches out.
//!
//! `wait-for-apps` takes one per snap as it enters the critical section (every task inside it
//! takes it again after a restart, when it re-enters); `lift-inhibition`, or the undo of
//! `wait-for-apps`, lets it go. The lock is the file descriptor logind returns: closing it
//! releases it, and so does refreshd's death. logind is asked in the background, so the
//! section never waits for the system bus; a release that comes before logind's answer closes
//! the descriptor as soon as it arrives. Best effort: without a system bus or logind the
//! refresh goes on, said once in the log. Only for the root `/`: a scratch root's refreshes
//! are not the machine's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tracing::{debug, info};

/// How long the system bus and logind have to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The shutdown delay locks held (or asked for), by snap.
#[derive(Debug)]
pub struct ShutdownDelays {
    enabled: bool,
    slots: Mutex<HashMap<String, Slot>>,
    /// Whether "no logind" was logged already.
    said: AtomicBool,
}

#[derive(Debug)]
enum Slot {
    /// logind was asked; `wanted` turns false when the section ends before it answers.
    Asking { wanted: bool },
    /// Kept only to be closed: dropping it releases the lock.
    Held(#[allow(dead_code)] zbus::zvariant::OwnedFd),
}

impl ShutdownDelays {
    /// `enabled`: the daemon's root is `/`.
    pub fn new(enabled: bool) -> Arc<ShutdownDelays> {
        Arc::new(ShutdownDelays {
            enabled,
            slots: Mutex::new(HashMap::new()),
            said: AtomicBool::new(false),
        })
    }

    /// Asks logind for a shutdown delay lock for `name` (in the background), unless one is held or
    /// asked for already. Returns at once.
    pub fn hold(self: &Arc<Self>, name: &str) {
        if !self.enabled {
            return;
        }
        {
            let mut slots = self.slots.lock().unwrap();
            match slots.get_mut(name) {
                Some(Slot::Held(_)) => return,
                Some(Slot::Asking { wanted }) => {
                    *wanted = true;
                    return;
                }
                None => {
                    slots.insert(name.to_owned(), Slot::Asking { wanted: true });
                }
            }
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.slots.lock().unwrap().remove(name);
            return;
        };
        let me = self.clone();
        let name = name.to_owned();
        rt.spawn(async move {
            let why = format!("Refreshing {name}");
            let res = tokio::time::timeout(TIMEOUT, take_delay_lock(&why))
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!("no answer within {} s", TIMEOUT.as_secs()))
                });
            me.answered(&name, res);
        });
    }

    fn answered(&self, name: &str, res: anyhow::Result<zbus::zvariant::OwnedFd>) {
        let mut slots = self.slots.lock().unwrap();
        let wanted = matches!(slots.get(name), Some(Slot::Asking { wanted: true }));
        match res {
            Ok(fd) if wanted => {
                debug!(snap = name, "holding a logind shutdown delay lock");
                slots.insert(name.to_owned(), Slot::Held(fd));
            }
            // The section ended meanwhile: the descriptor closes here.
            Ok(_) => {
                slots.remove(name);
            }
            Err(e) => {
                slots.remove(name);
                if !self.said.swap(true, Ordering::Relaxed) {
                    info!(
                        "cannot hold off shutdown during critical sections (logind): {e:#}; refreshes go on without"
                    );
                } else {
                    debug!(snap = name, "no logind shutdown delay lock: {e:#}");
                }
            }
        }
    }

    /// Lets go of `name`'s delay lock (at once, or when logind answers).
    pub fn release(&self, name: &str) {
        let mut slots = self.slots.lock().unwrap();
        match slots.get_mut(name) {
            Some(Slot::Asking { wanted }) => *wanted = false,
            Some(Slot::Held(_)) => {
                slots.remove(name);
                debug!(snap = name, "released the logind shutdown delay lock");
            }
            None => {}
        }
    }

    /// The snaps whose delay lock is held.
    pub fn held(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .slots
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Held(_)))
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }
}

/// `org.freedesktop.login1.Manager.Inhibit("shutdown", "refreshd", why, "delay")`: logind's
/// name for it, not this crate's.
async fn take_delay_lock(why: &str) -> anyhow::Result<zbus::zvariant::OwnedFd> {
    let conn = zbus::connection::Builder::system()
        .context("no system bus")?
        .method_timeout(TIMEOUT)
        .build()
        .await
        .context("cannot connect to the system bus")?;
    let reply = conn
        .call_method(
            Some("org.freedesktop.login1"),
            "/org/freedesktop/login1",
            Some("org.freedesktop.login1.Manager"),
            "Inhibit",
            &("shutdown", "refreshd", why, "delay"),
        )
        .await
        .context("logind refused the delay lock")?;
    reply
        .body()
        .deserialize::<zbus::zvariant::OwnedFd>()
        .context("logind answered without a file descriptor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_for_a_scratch_root() {
        let i = ShutdownDelays::new(false);
        i.hold("hello");
        assert!(i.held().is_empty());
        i.release("hello");
    }

    #[test]
    fn a_release_before_logind_answers_closes_the_lock_on_arrival() {
        let i = ShutdownDelays::new(true);
        i.slots
            .lock()
            .unwrap()
            .insert("hello".into(), Slot::Asking { wanted: true });
        i.release("hello");
        let (r, _w) = std::io::pipe().unwrap();
        let fd: std::os::fd::OwnedFd = r.into();
        i.answered("hello", Ok(fd.into()));
        assert!(i.held().is_empty());
        assert!(i.slots.lock().unwrap().is_empty());

        // Held when still wanted; a second hold changes nothing; release lets go.
        i.slots
            .lock()
            .unwrap()
            .insert("hello".into(), Slot::Asking { wanted: true });
        let (r, _w) = std::io::pipe().unwrap();
        let fd: std::os::fd::OwnedFd = r.into();
        i.answered("hello", Ok(fd.into()));
        assert_eq!(i.held(), vec!["hello".to_owned()]);
        i.hold("hello");
        assert_eq!(i.held(), vec!["hello".to_owned()]);
        i.release("hello");
        assert!(i.held().is_empty());
    }
}
