//! Store addresses: `DIR`, `file:///DIR`, `http://host[:port][/base]`, `https://...`.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where a store is, parsed from its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A directory on this machine.
    Dir(PathBuf),
    /// A base URL without a trailing `/`; files are at `BASE/v1/...`.
    Http(String),
}

impl Location {
    pub(crate) fn parse(url: &str) -> Result<Location> {
        let bad = |reason: &str| Error::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if url.is_empty() {
            return Err(bad("it is empty"));
        }
        if url.chars().any(char::is_control) {
            return Err(bad("it contains a control character"));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(Location::Dir(PathBuf::from(url)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                // file:///DIR: an empty host, then the absolute path.
                if !rest.starts_with('/') {
                    return Err(bad(
                        "a file URL names a local directory: file:///DIR (three slashes)",
                    ));
                }
                if rest.contains(['?', '#']) {
                    return Err(bad("a file URL cannot have a query or a fragment"));
                }
                let path = percent_decode(rest)
                    .ok_or_else(|| bad("it has a bad %-escape (use %XX with two hex digits)"))?;
                Ok(Location::Dir(PathBuf::from(path)))
            }
            "http" | "https" => {
                if rest.contains(['?', '#']) {
                    return Err(bad("a store URL cannot have a query or a fragment"));
                }
                let uri: ureq::http::Uri = url
                    .parse()
                    .map_err(|e: ureq::http::uri::InvalidUri| bad(&e.to_string()))?;
                if uri.host().is_none_or(str::is_empty) {
                    return Err(bad("it has no host"));
                }
                if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                    return Err(bad("credentials in a store URL are not supported"));
                }
                let lower = format!("{}://{rest}", scheme.to_ascii_lowercase());
                Ok(Location::Http(lower.trim_end_matches('/').to_owned()))
            }
            other => Err(bad(&format!(
                "unsupported scheme {}: use a directory, file:///DIR, http:// or https://",
                crate::error::quote(other)
            ))),
        }
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape. Other bytes pass through.
fn percent_decode(s: &str) -> Option<std::ffi::OsString> {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return None;
    }
    Some(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        use Location::*;
        let table: &[(&str, Option<Location>)] = &[
            ("/srv/store", Some(Dir("/srv/store".into()))),
            ("store", Some(Dir("store".into()))),
            ("file:///srv/store", Some(Dir("/srv/store".into()))),
            ("FILE:///srv/my%20store", Some(Dir("/srv/my store".into()))),
            ("file://host/srv", None),
            ("file:///srv/%zz", None),
            ("file:///srv/%00", None),
            (
                "http://127.0.0.1:8080",
                Some(Http("http://127.0.0.1:8080".into())),
            ),
            (
                "http://example.com/base/",
                Some(Http("http://example.com/base".into())),
            ),
            (
                "HTTPS://cdn.example.com/s",
                Some(Http("https://cdn.example.com/s".into())),
            ),
            ("http://", None),
            ("http:///path", None),
            ("http://u:p@host/", None),
            ("http://host/?q=1", None),
            ("http://host/#f", None),
            ("ftp://host/", None),
            ("", None),
            ("/srv/\nstore", None),
        ];
        for (url, want) in table {
            let got = Location::parse(url).ok();
            assert_eq!(&got, want, "{url:?}");
        }
    }

    #[test]
    fn unsupported_scheme_says_what_works() {
        let e = Location::parse("ftp://x/").unwrap_err().to_string();
        assert!(e.contains("http://"), "{e}");
    }
}
