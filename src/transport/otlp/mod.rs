//! The OTLP/HTTP transport: each batch's log records as one
//! `ExportLogsServiceRequest`, in protobuf or OTLP's JSON, sent by POST to
//! the collector's logs URL (`http://collector:4318/v1/logs`), and its
//! spans (the OpenTelemetry front-end's) as one `ExportTraceServiceRequest`
//! to the traces URL beside it (`.../v1/traces`).
//!
//! Statuses as the OTLP specification says: 429, 502, 503 and 504 are
//! retried, honouring `Retry-After`; 413 halves the batch (one record
//! refused so is counted refused); every other answer is permanent. A 200
//! with `partial_success` acknowledges the batch and counts the records
//! the collector rejected as refused (`SendContext::refuse`); a 200 whose
//! body is not an OTLP answer, or claims more rejections than the batch
//! held, acknowledges nothing.

use std::time::{Duration, SystemTime};

use super::http::{Client, MAX_ANSWER, Proxy, check_url, gzip, parse_retry_after, request_failure, sanitize};
use super::{Batch, Endpoint, SendContext, SendError, Transport, TransportFactory, run_cancellable};
use crate::tls::Tls;

mod encode;
#[cfg(test)]
mod tests;

use encode::{Envelope, Parts, Value};

/// How an [`OtlpTransport`] encodes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OtlpEncoding {
    /// Protobuf, `Content-Type: application/x-protobuf` (OTLP's default).
    #[default]
    Protobuf,
    /// OTLP's JSON mapping, `Content-Type: application/json`.
    Json,
}

/// Settings of an [`OtlpTransport`]; start from [`OtlpConfig::default`]
/// (protobuf, no gzip, no resource attributes, spans as traces, TLS as
/// [`Tls::default`] says, no proxy).
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    encoding: OtlpEncoding,
    gzip: bool,
    resource: Vec<(String, Value)>,
    traces: bool,
    tls: Tls,
    proxy: Proxy,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            encoding: OtlpEncoding::default(),
            gzip: false,
            resource: Vec::new(),
            traces: true,
            tls: Tls::default(),
            proxy: Proxy::none(),
        }
    }
}

impl OtlpConfig {
    /// The request encoding.
    #[must_use]
    pub fn encoding(mut self, encoding: OtlpEncoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Compresses requests with gzip (`Content-Encoding: gzip`), which
    /// every OTLP receiver takes.
    #[must_use]
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// Adds a resource attribute with a string value (`service.name`,
    /// `service.version`, `host.name`...), sent with every request. Set
    /// again, a key keeps its last value. An empty key is refused when
    /// the shipper starts.
    #[must_use]
    pub fn resource(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.resource.retain(|(k, _)| *k != key);
        self.resource.push((key, Value::Str(value.into())));
        self
    }

    /// Sends the OpenTelemetry front-end's spans (`RingSpanProcessor`) as
    /// traces, to the traces URL beside the endpoint's logs URL (its path's
    /// final `/v1/logs` made `/v1/traces`); on by default. Off, they go as
    /// log records, their JSON as the body, and the endpoint's URL may
    /// have any path.
    #[must_use]
    pub fn traces(mut self, on: bool) -> Self {
        self.traces = on;
        self
    }

    /// The TLS settings ([`Tls::default`]: the system's CAs, no client
    /// certificate).
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// The proxy ([`Proxy::none`] by default).
    #[must_use]
    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.proxy = proxy;
        self
    }

    fn check(&self, endpoint: &Endpoint) -> crate::Result<()> {
        if self.resource.iter().any(|(k, _)| k.trim().is_empty()) {
            return Err(crate::Error::Config("an OTLP resource attribute has an empty key".into()));
        }
        check_url(&endpoint.address)?;
        Client::check(&self.tls, &self.proxy)?;
        if self.traces && traces_url(&endpoint.address).is_none() {
            return Err(crate::Error::Config(format!(
                "the OTLP endpoint {:?} is not a logs URL ending in /v1/logs, from which the traces URL is made; \
                 give the collector's logs URL, or turn spans as traces off with OtlpConfig::traces(false)",
                crate::redact::url(&endpoint.address)
            )));
        }
        for (k, _) in &endpoint.headers {
            if k.eq_ignore_ascii_case("content-type") || k.eq_ignore_ascii_case("content-encoding") {
                return Err(crate::Error::Config(format!(
                    "the endpoint sets header {k}, which the OTLP transport sets itself; remove it from the endpoint"
                )));
            }
        }
        Ok(())
    }
}

/// The traces URL beside a logs URL: its path's final `/v1/logs` made
/// `/v1/traces`, the query kept.
fn traces_url(logs: &str) -> Option<String> {
    let (path, query) = logs.split_once('?').map_or((logs, None), |(p, q)| (p, Some(q)));
    let base = path.strip_suffix("/v1/logs")?;
    Some(match query {
        Some(q) => format!("{base}/v1/traces?{q}"),
        None => format!("{base}/v1/traces"),
    })
}

/// Ships each batch as an OTLP logs request (feature `otlp`): every record
/// a `LogRecord` with its payload as the body (a front-end's record with
/// its severity, message, fields and trace context in their places), its
/// timestamp, and the attributes `ringship.ring_id` and `ringship.seq`, by
/// which a collector can de-duplicate; a gap notice a WARN record of its
/// own (event name `ringship.gap`) before them. docs/TRANSPORTS.md has the
/// details.
pub struct OtlpTransport {
    client: Client,
    config: OtlpConfig,
    /// A batch whose log records the collector took while its spans
    /// failed: sent again, only its spans go.
    logs_taken: Option<LogsTaken>,
}

/// A batch whose log records were taken, and how many the collector
/// rejected of them.
#[derive(Debug)]
struct LogsTaken {
    batch: BatchKey,
    rejected: u64,
}

/// What tells a batch sent again from another: where it went, its
/// records and its gap notice.
#[derive(Debug, PartialEq)]
struct BatchKey {
    address: String,
    ring_id: u64,
    seqs: Option<(u64, u64)>,
    count: usize,
    gap: Option<crate::transport::GapNotice>,
}

impl std::fmt::Debug for OtlpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpTransport").field("config", &self.config).finish_non_exhaustive()
    }
}

impl OtlpTransport {
    /// A transport with the given settings.
    pub fn new(config: OtlpConfig) -> Self {
        OtlpTransport { client: Client::new(config.tls.clone(), config.proxy.clone()), config, logs_taken: None }
    }

    /// The factory to hand to
    /// [`ShipperBuilder::transport`](crate::ShipperBuilder::transport). It
    /// refuses (at `start` and at every switch) an endpoint that is not an
    /// `http://` or `https://` URL with a host, one whose path does not end
    /// in `/v1/logs` while spans go as traces, one that sets
    /// `Content-Type` or `Content-Encoding`, and a config with a resource
    /// attribute whose key is empty.
    pub fn factory(config: OtlpConfig) -> impl TransportFactory + 'static {
        OtlpFactory(config)
    }
}

struct OtlpFactory(OtlpConfig);

impl TransportFactory for OtlpFactory {
    fn make(&self) -> Result<Box<dyn Transport>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Box::new(OtlpTransport::new(self.0.clone())))
    }

    fn check_endpoint(&self, endpoint: &Endpoint) -> crate::Result<()> {
        self.0.check(endpoint)
    }
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0))
}

/// Which request of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Logs,
    Traces,
}

impl Signal {
    fn items(self) -> &'static str {
        match self {
            Signal::Logs => "log records",
            Signal::Traces => "spans",
        }
    }
}

impl OtlpTransport {
    /// POSTs one export request; the number of its `sent` items the
    /// collector rejected, or why the request failed.
    fn post(
        &mut self,
        url: &str,
        endpoint: &Endpoint,
        mut body: Vec<u8>,
        signal: Signal,
        sent: u64,
        ctx: &SendContext,
    ) -> Result<u64, SendError> {
        let content_type = match self.config.encoding {
            OtlpEncoding::Protobuf => "application/x-protobuf",
            OtlpEncoding::Json => "application/json",
        };
        if self.config.gzip {
            body = gzip(&body)?;
        }
        let (agent, url, trust) = self.client.agent(url)?;
        let mut req = agent.post(&url).header("Content-Type", content_type);
        if self.config.gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        for (k, v) in &endpoint.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.config().timeout_global(Some(ctx.remaining().max(Duration::from_millis(1)))).build();
        let answer = run_cancellable("ringship-otlp", ctx, move || match req.send(&body[..]) {
            Ok(mut resp) => {
                let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let (retry_after, answer_type) = (header("retry-after"), header("content-type"));
                let status = resp.status().as_u16();
                let answer = match resp.body_mut().with_config().limit(MAX_ANSWER).read_to_vec() {
                    Ok(answer) => answer,
                    // An acceptance must be read whole: its partial_success
                    // may reject records.
                    Err(e) if (200..300).contains(&status) => {
                        return Err(SendError::retryable(format!(
                            "HTTP {status}, but its answer could not be read whole ({e}), so nothing is acknowledged"
                        )));
                    }
                    Err(_) => Vec::new(),
                };
                Ok((status, retry_after, answer_type, answer))
            }
            Err(ureq::Error::Timeout(_)) => Err(SendError::timed_out()),
            Err(e @ (ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl)) => {
                Err(SendError::permanent(format!("the endpoint's URL or headers are invalid: {e}")))
            }
            Err(e) => Err(request_failure(&e.to_string(), &trust)),
        })
        .map_err(|e| self.client.scrub(e))?;
        let (status, retry_after, answer_type, answer) = answer;
        // The answer in the encoding it says it is in, else the request's.
        let encoding = match answer_type.as_deref().map(|t| t.split(';').next().unwrap_or_default().trim()) {
            Some("application/json") => OtlpEncoding::Json,
            Some("application/x-protobuf") => OtlpEncoding::Protobuf,
            _ => self.config.encoding,
        };
        let rejected = classify(status, retry_after.as_deref(), &answer, encoding, signal)?;
        if rejected > sent {
            return Err(SendError::permanent(format!(
                "the collector's partial_success rejects {rejected} {} of the {sent} sent: not an answer to this \
                 request, so nothing is acknowledged",
                signal.items()
            )));
        }
        Ok(rejected)
    }
}

impl Transport for OtlpTransport {
    fn send(&mut self, endpoint: &Endpoint, batch: &Batch, ctx: &SendContext) -> Result<(), SendError> {
        if ctx.cancel.is_cancelled() {
            return Err(SendError::cancelled());
        }
        let parts = Parts::of(batch, self.config.traces, now_nanos());
        let envelope = Envelope { resource: self.config.resource.clone() };
        let json = self.config.encoding == OtlpEncoding::Json;
        let key = BatchKey {
            address: endpoint.address.clone(),
            ring_id: batch.ring_id,
            seqs: batch.records.first().zip(batch.records.last()).map(|(f, l)| (f.seq, l.seq)),
            count: batch.records.len(),
            gap: batch.gap,
        };
        // Log records (or, with no spans either, the empty request an
        // empty batch is), unless the collector took these already.
        let logs_rejected = match self.logs_taken.take() {
            Some(done) if done.batch == key => done.rejected,
            _ if parts.logs() == 0 && parts.spans() > 0 => 0,
            _ => {
                let body = if json { parts.logs_json(&envelope) } else { parts.logs_protobuf(&envelope) };
                self.post(&endpoint.address, endpoint, body, Signal::Logs, parts.logs() as u64, ctx)?
            }
        };
        let mut spans_rejected = 0;
        if parts.spans() > 0 {
            let Some(url) = traces_url(&endpoint.address) else {
                return Err(SendError::permanent("the endpoint's URL does not end in /v1/logs: no traces URL"));
            };
            let body = if json { parts.traces_json(&envelope) } else { parts.traces_protobuf(&envelope) };
            match self.post(&url, endpoint, body, Signal::Traces, parts.spans() as u64, ctx) {
                Ok(rejected) => spans_rejected = rejected,
                Err(e) => {
                    if parts.logs() > 0 {
                        self.logs_taken = Some(LogsTaken { batch: key, rejected: logs_rejected });
                    }
                    return Err(e);
                }
            }
        }
        // Which records were rejected is not said. Fewer than all log
        // records count among the batch's records (the gap record, well
        // formed, taken); all of them include the gap record, whose seqs
        // the next notice then names again.
        let gap_rejected = batch.gap.is_some() && logs_rejected == parts.logs() as u64;
        if gap_rejected {
            ctx.refuse_notice();
        }
        let records = batch.records.len() as u64;
        ctx.refuse((logs_rejected - u64::from(gap_rejected) + spans_rejected).min(records));
        Ok(())
    }
}

/// What an answer says: the records the collector rejected out of an
/// accepted request, or why the request failed.
fn classify(
    status: u16,
    retry_after: Option<&str>,
    answer: &[u8],
    encoding: OtlpEncoding,
    signal: Signal,
) -> Result<u64, SendError> {
    let why = || {
        let text = sanitize(&String::from_utf8_lossy(answer));
        if text.is_empty() { String::new() } else { format!(": {text}") }
    };
    match status {
        200..=299 => partial_success(answer, encoding, signal).map_err(|e| {
            let kind = match signal {
                Signal::Logs => "ExportLogsServiceResponse",
                Signal::Traces => "ExportTraceServiceResponse",
            };
            SendError::permanent(format!(
                "HTTP {status} with an answer that is not an OTLP {kind} ({e}), so nothing is acknowledged{}",
                why()
            ))
        }),
        429 | 502 | 503 | 504 => {
            let mut e = SendError::retryable(format!("HTTP {status}{}", why()));
            if let Some(wait) = retry_after.and_then(|v| parse_retry_after(v, SystemTime::now())) {
                e = e.with_retry_after(wait);
            }
            Err(e)
        }
        413 => Err(SendError::too_large(format!("HTTP 413: the collector refused the request for its size{}", why()))),
        _ => Err(SendError::permanent(format!(
            "HTTP {status}: the collector refused the request, and OTLP says not to retry it{}",
            why()
        ))),
    }
}

/// The rejected count of an `ExportLogsServiceResponse` or
/// `ExportTraceServiceResponse` (0 for an empty answer or one without
/// `partial_success`). Both put the count in field 1 of field 1.
fn partial_success(answer: &[u8], encoding: OtlpEncoding, signal: Signal) -> Result<u64, String> {
    if answer.iter().all(u8::is_ascii_whitespace) {
        return Ok(0);
    }
    match encoding {
        OtlpEncoding::Protobuf => protobuf_rejected(answer),
        OtlpEncoding::Json => json_rejected(answer, signal),
    }
}

fn json_rejected(answer: &[u8], signal: Signal) -> Result<u64, String> {
    let (camel, snake) = match signal {
        Signal::Logs => ("rejectedLogRecords", "rejected_log_records"),
        Signal::Traces => ("rejectedSpans", "rejected_spans"),
    };
    let v: serde_json::Value = serde_json::from_slice(answer).map_err(|e| format!("not JSON: {e}"))?;
    let Some(obj) = v.as_object() else { return Err("not a JSON object".into()) };
    let Some(partial) = obj.get("partialSuccess").or_else(|| obj.get("partial_success")) else {
        return Ok(0);
    };
    match partial.get(camel).or_else(|| partial.get(snake)) {
        None => Ok(0),
        Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(|| format!("{camel} is {n}")),
        Some(serde_json::Value::String(s)) => s.parse().map_err(|_| format!("{camel} is {s:?}")),
        Some(other) => Err(format!("{camel} is {other}")),
    }
}

/// Reads a protobuf varint at `*at`.
fn varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or("a varint runs past the end")?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err("a varint longer than 10 bytes".into())
}

/// Skips a field of wire type `wire` at `*at`.
fn skip(b: &[u8], at: &mut usize, wire: u64) -> Result<(), String> {
    let len = match wire {
        0 => return varint(b, at).map(|_| ()),
        1 => 8,
        2 => usize::try_from(varint(b, at)?).map_err(|_| "a length too large")?,
        5 => 4,
        other => return Err(format!("wire type {other}")),
    };
    *at = at.checked_add(len).filter(|&end| end <= b.len()).ok_or("a field runs past the end")?;
    Ok(())
}

fn protobuf_rejected(answer: &[u8]) -> Result<u64, String> {
    let mut at = 0;
    let mut rejected = 0;
    while at < answer.len() {
        let tag = varint(answer, &mut at)?;
        if tag == 0x0a {
            // partial_success: a message.
            let len = usize::try_from(varint(answer, &mut at)?).map_err(|_| "a length too large")?;
            let end = at.checked_add(len).filter(|&e| e <= answer.len()).ok_or("partial_success runs past the end")?;
            let inner = &answer[at..end];
            let mut i = 0;
            while i < inner.len() {
                let t = varint(inner, &mut i)?;
                if t == 0x08 {
                    let v = varint(inner, &mut i)?;
                    rejected = i64::try_from(v).ok().and_then(|v| u64::try_from(v).ok()).ok_or("a negative count")?;
                } else {
                    skip(inner, &mut i, t & 7)?;
                }
            }
            at = end;
        } else {
            skip(answer, &mut at, tag & 7)?;
        }
    }
    Ok(rejected)
}
