//! The form posts of the SaaS routes: `application/x-www-form-urlencoded`, or
//! `multipart/form-data` (RFC 7578, itself MIME multipart) read with the same MIME crate as the
//! mail, never by hand.

use mail_parser::{MessageParser, MimeHeaders, PartType};

use crate::channels::{ChannelError, ProviderRequest};

/// One field of a form post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A value as sent: UTF-8 by the standard, but a service may send another charset and
    /// say so elsewhere (SendGrid's `charsets`).
    Text(Vec<u8>),
    File {
        filename: String,
        content_type: String,
        bytes: Vec<u8>,
    },
}

/// A form post's fields, in order.
#[derive(Debug, Default)]
pub struct Form(pub Vec<(String, Field)>);

impl Form {
    /// The first text field named `name`, when it is UTF-8.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.iter().find_map(|(n, f)| match f {
            Field::Text(t) if n == name => std::str::from_utf8(t).ok(),
            _ => None,
        })
    }

    /// The field named `name` as bytes, text or file (a raw mail may come either way).
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find_map(|(n, f)| match f {
            Field::Text(t) if n == name => Some(t.as_slice()),
            Field::File { bytes, .. } if n == name => Some(bytes.as_slice()),
            _ => None,
        })
    }

    /// The file fields, in order, with their names.
    pub fn files(&self) -> impl Iterator<Item = (&str, &str, &str, &[u8])> {
        self.0.iter().filter_map(|(n, f)| match f {
            Field::File {
                filename,
                content_type,
                bytes,
            } => Some((
                n.as_str(),
                filename.as_str(),
                content_type.as_str(),
                bytes.as_slice(),
            )),
            Field::Text(_) => None,
        })
    }
}

/// Read a form post, whichever of the two encodings it came in.
pub fn read(req: &ProviderRequest) -> Result<Form, ChannelError> {
    let content_type = req.header("content-type").unwrap_or_default();
    match crate::media::essence(content_type).as_str() {
        "application/x-www-form-urlencoded" => Ok(Form(
            form_urlencoded::parse(&req.body)
                .map(|(k, v)| (k.into_owned(), Field::Text(v.into_owned().into_bytes())))
                .collect(),
        )),
        "multipart/form-data" => multipart(content_type, &req.body),
        other => Err(ChannelError::UnsupportedMediaType(format!(
            "this route takes a form post (multipart/form-data or application/x-www-form-urlencoded), not `{other}`"
        ))),
    }
}

/// `multipart/form-data`: the body as the MIME entity its Content-Type header describes.
fn multipart(content_type: &str, body: &[u8]) -> Result<Form, ChannelError> {
    if !content_type.to_ascii_lowercase().contains("boundary=") {
        return Err(ChannelError::Malformed(
            "multipart/form-data without a boundary".into(),
        ));
    }
    let mut entity = Vec::with_capacity(body.len() + content_type.len() + 64);
    entity.extend_from_slice(b"MIME-Version: 1.0\r\nContent-Type: ");
    entity.extend_from_slice(content_type.as_bytes());
    entity.extend_from_slice(b"\r\n\r\n");
    entity.extend_from_slice(body);
    let message = MessageParser::default()
        .parse(&entity)
        .ok_or_else(|| ChannelError::Malformed("the form could not be read".into()))?;
    let mut fields = Vec::new();
    for part in message.parts.iter().skip(1) {
        if matches!(part.body, PartType::Multipart(_)) {
            continue;
        }
        let Some(name) = part
            .content_disposition()
            .and_then(|d| d.attribute("name"))
            .map(str::to_owned)
        else {
            continue;
        };
        let field = match part.attachment_name() {
            Some(filename) => Field::File {
                filename: filename.to_owned(),
                content_type: super::mime::media_type(part),
                bytes: raw_contents(&message, part).to_vec(),
            },
            // As sent: not decoded by a charset the part does not declare.
            None => Field::Text(raw_contents(&message, part).to_vec()),
        };
        fields.push((name, field));
    }
    if fields.is_empty() {
        return Err(ChannelError::Malformed("the form has no fields".into()));
    }
    Ok(Form(fields))
}

/// A form part's bytes as sent (form-data parts carry no transfer encoding, and a text field
/// must not be decoded by a charset it does not declare).
fn raw_contents<'a>(
    message: &'a mail_parser::Message<'_>,
    part: &mail_parser::MessagePart<'_>,
) -> &'a [u8] {
    let raw = message.raw_message();
    let (start, end) = (
        part.raw_body_offset() as usize,
        part.raw_end_offset() as usize,
    );
    // The part ends before the CRLF that belongs to the next boundary.
    raw.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content_type: &str, body: &[u8]) -> ProviderRequest {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("content-type", content_type.parse().unwrap());
        ProviderRequest {
            url: "http://x/".into(),
            headers,
            body: bytes::Bytes::copy_from_slice(body),
            received_at_ms: 0,
        }
    }

    #[test]
    fn multipart_text_is_utf8_and_files_are_byte_identical() {
        let file: Vec<u8> = (0..=255u8)
            .chain(b"\r\n--not-it\r\n".iter().copied())
            .collect();
        let mut body = Vec::new();
        body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"subject\"\r\n\r\nCaf\xc3\xa9 cr\xc3\xa8me\r\n");
        body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"attachment-1\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(&file);
        body.extend_from_slice(
            b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"empty\"\r\n\r\n\r\n--XyZ--\r\n",
        );
        let form = read(&request("multipart/form-data; boundary=XyZ", &body)).unwrap();
        assert_eq!(form.text("subject"), Some("Café crème"));
        assert_eq!(form.text("empty"), Some(""));
        let files: Vec<_> = form.files().collect();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "attachment-1");
        assert_eq!(files[0].1, "a.bin");
        assert_eq!(files[0].3, file.as_slice());
    }

    #[test]
    fn urlencoded_and_unknown_types() {
        let form = read(&request(
            "application/x-www-form-urlencoded",
            b"a=1&b=caf%C3%A9",
        ))
        .unwrap();
        assert_eq!(form.text("b"), Some("café"));
        assert!(matches!(
            read(&request("application/json", b"{}")),
            Err(ChannelError::UnsupportedMediaType(_))
        ));
        assert!(read(&request("multipart/form-data", b"--x--")).is_err());
    }
}
