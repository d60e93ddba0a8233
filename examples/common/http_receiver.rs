//! A loopback HTTP receiver for the examples and tests: accepts ringship's
//! POSTs, decodes either body format (gzip too), and keeps every record
//! and gap notice. Responses can be scripted (500, 429, 400...).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What the receiver got.
#[derive(Default, Debug)]
pub struct Inbox {
    /// (seq, payload) in arrival order, duplicates included.
    pub records: Vec<(u64, Vec<u8>)>,
    /// `X-Ringship-Gap` headers, in arrival order.
    pub gaps: Vec<String>,
    /// Headers of the last request (lowercase names).
    pub last_headers: Vec<(String, String)>,
    /// Requests answered, whatever the status.
    pub requests: u64,
    /// Statuses to answer with next (then 200); a 3xx redirects to `/moved`.
    pub script: VecDeque<(u16, Option<u64>)>,
    /// Bodies longer than this (as sent, before gunzip) get 413, as a
    /// proxy's `client_max_body_size` would.
    pub max_body: Option<usize>,
    /// Records in each request answered 413.
    pub refused_sizes: Vec<usize>,
    /// Records that came embedded as JSON (`"json"`), not as strings.
    pub embedded: u64,
}

pub struct HttpReceiver {
    server: Arc<tiny_http::Server>,
    pub inbox: Arc<Mutex<Inbox>>,
    handle: Option<JoinHandle<()>>,
    pub port: u16,
}

/// (seq, payload) of records, in arrival order.
type Records = Vec<(u64, Vec<u8>)>;

/// (seq, payload) of each record in a body, and how many came embedded as
/// JSON: their payload is the value's text as sent. `None` for a body cut
/// short (its sender killed mid-request).
fn decode(body: &[u8], content_type: &str) -> Option<(Records, u64)> {
    let mut embedded = 0;
    let mut out = Vec::new();
    if content_type.starts_with("application/x-ringship-records") {
        let mut at = 0;
        while at < body.len() {
            let head = body.get(at..at + 20)?;
            let seq = u64::from_le_bytes(head[..8].try_into().unwrap());
            let len = u32::from_le_bytes(head[16..20].try_into().unwrap()) as usize;
            out.push((seq, body.get(at + 20..at + 20 + len)?.to_vec()));
            at += 20 + len;
        }
    } else {
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).ok()?;
            let seq = v["seq"].as_u64().expect("seq");
            let msg = if v.get("json").is_some() {
                // The embedded value is the rest of the line, before the
                // closing brace.
                embedded += 1;
                let key = b"\"json\":";
                let at = line.windows(key.len()).position(|w| w == key).expect("the json key") + key.len();
                line[at..line.len() - 1].to_vec()
            } else {
                v["msg"].as_str().expect("msg").as_bytes().to_vec()
            };
            out.push((seq, msg));
        }
    }
    Some((out, embedded))
}

impl HttpReceiver {
    /// Starts on a free loopback port.
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Starts on `port` (0: any free one).
    pub fn start_on(port: u16) -> Self {
        let server = Arc::new(tiny_http::Server::http(("127.0.0.1", port)).expect("bind the test receiver"));
        let port = server.server_addr().to_ip().expect("ip address").port();
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let (s, i) = (Arc::clone(&server), Arc::clone(&inbox));
        let handle = std::thread::spawn(move || {
            for mut req in s.incoming_requests() {
                let mut body = Vec::new();
                let mut whole = req.as_reader().read_to_end(&mut body).is_ok();
                let sent_len = body.len();
                let headers: Vec<(String, String)> = req
                    .headers()
                    .iter()
                    .map(|h| (h.field.as_str().as_str().to_lowercase(), h.value.as_str().to_owned()))
                    .collect();
                let header = |name: &str| {
                    let name = name.to_lowercase();
                    headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
                };
                if header("Content-Encoding").as_deref() == Some("gzip") {
                    let mut plain = Vec::new();
                    whole &= flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain).is_ok();
                    body = plain;
                }
                let content_type = header("Content-Type").unwrap_or_default();
                let mut inbox = i.lock().unwrap();
                inbox.requests += 1;
                inbox.last_headers.clone_from(&headers);
                let decoded = if whole { decode(&body, &content_type) } else { None };
                let (status, retry_after) = match &decoded {
                    // A body cut short: its sender died mid-request.
                    None => (400, None),
                    Some((records, _)) if inbox.max_body.is_some_and(|max| sent_len > max) => {
                        inbox.refused_sizes.push(records.len());
                        (413, None)
                    }
                    Some(_) => inbox.script.pop_front().unwrap_or((200, None)),
                };
                if let (200..300, Some((records, embedded))) = (status, decoded) {
                    inbox.records.extend(records);
                    inbox.embedded += embedded;
                    if let Some(g) = header("X-Ringship-Gap") {
                        inbox.gaps.push(g);
                    }
                }
                drop(inbox);
                // A refusal says why, as real receivers do.
                let answer = if status >= 400 { format!("scripted refusal: HTTP {status}") } else { String::new() };
                let mut resp = tiny_http::Response::from_string(answer).with_status_code(status);
                if (300..400).contains(&status) {
                    resp = resp.with_header(tiny_http::Header::from_bytes("Location", "/moved").unwrap());
                }
                if let Some(secs) = retry_after {
                    resp = resp.with_header(tiny_http::Header::from_bytes("Retry-After", secs.to_string()).unwrap());
                }
                let _ = req.respond(resp);
            }
        });
        HttpReceiver { server, inbox, handle: Some(handle), port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ingest", self.port)
    }

    /// Distinct seqs received, sorted.
    pub fn seqs(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.inbox.lock().unwrap().records.iter().map(|r| r.0).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Records received, duplicates included.
    pub fn received(&self) -> usize {
        self.inbox.lock().unwrap().records.len()
    }

    /// Stops accepting and waits for the server thread.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.server.unblock();
    }
}
