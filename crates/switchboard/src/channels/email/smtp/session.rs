//! One SMTP conversation: commands read a line at a time (pipelined commands are answered in
//! one write once the client's batch is read), the mail after `DATA` read to its end, then
//! filed. STARTTLS ends the plain conversation; a new one starts over TLS with nothing kept
//! (RFC 3207), and whatever the client sent after the command in the clear is discarded.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver};
use smtp_proto::{Request, Response};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::{Shared, VIA};
use crate::channels::email::{mime, route_to, PROVIDER};
use crate::domain::Fact;

/// `MAIL FROM` parameters of extensions not offered: REQUIRETLS, BINARYMIME, DSN's RET.
const UNOFFERED: u64 = smtp_proto::MAIL_REQUIRETLS
    | smtp_proto::MAIL_BODY_BINARYMIME
    | smtp_proto::MAIL_RET_FULL
    | smtp_proto::MAIL_RET_HDRS;

/// Bad commands a conversation may send before it is closed.
const MAX_ERRORS: u32 = 20;

/// How a conversation ended.
enum End<S> {
    Closed,
    /// The client asked for TLS and was told to go ahead: the stream, with nothing read past
    /// the command.
    StartTls(S),
}

/// The mail being sent: its sender (empty for a bounce) and, for each recipient accepted so
/// far, the location that claims it.
struct Envelope {
    mail_from: String,
    recipients: Vec<String>,
}

/// Serve one connection to its end.
pub(super) async fn serve(
    shared: &Shared,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    client: Option<IpAddr>,
) {
    let conversation = Conversation {
        shared,
        peer,
        client,
    };
    match conversation.converse(stream, false).await {
        Ok(End::StartTls(stream)) => {
            let Some(acceptor) = shared.tls.clone() else {
                return;
            };
            match tokio::time::timeout(shared.idle, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = conversation.converse(tls, true).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "smtp: TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "smtp: TLS handshake timed out"),
            }
        }
        Ok(End::Closed) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "smtp: connection ended"),
    }
}

/// Write and flush `out` (then clear it), within `limit`: a client that does not read its
/// answers is cut off rather than holding its connection.
async fn send<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    limit: Duration,
) -> std::io::Result<()> {
    let written = tokio::time::timeout(limit, async {
        io.write_all(out).await?;
        io.flush().await
    })
    .await;
    out.clear();
    match written {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Answers held back for a pipelined batch at most, in bytes: past it they are sent at once,
/// so a client that never ends its batch cannot grow them.
const MAX_HELD_ANSWERS: usize = 4096;

/// An SMTP reply, appended to what will be written.
fn reply(out: &mut Vec<u8>, code: u16, esc: [u8; 3], text: &str) {
    let _ = Response::new(code, esc[0], esc[1], esc[2], text).write(out);
}

/// What reading a command line gave.
enum Line {
    Read,
    TooLong,
    Eof,
}

/// A line into `line` (with its `\n`), at most `max` bytes; a longer one is skipped to its end.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    idle: Duration,
    line: &mut Vec<u8>,
) -> std::io::Result<Line> {
    let mut too_long = false;
    loop {
        let buf = idle_read(reader, idle).await?;
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !too_long {
            line.extend_from_slice(&buf[..chunk]);
            if line.len() > max {
                too_long = true;
                line.clear();
            }
        }
        reader.consume(chunk);
        if done {
            return Ok(if too_long { Line::TooLong } else { Line::Read });
        }
    }
}

/// The reader's buffer, filled; an error when nothing comes for `idle`.
async fn idle_read<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    idle: Duration,
) -> std::io::Result<&[u8]> {
    match tokio::time::timeout(idle, reader.fill_buf()).await {
        Ok(read) => read,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Bytes of the memory budget a conversation holds; given back when dropped.
struct Held<'a> {
    shared: &'a Shared,
    client: Option<IpAddr>,
    bytes: usize,
}

impl Held<'_> {
    /// `n` more bytes, or false (nothing taken) past the budget.
    fn take(&mut self, n: usize) -> bool {
        let taken = self.shared.budget.take(self.client, n);
        if taken {
            self.bytes += n;
        }
        taken
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.shared.budget.give_back(self.client, self.bytes);
    }
}

/// What reading a mail after `DATA` gave.
enum Data<'a> {
    /// The mail, and the budget it holds until it is filed.
    Mail(Vec<u8>, Held<'a>),
    /// Read to its end and dropped: larger than `max_email_bytes`.
    TooLarge,
    /// Read to its end and dropped: the memory budget for mail being received is spent.
    NoRoom,
}

struct Conversation<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    client: Option<IpAddr>,
}

impl Conversation<'_> {
    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        tls: bool,
    ) -> std::io::Result<End<S>> {
        let shared = self.shared;
        let mut io = BufReader::new(stream);
        let mut out = Vec::new();
        if !tls {
            out = format!("220 {} ESMTP Switchboard\r\n", shared.hostname).into_bytes();
        }
        // The HELO / EHLO name; set: the client greeted.
        let mut helo: Option<String> = None;
        let mut envelope: Option<Envelope> = None;
        let mut errors = 0;
        let mut line = Vec::new();
        loop {
            // Pipelining: answers wait while the client's batch holds another whole command,
            // then go in one write.
            if !out.is_empty() && (!io.buffer().contains(&b'\n') || out.len() > MAX_HELD_ANSWERS) {
                send(&mut io, &mut out, shared.idle).await?;
            }
            if errors >= MAX_ERRORS {
                reply(&mut out, 421, [4, 7, 0], "Too many errors, closing");
                send(&mut io, &mut out, shared.idle).await?;
                return Ok(End::Closed);
            }
            line.clear();
            match read_line(&mut io, shared.max_line, shared.idle, &mut line).await {
                Ok(Line::Read) => {}
                Ok(Line::TooLong) => {
                    errors += 1;
                    reply(&mut out, 500, [5, 5, 2], "Line too long");
                    continue;
                }
                Ok(Line::Eof) => return Ok(End::Closed),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    reply(&mut out, 421, [4, 4, 2], "Idle for too long, closing");
                    send(&mut io, &mut out, shared.idle).await?;
                    return Ok(End::Closed);
                }
                Err(e) => return Err(e),
            }
            let request = match Request::parse(&mut line.iter()) {
                Ok(request) => request.into_owned(),
                Err(e) => {
                    errors += 1;
                    refuse_syntax(&mut out, e);
                    continue;
                }
            };
            match request {
                Request::Ehlo { host } => {
                    helo = Some(host);
                    envelope = None;
                    let starttls = if shared.tls.is_some() && !tls {
                        "250-STARTTLS\r\n"
                    } else {
                        ""
                    };
                    out.extend_from_slice(
                        format!(
                            "250-{} at your service\r\n250-SIZE {}\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n{starttls}250 ENHANCEDSTATUSCODES\r\n",
                            shared.hostname, shared.max_bytes
                        )
                        .as_bytes(),
                    );
                }
                Request::Helo { host } => {
                    helo = Some(host);
                    envelope = None;
                    out.extend_from_slice(format!("250 {}\r\n", shared.hostname).as_bytes());
                }
                Request::Mail { from } => {
                    if helo.is_none() {
                        errors += 1;
                        reply(&mut out, 503, [5, 5, 1], "Send EHLO or HELO first");
                    } else if envelope.is_some() {
                        errors += 1;
                        reply(&mut out, 503, [5, 5, 1], "A mail is already being sent");
                    } else if from.flags & UNOFFERED != 0 || from.env_id.is_some() {
                        // A sender that asks for what we do not offer (REQUIRETLS, BINARYMIME,
                        // DSN) is told so rather than silently ignored (RFC 5321 §4.1.1.11).
                        reply(&mut out, 555, [5, 5, 4], "MAIL parameter not offered here");
                    } else if from.size > shared.max_bytes {
                        reply(
                            &mut out,
                            552,
                            [5, 3, 4],
                            &format!("Mail larger than {} bytes is not taken", shared.max_bytes),
                        );
                    } else {
                        envelope = Some(Envelope {
                            mail_from: from.address,
                            recipients: vec![],
                        });
                        reply(&mut out, 250, [2, 1, 0], "OK");
                    }
                }
                Request::Rcpt { to } => match envelope.as_mut() {
                    None => {
                        errors += 1;
                        reply(&mut out, 503, [5, 5, 1], "Send MAIL first");
                    }
                    Some(e) if e.recipients.len() >= shared.max_recipients => {
                        errors += 1;
                        reply(&mut out, 452, [4, 5, 3], "Too many recipients");
                    }
                    Some(e) => {
                        // A refused recipient counts as an error: probing for addresses costs
                        // the connection after a few.
                        if !self.recipient(&mut out, e, to.address).await {
                            errors += 1;
                        }
                    }
                },
                Request::Data => {
                    let Some(e) = envelope.take() else {
                        errors += 1;
                        reply(&mut out, 503, [5, 5, 1], "Send MAIL first");
                        continue;
                    };
                    if e.recipients.is_empty() {
                        reply(&mut out, 554, [5, 5, 1], "No valid recipients");
                        continue;
                    }
                    // With the answers to the commands pipelined before it.
                    out.extend_from_slice(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n");
                    send(&mut io, &mut out, shared.idle).await?;
                    match self.read_data(&mut io).await? {
                        Data::Mail(raw, held) => {
                            let helo = helo.as_deref().unwrap_or_default();
                            self.file(&mut out, &e, helo, raw, held).await
                        }
                        Data::TooLarge => reply(
                            &mut out,
                            552,
                            [5, 3, 4],
                            &format!("Mail larger than {} bytes is not taken", shared.max_bytes),
                        ),
                        Data::NoRoom => reply(
                            &mut out,
                            452,
                            [4, 3, 1],
                            "Too much mail being received at once, try again later",
                        ),
                    }
                }
                Request::Rset => {
                    envelope = None;
                    reply(&mut out, 250, [2, 0, 0], "OK");
                }
                Request::Noop { .. } => reply(&mut out, 250, [2, 0, 0], "OK"),
                Request::Vrfy { .. } => {
                    reply(&mut out, 252, [2, 5, 0], "Cannot VRFY, send some mail")
                }
                Request::Help { .. } => {
                    let commands = if shared.tls.is_some() && !tls {
                        "EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT STARTTLS"
                    } else {
                        "EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT"
                    };
                    reply(&mut out, 214, [2, 0, 0], commands)
                }
                Request::StartTls if tls => {
                    errors += 1;
                    reply(&mut out, 503, [5, 5, 1], "TLS is already on");
                }
                Request::StartTls if shared.tls.is_some() => {
                    reply(&mut out, 220, [2, 0, 0], "Ready to start TLS");
                    send(&mut io, &mut out, shared.idle).await?;
                    // What came after the command in the clear is dropped, never read as
                    // if it had come over TLS.
                    return Ok(End::StartTls(io.into_inner()));
                }
                Request::Quit => {
                    reply(&mut out, 221, [2, 0, 0], "Bye");
                    send(&mut io, &mut out, shared.idle).await?;
                    return Ok(End::Closed);
                }
                other => {
                    errors += 1;
                    reply(
                        &mut out,
                        502,
                        [5, 5, 1],
                        &format!("{} is not offered here", other.name()),
                    );
                }
            }
        }
    }

    /// `RCPT TO`: accepted only for an address or domain a location claims. Whether it was.
    async fn recipient(&self, out: &mut Vec<u8>, envelope: &mut Envelope, address: String) -> bool {
        let key = route_to(std::iter::once(&address));
        if key.address.is_none() {
            reply(out, 501, [5, 1, 3], "Not a mailbox address");
            return false;
        }
        match self.shared.ingest.account(PROVIDER, &key).await {
            Ok(Some(account)) => {
                envelope.recipients.push(account.location_id);
                reply(out, 250, [2, 1, 5], "OK");
                true
            }
            Ok(None) => {
                reply(out, 550, [5, 1, 1], "No such mailbox here");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "smtp: looking up a recipient failed");
                reply(out, 451, [4, 3, 0], "Temporary failure, try again later");
                true
            }
        }
    }

    /// The mail after `354`, to its final `.`: unstuffed, held to `max_email_bytes` and to
    /// the memory budget (past either it is read to its end and dropped).
    async fn read_data<S: AsyncRead + Unpin>(
        &self,
        io: &mut BufReader<S>,
    ) -> std::io::Result<Data<'_>> {
        let shared = self.shared;
        let mut receiver = DataReceiver::new();
        let mut mail = Vec::new();
        // The CRLF that ended the DATA command: the mail's first line is a line like the
        // others (a lone `.` ends an empty mail, a leading dot is unstuffed).
        receiver.ingest(&mut b"\r\n".iter(), &mut mail);
        mail.clear();
        let mut held = Held {
            shared,
            client: self.client,
            bytes: 0,
        };
        let mut dropped: Option<(DummyDataReceiver, Data)> = None;
        loop {
            let buf = idle_read(io, shared.idle).await?;
            if buf.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let mut bytes = buf.iter();
            let done = match &mut dropped {
                Some((drain, _)) => drain.ingest(&mut bytes),
                None => receiver.ingest(&mut bytes, &mut mail),
            };
            let used = buf.len() - bytes.len();
            io.consume(used);
            if dropped.is_none() && mail.len() > held.bytes {
                let why = if mail.len() > shared.max_bytes {
                    Some(Data::TooLarge)
                } else if held.take(mail.len() - held.bytes) {
                    None
                } else {
                    Some(Data::NoRoom)
                };
                if let Some(why) = why {
                    dropped = Some((DummyDataReceiver::new_data(&receiver), why));
                    mail = Vec::new();
                }
            }
            if done {
                return Ok(match dropped.take() {
                    Some((_, why)) => why,
                    None => Data::Mail(mail, held),
                });
            }
        }
    }

    /// File the mail under each location that claims a recipient, in one transaction, with
    /// its SPF, DKIM and DMARC verdicts; `250` once it is committed.
    async fn file(
        &self,
        out: &mut Vec<u8>,
        envelope: &Envelope,
        helo: &str,
        raw: Vec<u8>,
        mut held: Held<'_>,
    ) {
        let mut locations: Vec<&str> = Vec::new();
        for location in &envelope.recipients {
            if !locations.contains(&location.as_str()) {
                locations.push(location);
            }
        }
        // Each location's copy of the mail (and the parsed copy) count against the budget too.
        if !held.take(raw.len() * locations.len()) {
            reply(
                out,
                452,
                [4, 3, 1],
                "Too much mail being received at once, try again later",
            );
            return;
        }
        let mail = match mime::read(&raw) {
            Ok(mail) => mail,
            Err(e) => {
                reply(out, 554, [5, 6, 0], &format!("Not a mail message: {e}"));
                return;
            }
        };
        let verdicts = self
            .shared
            .auth
            .verify(
                &raw,
                &super::auth::Envelope {
                    ip: self.peer.ip(),
                    helo,
                    mail_from: &envelope.mail_from,
                },
            )
            .await;
        if verdicts.dmarc_rejects && self.shared.refuse_dmarc_rejects {
            let domain = mail.from_address.rsplit_once('@').map_or("", |(_, d)| d);
            tracing::info!(peer = %self.peer, from_domain = domain, "smtp: a mail failing DMARC under a reject policy refused");
            reply(
                out,
                550,
                [5, 7, 1],
                "The sender's domain's DMARC policy rejects this mail",
            );
            return;
        }
        let ingest = &self.shared.ingest;
        let now = ingest.clock.now_ms();
        let mut parts: Vec<(String, Vec<Fact>)> = vec![];
        for location in locations {
            let fact =
                mail.clone()
                    .into_fact(PROVIDER, VIA, location, verdicts.results.clone(), now);
            parts.push((location.to_owned(), vec![fact]));
        }
        match ingest
            .file_parts(PROVIDER, parts, &self.shared.base, now)
            .await
        {
            Ok(_) => reply(out, 250, [2, 0, 0], "Stored"),
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = format!("{e:#}"), "smtp: storing a mail failed; answered 451");
                reply(
                    out,
                    451,
                    [4, 3, 0],
                    "The mail could not be stored, try again later",
                );
            }
        }
    }
}

/// The answer to a line that is not a command we can read.
fn refuse_syntax(out: &mut Vec<u8>, error: smtp_proto::Error) {
    use smtp_proto::Error;
    match error {
        Error::UnknownCommand => reply(out, 500, [5, 5, 1], "Command not recognized"),
        Error::InvalidSenderAddress => reply(out, 501, [5, 1, 7], "Bad sender address"),
        Error::InvalidRecipientAddress => reply(out, 501, [5, 1, 3], "Bad recipient address"),
        Error::SyntaxError { syntax } => reply(out, 501, [5, 5, 2], &format!("Syntax: {syntax}")),
        Error::InvalidParameter { param: "SIZE" } => {
            reply(out, 552, [5, 3, 4], "Mail larger than this server takes")
        }
        Error::InvalidParameter { param } => {
            reply(out, 501, [5, 5, 4], &format!("Invalid parameter {param}"))
        }
        Error::UnsupportedParameter { param } => {
            let shown: String = param.chars().filter(|c| !c.is_control()).take(40).collect();
            reply(
                out,
                504,
                [5, 5, 4],
                &format!("Parameter {shown} not supported"),
            )
        }
        _ => reply(out, 500, [5, 5, 2], "Syntax error"),
    }
}
