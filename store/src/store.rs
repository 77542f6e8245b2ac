//! Reading a store: indexes, and downloads that resume, retry and verify.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use refreshd_snap::validate_snap_name;

use crate::dir::DirSource;
use crate::error::{Error, Result};
use crate::fsutil::{parent_dir, sha3_of, sync_dir};
use crate::http::{HttpSource, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT};
use crate::index::{Entry, SnapIndex, MAX_INDEX_SIZE};
use crate::location::Location;
use crate::source::{Failure, Opened};
use crate::tuf::client::{Fetch, TrustConfig, Trusted, Verified};
use crate::tuf::index_target;

/// The suffix of a download in progress, beside its destination.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// How much of a blob is read and written at a time.
const CHUNK: usize = 128 * 1024;
/// The longest a backoff sleep goes without looking at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// How a store is talked to. The defaults suit a daemon; tests shorten the backoff.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Resolving the host and opening a connection (default 10 s).
    pub connect_timeout: Duration,
    /// Waiting for an answer, and the longest silence while a body arrives (default 30 s). A
    /// large blob may take longer than this in all; it may not stall for longer.
    pub read_timeout: Duration,
    /// Consecutive failed attempts before giving up (default 5). An attempt that downloaded
    /// something resets the count, so a flaky link still finishes a large blob; in all, at
    /// most ten times this many attempts are made.
    pub max_attempts: u32,
    /// The wait before the first retry, doubled after each failure (default 250 ms)...
    pub backoff_initial: Duration,
    /// ...up to this (default 8 s).
    pub backoff_max: Duration,
    /// Use a proxy from `ALL_PROXY`/`HTTPS_PROXY`/`HTTP_PROXY` (and `NO_PROXY`) (default true).
    pub proxy_from_env: bool,
    /// A PEM file of the certificate authorities to trust for `https://` instead of the
    /// Mozilla roots built in (default none): a private store's own CA, or the system's
    /// bundle (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca_file: Option<PathBuf>,
    /// Verify everything through the store's signed metadata, trusting this root (default
    /// none: an unsigned store, trusted because it is reachable; for development only).
    pub trust: Option<TrustConfig>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_attempts: 5,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            proxy_from_env: true,
            ca_file: None,
            trust: None,
        }
    }
}

/// What a [`Store::fetch`] did, so callers (and tests) can see that nothing was fetched twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Bytes of the blob received and written by this call, over all attempts. Without a
    /// restart, `partial_at_start + bytes_fetched == size`.
    pub bytes_fetched: u64,
    /// Bytes of a partial download already on disk when the call began.
    pub partial_at_start: u64,
    /// Where the last transfer began: more than 0 when it resumed a partial download, from an
    /// earlier call or from an earlier attempt of this one.
    pub resumed_from: u64,
    /// Requests made (opens, for a directory store); 0 if the partial was already complete.
    pub attempts: u32,
    /// The server ignored a range request, so the download started over from byte 0.
    pub restarted: bool,
}

/// A store, opened from its address. Cheap to keep; HTTP connections are pooled.
pub struct Store {
    source: Arc<Source>,
    config: StoreConfig,
    trust: Option<Trusted>,
}

/// What a store has, as of one moment: for a signed store, metadata verified once, through
/// which any number of indexes are read (`refresh` of every snap verifies once).
pub struct Catalog<'a> {
    store: &'a Store,
    verified: Option<Verified>,
}

impl Catalog<'_> {
    /// The validated index of a snap, or `None` if the store does not have it. In a signed
    /// store the index is read through its signed target, and its revisions bound to theirs.
    pub fn snap(&self, name: &str) -> Result<Option<SnapIndex>> {
        validate_snap_name(name)?;
        match &self.verified {
            Some(v) => v.snap(&self.store.fetcher(), self.store.url(), name),
            None => {
                let rel = index_target(name);
                let too_large = || Error::IndexTooLarge {
                    name: name.to_owned(),
                    limit: MAX_INDEX_SIZE,
                };
                match self
                    .store
                    .fetcher()
                    .small(&rel, MAX_INDEX_SIZE, &too_large)?
                {
                    None => Ok(None),
                    Some(bytes) => SnapIndex::parse(name, &bytes).map(Some),
                }
            }
        }
    }
}

/// The store's small files, fetched with its retries.
#[derive(Clone)]
struct Fetcher {
    source: Arc<Source>,
    config: StoreConfig,
}

impl Fetch for Fetcher {
    fn small(
        &self,
        rel: &str,
        limit: u64,
        too_large: &dyn Fn() -> Error,
    ) -> Result<Option<Vec<u8>>> {
        let mut retry = Retry::new(&self.config);
        loop {
            match self.source.file(rel, limit, too_large) {
                Ok(found) => return Ok(found),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(detail)) => match retry.failed(false) {
                    Some(delay) => std::thread::sleep(delay),
                    None => {
                        return Err(Error::Unreachable {
                            url: self.source.url().to_owned(),
                            attempts: retry.attempts,
                            detail,
                        })
                    }
                },
            }
        }
    }
}

enum Source {
    Dir(DirSource),
    Http(HttpSource),
}

impl Source {
    fn url(&self) -> &str {
        match self {
            Source::Dir(d) => d.url(),
            Source::Http(h) => h.url(),
        }
    }

    fn file(
        &self,
        rel: &str,
        limit: u64,
        too_large: &dyn Fn() -> Error,
    ) -> Result<Option<Vec<u8>>, Failure> {
        match self {
            Source::Dir(d) => d.file(rel, limit, too_large),
            Source::Http(h) => h.file(rel, limit, too_large),
        }
    }

    fn open_blob(&self, entry: &Entry, offset: u64) -> Result<Opened, Failure> {
        match self {
            Source::Dir(d) => d.open_blob(entry, offset),
            Source::Http(h) => h.open_blob(entry, offset),
        }
    }

    fn read_failure(&self, entry: &Entry, e: io::Error) -> Failure {
        match self {
            Source::Dir(d) => d.read_failure(entry, e),
            Source::Http(h) => h.read_failure(entry, e),
        }
    }

    fn location(&self, entry: &Entry) -> String {
        match self {
            Source::Dir(d) => format!("{}/{}", d.url().trim_end_matches('/'), entry.path),
            Source::Http(h) => h.blob_url(entry),
        }
    }
}

impl Store {
    /// Opens a store with the default [`StoreConfig`]: a directory (`DIR` or `file:///DIR`,
    /// which must exist) or a base URL (`http://host:port/base`, `https://...`). Nothing is
    /// requested until it is used.
    pub fn open(url: &str) -> Result<Store> {
        Store::open_with(url, StoreConfig::default())
    }

    /// [`Store::open`] with a chosen configuration. With [`StoreConfig::trust`], the pinned
    /// root is read and checked now: a missing or broken one fails here.
    pub fn open_with(url: &str, config: StoreConfig) -> Result<Store> {
        let source = match Location::parse(url)? {
            Location::Dir(dir) => Source::Dir(DirSource::open(&dir)?),
            Location::Http(base) => Source::Http(HttpSource::new(base, &config)?),
        };
        let trust = config.trust.as_ref().map(Trusted::open).transpose()?;
        Ok(Store {
            source: Arc::new(source),
            config,
            trust,
        })
    }

    /// The store's address as used in messages (a directory, or the base URL).
    pub fn url(&self) -> &str {
        self.source.url()
    }

    /// Whether everything read from this store is verified through signed metadata.
    pub fn is_signed(&self) -> bool {
        self.trust.is_some()
    }

    fn fetcher(&self) -> Fetcher {
        Fetcher {
            source: self.source.clone(),
            config: self.config.clone(),
        }
    }

    /// The store as of now. For a signed store this fetches and verifies its metadata (root
    /// chain, timestamp, snapshot, targets) and keeps what it trusted; refused metadata fails
    /// here, in one line, with nothing else read.
    pub fn catalog(&self) -> Result<Catalog<'_>> {
        let verified = match &self.trust {
            None => None,
            Some(t) => Some(t.verify(Arc::new(self.fetcher()), self.url())?),
        };
        Ok(Catalog {
            store: self,
            verified,
        })
    }

    /// The validated index of a snap, or `None` if the store does not have it (no file, 404;
    /// no signed target). One look-up: [`Store::catalog`] then [`Catalog::snap`].
    pub fn snap(&self, name: &str) -> Result<Option<SnapIndex>> {
        validate_snap_name(name)?;
        self.catalog()?.snap(name)
    }

    /// Downloads `entry`'s blob to `dest`, through `DEST.partial` beside it.
    ///
    /// - An existing `.partial` is resumed (an HTTP `Range: bytes=N-` request, a seek for a
    ///   directory store); if the server ignores the range, the download starts over
    ///   ([`FetchStats::restarted`]).
    /// - No more than `entry.size` bytes are taken: a blob longer (or shorter) than its index
    ///   says is refused, and the partial deleted.
    /// - A dropped connection or a timeout is retried with exponential backoff, resuming from
    ///   what is on disk (a GET is idempotent); see [`StoreConfig::max_attempts`].
    /// - The sha3-384 of the whole file is checked before `.partial` is renamed to `dest` (file
    ///   and directory fsynced). A mismatch deletes the partial: [`Error::Corrupt`].
    ///
    /// `progress(done, total)` is called as bytes arrive; `cancel` is polled between chunks and
    /// during backoff, and a cancelled download keeps its partial for the next call. Two
    /// fetches to the same `dest` at once: the second fails with [`Error::Busy`].
    pub fn fetch(
        &self,
        entry: &Entry,
        dest: &Path,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &dyn Fn() -> bool,
    ) -> Result<FetchStats> {
        // Before any request: an entry built by hand gets the checks an index gets.
        entry.validate()?;
        let partial = partial_path(dest)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&partial)
            .map_err(Error::io("create", &partial))?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((_, Errno::EWOULDBLOCK)) => return Err(Error::Busy { partial }),
            Err((_, errno)) => {
                return Err(Error::Io {
                    op: "lock",
                    path: partial,
                    error: errno.into(),
                })
            }
        };

        let mut have = file.metadata().map_err(Error::io("read", &partial))?.len();
        let stats = FetchStats {
            partial_at_start: have,
            resumed_from: have,
            ..FetchStats::default()
        };
        if have > entry.size {
            // Not a prefix of this blob.
            file.set_len(0).map_err(Error::io("truncate", &partial))?;
            have = 0;
        }
        progress(have, entry.size);

        let mut transfer = Transfer {
            source: &self.source,
            entry,
            file: &file,
            partial: &partial,
            dest,
            have,
            stats,
            buf: vec![0u8; CHUNK],
        };
        let mut retry = Retry::new(&self.config);
        while transfer.have < entry.size {
            if cancel() {
                return Err(Error::Cancelled {
                    dest: dest.to_owned(),
                });
            }
            let before = transfer.have;
            match transfer.attempt(progress, cancel) {
                Ok(()) => break,
                Err(Failure::Fatal(e)) => {
                    if matches!(e, Error::BlobTooLarge { .. } | Error::BlobTooSmall { .. }) {
                        // What is on disk came from a blob that is not the one indexed.
                        let _ = fs::remove_file(&partial);
                    }
                    return Err(e);
                }
                Err(Failure::Retry(detail)) => match retry.failed(transfer.have > before) {
                    Some(delay) => {
                        sleep_unless_cancelled(delay, cancel).map_err(|()| Error::Cancelled {
                            dest: dest.to_owned(),
                        })?
                    }
                    None => {
                        return Err(Error::Unreachable {
                            url: self.url().to_owned(),
                            attempts: transfer.stats.attempts,
                            detail,
                        })
                    }
                },
            }
        }
        let stats = transfer.stats;

        file.sync_all().map_err(Error::io("sync", &partial))?;
        let actual = (|| {
            let mut f: &File = &file;
            f.seek(SeekFrom::Start(0))?;
            sha3_of(f)
        })()
        .map_err(Error::io("read", &partial))?;
        if !actual.eq_ignore_ascii_case(&entry.sha3_384) {
            let _ = fs::remove_file(&partial);
            return Err(Error::Corrupt {
                name: entry.name.clone(),
                revision: entry.revision,
                location: self.source.location(entry),
                expected: entry.sha3_384.clone(),
                actual,
            });
        }
        fs::rename(&partial, dest).map_err(Error::io("rename into place", dest))?;
        sync_dir(parent_dir(dest))?;
        Ok(stats)
    }
}

/// `DEST.partial`, beside `dest`.
pub fn partial_path(dest: &Path) -> Result<PathBuf> {
    let Some(name) = dest.file_name() else {
        return Err(Error::Io {
            op: "download to",
            path: dest.to_owned(),
            error: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
        });
    };
    let mut name: OsString = name.to_owned();
    name.push(PARTIAL_SUFFIX);
    Ok(dest.with_file_name(name))
}

/// One download in progress: the partial file and how much of it is there.
struct Transfer<'a> {
    source: &'a Source,
    entry: &'a Entry,
    file: &'a File,
    partial: &'a Path,
    dest: &'a Path,
    have: u64,
    stats: FetchStats,
    buf: Vec<u8>,
}

impl Transfer<'_> {
    /// One request: from `have` to the end of the blob. `Ok` once `size` bytes are on disk and
    /// the source has nothing more.
    fn attempt(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &dyn Fn() -> bool,
    ) -> Result<(), Failure> {
        let size = self.entry.size;
        self.stats.attempts += 1;
        let opened = self.source.open_blob(self.entry, self.have)?;
        if opened.start != self.have {
            // The server sent the whole blob to a range request.
            self.file
                .set_len(0)
                .map_err(Error::io("truncate", self.partial))?;
            self.have = 0;
            self.stats.restarted = true;
            progress(0, size);
        }
        self.stats.resumed_from = self.have;
        let mut reader = opened.reader;
        loop {
            if cancel() {
                return Err(Failure::Fatal(Error::Cancelled {
                    dest: self.dest.to_owned(),
                }));
            }
            let remaining = size - self.have;
            // Never ask for more than is left; once nothing is left, one more byte tells a
            // blob longer than its index from one that ends where it should.
            let want = if remaining == 0 {
                1
            } else {
                remaining.min(self.buf.len() as u64) as usize
            };
            match reader.read(&mut self.buf[..want]) {
                Ok(0) if remaining == 0 => return Ok(()),
                Ok(0) if opened.length_known => {
                    return Err(Failure::Fatal(Error::BlobTooSmall {
                        name: self.entry.name.clone(),
                        revision: self.entry.revision,
                        location: self.source.location(self.entry),
                        size,
                        actual: self.have,
                    }))
                }
                Ok(0) => {
                    return Err(Failure::Retry(format!(
                        "the connection ended after {} of {size} bytes",
                        self.have
                    )))
                }
                Ok(_) if remaining == 0 => {
                    return Err(Failure::Fatal(Error::BlobTooLarge {
                        name: self.entry.name.clone(),
                        revision: self.entry.revision,
                        location: self.source.location(self.entry),
                        size,
                        actual: None,
                    }))
                }
                Ok(n) => {
                    self.file
                        .write_all_at(&self.buf[..n], self.have)
                        .map_err(Error::io("write", self.partial))?;
                    self.have += n as u64;
                    self.stats.bytes_fetched += n as u64;
                    progress(self.have, size);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // All `size` bytes are here and only the end of the body failed: the hash
                // decides whether they are right.
                Err(_) if remaining == 0 => return Ok(()),
                Err(e) => return Err(self.source.read_failure(self.entry, e)),
            }
        }
    }
}

/// Counts failures and spaces out retries.
struct Retry {
    max_failures: u32,
    max_attempts: u32,
    failures: u32,
    attempts: u32,
    initial: Duration,
    next: Duration,
    max: Duration,
}

impl Retry {
    fn new(config: &StoreConfig) -> Retry {
        let max_failures = config.max_attempts.max(1);
        Retry {
            max_failures,
            max_attempts: max_failures.saturating_mul(10),
            failures: 0,
            attempts: 1,
            initial: config.backoff_initial,
            next: config.backoff_initial,
            max: config.backoff_max.max(config.backoff_initial),
        }
    }

    /// After a failed attempt: how long to wait before the next one, or `None` to give up.
    /// An attempt that made progress starts the count and the backoff afresh.
    fn failed(&mut self, progressed: bool) -> Option<Duration> {
        if progressed {
            self.failures = 0;
            self.next = self.initial;
        }
        self.failures += 1;
        if self.failures >= self.max_failures || self.attempts >= self.max_attempts {
            return None;
        }
        self.attempts += 1;
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(delay)
    }
}

/// Sleeps for `delay`, looking at `cancel` every [`CANCEL_POLL`]; `Err` if it was cancelled.
fn sleep_unless_cancelled(delay: Duration, cancel: &dyn Fn() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + delay;
    loop {
        if cancel() {
            return Err(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(CANCEL_POLL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_gives_up_after_max_consecutive_failures() {
        let config = StoreConfig {
            max_attempts: 3,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(3),
            ..StoreConfig::default()
        };
        let mut r = Retry::new(&config);
        assert_eq!(r.failed(false), Some(Duration::from_millis(1)));
        assert_eq!(r.failed(false), Some(Duration::from_millis(2)));
        assert_eq!(r.failed(false), None, "third failure in a row");
        assert_eq!(r.attempts, 3);

        let mut r = Retry::new(&config);
        r.failed(false);
        r.failed(false);
        // Progress resets the count and the backoff.
        assert_eq!(r.failed(true), Some(Duration::from_millis(1)));
        assert_eq!(r.failed(false), Some(Duration::from_millis(2)));
        assert_eq!(r.failed(false), None);
    }

    #[test]
    fn retry_is_bounded_even_with_progress() {
        let config = StoreConfig {
            max_attempts: 2,
            backoff_initial: Duration::ZERO,
            ..StoreConfig::default()
        };
        let mut r = Retry::new(&config);
        let mut n = 1;
        while r.failed(true).is_some() {
            n += 1;
            assert!(n <= 100);
        }
        assert_eq!(n, 20);
    }

    #[test]
    fn a_store_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Store>();
    }

    #[test]
    fn partial_is_beside_dest() {
        assert_eq!(
            partial_path(Path::new("/a/b/hello_3.snap")).unwrap(),
            Path::new("/a/b/hello_3.snap.partial")
        );
        assert!(partial_path(Path::new("/")).is_err());
    }

    #[test]
    fn cancelled_sleep_returns_early() {
        let start = Instant::now();
        assert!(sleep_unless_cancelled(Duration::from_secs(60), &|| true).is_err());
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(sleep_unless_cancelled(Duration::from_millis(1), &|| false).is_ok());
    }
}
