//! `switchboard simulate twilio-sms`: post an inbound SMS to a Switchboard exactly as Twilio
//! would (same form fields, same `X-Twilio-Signature`), to try a setup without a phone; and
//! `switchboard simulate email` ([`email`]), a mail by any of the e-mail routes.

pub mod email;
mod smtp;

use anyhow::Context;

use crate::channels::twilio::signature::{self, Algorithm};
use crate::channels::twilio::INBOUND_PATH as TWILIO_INBOUND_PATH;

/// What to send (also the command's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatedSms {
    /// The Switchboard to post to [default: the configured `listen` address, on loopback when
    /// it listens on every interface].
    #[arg(long)]
    pub server: Option<String>,
    /// The public URL Twilio calls, when Switchboard checks signatures against one
    /// [default: the configured `public_url`].
    #[arg(long)]
    pub public_url: Option<String>,
    #[arg(long)]
    pub account_sid: String,
    #[arg(long)]
    pub auth_token: String,
    /// The sender (the customer), E.164.
    #[arg(long)]
    pub from: String,
    /// Your Twilio number, E.164.
    #[arg(long)]
    pub to: String,
    #[arg(long, default_value = "Hello from the simulator")]
    pub body: String,
    /// A media URL (repeat for several).
    #[arg(long)]
    pub media: Vec<String>,
}

/// The URL to reach a server listening on `listen` from this machine: an address that means
/// "every interface" becomes the loopback address of its family.
pub fn local_url(listen: &str) -> String {
    format!("http://{}", local_addr(listen))
}

/// A listen address as a client reaches it: host:port, on loopback when it is every
/// interface.
pub fn local_addr(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(mut addr) => {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            addr.to_string()
        }
        Err(_) => listen.to_owned(),
    }
}

/// Post it and return the HTTP status and response body. Without `server`, it goes to the
/// default listen address.
pub async fn twilio_sms(sms: &SimulatedSms) -> anyhow::Result<(u16, String)> {
    let message_sid = format!("SM{}", hex_id());
    let media_count = sms.media.len().to_string();
    let mut params: Vec<(String, String)> = vec![
        ("MessageSid".into(), message_sid.clone()),
        ("SmsMessageSid".into(), message_sid.clone()),
        ("SmsSid".into(), message_sid),
        ("AccountSid".into(), sms.account_sid.clone()),
        ("From".into(), sms.from.clone()),
        ("To".into(), sms.to.clone()),
        ("Body".into(), sms.body.clone()),
        ("NumMedia".into(), media_count),
        ("NumSegments".into(), "1".into()),
        ("SmsStatus".into(), "received".into()),
        ("ApiVersion".into(), "2010-04-01".into()),
    ];
    for (i, url) in sms.media.iter().enumerate() {
        params.push((format!("MediaUrl{i}"), url.clone()));
    }
    let server = sms
        .server
        .clone()
        .unwrap_or_else(|| local_url(&crate::config::Config::defaults().listen));
    let target = format!("{}{}", server.trim_end_matches('/'), TWILIO_INBOUND_PATH);
    let signed_url = match &sms.public_url {
        Some(public) => format!("{}{}", public.trim_end_matches('/'), TWILIO_INBOUND_PATH),
        None => target.clone(),
    };
    let sig = signature::sign(
        Algorithm::HmacSha1,
        sms.auth_token.as_bytes(),
        &signed_url,
        &params,
    );
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    let response = reqwest::Client::new()
        .post(&target)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", sig)
        .body(body)
        .send()
        .await
        .with_context(|| format!("posting to {target}"))?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.unwrap_or_default()))
}

/// 32 random hexadecimal digits: the part of a Twilio SID after its two letters.
pub(crate) fn hex_id() -> String {
    (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::local_url;

    #[test]
    fn every_interface_is_reached_on_loopback() {
        assert_eq!(local_url("0.0.0.0:9000"), "http://127.0.0.1:9000");
        assert_eq!(local_url("[::]:9000"), "http://[::1]:9000");
        assert_eq!(local_url("10.1.2.3:80"), "http://10.1.2.3:80");
        assert_eq!(local_url("localhost:8080"), "http://localhost:8080");
    }
}
