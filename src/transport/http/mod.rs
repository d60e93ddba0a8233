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
#[cfg(test)]
use crate::escape::MAX_REASON;
pub(crate) use crate::escape::sanitize;
use crate::tls::{Loaded, Tls};

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
/// (newline-delimited JSON, payloads as strings, no gzip, TLS as
/// [`Tls::default`] says, no proxy).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpConfig {
    format: BodyFormat,
    embed_json: bool,
    gzip: bool,
    tls: Tls,
    proxy: Proxy,
}

/// The proxy an HTTP-based transport sends through: none (the default),
/// the one the environment names, or one given. Its credentials never
/// appear in errors, health or `Debug` output.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Proxy(ProxyKind);

#[derive(Clone, PartialEq, Eq, Default)]
enum ProxyKind {
    #[default]
    None,
    FromEnv,
    Url(String),
}

impl Proxy {
    /// No proxy, whatever the environment says (the default).
    pub fn none() -> Self {
        Proxy(ProxyKind::None)
    }

    /// The proxy the environment names, if any: `ALL_PROXY`, `HTTPS_PROXY`
    /// or `HTTP_PROXY` (upper or lower case, the first set), except for
    /// hosts `NO_PROXY` lists; read when a transport is made.
    pub fn from_env() -> Self {
        Proxy(ProxyKind::FromEnv)
    }

    /// This proxy: `http://[user:password@]host:port` (HTTP `CONNECT`,
    /// for `http` and `https` endpoints alike) or `https://` (TLS to the
    /// proxy too).
    pub fn url(url: impl Into<String>) -> Self {
        Proxy(ProxyKind::Url(url.into()))
    }

    /// ureq's proxy setting.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for a URL that is no proxy
    /// URL (named without its credentials).
    pub(crate) fn for_ureq(&self) -> crate::Result<Option<ureq::Proxy>> {
        match &self.0 {
            ProxyKind::None => Ok(None),
            ProxyKind::FromEnv => Ok(ureq::Proxy::try_from_env()),
            ProxyKind::Url(url) => ureq::Proxy::new(url).map(Some).map_err(|e| {
                crate::Error::Config(format!("the proxy {} is not a proxy URL: {e}", crate::redact::url(url)))
            }),
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            ProxyKind::None => f.write_str("Proxy::none()"),
            ProxyKind::FromEnv => f.write_str("Proxy::from_env()"),
            ProxyKind::Url(url) => write!(f, "Proxy::url({:?})", crate::redact::url(url)),
        }
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

    /// The TLS settings ([`Tls::default`]: the system's CAs, no client
    /// certificate).
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// The proxy ([`Proxy::none`] by default: the environment's
    /// `HTTPS_PROXY` and the like are ignored unless [`Proxy::from_env`]
    /// asks for them).
    #[must_use]
    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.proxy = proxy;
        self
    }
}

/// POSTs each batch to the endpoint's URL.
pub struct HttpTransport {
    client: Client,
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
        HttpTransport { client: Client::new(config.tls.clone(), config.proxy.clone()), config }
    }

    /// The factory to hand to
    /// [`ShipperBuilder::transport`](crate::ShipperBuilder::transport): it
    /// makes transports with `config`, and refuses an endpoint that is not
    /// an `http://` or `https://` URL with a host (and a valid port, if it
    /// names one), or whose headers name one the transport sets itself;
    /// and, at `start` and at every switch, TLS files that cannot be used
    /// and a proxy URL that is none.
    pub fn factory(config: HttpConfig) -> impl TransportFactory + 'static {
        HttpFactory(config)
    }
}

/// The HTTP client of the HTTP-based transports: a ureq agent with the
/// TLS and proxy settings, made again when a TLS file changed on disk (a
/// rotated client certificate), so the next connection uses what the
/// files hold now.
pub(crate) struct Client {
    tls: Tls,
    proxy: Proxy,
    /// The agent, what its TLS files held, and (with a server name
    /// override) the origin (`scheme://host:port`) it was made for.
    made: Option<(ureq::Agent, Loaded, Option<String>)>,
    secrets: crate::redact::Secrets,
}

impl Client {
    pub(crate) fn new(tls: Tls, proxy: Proxy) -> Self {
        let mut secrets = crate::redact::Secrets::default();
        if let ProxyKind::Url(url) = &proxy.0 {
            secrets.add(url, &[]);
        }
        Client { tls, proxy, made: None, secrets }
    }

    /// `e` without the proxy's credentials (the endpoint's are the
    /// shipper's to scrub).
    pub(crate) fn scrub(&self, mut e: SendError) -> SendError {
        e.message = self.secrets.scrub(&e.message);
        e
    }

    /// Checks the settings as a factory does at `start` and at every
    /// switch.
    pub(crate) fn check(tls: &Tls, proxy: &Proxy) -> crate::Result<()> {
        tls.load()?;
        proxy.for_ureq().map(|_| ())
    }

    /// The agent for a request to `address`, the URL to give it, and which
    /// CAs it trusts (for error messages). With a server name override the
    /// URL names that server, which a resolver of the agent's own maps to
    /// the address's host: the name is the one verified, sent as SNI and
    /// in `Host`.
    ///
    /// # Errors
    /// A permanent failure if the TLS files (changed since the factory
    /// checked them) or the proxy cannot be used: the records stay until
    /// they are fixed.
    pub(crate) fn agent(&mut self, address: &str) -> Result<(ureq::Agent, String, String), SendError> {
        let name = self.tls.name_override().map(str::to_owned);
        let origin = address.split_once("://").map_or(address, |(scheme, rest)| {
            &address[..scheme.len() + 3 + rest.find(['/', '?', '#']).unwrap_or(rest.len())]
        });
        let stale = self.made.as_ref().is_some_and(|(_, loaded, made_for)| {
            loaded.changed() || (name.is_some() && made_for.as_deref() != Some(origin))
        });
        if stale {
            self.made = None;
        }
        let url = match &name {
            Some(name) => renamed(address, name)?,
            None => address.to_owned(),
        };
        if self.made.is_none() {
            let fail = |e: crate::Error| SendError::permanent(e.to_string());
            let loaded = self.tls.load().map_err(fail)?;
            let proxy = self.proxy.for_ureq().map_err(fail)?;
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                // Following a 301, 302 or 303 turns the POST into a GET
                // without the body, and a 2xx from the redirect's target
                // would then ack a batch nobody received. A 3xx fails the
                // send instead.
                .max_redirects(0)
                .tls_config(self.tls.ureq_config(&loaded))
                .proxy(proxy)
                .user_agent(concat!("ringship/", env!("CARGO_PKG_VERSION")))
                .build();
            let agent = match &name {
                Some(name) => {
                    let target = address.parse::<ureq::http::Uri>().map_err(|e| SendError::permanent(e.to_string()))?;
                    let resolver = Rename { name: name.clone(), target };
                    ureq::Agent::with_parts(config, ureq::unversioned::transport::DefaultConnector::new(), resolver)
                }
                None => config.into(),
            };
            self.made = Some((agent, loaded, name.is_some().then(|| origin.to_owned())));
        }
        let (agent, loaded, _) = self.made.as_ref().expect("made");
        Ok((agent.clone(), url, loaded.trust()))
    }
}

/// `address` with its host made `name`.
fn renamed(address: &str, name: &str) -> Result<String, SendError> {
    let uri = address.parse::<ureq::http::Uri>().map_err(|e| SendError::permanent(e.to_string()))?;
    let host = uri.host().ok_or_else(|| SendError::permanent("the endpoint's URL names no host"))?;
    let name = if name.contains(':') && !name.starts_with('[') { format!("[{name}]") } else { name.to_owned() };
    let (scheme, rest) = address.split_once("://").ok_or_else(|| SendError::permanent("no scheme"))?;
    let at = rest.find(host).ok_or_else(|| SendError::permanent("the endpoint's URL names no host"))?;
    Ok(format!("{scheme}://{}{name}{}", &rest[..at], &rest[at + host.len()..]))
}

/// Resolves the server name of [`Tls::server_name`] to the endpoint's own
/// host; any other host (a proxy's) as usual.
#[derive(Debug)]
struct Rename {
    name: String,
    target: ureq::http::Uri,
}

impl ureq::unversioned::resolver::Resolver for Rename {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let named = uri.host().is_some_and(|h| h.trim_start_matches('[').trim_end_matches(']') == self.name);
        let uri = if named { &self.target } else { uri };
        ureq::unversioned::resolver::DefaultResolver::default().resolve(uri, config, timeout)
    }
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
        check_headers(endpoint).map_err(|e| crate::Error::Config(e.message))?;
        Client::check(&self.0.tls, &self.0.proxy)
    }
}

/// Refuses what is not an absolute `http` or `https` URL with a host.
pub(crate) fn check_url(address: &str) -> crate::Result<()> {
    let refuse = |why: &str| {
        let shown = crate::redact::url(address);
        Err(crate::Error::Config(format!("the endpoint {shown:?} is not an HTTP URL: {why}")))
    };
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

/// What a request that got no answer says about the batch; `error` is its
/// error as text. A server certificate that TLS verification refused
/// (untrusted, self-signed, expired, for another name), or a handshake the
/// server refuses, fails the same way until the server or the
/// configuration changes: a permanent failure, saying what to fix, not a
/// transient one retried as if the next attempt could pass. Anything else
/// (a refused or reset connection, a failed lookup...) is retried.
pub(crate) fn request_failure(error: &str, trust: &str) -> SendError {
    if let Some(e) = crate::tls::failure(error, trust) {
        return e;
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
        let (agent, url, trust) = self.client.agent(&endpoint.address)?;
        let mut req = agent
            .post(&url)
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
        let sent = run_cancellable("ringship-http", ctx, move || match req.send(&body[..]) {
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
            Err(e) => Err(request_failure(&e.to_string(), &trust)),
        });
        sent.map_err(|e| self.client.scrub(e))
    }
}

#[cfg(test)]
mod tests;
