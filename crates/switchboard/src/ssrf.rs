//! Keeping webhook targets off private networks. Addresses are checked after DNS resolution,
//! inside the HTTP client's resolver, so the connection goes only to an address that passed;
//! IP literals in URLs are checked before sending; targets are also checked when a webhook is
//! created. `allow_private_targets` lifts all of it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

const NON_PUBLIC: &str = "loopback, private, link-local or otherwise non-public address";
/// What the operator can change when a target is refused for its address.
const PERMITTED_BY: &str =
    "the webhook's allowedNetworks, or allow_private_targets for the whole server, would permit it";
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
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && ip.octets()[2] == 99) // 6to4 relays
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
        || (seg[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated, still routed)
        || (seg[0] == 0x64 && seg[1] == 0xff9b) // NAT64: may reach any IPv4 network
        || seg[0] == 0x2002 // 6to4: carries an IPv4 address, private ones too
        || (seg[0] == 0x2001 && seg[1] == 0) // Teredo: tunnels to IPv4
        || (seg[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
        || (seg[..4] == [0, 0, 0, 0] && seg[4] == 0xffff && seg[5] == 0) // IPv4-translated
        || seg[..4] == [0x100, 0, 0, 0] // discard-only
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x2001 && seg[1] == 2 && seg[2] == 0) // benchmarking
}

/// The URL's shape (http or https, a host, no credentials) and its host when it is an IP literal.
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

/// Which addresses outbound requests may reach: public ones, plus private ones when the
/// operator allows them all or a webhook lists their network. Also the DNS the client uses,
/// so the connection goes only to an address that passed.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    pub allow_private: bool,
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// Host names answered from configuration before DNS (like curl's `--resolve`).
    pub overrides: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl TargetPolicy {
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private
            || !is_forbidden(ip)
            || self.allowed_networks.iter().any(|n| n.contains(&ip))
    }

    /// A policy for one webhook's allowlist.
    pub fn with_networks(&self, networks: &[ipnet::IpNet]) -> TargetPolicy {
        TargetPolicy {
            allowed_networks: networks.to_vec(),
            ..self.clone()
        }
    }

    fn refusal(ip: IpAddr) -> String {
        format!("{ip} is a {NON_PUBLIC} ({PERMITTED_BY})")
    }

    /// The check made at delivery time for IP literals (host names go through [`Resolve`]).
    pub fn check_literal(&self, url: &str) -> Result<reqwest::Url, String> {
        let (parsed, literal) = check_url_shape(url)?;
        match literal {
            Some(ip) if !self.permits(ip) => Err(Self::refusal(ip)),
            _ => Ok(parsed),
        }
    }

    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(ips) = self.overrides.get(host) {
            return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }

    /// The check made when a webhook is created: the URL's shape, and every address its host
    /// resolves to now.
    pub async fn check_target(&self, url: &str) -> Result<(), TargetError> {
        use TargetError::{Forbidden, Unresolvable};
        let (parsed, literal) = check_url_shape(url).map_err(Forbidden)?;
        if let Some(ip) = literal {
            return if self.permits(ip) {
                Ok(())
            } else {
                Err(Forbidden(Self::refusal(ip)))
            };
        }
        if self.allow_private {
            return Ok(());
        }
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs = tokio::time::timeout(Duration::from_secs(5), self.lookup(&host, port))
            .await
            .map_err(|_| Unresolvable(format!("resolving {host} timed out")))?
            .map_err(|e| Unresolvable(format!("cannot resolve {host}: {e}")))?;
        match addrs.iter().find(|a| !self.permits(a.ip())) {
            Some(bad) => Err(Forbidden(format!(
                "{host} resolves to {}, a {NON_PUBLIC} ({PERMITTED_BY})",
                bad.ip()
            ))),
            None if addrs.is_empty() => Err(Unresolvable(format!("{host} resolves to no address"))),
            None => Ok(()),
        }
    }

    /// An HTTP client that connects only where this policy permits. It ignores the proxy
    /// environment variables (`HTTP_PROXY`, `ALL_PROXY`, …): through a proxy, the target's
    /// name would be resolved and connected to by the proxy, past this check.
    pub fn client(&self, builder: reqwest::ClientBuilder) -> reqwest::Result<reqwest::Client> {
        builder
            .no_proxy()
            .dns_resolver(Arc::new(self.clone()))
            .build()
    }
}

/// The error the client's resolver gives for a host with no address the policy permits; a
/// failed attempt whose causes hold it is recorded as a `refused target`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RefusedTarget(pub String);

impl Resolve for TargetPolicy {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs = policy.lookup(&host, 0).await?;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(RefusedTarget(format!(
                    "{host} resolves only to non-public addresses ({PERMITTED_BY})"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
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
            "192.0.0.1",
            "192.88.99.1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "fec0::1",
            "::ffff:0:7f00:1",
            "100::1",
            "2001:2::1",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "93.184.215.14",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2001:4860:4860::8888",
            "192.0.1.1",
        ] {
            assert!(!is_forbidden(good.parse().unwrap()), "{good}");
        }
    }

    fn policy(allow_private: bool) -> TargetPolicy {
        TargetPolicy {
            allow_private,
            ..TargetPolicy::default()
        }
    }

    #[test]
    fn literal_urls_are_checked() {
        assert!(policy(false).check_literal("http://127.0.0.1:9/x").is_err());
        assert!(policy(false)
            .check_literal("http://[::ffff:127.0.0.1]/x")
            .is_err());
        assert!(policy(false)
            .check_literal("http://169.254.169.254/latest/meta-data")
            .is_err());
        assert!(policy(true).check_literal("http://127.0.0.1:9/x").is_ok());
        assert!(policy(false).check_literal("https://8.8.8.8/x").is_ok());
        assert!(policy(true).check_literal("ftp://8.8.8.8/x").is_err());
        assert!(policy(true)
            .check_literal("https://user:pw@8.8.8.8/x")
            .is_err());
        let lan = policy(false).with_networks(&["10.1.0.0/16".parse().unwrap()]);
        assert!(lan.check_literal("http://10.1.2.3/x").is_ok());
        assert!(lan.check_literal("http://10.2.0.1/x").is_err());
    }

    #[tokio::test]
    async fn host_names_are_checked_after_resolution() {
        let err = policy(false)
            .check_target("http://localhost:8080/hook")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TargetError::Forbidden(m) if m.contains("non-public")),
            "{err}"
        );
        let err = policy(false)
            .check_target("http://no-such-host.invalid/hook")
            .await
            .unwrap_err();
        assert!(matches!(err, TargetError::Unresolvable(_)), "{err}");
        assert!(policy(true)
            .check_target("http://localhost:8080/hook")
            .await
            .is_ok());
        assert!(policy(false)
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .is_err());

        // A name that resolves to a private address: refused, unless its network is allowed.
        let mut overrides = HashMap::new();
        overrides.insert(
            "hooks.internal".to_owned(),
            vec!["10.0.0.1".parse().unwrap()],
        );
        let internal = TargetPolicy {
            overrides: Arc::new(overrides),
            ..policy(false)
        };
        let err = internal
            .check_target("http://hooks.internal/x")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("10.0.0.1"), "{err}");
        assert!(internal
            .resolve(Name::from_str("hooks.internal").unwrap())
            .await
            .is_err());
        let allowed = internal.with_networks(&["10.0.0.0/8".parse().unwrap()]);
        assert!(allowed
            .check_target("http://hooks.internal/x")
            .await
            .is_ok());
        let addrs: Vec<SocketAddr> = allowed
            .resolve(Name::from_str("hooks.internal").unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, vec!["10.0.0.1:0".parse().unwrap()]);
    }

    use std::str::FromStr;
}
