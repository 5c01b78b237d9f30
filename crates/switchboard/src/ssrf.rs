//! Keeping webhook targets off private networks. Addresses are checked after DNS resolution,
//! inside the HTTP client's resolver, so the connection goes only to an address that passed;
//! IP literals in URLs are checked before sending; targets are also checked when a webhook is
//! created. `allow_private_targets` lifts all of it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether a subscriber at this address would reach something other than the public internet.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes 169.254.169.254, the cloud metadata service
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let seg = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (fd00:ec2::254 metadata too)
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] == 0x64 && seg[1] == 0xff9b) // NAT64: may reach any IPv4 network
        || (seg[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
}

/// Why a URL may not be used as a webhook target, checking only what needs no DNS.
pub fn check_url_shape(url: &str) -> Result<(reqwest::Url, Option<IpAddr>), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https", parsed.scheme()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not allowed".into());
    }
    let literal = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
        None => return Err("the URL has no host".into()),
    };
    Ok((parsed, literal))
}

/// The check made at delivery time for IP literals (host names go through [`GuardedResolver`]).
pub fn check_literal(url: &str, allow_private: bool) -> Result<(), String> {
    let (_, literal) = check_url_shape(url)?;
    match literal {
        Some(ip) if !allow_private && is_forbidden(ip) => Err(format!(
            "{ip} is a loopback, private, link-local or otherwise non-public address"
        )),
        _ => Ok(()),
    }
}

/// Why a webhook target was refused at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Not an http(s) URL, or an address that is not public.
    Forbidden(String),
    /// The host name does not resolve now.
    Unresolvable(String),
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetError::Forbidden(m) | TargetError::Unresolvable(m) => f.write_str(m),
        }
    }
}

/// The check made when a webhook is created: the URL's shape, and every address its host
/// resolves to now.
pub async fn check_target(url: &str, allow_private: bool) -> Result<(), TargetError> {
    use TargetError::{Forbidden, Unresolvable};
    check_literal(url, allow_private).map_err(Forbidden)?;
    if allow_private {
        return Ok(());
    }
    let (parsed, literal) = check_url_shape(url).map_err(Forbidden)?;
    if literal.is_some() {
        return Ok(());
    }
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let lookup = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .map_err(|_| Unresolvable(format!("resolving {host} timed out")))?
    .map_err(|e| Unresolvable(format!("cannot resolve {host}: {e}")))?;
    let addrs: Vec<SocketAddr> = lookup.collect();
    match addrs.iter().find(|a| is_forbidden(a.ip())) {
        Some(bad) => Err(Forbidden(format!(
            "{host} resolves to {}, a loopback, private, link-local or otherwise non-public address",
            bad.ip()
        ))),
        None if addrs.is_empty() => Err(Unresolvable(format!("{host} resolves to no address"))),
        None => Ok(()),
    }
}

/// DNS for the delivery client: resolves with the system resolver and keeps only public
/// addresses, so the client connects to an address that was checked.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = addrs.filter(|a| !is_forbidden(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{host} resolves only to non-public addresses (set allow_private_targets to allow)"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_public_addresses() {
        for bad in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "93.184.215.14",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_forbidden(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn literal_urls_are_checked() {
        assert!(check_literal("http://127.0.0.1:9/x", false).is_err());
        assert!(check_literal("http://[::ffff:127.0.0.1]/x", false).is_err());
        assert!(check_literal("http://169.254.169.254/latest/meta-data", false).is_err());
        assert!(check_literal("http://127.0.0.1:9/x", true).is_ok());
        assert!(check_literal("https://8.8.8.8/x", false).is_ok());
        assert!(check_literal("ftp://8.8.8.8/x", true).is_err());
        assert!(check_literal("https://user:pw@8.8.8.8/x", true).is_err());
    }

    #[tokio::test]
    async fn host_names_are_checked_after_resolution() {
        let err = check_target("http://localhost:8080/hook", false)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TargetError::Forbidden(m) if m.contains("non-public")),
            "{err}"
        );
        let err = check_target("http://no-such-host.invalid/hook", false)
            .await
            .unwrap_err();
        assert!(matches!(err, TargetError::Unresolvable(_)), "{err}");
        assert!(check_target("http://localhost:8080/hook", true)
            .await
            .is_ok());
        let refused = GuardedResolver
            .resolve(Name::from_str("localhost").unwrap())
            .await;
        assert!(refused.is_err());
    }

    use std::str::FromStr;
}
