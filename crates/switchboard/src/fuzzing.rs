//! Entry points for the fuzz targets in `fuzz/` (and their regression test): each runs one
//! parser an outsider reaches on arbitrary input and checks what must hold. Not an API.

use axum::http::{header, HeaderMap, HeaderValue};
use bytes::Bytes;

use crate::channels::twilio::signature::{self, Algorithm};
use crate::channels::twilio::{
    TwilioMessaging, VoiceDialStatus, VoiceIncoming, VoiceRecording, VoiceStatus,
};
use crate::channels::{Channel, ChannelAccount, ProviderRequest};

const URL: &str = "https://hooks.example.com/conversations/providers/twilio/inbound_message";
const TOKEN: &str = "fuzz_auth_token_0123456789abcdef";

fn account() -> ChannelAccount {
    ChannelAccount {
        location_id: "L".into(),
        account_id: "AC33333333333333333333333333333333".into(),
        secret: TOKEN.into(),
        settings: serde_json::json!({ "signingKeys": { "KS1": "fuzz-shared-key-0123" } }),
    }
}

/// Split fuzz input at the first `\n`: (a header value, the rest).
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[], data),
    }
}

fn run<C: Channel>(req: &ProviderRequest) {
    let Ok(parsed) = C::parse(req) else { return };
    let _ = C::route(&parsed);
    let verified = C::verify(req, &parsed, &account());
    let _ = C::handle(req, parsed, &account(), 0);
    // Only a request signed with the account's secret verifies.
    if verified.is_ok() {
        let params: Vec<(String, String)> = form_urlencoded::parse(&req.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let settings = req.header("x-twilio-webhooks-signature-settings");
        let (algorithm, key) = Algorithm::from_settings_header(settings).expect("it verified");
        let secret = match key.as_deref() {
            Some("KS1") => "fuzz-shared-key-0123",
            _ => TOKEN,
        };
        assert_eq!(
            req.header("x-twilio-signature"),
            Some(signature::sign(algorithm, secret.as_bytes(), URL, &params).as_str())
        );
    }
}

/// A Twilio form body (after a first line: the `X-Twilio-Signature`), through every Twilio
/// channel: parse, route, verify, handle. Nothing may panic; only a valid signature verifies.
pub fn twilio_form(data: &[u8]) {
    let (signature_line, body) = split(data);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    if let Ok(v) = HeaderValue::from_bytes(signature_line) {
        headers.insert("x-twilio-signature", v);
    }
    // A signature made with the right secret over the body, so verification and the
    // handlers after it are reached too.
    let params: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let good = signature::sign(Algorithm::HmacSha1, TOKEN.as_bytes(), URL, &params);
    for signature in [
        headers.get("x-twilio-signature").cloned(),
        HeaderValue::from_str(&good).ok(),
    ] {
        let mut headers = headers.clone();
        if let Some(v) = signature {
            headers.insert("x-twilio-signature", v);
        }
        let req = ProviderRequest {
            url: URL.into(),
            headers,
            body: Bytes::copy_from_slice(body),
            received_at_ms: 0,
        };
        run::<TwilioMessaging>(&req);
        run::<VoiceIncoming>(&req);
        run::<VoiceDialStatus>(&req);
        run::<VoiceStatus>(&req);
        run::<VoiceRecording>(&req);
    }
}

/// The signature check itself: a URL (first line), a settings header (second line) and form
/// parameters. Nothing may panic; what `sign` makes, `verify_form` accepts.
pub fn twilio_signature(data: &[u8]) {
    let (url, rest) = split(data);
    let (settings, body) = split(rest);
    let url = String::from_utf8_lossy(url);
    let settings = std::str::from_utf8(settings).ok();
    let params: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let Ok((algorithm, _)) = Algorithm::from_settings_header(settings) else {
        return;
    };
    let made = signature::sign(algorithm, TOKEN.as_bytes(), &url, &params);
    assert!(signature::verify_form(
        algorithm,
        TOKEN.as_bytes(),
        &url,
        &params,
        &made
    ));
    let _ = signature::verify_form(
        algorithm,
        TOKEN.as_bytes(),
        &url,
        &params,
        &String::from_utf8_lossy(body),
    );
}

/// A request's `Host` (and a forwarded host): what passes as an authority never carries a
/// path, query, fragment, user info or space into the URL a signature is checked against.
pub fn http_host(data: &[u8]) {
    let (host, forwarded) = split(data);
    let Ok(host) = std::str::from_utf8(host) else {
        return;
    };
    if crate::routes::host::valid_authority(host) {
        assert!(
            !host.contains(['/', '?', '#', '@', ' ', '\\', '%']),
            "{host:?} passed as an authority"
        );
    }
    let mut headers = HeaderMap::new();
    for (name, value) in [("host", host.as_bytes()), ("x-forwarded-host", forwarded)] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(name, v);
        }
    }
    let proxies = crate::routes::host::TrustedProxies(vec!["127.0.0.0/8".parse().unwrap()]);
    let peer = crate::serve::ClientAddr("127.0.0.1:9".parse().unwrap());
    if let Ok(url) = crate::routes::host::public_url(None, &proxies, Some(&peer), &headers, "/p?q")
    {
        // scheme://authority/p?q, the authority free of every delimiter.
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .expect("http or https");
        let authority = rest
            .strip_suffix("/p?q")
            .expect("the path and query as given");
        assert!(
            !authority.is_empty() && !authority.contains(['/', '?', '#', '@', ' ', '\\', '%']),
            "{url}"
        );
    }
}

/// A JSON body of the API as each input type: decoded, or refused with a 4xx.
pub fn api_json(data: &[u8]) {
    use crate::error::ApiError;
    use crate::routes::decode_json;
    fn check<T: serde::de::DeserializeOwned>(data: &[u8]) {
        if let Err(e) = decode_json::<T>(data) {
            assert!(matches!(e, ApiError::Client { .. }), "{e}");
        }
    }
    check::<crate::routes::admin::CreateLocation>(data);
    // Every channel's settings, as its configuration API reads them.
    for channel in crate::channels::CHANNELS {
        if let Err(e) = channel.configure(data) {
            assert!(matches!(e, ApiError::Client { .. }), "{e}");
        }
    }
    check::<crate::routes::webhooks::WebhookSettings>(data);
    check::<crate::routes::webhooks::Rotate>(data);
    check::<crate::routes::webhooks::Replay>(data);
}

/// A mail (or a service's post of one) through every e-mail route, as each content type those
/// routes take: parse, route, verify, handle. Nothing may panic; every text of the message is
/// free of NUL (the databases refuse it); a mail that is read has a From address.
pub fn email_mail(data: &[u8]) {
    use crate::channels::email::{Mailgun, Postmark, RawMime, SendGrid};
    use crate::domain::Fact;
    fn run_mail<C: Channel>(req: &ProviderRequest, account: &ChannelAccount) {
        let Ok(parsed) = C::parse(req) else { return };
        let _ = C::route(&parsed);
        let _ = C::verify(req, &parsed, account);
        let Ok(handled) = C::handle(req, parsed, account, 0) else {
            return;
        };
        for fact in handled.facts {
            let Fact::Message(m) = fact else { continue };
            let email = m
                .email
                .as_ref()
                .expect("a mail's message has its e-mail fields");
            for text in [
                m.body.as_deref().unwrap_or_default(),
                m.from.as_deref().unwrap_or_default(),
                m.contact_name.as_deref().unwrap_or_default(),
                email.subject.as_deref().unwrap_or_default(),
                email.plain_text.as_str(),
                email.message_id.as_str(),
            ] {
                assert!(!text.contains('\0'), "{text:?}");
            }
            assert!(!email.message_id.is_empty());
            assert!(m.contact.value.contains('@'), "{:?}", m.contact);
        }
    }
    let account = ChannelAccount {
        location_id: "L".into(),
        account_id: "email".into(),
        secret: "fuzz-inbound-token-0123456789".into(),
        settings: serde_json::json!({ "mailgunSigningKey": "fuzz-mailgun-key-0123" }),
    };
    for content_type in [
        "message/rfc822",
        "multipart/form-data; boundary=B",
        "application/x-www-form-urlencoded",
        "application/json",
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer fuzz-inbound-token-0123456789"),
        );
        let req = ProviderRequest {
            url: "https://hooks.example.com/conversations/providers/email/inbound".into(),
            headers,
            body: Bytes::copy_from_slice(data),
            received_at_ms: 0,
        };
        run_mail::<RawMime>(&req, &account);
        run_mail::<Mailgun>(&req, &account);
        run_mail::<SendGrid>(&req, &account);
        run_mail::<Postmark>(&req, &account);
    }
}

/// Every input kept under `fuzz/regressions/<target>/` (and the seed corpus), replayed.
pub fn replay_dir(dir: &std::path::Path, target: fn(&[u8])) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries.flatten() {
        if let Ok(data) = std::fs::read(entry.path()) {
            target(&data);
            n += 1;
        }
    }
    n
}
