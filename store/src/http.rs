//! The HTTP(S) transport: plain GETs of static files, with `Range` to resume.

use std::path::Path;
use std::time::Duration;

use ureq::config::AutoHeaderValue;
use ureq::http::{header, Response};
use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
use ureq::Body;

use crate::error::{one_line, Error};
use crate::index::Entry;
use crate::redirect;
use crate::source::{Failure, Opened};
use crate::StoreConfig;

pub(crate) struct HttpSource {
    agent: ureq::Agent,
    /// Without a trailing `/`.
    base: String,
    /// The longest a small file's body (an index, signed metadata) may take to arrive, in all.
    index_budget: Duration,
}

impl HttpSource {
    pub(crate) fn new(base: String, config: &StoreConfig) -> Result<HttpSource, Error> {
        let read = Some(config.read_timeout);
        let connect = Some(config.connect_timeout);
        let proxy = if config.proxy_from_env {
            ureq::Proxy::try_from_env()
        } else {
            None
        };
        let tls = match &config.ca_file {
            None => TlsConfig::default(),
            Some(path) => TlsConfig::builder().root_certs(load_ca_file(path)?).build(),
        };
        let agent_config = ureq::Agent::config_builder()
            .tls_config(tls)
            // Every status is handled here: 404 is "no such snap", 206 a resumed download.
            .http_status_as_error(false)
            .timeout_resolve(connect)
            .timeout_connect(connect)
            .timeout_send_request(read)
            .timeout_recv_response(read)
            // Idle time between two reads of the body, not the whole body: a large blob on a
            // slow link takes as long as it takes, a stalled one fails after `read_timeout`.
            .timeout_per_read(read)
            .timeout_per_write(read)
            // Redirects are followed by `get`, which checks each one first (crate::redirect).
            .max_redirects(0)
            // And should anything ever follow one by itself: an https store stays HTTPS-only.
            .https_only(base.starts_with("https://"))
            .proxy(proxy)
            .user_agent(format!("refreshd-store/{}", env!("CARGO_PKG_VERSION")))
            // Bytes on the wire must be bytes of the blob, or ranges would mean nothing.
            .accept_encoding(AutoHeaderValue::None)
            .build();
        Ok(HttpSource {
            agent: ureq::Agent::new_with_config(agent_config),
            base,
            index_budget: config.read_timeout,
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.base
    }

    /// The URL of a blob; `entry.path` is validated, so it needs no escaping.
    pub(crate) fn blob_url(&self, entry: &Entry) -> String {
        format!("{}/{}", self.base, entry.path)
    }

    /// A GET of `url` (from `offset` when given) that follows only the redirects
    /// [`redirect::check`] allows, each checked before it is requested: every request this
    /// transport makes goes through here. Returns the answer and the URL that gave it.
    fn get(
        &self,
        url: &str,
        offset: Option<u64>,
        small: bool,
    ) -> Result<(Response<Body>, String), Failure> {
        let mut current = url.to_owned();
        let mut visited = vec![current.clone()];
        loop {
            let mut req = self.agent.get(&current);
            if let Some(offset) = offset {
                // Kept on every hop: a redirect is to the same bytes elsewhere.
                req = req.header(header::RANGE, format!("bytes={offset}-"));
            }
            if small {
                // An index or signed metadata is small (at most 16 MiB, a few KiB in practice): a server that
                // drips it a byte at a time, never silent for `read_timeout`, must not hold
                // the caller (an API request) for ever.
                req = req
                    .config()
                    .timeout_recv_body(Some(self.index_budget))
                    .build();
            }
            let resp = req.call().map_err(|e| classify(&current, e))?;
            if !redirect::is_redirect(resp.status().as_u16()) {
                return Ok((resp, current));
            }
            let refuse = |location: &str, reason: String| {
                Failure::Fatal(Error::Redirect {
                    url: current.clone(),
                    location: location.to_owned(),
                    reason,
                })
            };
            let location = match resp.headers().get(header::LOCATION) {
                None => return Err(refuse("", "the answer has no Location".into())),
                Some(v) => match v.to_str() {
                    Ok(v) => v.to_owned(),
                    Err(_) => {
                        let raw = String::from_utf8_lossy(v.as_bytes()).into_owned();
                        return Err(refuse(&raw, "its Location is not plain text".into()));
                    }
                },
            };
            // Not read: the body of a redirect says nothing we use.
            drop(resp);
            let next = redirect::resolve(&current, &location).map_err(|r| refuse(&location, r))?;
            redirect::check(&self.base, &current, &next).map_err(|r| refuse(&location, r))?;
            if visited.contains(&next) {
                return Err(refuse(
                    &location,
                    "it leads back to an address already asked (a redirect loop)".into(),
                ));
            }
            if visited.len() > redirect::MAX_REDIRECTS {
                return Err(refuse(
                    &location,
                    format!(
                        "it is one too many (at most {} redirects are followed)",
                        redirect::MAX_REDIRECTS
                    ),
                ));
            }
            visited.push(next.clone());
            current = next;
        }
    }

    /// A small file of the store (an index, signed metadata), at most `limit` bytes, whole
    /// within the read timeout; `None` on 404 or 410. `too_large` is the error for a longer one.
    pub(crate) fn file(
        &self,
        rel: &str,
        limit: u64,
        too_large: impl FnOnce() -> Error,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let (resp, url) = self.get(&format!("{}/{rel}", self.base), None, true)?;
        match resp.status().as_u16() {
            200 => {
                let body = resp
                    .into_body()
                    .into_with_config()
                    // One byte more than allowed, to tell "exactly the limit" from "more".
                    .limit(limit.saturating_add(1))
                    .read_to_vec();
                match body {
                    Ok(bytes) if bytes.len() as u64 > limit => Err(Failure::Fatal(too_large())),
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(ureq::Error::BodyExceedsLimit(_)) => Err(Failure::Fatal(too_large())),
                    Err(e) => Err(classify(&url, e)),
                }
            }
            404 | 410 => {
                // Read (a short body only): a response read to its end leaves its connection
                // for the next request; a signed look-up always meets one 404, the root
                // version not made yet.
                let _ = resp
                    .into_body()
                    .into_with_config()
                    .limit(64 << 10)
                    .read_to_vec();
                Ok(None)
            }
            status => Err(status_failure(&url, status)),
        }
    }

    /// GETs a blob from `offset` (with `Range: bytes=OFFSET-` when not at the start) and checks
    /// what the server says about its length against the index before any byte is read.
    pub(crate) fn open_blob(&self, entry: &Entry, offset: u64) -> Result<Opened, Failure> {
        let (resp, url) = self.get(&self.blob_url(entry), (offset > 0).then_some(offset), false)?;
        let status = resp.status().as_u16();
        let too_large = |actual| {
            Failure::Fatal(Error::BlobTooLarge {
                name: entry.name.clone(),
                revision: entry.revision,
                location: url.clone(),
                size: entry.size,
                actual,
            })
        };
        let too_small = |actual| {
            Failure::Fatal(Error::BlobTooSmall {
                name: entry.name.clone(),
                revision: entry.revision,
                location: url.clone(),
                size: entry.size,
                actual,
            })
        };
        let bad_range = |detail: String| {
            Failure::Fatal(Error::BadRange {
                url: url.clone(),
                detail,
            })
        };
        match status {
            // The whole blob: a fresh download, or a server that ignores ranges.
            200 => {
                let length = content_length(&resp);
                match length {
                    Some(len) if len > entry.size => return Err(too_large(Some(len))),
                    Some(len) if len < entry.size => return Err(too_small(len)),
                    _ => {}
                }
                Ok(Opened {
                    reader: Box::new(resp.into_body().into_reader()),
                    start: 0,
                    length_known: length.is_some(),
                })
            }
            206 if offset > 0 => {
                let range = header_str(&resp, header::CONTENT_RANGE)
                    .ok_or_else(|| bad_range("a 206 answer without Content-Range".into()))?;
                let (first, last, total) = parse_content_range(&range)
                    .ok_or_else(|| bad_range(format!("Content-Range {}", quote_header(&range))))?;
                if first != offset {
                    return Err(bad_range(format!(
                        "asked for bytes from {offset}, got bytes from {first}"
                    )));
                }
                match total {
                    Some(t) if t > entry.size => return Err(too_large(Some(t))),
                    Some(t) if t < entry.size => return Err(too_small(t)),
                    None if last >= entry.size => return Err(too_large(None)),
                    _ => {}
                }
                Ok(Opened {
                    reader: Box::new(resp.into_body().into_reader()),
                    start: offset,
                    length_known: true,
                })
            }
            206 => Err(bad_range(
                "a partial answer to a request for the whole blob".into(),
            )),
            // The server's file ends at or before `offset`, which is below the declared size.
            416 => {
                let actual = header_str(&resp, header::CONTENT_RANGE)
                    .and_then(|r| r.strip_prefix("bytes */")?.trim().parse().ok())
                    .unwrap_or(offset);
                Err(too_small(actual))
            }
            404 | 410 => Err(Failure::Fatal(Error::BlobMissing {
                name: entry.name.clone(),
                revision: entry.revision,
                location: url,
            })),
            status => Err(status_failure(&url, status)),
        }
    }

    /// An error while reading a body: retry what a new connection may fix.
    pub(crate) fn read_failure(&self, entry: &Entry, e: std::io::Error) -> Failure {
        classify(&self.blob_url(entry), ureq::Error::from(e))
    }
}

/// The certificates of a PEM file, to trust as roots.
fn load_ca_file(path: &Path) -> Result<RootCerts, Error> {
    let bad = |detail: String| Error::CaFile {
        path: path.to_owned(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        match item.map_err(|e| bad(one_line(&e.to_string())))? {
            PemItem::Certificate(c) => certs.push(c),
            _ => return Err(bad("it holds something other than certificates".into())),
        }
    }
    if certs.is_empty() {
        return Err(bad("it holds no certificate".into()));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

fn header_str(resp: &Response<Body>, name: header::HeaderName) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn content_length(resp: &Response<Body>) -> Option<u64> {
    header_str(resp, header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok())
}

fn quote_header(v: &str) -> String {
    crate::error::quote(v)
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`): `(first, last, total)`.
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if last < first || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some((first, last, total))
}

/// Statuses worth another try: the server is busy or briefly broken.
fn status_failure(url: &str, status: u16) -> Failure {
    match status {
        408 | 429 | 500..=599 => Failure::Retry(format!("HTTP {status} from {url}")),
        _ => Failure::Fatal(Error::Transfer {
            url: url.to_owned(),
            detail: format!("the server answered HTTP {status}"),
        }),
    }
}

/// Sorts a client error into "try again" (the network) and "give up" (everything a new
/// connection would meet again: TLS, bad URLs).
fn classify(url: &str, e: ureq::Error) -> Failure {
    let detail = one_line(&e.to_string());
    match e {
        // rustls reports a failed handshake (an unknown certificate authority, a name that
        // does not match) as invalid data on the stream; another connection meets it again.
        ureq::Error::Io(ref io) if io.kind() == std::io::ErrorKind::InvalidData => {
            Failure::Fatal(Error::Transfer {
                url: url.to_owned(),
                detail: format!(
                    "{detail} (a store with its own certificate authority needs its CA file)"
                ),
            })
        }
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Protocol(_)
        | ureq::Error::BodyStalled => Failure::Retry(format!("{detail} ({url})")),
        _ => Failure::Fatal(Error::Transfer {
            url: url.to_owned(),
            detail,
        }),
    }
}

/// The default timeouts, for [`StoreConfig`]'s documentation and default.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 100-4095/4096"),
            Some((100, 4095, Some(4096)))
        );
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((0, 9, None)));
        assert_eq!(parse_content_range("bytes 10-9/20"), None);
        assert_eq!(parse_content_range("bytes 0-20/20"), None);
        assert_eq!(parse_content_range("items 0-9/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
    }

    #[test]
    fn statuses() {
        assert!(matches!(status_failure("u", 503), Failure::Retry(_)));
        assert!(matches!(status_failure("u", 429), Failure::Retry(_)));
        assert!(matches!(
            status_failure("u", 403),
            Failure::Fatal(Error::Transfer { .. })
        ));
    }
}
