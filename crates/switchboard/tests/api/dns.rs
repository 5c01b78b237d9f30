//! A DNS server on loopback with the test's own answers (the SPF, DKIM and DMARC records of
//! the sending domains): UDP and TCP on one port, TXT and A records from a table the test
//! fills, every other name NXDOMAIN. The SMTP listener's lookups go here
//! (`smtp_dns_servers`), so nothing reaches the internet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TXT: u16 = 16;
const A: u16 = 1;

type Records = Arc<Mutex<HashMap<(String, u16), Vec<Vec<u8>>>>>;

pub struct TestDns {
    pub addr: SocketAddr,
    records: Records,
}

impl TestDns {
    /// Listening on a loopback port (UDP and TCP), with no records.
    pub async fn start() -> TestDns {
        let records: Records = Arc::default();
        // A port free for both protocols.
        let (udp, tcp) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let table = records.clone();
        tokio::spawn(async move {
            let mut buf = vec![0_u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                if let Some(reply) = answer(&buf[..n], &table) {
                    let _ = udp.send_to(&reply, from).await;
                }
            }
        });
        let table = records.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let table = table.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = stream.read_u16().await else {
                            return;
                        };
                        let mut query = vec![0_u8; len as usize];
                        if stream.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        let Some(reply) = answer(&query, &table) else {
                            return;
                        };
                        let _ = stream.write_u16(reply.len() as u16).await;
                        let _ = stream.write_all(&reply).await;
                    }
                });
            }
        });
        TestDns { addr, records }
    }

    /// A TXT record for `name` (split into strings of 255 bytes, as DNS holds long ones).
    pub fn txt(&self, name: &str, text: &str) {
        let mut rdata = Vec::new();
        for chunk in text.as_bytes().chunks(255) {
            rdata.push(chunk.len() as u8);
            rdata.extend_from_slice(chunk);
        }
        self.add(name, TXT, rdata);
    }

    /// An A record for `name`.
    pub fn a(&self, name: &str, ip: std::net::Ipv4Addr) {
        self.add(name, A, ip.octets().to_vec());
    }

    fn add(&self, name: &str, kind: u16, rdata: Vec<u8>) {
        self.records
            .lock()
            .unwrap()
            .entry((name.trim_end_matches('.').to_ascii_lowercase(), kind))
            .or_default()
            .push(rdata);
    }
}

/// The answer to one query: its records, NODATA when the name has only others, NXDOMAIN when
/// it has none. `None` for what is not a query of one question.
fn answer(query: &[u8], records: &Records) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let kind = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let name = labels.join(".");
    let records = records.lock().unwrap();
    let found = records
        .get(&(name.clone(), kind))
        .cloned()
        .unwrap_or_default();
    let exists = records.keys().any(|(n, _)| *n == name);
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[..2]);
    // QR, AA, RD as asked; RA; NOERROR or NXDOMAIN.
    reply.push(0x84 | (query[2] & 0x01));
    reply.push(0x80 | if exists { 0 } else { 3 });
    reply.extend_from_slice(&1_u16.to_be_bytes());
    reply.extend_from_slice(&(found.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(query.get(12..question_end)?);
    for rdata in found {
        reply.extend_from_slice(&[0xc0, 0x0c]);
        reply.extend_from_slice(&kind.to_be_bytes());
        reply.extend_from_slice(&1_u16.to_be_bytes());
        reply.extend_from_slice(&60_u32.to_be_bytes());
        reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        reply.extend_from_slice(&rdata);
    }
    Some(reply)
}
