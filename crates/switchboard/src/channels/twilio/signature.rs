//! `X-Twilio-Signature`, as twilio-python's `RequestValidator` computes it: base64 of
//! HMAC-SHA1 (or HMAC-SHA256 when a Webhook Rule says so) over the full URL followed by every
//! POST parameter sorted by name, `name` + `value` with no separators. The URL is accepted
//! with and without its port. JSON bodies carry `bodySHA256` in the query and sign the URL alone.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha1,
    HmacSha256,
}

impl Algorithm {
    /// From `X-Twilio-Webhooks-Signature-Settings: key=<id>,algorithm=HMAC_SHA256`; absent
    /// means HMAC-SHA1 with the auth token. Returns the algorithm and the key id, if any.
    pub fn from_settings_header(
        value: Option<&str>,
    ) -> Result<(Algorithm, Option<String>), String> {
        let Some(value) = value else {
            return Ok((Algorithm::HmacSha1, None));
        };
        let mut algorithm = None;
        let mut key = None;
        for part in value.split(',') {
            match part.trim().split_once('=') {
                Some(("algorithm", a)) => algorithm = Some(a.trim()),
                Some(("key", k)) => key = Some(k.trim().to_owned()),
                _ => {}
            }
        }
        let algorithm = match algorithm {
            None | Some("HMAC_SHA1") => Algorithm::HmacSha1,
            Some("HMAC_SHA256") => Algorithm::HmacSha256,
            Some(other) => return Err(format!("unsupported signature algorithm `{other}`")),
        };
        Ok((algorithm, key))
    }
}

/// The signature Twilio sends for `url` and the decoded form `params`.
pub fn sign(algorithm: Algorithm, key: &[u8], url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    // The official validator de-duplicates identical (name, value) pairs.
    sorted.dedup();
    match algorithm {
        Algorithm::HmacSha1 => {
            let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key");
            feed(&mut mac, url, &sorted);
            B64.encode(mac.finalize().into_bytes())
        }
        Algorithm::HmacSha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
            feed(&mut mac, url, &sorted);
            B64.encode(mac.finalize().into_bytes())
        }
    }
}

fn feed(mac: &mut impl Mac, url: &str, sorted: &[&(String, String)]) {
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
}

/// Whether `header` is the signature of a form request to `url` (tried with and without the port).
pub fn verify_form(
    algorithm: Algorithm,
    key: &[u8],
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> bool {
    url_variants(url)
        .iter()
        .any(|u| ct_eq(&sign(algorithm, key, u, params), header))
}

/// Whether a JSON request verifies: the query's `bodySHA256` is the hex SHA-256 of the raw body
/// and `header` signs the URL with no parameters.
pub fn verify_json(algorithm: Algorithm, key: &[u8], url: &str, body: &[u8], header: &str) -> bool {
    let Some(query) = url.split_once('?').map(|(_, q)| q) else {
        return false;
    };
    let Some(expected) = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v.into_owned())
    else {
        return false;
    };
    let actual = crate::domain::ids::hex(&Sha256::digest(body));
    ct_eq(&actual, &expected) && verify_form(algorithm, key, url, &[], header)
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The URL without and with its port (`:443`/`:80` when none is given), split by hand so the
/// path and query stay byte for byte as received.
pub fn url_variants(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_owned()];
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => authority.split_at(i + 1),
        None => ("", authority),
    };
    // A port follows the last ':' unless that ':' is inside an IPv6 literal.
    let (host, port) = match hostport.rfind(':') {
        Some(i) if !hostport[i..].contains(']') => (&hostport[..i], Some(&hostport[i + 1..])),
        _ => (hostport, None),
    };
    let port = match port {
        Some(p) => p.to_owned(),
        None => match scheme.to_ascii_lowercase().as_str() {
            "https" => "443".to_owned(),
            "http" => "80".to_owned(),
            _ => return vec![url.to_owned()],
        },
    };
    vec![
        format!("{scheme}://{userinfo}{host}{tail}"),
        format!("{scheme}://{userinfo}{host}:{port}{tail}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every Twilio vector in the research folder, computed with twilio-python's RequestValidator.
    fn vectors() -> Vec<Value> {
        let text = include_str!("../../../tests/data/vectors.json");
        let all: Value = serde_json::from_str(text).unwrap();
        all["twilio"].as_array().unwrap().clone()
    }

    fn params(v: &Value) -> Vec<(String, String)> {
        if let Some(list) = v.get("params_list") {
            return list
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
                .collect();
        }
        v["params"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect()
    }

    fn algorithm(v: &Value) -> Algorithm {
        if v["name"].as_str().unwrap().contains("hmac_sha256") {
            Algorithm::HmacSha256
        } else {
            Algorithm::HmacSha1
        }
    }

    #[test]
    fn every_vector_verifies_and_a_changed_byte_does_not() {
        let vectors = vectors();
        assert!(vectors.len() >= 7, "expected all Twilio vectors");
        for v in &vectors {
            let name = v["name"].as_str().unwrap();
            let token = v["auth_token"].as_str().unwrap().as_bytes();
            let url = v["url"].as_str().unwrap();
            let expected = v["x_twilio_signature"].as_str().unwrap();
            let alg = algorithm(v);
            let ok = if let Some(body) = v.get("body") {
                verify_json(alg, token, url, body.as_str().unwrap().as_bytes(), expected)
            } else {
                verify_form(alg, token, url, &params(v), expected)
            };
            assert!(ok, "vector {name} does not verify");

            // One changed character anywhere must fail.
            let mut tampered = params(v);
            if let Some(first) = tampered.first_mut() {
                first.1.push('x');
                assert!(!verify_form(alg, token, url, &tampered, expected), "{name}");
            }
            if let Some(body) = v.get("body") {
                let changed = body.as_str().unwrap().replace("42", "43");
                assert!(
                    !verify_json(alg, token, url, changed.as_bytes(), expected),
                    "{name}"
                );
            }
            assert!(
                !verify_form(alg, b"wrong token", url, &params(v), expected),
                "{name}"
            );
        }
    }

    #[test]
    fn signs_exactly_like_the_vectors() {
        for v in vectors().iter().filter(|v| v.get("body").is_none()) {
            let token = v["auth_token"].as_str().unwrap().as_bytes();
            let url = v["url"].as_str().unwrap();
            assert_eq!(
                sign(algorithm(v), token, url, &params(v)),
                v["x_twilio_signature"].as_str().unwrap(),
                "{}",
                v["name"]
            );
        }
    }

    #[test]
    fn port_variants_are_accepted_both_ways() {
        let v = &vectors()[0];
        let token = v["auth_token"].as_str().unwrap().as_bytes();
        let sig = v["x_twilio_signature"].as_str().unwrap();
        let with_port = "https://hooks.example.com:443/webhooks/twilio/sms";
        assert!(verify_form(
            Algorithm::HmacSha1,
            token,
            with_port,
            &params(v),
            sig
        ));
        let v2 = &vectors()[1];
        let sig2 = v2["x_twilio_signature"].as_str().unwrap();
        let without = "https://hooks.example.com/webhooks/twilio/sms";
        assert!(verify_form(
            Algorithm::HmacSha1,
            token,
            without,
            &params(v2),
            sig2
        ));
    }

    /// Vector V5 of the research notes (recording status callback), from the same validator.
    #[test]
    fn recording_callback_vector_v5() {
        let body = "AccountSid=AC33333333333333333333333333333333&CallSid=CA44444444444444444444444444444444&RecordingSid=RE55555555555555555555555555555555&RecordingUrl=https%3A%2F%2Fapi.twilio.com%2F2010-04-01%2FAccounts%2FAC33333333333333333333333333333333%2FRecordings%2FRE55555555555555555555555555555555&RecordingStatus=completed&RecordingDuration=23&RecordingChannels=1&RecordingStartTime=Wed%2C+01+May+2024+10%3A00%3A05+%2B0000&RecordingSource=RecordVerb&RecordingTrack=inbound&ErrorCode=0";
        let params: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert!(verify_form(
            Algorithm::HmacSha1,
            b"test_auth_token_0123456789abcdef",
            "https://hooks.example.com/webhooks/twilio/recording-status",
            &params,
            "kDdNpQBio41PAQiJ+BZMlmoMVSo="
        ));
    }

    #[test]
    fn url_variants_keep_path_and_query_bytes() {
        assert_eq!(
            url_variants("http://127.0.0.1:8080/a%2Fb?x=%20"),
            vec![
                "http://127.0.0.1/a%2Fb?x=%20",
                "http://127.0.0.1:8080/a%2Fb?x=%20"
            ]
        );
        assert_eq!(
            url_variants("https://[::1]/p"),
            vec!["https://[::1]/p", "https://[::1]:443/p"]
        );
        assert_eq!(
            url_variants("https://u:p@h.example/p"),
            vec!["https://u:p@h.example/p", "https://u:p@h.example:443/p"]
        );
    }

    #[test]
    fn settings_header_selects_the_algorithm() {
        assert_eq!(
            Algorithm::from_settings_header(None),
            Ok((Algorithm::HmacSha1, None))
        );
        assert_eq!(
            Algorithm::from_settings_header(Some("key=KS1,algorithm=HMAC_SHA256")),
            Ok((Algorithm::HmacSha256, Some("KS1".to_owned())))
        );
        assert!(Algorithm::from_settings_header(Some("algorithm=MD5")).is_err());
    }
}
