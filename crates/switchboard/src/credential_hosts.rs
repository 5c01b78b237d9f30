//! Where a provider's credentials may be sent. A download made with a provider's secret (a
//! call recording fetched with the account's auth token) goes only to that provider's own
//! media hosts over HTTPS; any other URL a request names stays a plain link and is never
//! fetched with the secret. Each channel names its hosts; the operator may replace the list
//! (`[credential_hosts]` in the configuration: other regions, or a test's own server).

use std::collections::HashMap;

/// The allowed origins per provider: `https://api.example.com`, `https://*.example.com` (any
/// subdomain), `http://127.0.0.1:4567` (an explicit scheme and port, for tests).
#[derive(Debug, Clone, Default)]
pub struct CredentialHosts {
    configured: HashMap<String, Vec<String>>,
}

impl CredentialHosts {
    pub fn new(configured: HashMap<String, Vec<String>>) -> CredentialHosts {
        CredentialHosts { configured }
    }

    /// The origins `provider`'s credentials may go to.
    pub fn of(&self, provider: &str) -> Vec<String> {
        match self.configured.get(provider) {
            Some(list) => list.clone(),
            None => crate::channels::credential_hosts(provider)
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }

    /// Ok when `url` is on one of `provider`'s origins; else why not.
    pub fn check(&self, provider: &str, url: &str) -> Result<(), String> {
        let allowed = self.of(provider);
        let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if allowed.iter().any(|pattern| matches(pattern, &parsed)) {
            Ok(())
        } else {
            Err(format!(
                "{} is not one of {provider}'s media hosts ({}): never fetched with its credentials",
                origin(&parsed),
                allowed.join(", ")
            ))
        }
    }
}

fn origin(url: &url::Url) -> String {
    match url.port() {
        Some(port) => format!("{}://{}:{port}", url.scheme(), url.host_str().unwrap_or("")),
        None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or("")),
    }
}

/// Whether `url` is on the origin `pattern` (`scheme://host[:port]`, host maybe `*.suffix`).
fn matches(pattern: &str, url: &url::Url) -> bool {
    let Some((scheme, rest)) = pattern.split_once("://") else {
        return false;
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) => (h, Some(p)),
            Err(_) => return false,
        },
        None => (rest, None),
    };
    if !url.scheme().eq_ignore_ascii_case(scheme)
        || url.username() != ""
        || url.password().is_some()
    {
        return false;
    }
    let Some(url_host) = url.host_str() else {
        return false;
    };
    let url_host = url_host.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    let host_ok = match host.strip_prefix("*.") {
        Some(suffix) => url_host
            .strip_suffix(suffix)
            .is_some_and(|before| before.ends_with('.') && before.len() > 1),
        None => url_host == host,
    };
    host_ok
        && port.unwrap_or_else(|| default_port(scheme)) == url.port_or_known_default().unwrap_or(0)
}

fn default_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("http") {
        80
    } else {
        443
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> CredentialHosts {
        let mut configured = HashMap::new();
        configured.insert(
            "acme".to_owned(),
            vec![
                "https://api.acme.test".to_owned(),
                "https://*.acme.test".to_owned(),
            ],
        );
        CredentialHosts::new(configured)
    }

    #[test]
    fn only_the_listed_https_origins() {
        let hosts = acme();
        for ok in [
            "https://api.acme.test/2010-04-01/Accounts/AC1/Recordings/RE1.mp3",
            "https://api.dublin.ie1.acme.test/Recordings/RE1.mp3",
            "https://API.ACME.TEST:443/x",
        ] {
            assert_eq!(hosts.check("acme", ok), Ok(()), "{ok}");
        }
        for refused in [
            "http://api.acme.test/x",
            "https://api.acme.test.evil.test/x",
            "https://evilacme.test/x",
            "https://acme.test.evil.test/x",
            "https://api.acme.test:8443/x",
            "https://user:pass@api.acme.test/x",
            "https://127.0.0.1/x",
            "not a url",
        ] {
            assert!(hosts.check("acme", refused).is_err(), "{refused}");
        }
        // A provider without hosts sends its credentials nowhere.
        assert!(hosts.check("unknown", "https://api.acme.test/x").is_err());
        // An explicit scheme and port, as a test's own server has.
        let mut configured = HashMap::new();
        configured.insert("acme".to_owned(), vec!["http://127.0.0.1:4567".to_owned()]);
        let hosts = CredentialHosts::new(configured);
        assert_eq!(hosts.check("acme", "http://127.0.0.1:4567/r.mp3"), Ok(()));
        assert!(hosts.check("acme", "http://127.0.0.1:4568/r.mp3").is_err());
        assert!(hosts.check("acme", "https://api.acme.test/x").is_err());
    }
}
