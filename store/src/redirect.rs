//! Which redirects a store may send, decided here for every request the HTTP transport makes
//! (indexes, blobs, resumed ranges): the client follows none by itself.
//!
//! The index is what says which hash a blob must have, and its integrity rests on the transport
//! (docs/store.md). So a redirect is followed only when it keeps what the store's address
//! promised:
//! - only `http` and `https`: never `file:`, `ftp:` or anything else;
//! - never from `https` to `http`: an `https://` store stays HTTPS-only, at every hop;
//! - no credentials in the target;
//! - from a store on another host, never to this machine or its link (loopback, link-local,
//!   unspecified addresses, `localhost`): a remote store cannot make refreshd, as root, fetch
//!   from services that listen locally (a cloud's metadata service, an admin port);
//! - at most [`MAX_REDIRECTS`] hops, and no URL twice (a loop).
//!
//! Other hosts and ports are allowed: a CDN redirects to its edges, and over HTTPS the target
//! proves who it is with its own certificate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ureq::http::Uri;

/// How many redirects a request follows (a CDN may send one or two).
pub(crate) const MAX_REDIRECTS: usize = 5;

/// The statuses that redirect a GET. (300, 304 and 305 do not: they are answers.)
pub(crate) fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// The URL a `Location` leads to from `from` (absolute, `//host/...`, `/path` or relative), or
/// why it cannot be followed. The fragment, which is never sent, is dropped.
pub(crate) fn resolve(from: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    let location = location.split_once('#').map_or(location, |(l, _)| l);
    if location.is_empty() {
        return Err("its Location is empty".into());
    }
    let base: Uri = from.parse().map_err(|_| format!("{from} is not a URL"))?;
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let joined = if let Some(other) = scheme_of(location) {
        let lower = other.to_ascii_lowercase();
        if lower != "http" && lower != "https" {
            return Err(format!(
                "it leads to another scheme ({}); only http and https are followed",
                crate::error::quote(other)
            ));
        }
        format!("{lower}{}", &location[other.len()..])
    } else if location.starts_with("//") {
        format!("{scheme}:{location}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{}", remove_dot_segments(location))
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!(
            "{scheme}://{authority}{}",
            remove_dot_segments(&format!("{dir}/{location}"))
        )
    };
    let uri: Uri = joined
        .parse()
        .map_err(|_| "its Location is not a valid URL".to_owned())?;
    if uri.host().is_none_or(str::is_empty) {
        return Err("its Location has no host".into());
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("its Location carries credentials".into());
    }
    Ok(uri.to_string())
}

/// Whether a hop from `from` to `to` (both absolute http(s) URLs) keeps the store's promises;
/// `store` is the store's own base URL.
pub(crate) fn check(store: &str, from: &str, to: &str) -> Result<(), String> {
    let parse = |u: &str| u.parse::<Uri>().map_err(|_| format!("{u} is not a URL"));
    let (store, from, to) = (parse(store)?, parse(from)?, parse(to)?);
    if from.scheme_str() == Some("https") && to.scheme_str() != Some("https") {
        return Err(
            "it would leave HTTPS for plain HTTP (an https store is only ever read over https)"
                .into(),
        );
    }
    let store_host = store.host().unwrap_or_default();
    let to_host = to.host().unwrap_or_default();
    if is_local(to_host) && !is_local(store_host) {
        return Err(format!(
            "it leads to {to_host}, an address of this machine or its link, from a store on another host"
        ));
    }
    Ok(())
}

/// `scheme` of `scheme:rest`, when `s` starts with one (RFC 3986: a letter, then letters,
/// digits, `+`, `-`, `.`).
fn scheme_of(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

/// RFC 3986 5.2.4: `.` and `..` segments resolved; `..` never climbs above the root.
fn remove_dot_segments(path: &str) -> String {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut joined = format!("/{}", out.join("/"));
    if let Some(q) = query {
        joined.push('?');
        joined.push_str(q);
    }
    joined
}

/// This machine or its link: `localhost`, loopback, link-local and unspecified addresses (also
/// IPv4 ones written as IPv6).
fn is_local(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lower = host.to_ascii_lowercase();
    let lower = lower.trim_end_matches('.');
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => local_v4(v4),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => local_v4(v4),
            None => local_v6(v6),
        },
        Err(_) => false,
    }
}

fn local_v4(ip: Ipv4Addr) -> bool {
    ip.is_loopback() || ip.is_link_local() || ip.octets()[0] == 0
}

fn local_v6(ip: Ipv6Addr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || (ip.segments()[0] & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_request() {
        let from = "https://cdn.example.com/store/v1/snaps/hello.json";
        let table: &[(&str, Result<&str, &str>)] = &[
            (
                "https://edge.example.net/x/hello.json",
                Ok("https://edge.example.net/x/hello.json"),
            ),
            (
                "HTTPS://edge.example.net:8443/x",
                Ok("https://edge.example.net:8443/x"),
            ),
            ("//edge.example.net/y", Ok("https://edge.example.net/y")),
            (
                "/other/hello.json",
                Ok("https://cdn.example.com/other/hello.json"),
            ),
            (
                "hello2.json",
                Ok("https://cdn.example.com/store/v1/snaps/hello2.json"),
            ),
            (
                "../../blobs/a.snap",
                Ok("https://cdn.example.com/store/blobs/a.snap"),
            ),
            (
                "/../../../etc/passwd",
                Ok("https://cdn.example.com/etc/passwd"),
            ),
            ("/a.json#frag", Ok("https://cdn.example.com/a.json")),
            ("/a.json?sig=1", Ok("https://cdn.example.com/a.json?sig=1")),
            (
                "http://plain.example.com/a",
                Ok("http://plain.example.com/a"),
            ),
            ("file:///etc/passwd", Err("another scheme (\"file\")")),
            ("FTP://x/y", Err("another scheme (\"FTP\")")),
            ("javascript:alert(1)", Err("another scheme")),
            ("", Err("empty")),
            ("#only", Err("empty")),
            ("https://user:pw@evil.example/a", Err("credentials")),
            ("https:///nohost", Err("")),
            ("https://exa mple.com/", Err("not a valid URL")),
        ];
        for (location, want) in table {
            let got = resolve(from, location);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{location}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{location}: {g}"),
                _ => panic!("{location}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn redirects_keep_https_and_stay_off_this_machine() {
        let s = "https://store.example.com";
        let table: &[(&str, &str, &str, Option<&str>)] = &[
            // A CDN on another host, over HTTPS: fine.
            (s, s, "https://cdn.example.net/a", None),
            (s, s, "https://store.example.com:8443/a", None),
            // Downgrades, at any hop.
            (s, s, "http://store.example.com/a", Some("plain HTTP")),
            (
                s,
                "https://cdn.example.net/a",
                "http://cdn.example.net/b",
                Some("plain HTTP"),
            ),
            // A plain store may go to HTTPS, or stay plain.
            (
                "http://s.example.com",
                "http://s.example.com",
                "https://s.example.com/a",
                None,
            ),
            (
                "http://s.example.com",
                "http://s.example.com",
                "http://m.example.com/a",
                None,
            ),
            // Towards this machine or its link from elsewhere: refused.
            (s, s, "https://127.0.0.1/a", Some("127.0.0.1")),
            (s, s, "https://127.8.9.1:9/a", Some("this machine")),
            (s, s, "https://localhost/a", Some("this machine")),
            (s, s, "https://a.localhost./a", Some("this machine")),
            (s, s, "https://[::1]:8080/a", Some("this machine")),
            (s, s, "https://[::ffff:127.0.0.1]/a", Some("this machine")),
            (s, s, "https://169.254.169.254/latest", Some("this machine")),
            (s, s, "https://[fe80::1]/a", Some("this machine")),
            (s, s, "https://0.0.0.0/a", Some("this machine")),
            // A store on this machine may redirect on it.
            (
                "https://127.0.0.1:8443",
                "https://127.0.0.1:8443",
                "https://localhost:9443/a",
                None,
            ),
            (
                "http://[::1]:80",
                "http://[::1]:80",
                "http://127.0.0.1:81/a",
                None,
            ),
        ];
        for (store, from, to, want) in table {
            let got = check(store, from, to);
            match (want, &got) {
                (None, Ok(())) => {}
                (Some(w), Err(g)) => assert!(g.contains(w), "{from} -> {to}: {g}"),
                _ => panic!("{from} -> {to}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn only_real_redirects_are_followed() {
        for s in [301, 302, 303, 307, 308] {
            assert!(is_redirect(s));
        }
        for s in [200, 206, 300, 304, 305, 404] {
            assert!(!is_redirect(s));
        }
    }
}
