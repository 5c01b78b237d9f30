//! `switchboard simulate email --via smtp`: hand a mail to Switchboard's SMTP server as a
//! sending mail server would (EHLO, MAIL FROM, RCPT TO, DATA), replies read with
//! `smtp-proto`'s parser. The answer is the last reply: `250` once the mail is stored.

use std::time::Duration;

use anyhow::{bail, Context};
use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long the server may take to answer one command (storing the mail included).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// A conversation with one server.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    /// The next reply: its code and text.
    async fn reply(&mut self) -> anyhow::Result<(u16, String)> {
        let mut receiver = ResponseReceiver::default();
        loop {
            let buf = tokio::time::timeout(REPLY_TIMEOUT, self.stream.fill_buf())
                .await
                .context("the SMTP server did not answer")??;
            if buf.is_empty() {
                bail!("the SMTP server closed the connection");
            }
            let mut bytes = buf.iter();
            let parsed = receiver.parse(&mut bytes);
            let used = buf.len() - bytes.len();
            self.stream.consume(used);
            match parsed {
                Ok(reply) => {
                    let [a, b, c] = reply.esc;
                    let text = if a == 0 {
                        reply.message
                    } else {
                        format!("{a}.{b}.{c} {}", reply.message)
                    };
                    return Ok((reply.code, text));
                }
                Err(smtp_proto::Error::NeedsMoreData { .. }) => continue,
                Err(e) => bail!("the SMTP server's reply could not be read: {e:?}"),
            }
        }
    }

    /// Send `line` (CRLF added) and read the reply.
    async fn command(&mut self, line: &str) -> anyhow::Result<(u16, String)> {
        self.stream
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        self.reply().await
    }
}

/// The address of `Name <address>` or of a bare address.
fn address_of(mailbox: &str) -> &str {
    match (mailbox.rfind('<'), mailbox.rfind('>')) {
        (Some(start), Some(end)) if start < end => &mailbox[start + 1..end],
        _ => mailbox.trim(),
    }
}

/// `raw` with its lines ending in CRLF and those that start with a dot doubled (RFC 5321
/// §4.5.2), then the final `.`.
fn dot_stuffed(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 64);
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    if raw.ends_with(b"\n") {
        // The split's last, empty piece is not a line.
        out.truncate(out.len() - 2);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Send `raw` from `from` to `to` through the SMTP server at `server` (host:port); the code and
/// text of the answer that decided (a refused recipient's, or the answer to the mail).
pub async fn send(server: &str, from: &str, to: &str, raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let server = server.trim_start_matches("smtp://").trim_end_matches('/');
    let stream = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(server))
        .await
        .with_context(|| format!("connecting to the SMTP server at {server} timed out"))?
        .with_context(|| format!("connecting to the SMTP server at {server}"))?;
    let mut client = Client {
        stream: BufReader::new(stream),
    };
    let (code, text) = client.reply().await?;
    if code != 220 {
        return Ok((code, text));
    }
    for line in [
        "EHLO simulate.switchboard.invalid".to_owned(),
        format!("MAIL FROM:<{}>", address_of(from)),
        format!("RCPT TO:<{}>", address_of(to)),
        "DATA".to_owned(),
    ] {
        let (code, text) = client.command(&line).await?;
        if !(200..400).contains(&code) {
            let _ = client.command("QUIT").await;
            return Ok((code, text));
        }
    }
    client.stream.get_mut().write_all(&dot_stuffed(raw)).await?;
    let answer = client.reply().await?;
    let _ = client.command("QUIT").await;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_crlf_and_dots_doubled() {
        assert_eq!(
            dot_stuffed(b"Subject: x\n\n.hidden\r\nend\n"),
            b"Subject: x\r\n\r\n..hidden\r\nend\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(address_of("Ana Perez <ana@example.com>"), "ana@example.com");
        assert_eq!(address_of(" ana@example.com "), "ana@example.com");
    }
}
