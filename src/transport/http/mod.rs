//! The HTTP(S) transport: one POST per batch, on ureq with rustls.
//!
//! Every request carries the batch's seq range and gap notice in headers,
//! so a receiver can de-duplicate (delivery is at-least-once) and see
//! losses:
//!
//! | header | value |
//! |---|---|
//! | `X-Ringship-Ring-Id` | the ring's id, 16 hex digits: receivers de-duplicate by (ring id, seq) |
//! | `X-Ringship-First-Seq`, `X-Ringship-Last-Seq` | the batch's seq range |
//! | `X-Ringship-Count` | records in the body |
//! | `X-Ringship-Gap` | `first-last; count=N; cause=overwritten; rejected=R; refused=F; first-ts=T; last-ts=T` when records before the batch were lost, or refused at append or by the receiver |
//!
//! 2xx acknowledges the batch. 408, 429, 5xx and connection errors are
//! retried (honouring `Retry-After`, in seconds or as a date); any other status is
//! non-retryable: the records stay in the ring and the error shows in
//! health and stats. Redirects are not followed (a redirected POST becomes
//! a GET without the batch): a 3xx is non-retryable too, and so is a server
//! certificate TLS verification refuses, or a handshake the server refuses.

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use base64::Engine as _;

use super::{Batch, Endpoint, SendContext, SendError, Transport, TransportFactory, run_cancellable};

mod json;

/// How records are laid out in the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BodyFormat {
    /// One JSON object a line (`application/x-ndjson`):
    /// `{"seq":1,"ts":1700000000000000000,"msg":"..."}`; a payload that is
    /// not UTF-8 goes in `"msg_b64"` instead of `"msg"`, and with
    /// [`HttpConfig::embed_json`] a payload that is one JSON value goes as
    /// is in `"json"`.
    #[default]
    NewlineDelimited,
    /// Byte-exact (`application/x-ringship-records`): per record, u64 seq,
    /// u64 timestamp, u32 length (little-endian), then the payload.
    LengthPrefixed,
}

/// Settings of an [`HttpTransport`]; start from [`HttpConfig::default`]
/// (newline-delimited JSON, payloads as strings, no gzip, TLS
/// certificates verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    format: BodyFormat,
    embed_json: bool,
    gzip: bool,
    verify_tls: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { format: BodyFormat::default(), embed_json: false, gzip: false, verify_tls: true }
    }
}

impl HttpConfig {
    /// The body layout.
    #[must_use]
    pub fn format(mut self, format: BodyFormat) -> Self {
        self.format = format;
        self
    }

    /// In newline-delimited JSON, sends a payload that is one JSON value on
    /// one line (as the front-ends' records are) as is, under `"json"`,
    /// instead of as a string under `"msg"`: the receiver parses it once,
    /// and the key says which records were embedded. Other payloads keep
    /// `"msg"` or `"msg_b64"`. Off by default.
    #[must_use]
    pub fn embed_json(mut self, on: bool) -> Self {
        self.embed_json = on;
        self
    }

    /// Compresses bodies with gzip (`Content-Encoding: gzip`).
    #[must_use]
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// Verifies the server's TLS certificate (on by default; turn it off
    /// only for tests).
    #[must_use]
    pub fn verify_tls(mut self, on: bool) -> Self {
        self.verify_tls = on;
        self
    }
}

/// POSTs each batch to the endpoint's URL.
pub struct HttpTransport {
    agent: ureq::Agent,
    config: HttpConfig,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport").field("config", &self.config).finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport with the given settings.
    pub fn new(config: HttpConfig) -> Self {
        HttpTransport { agent: agent(config.verify_tls), config }
    }

    /// The factory to hand to
    /// [`ShipperBuilder::transport`](crate::ShipperBuilder::transport): it
    /// makes transports with `config`, and refuses an endpoint that is not
    /// an `http://` or `https://` URL with a host (and a valid port, if it
    /// names one), or whose headers name one the transport sets itself.
    pub fn factory(config: HttpConfig) -> impl TransportFactory + 'static {
        HttpFactory(config)
    }
}

/// The agent of the HTTP-based transports: a status is an answer, not an
/// error, and redirects are not followed.
pub(crate) fn agent(verify_tls: bool) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder().disable_verification(!verify_tls).build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Following a 301, 302 or 303 turns the POST into a GET without
        // the body, and a 2xx from the redirect's target would then ack
        // a batch nobody received. A 3xx fails the send instead.
        .max_redirects(0)
        .tls_config(tls)
        .user_agent(concat!("ringship/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// `body` compressed with gzip.
pub(crate) fn gzip(body: &[u8]) -> Result<Vec<u8>, SendError> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body).map_err(|e| SendError::permanent(format!("gzip: {e}")))?;
    gz.finish().map_err(|e| SendError::permanent(format!("gzip: {e}")))
}

struct HttpFactory(HttpConfig);

impl TransportFactory for HttpFactory {
    fn make(&self) -> Result<Box<dyn Transport>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Box::new(HttpTransport::new(self.0.clone())))
    }

    fn check_endpoint(&self, endpoint: &Endpoint) -> crate::Result<()> {
        check_url(&endpoint.address)?;
        check_headers(endpoint).map_err(|e| crate::Error::Config(e.message))
    }
}

/// Refuses what is not an absolute `http` or `https` URL with a host.
pub(crate) fn check_url(address: &str) -> crate::Result<()> {
    let refuse = |why: &str| Err(crate::Error::Config(format!("the endpoint {address:?} is not an HTTP URL: {why}")));
    let uri = match address.parse::<ureq::http::Uri>() {
        Ok(uri) => uri,
        Err(e) => return refuse(&e.to_string()),
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return refuse(&format!("the scheme is {other:?}, not http or https")),
        None => return refuse("it names no scheme (http:// or https://)"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return refuse("it names no host");
    }
    // The parser takes any digits as a port; a port above 65,535 fails at
    // every send.
    if let Some(port) = uri.authority().and_then(|a| a.as_str().rsplit_once(':')).map(|(_, p)| p) {
        if !port.is_empty() && !port.ends_with(']') && port.parse::<u16>().is_err() {
            return refuse(&format!("the port {port:?} is not a number from 0 to 65535"));
        }
    }
    Ok(())
}

/// Encodes the records of `batch` as `config` says.
pub(crate) fn encode_body(batch: &Batch, config: &HttpConfig) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.payload_bytes() + batch.records.len() * 48);
    match config.format {
        BodyFormat::LengthPrefixed => {
            for r in &batch.records {
                out.extend_from_slice(&r.seq.to_le_bytes());
                out.extend_from_slice(&r.timestamp.to_le_bytes());
                out.extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
                out.extend_from_slice(&r.payload);
            }
        }
        BodyFormat::NewlineDelimited => {
            for r in &batch.records {
                let _ = write!(out, "{{\"seq\":{},\"ts\":{},", r.seq, r.timestamp);
                if config.embed_json && json::is_one_line_json(&r.payload) {
                    out.extend_from_slice(b"\"json\":");
                    out.extend_from_slice(&r.payload);
                    out.extend_from_slice(b"}\n");
                    continue;
                }
                if let Ok(text) = std::str::from_utf8(&r.payload) {
                    out.extend_from_slice(b"\"msg\":\"");
                    crate::escape::json_escape(&mut out, text.as_bytes());
                } else {
                    out.extend_from_slice(b"\"msg_b64\":\"");
                    out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(&r.payload).as_bytes());
                }
                out.push(b'"');
                out.extend_from_slice(b"}\n");
            }
        }
    }
    out
}

/// The `X-Ringship-Gap` header value for a batch, if it has a gap notice.
pub(crate) fn gap_header(batch: &Batch) -> Option<String> {
    batch.gap.map(|g| {
        format!(
            "{}-{}; count={}; cause={}; rejected={}; refused={}; first-ts={}; last-ts={}",
            g.first_seq,
            g.last_seq,
            g.missing(),
            g.cause_label(),
            g.rejected,
            g.refused,
            g.first_ts,
            g.last_ts
        )
    })
}

/// Largest answer body read; a longer one closes the connection.
pub(crate) const MAX_ANSWER: u64 = 64 << 10;
/// Characters of a refusal's answer kept in the error message.
const MAX_REASON: usize = 200;

/// `text` (a receiver's answer, an error) as one short line for an error
/// message, which ends up in health's `last_error` and in logs: the text of
/// an HTML page without its tags (and without its `script` and `style`
/// elements), each run of whitespace and control characters (line breaks
/// too) as one space, and at most [`MAX_REASON`] characters, `…` after a
/// cut. Crude, and meant to be: it is for a person to read.
pub(crate) fn sanitize(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let html = ["<html", "<!doctype", "</"].iter().any(|m| lower.contains(*m));
    let mut out = String::new();
    let mut space = false;
    let mut i = 0;
    while let Some(c) = text[i..].chars().next() {
        if html && c == '<' {
            // To the end of the tag, or of the element for a script or a
            // style. (`lower` has the same character boundaries as `text`.)
            let from = ["script", "style"]
                .iter()
                .find(|name| lower[i + 1..].starts_with(**name))
                .and_then(|name| lower[i..].find(&format!("</{name}")))
                .map_or(i, |at| i + at);
            i = text[from..].find('>').map_or(text.len(), |at| from + at + 1);
            space = true;
            continue;
        }
        i += c.len_utf8();
        if c.is_whitespace() || c.is_control() {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push(c);
    }
    let cut = out.char_indices().nth(MAX_REASON).map(|(at, _)| at);
    match cut {
        Some(cut) => format!("{}…", out[..cut].trim_end()),
        None => out,
    }
}

/// What rustls says before the reason it refused a server's certificate
/// (`invalid peer certificate: UnknownIssuer`); ureq wraps it in an I/O
/// error (`io: invalid peer certificate: ...`).
const BAD_CERTIFICATE: &str = "invalid peer certificate: ";
/// TLS alerts (as rustls names them) with which a server refuses a
/// handshake for good: no TLS version or cipher suite in common, no
/// certificate for the name asked, or a client certificate wanted.
const HANDSHAKE_REFUSALS: [&str; 13] = [
    "HandshakeFailure",
    "ProtocolVersion",
    "InsufficientSecurity",
    "NoCertificate",
    "BadCertificate",
    "UnsupportedCertificate",
    "CertificateRevoked",
    "CertificateExpired",
    "CertificateUnknown",
    "UnknownCA",
    "AccessDenied",
    "CertificateRequired",
    "UnrecognisedName",
];

/// What a request that got no answer says about the batch; `error` is its
/// error as text. A server certificate that TLS verification refused
/// (untrusted, self-signed, expired, for another name), or a handshake the
/// server refuses, fails the same way until the server or the
/// configuration changes: a permanent failure, saying what to fix, not a
/// transient one retried as if the next attempt could pass. Anything else
/// (a refused or reset connection, a failed lookup...) is retried.
pub(crate) fn request_failure(error: &str) -> SendError {
    if let Some(at) = error.find(BAD_CERTIFICATE) {
        let reason = sanitize(&error[at + BAD_CERTIFICATE.len()..]);
        let hint = if reason.contains("CaUsedAsEndEntity") {
            " (the server presents a CA certificate as its own, as a self-signed one often is)"
        } else if reason.contains("UnknownIssuer") {
            " (no trusted CA issued it: it is self-signed or from a private CA)"
        } else {
            ""
        };
        return SendError::permanent(format!(
            "the server's TLS certificate is not trusted: {reason}{hint}; fix the server's certificate: ringship \
             trusts the webpki roots (Mozilla's CAs) for the endpoint's host name, not a self-signed or \
             private-CA certificate"
        ));
    }
    if error.contains("peer sent no certificates") {
        return SendError::permanent(
            "the server sent no TLS certificate; fix the server's TLS settings (it must present a certificate \
             for the endpoint's host name)",
        );
    }
    if let Some(at) = error.find("received fatal alert: ") {
        let alert = error[at + "received fatal alert: ".len()..].split_whitespace().next().unwrap_or_default();
        if HANDSHAKE_REFUSALS.contains(&alert) {
            return SendError::permanent(format!(
                "the server refused the TLS handshake ({alert}): it takes no TLS version or cipher suite \
                 ringship offers, has no certificate for the endpoint's host name, or wants a client \
                 certificate, which ringship does not send; fix the server's TLS settings"
            ));
        }
    }
    if let Some(at) = error.find("peer is incompatible: ") {
        return SendError::permanent(format!(
            "the server's TLS is incompatible with ringship's ({}); fix the server's TLS settings",
            sanitize(&error[at + "peer is incompatible: ".len()..])
        ));
    }
    SendError::retryable(sanitize(error))
}

/// A `Retry-After` value: seconds, or an HTTP date (RFC 9110, 10.2.3),
/// which asks for the time until then (none if it has passed).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(value).ok().map(|at| at.duration_since(now).unwrap_or_default()),
    }
}

/// What a finished request says about the batch.
fn classify(status: u16, retry_after: Option<&str>) -> Result<(), SendError> {
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => {
            let mut e = SendError::retryable(format!("HTTP {status}"));
            if let Some(wait) = retry_after.and_then(|v| parse_retry_after(v, SystemTime::now())) {
                e = e.with_retry_after(wait);
            }
            Err(e)
        }
        300..=399 => Err(SendError::permanent(format!(
            "HTTP {status}: the endpoint redirects, and redirects are not followed (the POST would lose its \
             body); set the endpoint to the URL it redirects to"
        ))),
        413 => Err(SendError::too_large("HTTP 413: the endpoint refused the batch for its size")),
        _ => Err(SendError::permanent(format!("HTTP {status}: the endpoint refused the batch"))),
    }
}

/// Headers the transport sets itself: an endpoint header of the same name
/// (compared without case) would be sent as a second value, and the
/// receiver could take either.
const OWN_HEADERS: [&str; 9] = [
    "content-type",
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "x-ringship-ring-id",
    "x-ringship-first-seq",
    "x-ringship-last-seq",
    "x-ringship-count",
    "x-ringship-gap",
];

/// A permanent failure if `endpoint` sets one of [`OWN_HEADERS`].
fn check_headers(endpoint: &Endpoint) -> Result<(), SendError> {
    match endpoint.headers.iter().find(|(k, _)| OWN_HEADERS.iter().any(|own| k.eq_ignore_ascii_case(own))) {
        Some((k, _)) => Err(SendError::permanent(format!(
            "the endpoint sets header {k}, which the HTTP transport sets itself; remove it from the endpoint"
        ))),
        None => Ok(()),
    }
}

impl Transport for HttpTransport {
    fn send(&mut self, endpoint: &Endpoint, batch: &Batch, ctx: &SendContext) -> Result<(), SendError> {
        if ctx.cancel.is_cancelled() {
            return Err(SendError::cancelled());
        }
        check_headers(endpoint)?;
        let mut body = encode_body(batch, &self.config);
        if self.config.gzip {
            body = gzip(&body)?;
        }
        let content_type = match self.config.format {
            BodyFormat::NewlineDelimited => "application/x-ndjson",
            BodyFormat::LengthPrefixed => "application/x-ringship-records",
        };
        let mut req = self
            .agent
            .post(&endpoint.address)
            .header("Content-Type", content_type)
            .header("X-Ringship-Ring-Id", format!("{:016x}", batch.ring_id))
            .header("X-Ringship-First-Seq", batch.first_seq().to_string())
            .header("X-Ringship-Last-Seq", batch.last_seq().to_string())
            .header("X-Ringship-Count", batch.records.len().to_string());
        if self.config.gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        if let Some(gap) = gap_header(batch) {
            req = req.header("X-Ringship-Gap", gap);
        }
        for (k, v) in &endpoint.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.config().timeout_global(Some(ctx.remaining().max(Duration::from_millis(1)))).build();
        // The request runs on a helper thread so that a cancellation is
        // honoured at once; the helper ends by the deadline at the latest.
        run_cancellable("ringship-http", ctx, move || match req.send(&body[..]) {
            Ok(mut resp) => {
                let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                // Read the answer to its end (up to `MAX_ANSWER`): only then
                // is the connection kept for the next batch. A refusal's
                // answer usually says why: it goes into the error.
                let answer = resp.body_mut().with_config().limit(MAX_ANSWER).read_to_vec().unwrap_or_default();
                classify(resp.status().as_u16(), retry_after.as_deref()).map_err(|mut e| {
                    // One short line: an HTML error page's tags and line
                    // breaks do not belong in health and logs.
                    let why = sanitize(&String::from_utf8_lossy(&answer));
                    if !why.is_empty() {
                        e.message = format!("{}: {why}", e.message);
                    }
                    e
                })
            }
            Err(ureq::Error::Timeout(_)) => Err(SendError::timed_out()),
            // The endpoint's URL or headers: sending again cannot help.
            Err(e @ (ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl)) => {
                Err(SendError::permanent(format!("the endpoint's URL or headers are invalid: {e}")))
            }
            // A TLS certificate or handshake the server will fail again is
            // permanent; the rest is retried.
            Err(e) => Err(request_failure(&e.to_string())),
        })
    }
}

#[cfg(test)]
mod tests;
