//! The NATS JetStream transport (feature `nats`): one message per record on
//! the endpoint's subject, with `Nats-Msg-Id` = ring id and seq, so a
//! stream stores each record once however often it is sent within its
//! duplicate window. A batch is acknowledged in the ring only when the
//! stream's acknowledgement of every message came back. docs/TRANSPORTS.md
//! has the details.

mod client;

use std::net::{SocketAddr, ToSocketAddrs};

use super::{Batch, Endpoint, SendContext, SendError, Transport, TransportFactory, run_cancellable};
use client::{Auth, Conn};

/// Messages published before their acknowledgements are waited for.
const IN_FLIGHT: usize = 1024;

/// Settings of a [`NatsTransport`]; start from [`NatsConfig::default`]
/// (TLS as [`Tls::default`](crate::Tls::default) says, for `tls://`
/// endpoints and servers that require it).
#[derive(Debug, Clone, Default)]
pub struct NatsConfig {
    tls: crate::Tls,
}

impl NatsConfig {
    /// The TLS settings for `tls://` endpoints.
    #[must_use]
    pub fn tls(mut self, tls: crate::Tls) -> Self {
        self.tls = tls;
        self
    }
}

/// Publishes each batch to a NATS JetStream stream, a message per record,
/// each acknowledged by the stream: endpoints `nats://[user:password@]host:port[,host:port...]/subject`
/// (or `nats://token@...`), `tls://...` for TLS.
pub struct NatsTransport {
    config: NatsConfig,
    conn: Option<(String, Conn)>,
    /// Counts sends, so that a late acknowledgement of an earlier send is
    /// told apart.
    sends: u64,
    /// Where the next connect starts in the list of servers: after a
    /// failure, at the next one (a cluster's next node).
    next_server: usize,
    /// Servers of the cluster the last connection's server named.
    discovered: Vec<String>,
    tls: crate::tls::RustlsCache,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport").field("config", &self.config).finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// A transport with the given settings.
    pub fn new(config: NatsConfig) -> Self {
        NatsTransport {
            config,
            conn: None,
            sends: 0,
            next_server: 0,
            discovered: Vec::new(),
            tls: crate::tls::RustlsCache::default(),
        }
    }

    /// The factory to hand to
    /// [`ShipperBuilder::transport`](crate::ShipperBuilder::transport). It
    /// refuses (at `start` and at every switch) an endpoint that is not a
    /// `nats://` or `tls://` URL with at least one `host:port` and a
    /// subject without wildcards or spaces, and TLS files it cannot use.
    pub fn factory(config: NatsConfig) -> impl TransportFactory + 'static {
        NatsFactory(config)
    }
}

struct NatsFactory(NatsConfig);

impl TransportFactory for NatsFactory {
    fn make(&self) -> Result<Box<dyn Transport>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Box::new(NatsTransport::new(self.0.clone())))
    }

    fn check_endpoint(&self, endpoint: &Endpoint) -> crate::Result<()> {
        let target = Target::parse(&endpoint.address).map_err(|e| crate::Error::Config(e.message))?;
        if target.tls {
            let loaded = self.0.tls.load()?;
            self.0.tls.rustls_config(&loaded)?;
        }
        Ok(())
    }
}

/// A parsed endpoint.
struct Target {
    tls: bool,
    servers: Vec<String>,
    subject: String,
    auth: Auth,
}

impl Target {
    fn parse(address: &str) -> Result<Target, SendError> {
        let refuse = |why: &str| {
            Err(SendError::permanent(format!(
                "the NATS endpoint {:?} {why}: write nats://host:port[,host:port...]/subject (tls:// for TLS)",
                crate::redact::url(address)
            )))
        };
        let (tls, rest) = if let Some(rest) = address.strip_prefix("nats://") {
            (false, rest)
        } else if let Some(rest) = address.strip_prefix("tls://") {
            (true, rest)
        } else {
            return refuse("names no nats:// or tls:// scheme");
        };
        let Some((authority, subject)) = rest.split_once('/') else { return refuse("names no subject") };
        let (userinfo, hosts) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
        let auth = match userinfo {
            None => Auth::None,
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => Auth::User(user.to_owned(), pass.to_owned()),
                None => Auth::Token(u.to_owned()),
            },
        };
        let mut servers = Vec::new();
        for hostport in hosts.split(',') {
            let Some((host, port)) = hostport.rsplit_once(':') else { return refuse("names a server without a port") };
            if host.is_empty() || !matches!(port.parse::<u16>(), Ok(1..)) {
                return refuse("names a server that is not host:port");
            }
            servers.push(hostport.to_owned());
        }
        let valid_token = |t: &str| !t.is_empty() && !t.contains(['*', '>']) && t.bytes().all(|b| b > b' ' && b < 0x7f);
        if !subject.split('.').all(valid_token) {
            return refuse("has a subject that is empty, holds a wildcard (* or >), spaces or control characters");
        }
        Ok(Target { tls, servers, subject: subject.to_owned(), auth })
    }
}

impl NatsTransport {
    /// A connection to one of the endpoint's servers (or of the cluster
    /// members the last one named), the first that takes one.
    fn connect(&mut self, endpoint: &Endpoint, target: &Target, ctx: &SendContext) -> Result<&mut Conn, SendError> {
        if let Some((address, mut conn)) = self.conn.take() {
            if address == endpoint.address && !conn.stale() {
                self.conn = Some((address, conn));
                return Ok(&mut self.conn.as_mut().expect("kept").1);
            }
        }
        let mut last = SendError::retryable("no server to connect to");
        // The endpoint's servers, then the cluster members the last server
        // named; from the one after the last failure on.
        let mut servers = target.servers.clone();
        servers.extend(self.discovered.iter().filter(|d| !target.servers.contains(d)).cloned());
        let start = self.next_server % servers.len().max(1);
        servers.rotate_left(start);
        for (tried, server) in servers.into_iter().enumerate() {
            let tls = if target.tls {
                let host = server.rsplit_once(':').map_or(server.as_str(), |(h, _)| h);
                let (config, trust, name) = self.tls.get(&self.config.tls, host)?;
                Some((config, name, trust))
            } else {
                None
            };
            // The lookup, the connect and the handshakes run on a helper
            // thread: a cancellation is honoured at once.
            let (hostport, auth, until) =
                (server.clone(), target.auth.clone(), SendContext::until(ctx.deadline, ctx.cancel.clone()));
            let opened = run_cancellable("ringship-connect", ctx, move || {
                let addrs: Vec<SocketAddr> = hostport
                    .to_socket_addrs()
                    .map_err(|e| SendError::retryable(format!("resolving {hostport}: {e}")))?
                    .collect();
                let tcp = crate::transport::net::connect_any(&addrs, until.deadline)
                    .map_err(|e| SendError { message: format!("{hostport}: {}", e.message), ..e })?;
                Conn::open(tcp, hostport, &auth, tls, &until)
            });
            match opened {
                Ok(conn) => {
                    self.next_server = start + tried;
                    self.discovered.clone_from(&conn.info.connect_urls);
                    self.conn = Some((endpoint.address.clone(), conn));
                    return Ok(&mut self.conn.as_mut().expect("made").1);
                }
                Err(e) if e.kind == super::SendErrorKind::Permanent => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// One message to publish: its headers and payload.
type Message<'a> = (Vec<(&'static str, String)>, &'a [u8]);

/// What the stream said of one message.
enum Ack {
    Stored,
    /// Refused for good for this message alone (its size).
    Refused,
    /// Refused in a way every message would be (no stream, stream full,
    /// a JetStream error): the batch fails.
    Failed(SendError),
}

fn classify_ack(status: Option<u16>, payload: &[u8], subject: &str) -> Ack {
    if status == Some(503) {
        return Ack::Failed(SendError::permanent(format!(
            "no JetStream stream takes subject {subject} (no responders): create a stream on it, or fix the subject"
        )));
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return Ack::Failed(SendError::permanent(format!(
            "an acknowledgement that is not JetStream's ({}): is the subject a JetStream stream's?",
            crate::escape::sanitize(&String::from_utf8_lossy(payload))
        )));
    };
    if let Some(err) = v.get("error") {
        let code = err["err_code"].as_u64().unwrap_or(0);
        let description = err["description"].as_str().unwrap_or("no description").to_owned();
        // 10054: message size exceeds the stream's maximum.
        if code == 10054 || description.contains("message size exceeds") {
            return Ack::Refused;
        }
        return Ack::Failed(SendError::permanent(format!(
            "the stream refused a message: {description} (JetStream error {code})"
        )));
    }
    if v.get("stream").is_some() && v.get("seq").is_some() {
        return Ack::Stored;
    }
    Ack::Failed(SendError::permanent(format!(
        "an acknowledgement without a stream and seq: {}",
        crate::escape::sanitize(&v.to_string())
    )))
}

impl Transport for NatsTransport {
    fn send(&mut self, endpoint: &Endpoint, batch: &Batch, ctx: &SendContext) -> Result<(), SendError> {
        if ctx.cancel.is_cancelled() {
            return Err(SendError::cancelled());
        }
        let target = Target::parse(&endpoint.address)?;
        self.sends += 1;
        let send = self.sends;
        let ring = format!("{:016x}", batch.ring_id);
        // (headers, payload) of each message: the gap notice first.
        let mut messages: Vec<Message<'_>> = Vec::with_capacity(batch.records.len() + 1);
        if let Some(g) = &batch.gap {
            messages.push((
                vec![
                    ("Nats-Msg-Id", format!("{ring}-gap-{}-{}-{}-{}", g.first_seq, g.last_seq, g.rejected, g.refused)),
                    ("Ringship-Ring-Id", ring.clone()),
                    ("Ringship-Gap", format!("{}-{}", g.first_seq, g.last_seq)),
                    ("Ringship-Gap-Count", g.missing().to_string()),
                    ("Ringship-Gap-Cause", g.cause_label().to_owned()),
                    ("Ringship-Gap-Rejected", g.rejected.to_string()),
                    ("Ringship-Gap-Refused", g.refused.to_string()),
                    ("Ringship-Gap-Time", format!("{}-{}", g.first_ts, g.last_ts)),
                ],
                &[],
            ));
        }
        for r in &batch.records {
            messages.push((
                vec![
                    ("Nats-Msg-Id", format!("{ring}-{}", r.seq)),
                    ("Ringship-Ring-Id", ring.clone()),
                    ("Ringship-Seq", r.seq.to_string()),
                    ("Ringship-Ts", r.timestamp.to_string()),
                ],
                &r.payload,
            ));
        }
        let result = self.publish_all(endpoint, &target, send, &messages, ctx);
        if let Err(e) = &result {
            // Acknowledgements of this send may still come: a fresh
            // connection starts clean, on the next server if this one
            // failed.
            if let Some((_, conn)) = self.conn.take() {
                self.discovered.clone_from(&conn.info.connect_urls);
            }
            if e.kind != super::SendErrorKind::Permanent {
                self.next_server += 1;
            }
        }
        let refused = result?;
        if refused > 0 {
            ctx.refuse(refused);
        }
        Ok(())
    }
}

impl NatsTransport {
    /// Publishes every message, at most [`IN_FLIGHT`] unacknowledged at a
    /// time, and waits for every acknowledgement. Returns how many records
    /// the stream refused for their size (and those larger than the
    /// server takes at all, not sent).
    fn publish_all(
        &mut self,
        endpoint: &Endpoint,
        target: &Target,
        send: u64,
        messages: &[Message<'_>],
        ctx: &SendContext,
    ) -> Result<u64, SendError> {
        let conn = self.connect(endpoint, target, ctx)?;
        let reply_prefix = format!("{}.{send}.", conn.inbox);
        let mut acked = vec![false; messages.len()];
        let (mut next, mut waiting, mut refused) = (0, 0usize, 0u64);
        while acked.iter().any(|a| !a) {
            while next < messages.len() && waiting < IN_FLIGHT {
                let (headers, payload) = &messages[next];
                if Conn::message_len(headers, payload) > conn.info.max_payload {
                    // The server would close the connection over it.
                    acked[next] = true;
                    refused += 1;
                } else {
                    conn.publish(&target.subject, &format!("{reply_prefix}{next}"), headers, payload);
                    waiting += 1;
                }
                next += 1;
                if conn.queued() > 256 << 10 {
                    conn.flush(ctx)?;
                }
            }
            if waiting == 0 {
                break;
            }
            conn.flush(ctx)?;
            // One acknowledgement waited for, then every one already read:
            // the window refills in chunks, one write each.
            loop {
                let message = conn.next_message(ctx)?;
                let index = message.subject.strip_prefix(&reply_prefix).and_then(|i| i.parse::<usize>().ok());
                // None: an acknowledgement of an earlier send, come late.
                if let Some(index) = index.filter(|&i| i < messages.len() && !acked[i]) {
                    match classify_ack(message.status, &message.payload, &target.subject) {
                        Ack::Stored => {}
                        Ack::Refused => refused += 1,
                        Ack::Failed(e) => return Err(e),
                    }
                    acked[index] = true;
                    waiting -= 1;
                }
                if !conn.has_line() {
                    break;
                }
            }
        }
        // The gap notice is never refused for its size (it has no payload).
        Ok(refused)
    }
}
