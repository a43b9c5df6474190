//! A small real DNS server for tests, on a loopback UDP port: it parses each query, answers
//! A records from a script (the k-th A query for a name gets the script's k-th answer,
//! cycling), answers other types with no records, unknown names with NXDOMAIN, and counts
//! the queries it got per name and type. Used by the cross-process DNS tests and, through
//! `#[path]`, by loongd's unit tests of its resolver.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

/// The record type of an A query.
pub const TYPE_A: u16 = 1;

/// Names (lowercase, no trailing dot) and their successive answers.
pub type Script = Vec<(String, Vec<Vec<Ipv4Addr>>)>;

#[derive(Debug)]
pub struct DnsServer {
    pub addr: SocketAddr,
    counts: Arc<Mutex<HashMap<(String, u16), usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `script` on a fresh loopback port until dropped.
    pub fn start(script: Script) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("address");
        let counts: Arc<Mutex<HashMap<(String, u16), usize>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let script: HashMap<String, Vec<Vec<Ipv4Addr>>> = script.into_iter().collect();
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Some(q) = Query::parse(&buf[..n]) else {
                    continue;
                };
                let seen = {
                    let mut counts = c.lock().unwrap_or_else(|e| e.into_inner());
                    let k = counts.entry((q.name.clone(), q.qtype)).or_insert(0);
                    *k += 1;
                    *k - 1
                };
                let answer = match script.get(&q.name) {
                    None => None,
                    Some(_) if q.qtype != TYPE_A => Some(Vec::new()),
                    Some(seq) if seq.is_empty() => Some(Vec::new()),
                    Some(seq) => Some(seq[seen % seq.len()].clone()),
                };
                let _ = socket.send_to(&q.answer(answer.as_deref()), from);
            }
        });
        DnsServer {
            addr,
            counts,
            stop,
            thread: Some(thread),
        }
    }

    /// The queries of `qtype` asked for `name` so far.
    pub fn queries(&self, name: &str, qtype: u16) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(name.to_string(), qtype))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One question, as asked.
struct Query {
    id: [u8; 2],
    rd: u8,
    /// The question section as received (echoed back).
    question: Vec<u8>,
    /// Lowercase, no trailing dot.
    name: String,
    qtype: u16,
}

impl Query {
    fn parse(m: &[u8]) -> Option<Query> {
        if m.len() < 12 || m[2] & 0x80 != 0 || u16::from_be_bytes([m[4], m[5]]) != 1 {
            return None;
        }
        let mut i = 12;
        let mut labels = Vec::new();
        loop {
            let len = *m.get(i)? as usize;
            i += 1;
            if len == 0 {
                break;
            }
            if len > 63 {
                return None;
            }
            labels.push(String::from_utf8_lossy(m.get(i..i + len)?).to_ascii_lowercase());
            i += len;
        }
        let qtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
        let end = i + 4;
        Some(Query {
            id: [m[0], m[1]],
            rd: m[2] & 0x01,
            question: m.get(12..end)?.to_vec(),
            name: labels.join("."),
            qtype,
        })
    }

    /// The response: `None` is NXDOMAIN; otherwise these A records (TTL 0, so nothing can
    /// be answered from a cache).
    fn answer(&self, records: Option<&[Ipv4Addr]>) -> Vec<u8> {
        let rcode = if records.is_none() { 3 } else { 0 };
        let records = records.unwrap_or(&[]);
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&self.id);
        out.push(0x84 | self.rd); // QR, AA, RD as asked
        out.push(0x80 | rcode); // RA, RCODE
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(records.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&self.question);
        for ip in records {
            out.extend_from_slice(&[0xc0, 0x0c]); // the name, by pointer to the question
            out.extend_from_slice(&TYPE_A.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes()); // IN
            out.extend_from_slice(&0u32.to_be_bytes()); // TTL
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
        out
    }
}
