//! The URL a provider signed, rebuilt so that an outsider cannot shape it. Provider signatures
//! cover the URL the provider called, and some run the URL and the parameters together
//! with no separator: a `Host` holding `/` or `?` would move that boundary and let a signature
//! made for another URL verify. So `Host` must be a plain authority (`host[:port]`, RFC 3986)
//! on every request, and `X-Forwarded-Proto` / `X-Forwarded-Host` count only from the proxies
//! the operator trusts.

use std::net::{IpAddr, SocketAddr};

use axum::extract::Request;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::serve::ClientAddr;

/// Whether `s` is `host[:port]`: a DNS name or IPv4 address of letters, digits, `-`, `.` and
/// `_`, or a bracketed IPv6 address; a port of 1–5 digits up to 65535. No user info, no path,
/// no percent-encoding, no space.
pub fn valid_authority(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("v6", Some(port)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65535)
    });
    host_ok && port_ok
}

/// Middleware: a request whose `Host` is not a plain authority is a 400, before any route.
pub async fn require_valid_host(request: Request, next: Next) -> Response {
    if let Some(host) = request.headers().get(header::HOST) {
        let ok = host.to_str().is_ok_and(valid_authority);
        if !ok {
            return ApiError::bad_request("invalid_host", "the Host header must be host[:port]")
                .into_response();
        }
    }
    next.run(request).await
}

/// The proxies whose `X-Forwarded-*` headers count.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    pub fn trusts(&self, peer: Option<SocketAddr>) -> bool {
        let Some(peer) = peer else { return false };
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The URL the provider called: the configured public URL, or one rebuilt from `Host` (and,
/// from a trusted proxy only, `X-Forwarded-Proto` and `X-Forwarded-Host`), followed by the
/// path and query exactly as received.
pub fn public_url(
    configured: Option<&str>,
    proxies: &TrustedProxies,
    peer: Option<&ClientAddr>,
    headers: &HeaderMap,
    path_and_query: &str,
) -> Result<String, ApiError> {
    if let Some(base) = configured {
        return Ok(format!("{}{}", base.trim_end_matches('/'), path_and_query));
    }
    // A proxy appends what it saw to what the client sent (`client-value, proxy-value`, or a
    // header line of its own after the client's): only the last value is the trusted proxy's.
    let forwarded = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .next_back()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.rsplit(',').next())
            .map(str::trim)
    };
    let trusted = proxies.trusts(peer.map(|p| p.0));
    let forwarded_host = if trusted {
        forwarded("x-forwarded-host")
    } else {
        None
    };
    let host = forwarded_host
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_host",
                "no Host header, and no public_url is configured to check signatures against",
            )
        })?;
    if !valid_authority(host) {
        return Err(ApiError::bad_request(
            "invalid_host",
            "the Host (or a trusted proxy's X-Forwarded-Host) must be host[:port]",
        ));
    }
    let proto = if trusted {
        forwarded("x-forwarded-proto")
            .filter(|p| matches!(*p, "http" | "https"))
            .unwrap_or("http")
    } else {
        "http"
    };
    Ok(format!("{proto}://{host}{path_and_query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_authorities_are_hosts() {
        for good in [
            "sb.example.com",
            "sb.example.com:8443",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:8080",
            "localhost",
            "under_score.example",
        ] {
            assert!(valid_authority(good), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "a?b",
            "a b",
            "a#b",
            "user@host",
            "host:",
            "host:99999",
            "host:8x",
            "[::1",
            "[nothost]:80",
            "[::1]x",
            "a%2Fb",
            "a\tb",
            "a:1:2",
        ] {
            assert!(!valid_authority(bad), "{bad}");
        }
    }

    #[test]
    fn url_comes_from_config_or_headers_and_forwarded_headers_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "sb.example.com:8443".parse().unwrap());
        headers.insert("x-forwarded-proto", "http, https".parse().unwrap());
        headers.insert("x-forwarded-host", "public.example.com".parse().unwrap());
        let none = TrustedProxies::default();
        let proxy = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let from = |ip: &str| ClientAddr(format!("{ip}:5000").parse().unwrap());
        assert_eq!(
            public_url(
                Some("https://hooks.example.com/"),
                &none,
                None,
                &headers,
                "/p?q=1"
            )
            .unwrap(),
            "https://hooks.example.com/p?q=1"
        );
        // An outsider's forwarded headers are ignored.
        assert_eq!(
            public_url(None, &proxy, Some(&from("203.0.113.9")), &headers, "/p").unwrap(),
            "http://sb.example.com:8443/p"
        );
        // A trusted proxy's count.
        assert_eq!(
            public_url(None, &proxy, Some(&from("10.1.2.3")), &headers, "/p").unwrap(),
            "https://public.example.com/p"
        );
        // Behind a proxy that appends, the client's own values come first and do not count.
        let mut appended = headers.clone();
        appended.insert(
            "x-forwarded-host",
            "evil.example, public.example.com".parse().unwrap(),
        );
        appended.insert("x-forwarded-proto", "https, http".parse().unwrap());
        appended.append("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(
            public_url(None, &proxy, Some(&from("10.1.2.3")), &appended, "/p").unwrap(),
            "https://public.example.com/p"
        );
        headers.insert("x-forwarded-host", "a/b".parse().unwrap());
        assert!(public_url(None, &proxy, Some(&from("10.1.2.3")), &headers, "/p").is_err());
        assert!(public_url(None, &none, None, &HeaderMap::new(), "/p").is_err());
    }
}
