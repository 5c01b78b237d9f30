//! Sender authentication for mail that reaches Switchboard directly: SPF for the connecting
//! address and the envelope sender, DKIM for the mail's signatures, and DMARC for the `From`
//! domain, computed with `mail-auth` (the Stalwart mail server's, Apache-2.0 OR MIT) against
//! the DNS servers the configuration names (the system's by default). The verdicts go into the
//! event's `authentication` as RFC 8601 result words (`pass`, `fail`, `softfail`, `neutral`,
//! `none`, `temperror`, `permerror`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, DkimResult, DmarcResult, MessageAuthenticator, SpfResult};

/// DKIM signatures of one mail checked at most (the first ones).
const MAX_SIGNATURES: usize = 5;

/// How long one mail's lookups may take in all; past it the verdicts are `temperror`.
const LOOKUPS_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Authenticator {
    inner: MessageAuthenticator,
    /// This server's name (SPF's `%{r}`).
    hostname: String,
}

/// One mail's verdicts.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// `spf`, `dkim`, `dmarc`.
    pub results: BTreeMap<String, String>,
    /// DMARC failed and the `From` domain's policy says reject.
    pub dmarc_rejects: bool,
}

/// Where a mail came from, as the SMTP conversation told it.
pub struct Envelope<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    /// The `MAIL FROM` address; empty for a bounce (`<>`).
    pub mail_from: &'a str,
}

impl Authenticator {
    /// Resolving through `servers` (UDP, then TCP for long answers), or the system's resolvers
    /// (`/etc/resolv.conf`) when none are given.
    pub fn new(servers: &[SocketAddr], hostname: &str) -> anyhow::Result<Authenticator> {
        let (config, mut options) = if servers.is_empty() {
            mail_auth::hickory_resolver::system_conf::read_system_conf().context(
                "reading the system's DNS configuration (for SPF, DKIM and DMARC) failed; set smtp_dns_servers",
            )?
        } else {
            let mut group = NameServerConfigGroup::with_capacity(servers.len() * 2);
            for server in servers {
                group.push(NameServerConfig::new(*server, ProtocolConfig::Udp));
                group.push(NameServerConfig::new(*server, ProtocolConfig::Tcp));
            }
            (
                ResolverConfig::from_parts(None, vec![], group),
                ResolverOpts::default(),
            )
        };
        options.timeout = Duration::from_secs(5);
        options.attempts = 2;
        let inner = MessageAuthenticator::new(config, options)
            .context("setting up the DNS resolver for SPF, DKIM and DMARC")?;
        Ok(Authenticator {
            inner,
            hostname: hostname.to_owned(),
        })
    }

    /// The verdicts for `raw`, received as `envelope` says.
    pub async fn verify(&self, raw: &[u8], envelope: &Envelope<'_>) -> Verdicts {
        match tokio::time::timeout(LOOKUPS_TIMEOUT, self.lookups(raw, envelope)).await {
            Ok(verdicts) => verdicts,
            Err(_) => Verdicts {
                results: ["spf", "dkim", "dmarc"]
                    .into_iter()
                    .map(|k| (k.to_owned(), "temperror".to_owned()))
                    .collect(),
                dmarc_rejects: false,
            },
        }
    }

    async fn lookups(&self, raw: &[u8], envelope: &Envelope<'_>) -> Verdicts {
        let Some(mut message) = AuthenticatedMessage::parse(raw) else {
            return Verdicts::default();
        };
        // Each signature costs hashing and an RSA check: a mail may not make us do that
        // thousands of times.
        message.dkim_headers.truncate(MAX_SIGNATURES);
        // Domains compare in lower case (mail-auth lower-cases the From and d= domains).
        let helo = envelope.helo.to_ascii_lowercase();
        // A bounce has no envelope sender: SPF checks the HELO name (RFC 7208 §2.4).
        let sender = if envelope.mail_from.is_empty() {
            format!("postmaster@{helo}")
        } else {
            envelope.mail_from.to_ascii_lowercase()
        };
        let sender = sender.as_str();
        let helo = helo.as_str();
        let spf = self
            .inner
            .verify_spf(SpfParameters::verify_mail_from(
                envelope.ip,
                helo,
                &self.hostname,
                sender,
            ))
            .await;
        let dkim = self.inner.verify_dkim(&message).await;
        let mail_from_domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d);
        let dmarc = self
            .inner
            .verify_dmarc(
                DmarcParameters::new(&message, &dkim, mail_from_domain, &spf)
                    .with_domain_suffix_fn(organizational_domain),
            )
            .await;
        let dmarc_result = dmarc_word(&dmarc);
        let mut results = BTreeMap::new();
        results.insert("spf".to_owned(), spf_word(spf.result()).to_owned());
        results.insert(
            "dkim".to_owned(),
            dkim_word(dkim.iter().map(|d| d.result())),
        );
        results.insert("dmarc".to_owned(), dmarc_result.to_owned());
        Verdicts {
            results,
            dmarc_rejects: dmarc_result == "fail" && dmarc.policy() == Policy::Reject,
        }
    }
}

fn spf_word(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// Of all the mail's signatures: `pass` when one passes, else the first other verdict
/// (`none` without a signature). A body that does not match its signature's hash is `fail`
/// (RFC 6376 §6.1.3: PERMFAIL), where `mail-auth` says neutral.
fn dkim_word<'a>(results: impl Iterator<Item = &'a DkimResult>) -> String {
    let mut first = None;
    for result in results {
        let word = match result {
            DkimResult::Pass => return "pass".to_owned(),
            DkimResult::Fail(_) => "fail",
            DkimResult::Neutral(mail_auth::Error::FailedBodyHashMatch) => "fail",
            DkimResult::Neutral(_) => "neutral",
            DkimResult::TempError(_) => "temperror",
            DkimResult::PermError(_) => "permerror",
            DkimResult::None => "none",
        };
        first.get_or_insert(word);
    }
    first.unwrap_or("none").to_owned()
}

/// DMARC passes when the aligned SPF or DKIM result does; `none` when the `From` domain
/// publishes no policy; `fail` when it does and neither passes aligned (`mail-auth` leaves
/// both results `None` when neither SPF nor DKIM passed at all).
fn dmarc_word(output: &mail_auth::DmarcOutput) -> &'static str {
    let results = [output.spf_result(), output.dkim_result()];
    if results.iter().any(|r| matches!(r, DmarcResult::Pass)) {
        "pass"
    } else if results
        .iter()
        .any(|r| matches!(r, DmarcResult::TempError(_)))
    {
        "temperror"
    } else if results
        .iter()
        .any(|r| matches!(r, DmarcResult::PermError(_)))
    {
        "permerror"
    } else if output.dmarc_record().is_none() {
        "none"
    } else {
        "fail"
    }
}

/// The organizational domain (RFC 7489 §3.2) for relaxed alignment: the registrable domain
/// by the Public Suffix List (`example.co.uk`, `victim.eu.org`); the domain itself when it
/// has none (a public suffix, a name the list does not know).
fn organizational_domain(domain: &str) -> &str {
    psl::domain_str(domain).unwrap_or(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organizational_domains() {
        for (domain, org) in [
            ("example.com", "example.com"),
            ("mail.example.com", "example.com"),
            ("a.b.example.com", "example.com"),
            ("mail.example.co.uk", "example.co.uk"),
            ("example.co.uk", "example.co.uk"),
            ("shop.example.com.au", "example.com.au"),
            ("mail.example.de", "example.de"),
            ("attacker.eu.org", "attacker.eu.org"),
            ("mail.victim.eu.org", "victim.eu.org"),
            ("com", "com"),
        ] {
            assert_eq!(organizational_domain(domain), org, "{domain}");
        }
    }

    #[test]
    fn dkim_passes_when_one_signature_passes() {
        let fail = DkimResult::Fail(mail_auth::Error::FailedVerification);
        let body = DkimResult::Neutral(mail_auth::Error::FailedBodyHashMatch);
        assert_eq!(dkim_word([&fail, &DkimResult::Pass].into_iter()), "pass");
        assert_eq!(dkim_word([&fail].into_iter()), "fail");
        assert_eq!(dkim_word([&body].into_iter()), "fail");
        assert_eq!(dkim_word(std::iter::empty()), "none");
    }
}
