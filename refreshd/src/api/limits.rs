//! What one caller may hold of the API, and what all of them together may (docs/api.md,
//! "Limits"): connections, requests in progress and watch streams per uid, connections in all,
//! and the threads that do the blocking work of requests.
//!
//! Every count is taken when a thing starts and given back by a guard when it ends, however it
//! ends. Over a limit, the caller gets `503 unavailable` with one line naming the limit, at once:
//! nothing waits in the daemon on behalf of a caller who already holds their share. Root has no
//! share of its own (only the total bounds it), and the last eighth of the connections is kept
//! for root, so that users together cannot lock root out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use refreshd_client::types::ErrorKind;
use tracing::warn;

use super::ApiError;

/// The limits, from refreshd's command line (`--api-*`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Connections in all; at most half the daemon's descriptor limit (see [`Config::fit`]).
    pub connections: usize,
    /// Connections of one uid other than root.
    pub user_connections: usize,
    /// Requests in progress of one uid other than root (watch streams not counted).
    pub user_requests: usize,
    /// Watch streams of one uid other than root.
    pub user_streams: usize,
    /// How long a connection may take to send a complete request head: after connecting, after
    /// its previous answer (an idle keep-alive connection), or while sending it.
    pub header_timeout: Duration,
}

/// The defaults of `refreshd --api-*` (docs/api.md, "Limits").
pub const CONNECTIONS: usize = 1024;
pub const USER_CONNECTIONS: usize = 32;
pub const USER_REQUESTS: usize = 8;
pub const USER_STREAMS: usize = 8;
pub const HEADER_TIMEOUT: &str = "10s";

/// Read-only connections to the state, and workers for other blocking work: few, because each
/// is quick (a read, `/proc`), and a caller's share of requests is smaller than either.
pub const READERS: usize = 4;
pub const WORKERS: usize = 8;
/// How long a request waits for a reader or a worker before it is told refreshd is busy.
pub const WAIT: Duration = Duration::from_secs(3);

impl Default for Config {
    fn default() -> Self {
        Config {
            connections: CONNECTIONS,
            user_connections: USER_CONNECTIONS,
            user_requests: USER_REQUESTS,
            user_streams: USER_STREAMS,
            header_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Keeps the connections within half of `fd_limit` (the daemon's `RLIMIT_NOFILE`), so that
    /// however many are open the engine still has descriptors for its own work: the database,
    /// loop devices, data copies, hooks. Returns the config and whether it was lowered.
    pub fn fit(mut self, fd_limit: u64) -> (Config, bool) {
        let half = usize::try_from(fd_limit / 2).unwrap_or(usize::MAX).max(16);
        let lowered = self.connections > half;
        self.connections = self.connections.min(half).max(1);
        self.user_connections = self.user_connections.clamp(1, self.connections);
        self.user_requests = self.user_requests.max(1);
        (self, lowered)
    }

    /// How many connections users other than root may hold together: all but the last eighth.
    pub fn users_total(&self) -> usize {
        (self.connections - self.connections / 8).max(1)
    }
}

/// The soft `RLIMIT_NOFILE` of this process.
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

#[derive(Default)]
struct Counts {
    total: usize,
    users: usize,
    per_uid: HashMap<u32, PerUid>,
}

#[derive(Default, Clone, Copy)]
struct PerUid {
    connections: usize,
    requests: usize,
    streams: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Connection,
    Request,
    Stream,
}

/// The counts of the API's callers.
pub struct Limits {
    pub config: Config,
    counts: Mutex<Counts>,
    /// Connections refused since the last warning in the log, and when that was.
    refused: AtomicU64,
    warned: Mutex<Option<Instant>>,
}

/// A share taken; given back when dropped.
pub struct Slot {
    limits: Arc<Limits>,
    uid: u32,
    what: What,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock().unwrap_or_else(|e| e.into_inner());
        if self.what == What::Connection {
            c.total -= 1;
            if self.uid != 0 {
                c.users -= 1;
            }
        }
        if self.uid == 0 {
            return;
        }
        let gone = match c.per_uid.get_mut(&self.uid) {
            Some(p) => {
                match self.what {
                    What::Connection => p.connections -= 1,
                    What::Request => p.requests -= 1,
                    What::Stream => p.streams -= 1,
                }
                p.connections + p.requests + p.streams == 0
            }
            None => false,
        };
        if gone {
            c.per_uid.remove(&self.uid);
        }
    }
}

impl Limits {
    pub fn new(config: Config) -> Arc<Limits> {
        Arc::new(Limits {
            config,
            counts: Mutex::new(Counts::default()),
            refused: AtomicU64::new(0),
            warned: Mutex::new(None),
        })
    }

    /// A connection of `uid`, just accepted.
    pub fn connect(self: &Arc<Self>, uid: u32) -> Result<Slot, ApiError> {
        let cfg = &self.config;
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let refusal = if c.total >= cfg.connections {
            Some(format!(
                "refreshd has {} connections open, the most it serves (refreshd --api-connections); try again in a moment",
                c.total
            ))
        } else if uid != 0 && c.users >= cfg.users_total() {
            Some(format!(
                "users other than root have {} connections open to refreshd, the most they may have together (refreshd --api-connections); try again in a moment",
                c.users
            ))
        } else if uid != 0 && per(&c, uid).connections >= cfg.user_connections {
            Some(format!(
                "uid {uid} has {} connections open to refreshd, the most one user may have (refreshd --api-user-connections); close some and try again",
                per(&c, uid).connections
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            drop(c);
            self.note_refusal(&message);
            return Err(ApiError::new(ErrorKind::Unavailable, message));
        }
        c.total += 1;
        if uid != 0 {
            c.users += 1;
            c.per_uid.entry(uid).or_default().connections += 1;
        }
        Ok(self.slot(uid, What::Connection))
    }

    /// A request of `uid` in progress (until its answer's head is made).
    pub fn request(self: &Arc<Self>, uid: u32) -> Result<Option<Slot>, ApiError> {
        self.take(uid, What::Request, self.config.user_requests, |n| {
            format!(
                "uid {uid} has {n} requests in progress, the most one user may have (refreshd --api-user-requests); wait for them and try again"
            )
        })
    }

    /// A watch stream of `uid`, open until it ends.
    pub fn stream(self: &Arc<Self>, uid: u32) -> Result<Option<Slot>, ApiError> {
        self.take(uid, What::Stream, self.config.user_streams, |n| {
            format!(
                "uid {uid} has {n} watch streams open, the most one user may have (refreshd --api-user-streams); end one and try again"
            )
        })
    }

    /// Connections open now: (all, of users other than root).
    pub fn open_connections(&self) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        (c.total, c.users)
    }

    fn take(
        self: &Arc<Self>,
        uid: u32,
        what: What,
        max: usize,
        message: impl FnOnce(usize) -> String,
    ) -> Result<Option<Slot>, ApiError> {
        if uid == 0 {
            return Ok(None);
        }
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let now = per(&c, uid);
        let n = match what {
            What::Request => now.requests,
            What::Stream => now.streams,
            What::Connection => unreachable!("connections are taken by connect"),
        };
        if n >= max {
            return Err(ApiError::new(ErrorKind::Unavailable, message(n)));
        }
        let p = c.per_uid.entry(uid).or_default();
        match what {
            What::Request => p.requests += 1,
            _ => p.streams += 1,
        }
        drop(c);
        Ok(Some(self.slot(uid, what)))
    }

    fn slot(self: &Arc<Self>, uid: u32, what: What) -> Slot {
        Slot {
            limits: self.clone(),
            uid,
            what,
        }
    }

    /// Says in the log that connections are refused: at most once a minute, with how many,
    /// so that a flood of them does not become a flood of log lines.
    fn note_refusal(&self, message: &str) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return;
        }
        *warned = Some(Instant::now());
        self.refused.store(0, Ordering::Relaxed);
        warn!("refused {n} connection(s) to the API since the last such line: {message}");
    }
}

fn per(c: &Counts, uid: u32) -> PerUid {
    c.per_uid.get(&uid).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Arc<Limits> {
        Limits::new(Config {
            connections: 16,
            user_connections: 3,
            user_requests: 2,
            user_streams: 1,
            header_timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn each_user_has_a_share_and_root_the_last_eighth() {
        let l = limits();
        let mine: Vec<Slot> = (0..3).map(|_| l.connect(1000).unwrap()).collect();
        let err = l.connect(1000).err().expect("over the share of uid 1000");
        assert!(
            err.body
                .error
                .message
                .contains("uid 1000 has 3 connections open"),
            "{err:?}"
        );
        assert_eq!(err.body.error.kind, ErrorKind::Unavailable);
        // Another user and root are not held back by it.
        let theirs: Vec<Slot> = (1001..1005).map(|u| l.connect(u).unwrap()).collect();
        // Users together: 16 - 2 = 14; they hold 7, so 7 more users' connections fit.
        let more: Vec<Slot> = (2000..2007).map(|u| l.connect(u).unwrap()).collect();
        let err = l.connect(3000).err().expect("users together are full");
        assert!(err.body.error.message.contains("together"), "{err:?}");
        let root: Vec<Slot> = (0..2).map(|_| l.connect(0).unwrap()).collect();
        assert!(l.connect(0).is_err(), "the total bounds root too");
        assert_eq!(l.open_connections(), (16, 14));
        drop((mine, theirs, more, root));
        assert_eq!(l.open_connections(), (0, 0));
        assert!(l.counts.lock().unwrap().per_uid.is_empty(), "nothing left");
    }

    #[test]
    fn requests_and_streams_per_user_and_none_for_root() {
        let l = limits();
        let a = l.request(1000).unwrap();
        let b = l.request(1000).unwrap();
        assert!(l.request(1000).is_err());
        assert!(l.request(1001).unwrap().is_some());
        let s = l.stream(1000).unwrap();
        assert!(l.stream(1000).is_err());
        for _ in 0..100 {
            assert!(l.request(0).unwrap().is_none(), "root takes no share");
        }
        drop((a, b, s));
        assert!(l.request(1000).is_ok() && l.stream(1000).is_ok());
    }

    #[test]
    fn connections_stay_within_half_the_descriptors() {
        let (c, lowered) = Config::default().fit(1024);
        assert!(lowered);
        assert_eq!(c.connections, 512);
        assert_eq!(c.users_total(), 448);
        let (c, lowered) = Config::default().fit(65536);
        assert!(!lowered);
        assert_eq!(c.connections, 1024);
        let (c, _) = Config {
            user_connections: 5000,
            ..Config::default()
        }
        .fit(8192);
        assert_eq!(c.user_connections, 1024);
    }
}
