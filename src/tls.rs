//! TLS settings shared by every transport (feature `tls`, on with `http`):
//! what to trust, the client certificate for mutual TLS, the name to
//! verify, the least version; and the files behind them, read when a
//! transport is made and read again when they change.
//!
//! The HTTP and OTLP transports hand these to ureq; the syslog and RELP
//! transports to rustls directly. Both use rustls with the `ring`
//! provider, so TLS 1.2 is the least version either speaks. A build with
//! only one of those transports uses only its half.
#![cfg_attr(not(all(feature = "http", feature = "syslog")), allow(dead_code))]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::transport::SendError;
use crate::{Error, Result};

/// The least TLS version a transport accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2 or 1.3 (the default).
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// TLS settings, the same for every transport that speaks TLS (HTTP, OTLP,
/// syslog over TLS, RELP over TLS); start from [`Tls::default`]: the
/// operating system's trusted CAs, no client certificate, the endpoint's
/// host name verified, TLS 1.2 or later. docs/TRANSPORTS.md has the
/// details.
///
/// Files are read when a transport is made, which refuses one missing or
/// unusable with [`Error::Config`] naming the file, and read again before
/// a new connection when one of them changed on disk, so a rotated client
/// certificate is used from the next connection on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    system_roots: bool,
    ca_files: Vec<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
    min_version: TlsVersion,
    skip_verification: bool,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            system_roots: true,
            ca_files: Vec::new(),
            client: None,
            server_name: None,
            min_version: TlsVersion::Tls12,
            skip_verification: false,
        }
    }
}

/// Where the operating system keeps its bundle of trusted CAs, by
/// distribution (Debian and Ubuntu, Fedora and RHEL, openSUSE, Alpine and
/// Arch); `SSL_CERT_FILE` comes first when set.
const SYSTEM_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
];

impl Tls {
    /// Whether to trust the operating system's CAs (its PEM bundle:
    /// `SSL_CERT_FILE` if set, else the distribution's usual path). On by
    /// default. With it off, only the [`ca_file`](Self::ca_file)s are
    /// trusted.
    #[must_use]
    pub fn system_roots(mut self, on: bool) -> Self {
        self.system_roots = on;
        self
    }

    /// Also trusts the CAs in this PEM bundle (a private CA). Called again,
    /// adds another. The compiled-in bundle of Mozilla's CAs is used only
    /// when no system bundle is found and no CA file is given.
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    /// Presents this certificate chain (PEM, the leaf first) with this
    /// private key (PEM, PKCS#8, PKCS#1 or SEC1, not encrypted) to servers
    /// that ask for one (mutual TLS). Both files are read again when either
    /// changes, so a rotated certificate is used from the next connection
    /// on.
    #[must_use]
    pub fn client_cert(mut self, cert_chain: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client = Some((cert_chain.into(), key.into()));
        self
    }

    /// Verifies the server's certificate for this name (and sends it as
    /// SNI) instead of the endpoint's host: for an endpoint given by IP
    /// address, or reached through a name its certificate does not carry.
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The least TLS version to accept (TLS 1.2 by default).
    #[must_use]
    pub fn min_version(mut self, version: TlsVersion) -> Self {
        self.min_version = version;
        self
    }

    /// **Dangerous**: accepts any server certificate, from anyone, for any
    /// name, so that anyone on the path can read and alter the telemetry.
    /// For a test bench only; off by default.
    #[must_use]
    pub fn danger_accept_invalid_certs(mut self, on: bool) -> Self {
        self.skip_verification = on;
        self
    }

    /// The name to verify the server's certificate for, if not the
    /// endpoint's host.
    pub(crate) fn name_override(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Reads the files and checks what they hold.
    ///
    /// # Errors
    /// [`Error::Config`] naming a file that is missing, not a file, or
    /// does not hold what it should (a key where a certificate belongs, an
    /// encrypted key, no certificate at all, a key that does not match the
    /// certificate), and a server name that is not a DNS name or an IP
    /// address.
    pub(crate) fn load(&self) -> Result<Loaded> {
        if let Some(name) = &self.server_name {
            rustls::pki_types::ServerName::try_from(name.as_str()).map_err(|_| {
                Error::Config(format!("the TLS server name {name:?} is not a DNS name or an IP address"))
            })?;
        }
        let mut stamps = Vec::new();
        let mut roots = Vec::new();
        let mut source = Roots::Given;
        if self.system_roots {
            if let Some(path) = system_bundle() {
                let pem = read_file(&path, "the system's CA bundle")?;
                stamps.push(Stamp::of(&path));
                // A system bundle may hold certificates rustls cannot use;
                // the CA store takes the others.
                roots.extend(CertificateDer::pem_slice_iter(&pem).filter_map(std::result::Result::ok));
                source = Roots::System(path);
            }
        }
        for path in &self.ca_files {
            let pem = read_file(path, "CA file")?;
            stamps.push(Stamp::of(path));
            let certs = certificates(path, &pem, "CA file")?;
            let mut store = rustls::RootCertStore::empty();
            for cert in &certs {
                store.add(cert.clone()).map_err(|e| {
                    Error::Config(format!("the CA file {} holds a certificate that is no CA: {e}", path.display()))
                })?;
            }
            roots.extend(certs);
        }
        if roots.is_empty() {
            if !self.ca_files.is_empty() || !self.system_roots {
                return Err(Error::Config(
                    "TLS trusts no CA: the system's bundle is off and no CA file is given".into(),
                ));
            }
            source = Roots::Compiled;
        }
        let mut key_pem = None;
        let client = match &self.client {
            None => None,
            Some((cert_path, key_path)) => {
                let pem = read_file(cert_path, "client certificate file")?;
                stamps.push(Stamp::of(cert_path));
                let chain = certificates(cert_path, &pem, "client certificate file")?;
                let key_pem_bytes = read_file(key_path, "client key file")?;
                stamps.push(Stamp::of(key_path));
                let key = private_key(key_path, &key_pem_bytes)?;
                let provider = provider(self.min_version);
                rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| {
                    Error::Config(format!(
                        "the client key file {} does not go with the certificate in {}: {e}",
                        key_path.display(),
                        cert_path.display()
                    ))
                })?;
                key_pem = Some(key_pem_bytes);
                Some((chain, key))
            }
        };
        Ok(Loaded { roots, source, client, key_pem, stamps })
    }

    /// A rustls client configuration (the syslog transports').
    pub(crate) fn rustls_config(&self, loaded: &Loaded) -> Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(provider(self.min_version));
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
        let builder = if self.skip_verification {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        } else {
            builder.with_root_certificates(loaded.root_store())
        };
        let config = match &loaded.client {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| Error::Config(format!("TLS client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// The ureq TLS configuration (the HTTP and OTLP transports').
    #[cfg(feature = "http")]
    pub(crate) fn ureq_config(&self, loaded: &Loaded) -> ureq::tls::TlsConfig {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts};
        let roots: Vec<Certificate<'static>> =
            loaded.roots.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
        // The key from its PEM, checked by `load`: ureq takes it only so.
        let client = loaded.client.as_ref().zip(loaded.key_pem.as_deref()).and_then(|((chain, _), pem)| {
            let chain: Vec<Certificate<'static>> =
                chain.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
            PrivateKey::from_pem(pem).ok().map(|key| ClientCert::new_with_certs(&chain, key))
        });
        let roots = match loaded.source {
            Roots::Compiled => RootCerts::WebPki,
            _ => RootCerts::new_with_certs(&roots),
        };
        ureq::tls::TlsConfig::builder()
            .root_certs(roots)
            .client_cert(client)
            .disable_verification(self.skip_verification)
            .unversioned_rustls_crypto_provider(Arc::new(provider(self.min_version)))
            .build()
    }
}

/// A rustls client configuration made from a [`Tls`] (the socket
/// transports'), made again when a file behind it changed (a rotated
/// client certificate).
#[derive(Default)]
pub(crate) struct RustlsCache {
    made: Option<(Arc<rustls::ClientConfig>, Loaded)>,
}

impl RustlsCache {
    /// The configuration, which CAs it trusts (for errors), and the name
    /// to verify the server at `host` for.
    ///
    /// # Errors
    /// A permanent failure for files that cannot be used (changed since
    /// the factory checked them) or a name that is none.
    pub(crate) fn get(
        &mut self,
        tls: &Tls,
        host: &str,
    ) -> std::result::Result<(Arc<rustls::ClientConfig>, String, rustls::pki_types::ServerName<'static>), SendError>
    {
        if self.made.as_ref().is_some_and(|(_, loaded)| loaded.changed()) {
            self.made = None;
        }
        if self.made.is_none() {
            let fail = |e: Error| SendError::permanent(e.to_string());
            let loaded = tls.load().map_err(fail)?;
            let config = tls.rustls_config(&loaded).map_err(fail)?;
            self.made = Some((config, loaded));
        }
        let (config, loaded) = self.made.as_ref().expect("made");
        let name = tls.name_override().unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|_| {
            SendError::permanent(format!("the TLS server name {name:?} is not a DNS name or an IP address"))
        })?;
        Ok((Arc::clone(config), loaded.trust(), name))
    }
}

/// The `ring` provider, with only TLS 1.3's cipher suites when that is the
/// least version: rustls offers no version it has no suite for.
fn provider(min: TlsVersion) -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if min == TlsVersion::Tls13 {
        provider.cipher_suites.retain(|s| s.version() == &rustls::version::TLS13);
    }
    provider
}

/// What a [`Tls`] read from its files.
pub(crate) struct Loaded {
    roots: Vec<CertificateDer<'static>>,
    source: Roots,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// The client key's PEM.
    key_pem: Option<Vec<u8>>,
    stamps: Vec<Stamp>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("roots", &self.roots.len())
            .field("source", &self.source)
            .field("client", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl Loaded {
    /// Whether a file behind this changed on disk since it was read.
    pub(crate) fn changed(&self) -> bool {
        self.stamps.iter().any(|s| Stamp::of(&s.path) != *s)
    }

    fn root_store(&self) -> rustls::RootCertStore {
        if let Roots::Compiled = self.source {
            return rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        }
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(self.roots.iter().cloned());
        store
    }

    /// Where the trusted CAs come from, for error messages.
    pub(crate) fn trust(&self) -> String {
        match &self.source {
            Roots::System(path) => format!("the system's CAs ({}) and any CA file given", path.display()),
            Roots::Given => "the CA files given".into(),
            Roots::Compiled => "the compiled-in Mozilla CAs (no system bundle was found)".into(),
        }
    }
}

#[derive(Debug, Clone)]
enum Roots {
    /// The system's bundle at this path (and any CA files).
    System(PathBuf),
    /// The CA files only.
    Given,
    /// webpki-roots: no system bundle, no CA file.
    Compiled,
}

/// What tells a file changed: its size, modification time and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    seen: Option<(u64, SystemTime, u64)>,
}

impl Stamp {
    fn of(path: &Path) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let seen =
            std::fs::metadata(path).ok().map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.ino()));
        Stamp { path: path.to_owned(), seen }
    }
}

fn system_bundle() -> Option<PathBuf> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    from_env.into_iter().chain(SYSTEM_BUNDLES.iter().map(PathBuf::from)).find(|p| p.is_file())
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    if path.is_dir() {
        return Err(Error::Config(format!("the TLS {what} {} is a directory, not a file", path.display())));
    }
    std::fs::read(path).map_err(|e| Error::Config(format!("the TLS {what} {} cannot be read: {e}", path.display())))
}

/// The certificates of a PEM file, or why it holds none usable.
fn certificates(path: &Path, pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("the TLS {what} {} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        let holds_key = PrivateKeyDer::from_pem_slice(pem).is_ok() || contains(pem, b"PRIVATE KEY-----");
        let why = if holds_key {
            "holds a private key where certificates belong"
        } else if pem.iter().all(u8::is_ascii_whitespace) {
            "is empty"
        } else {
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        };
        return Err(Error::Config(format!("the TLS {what} {} {why}", path.display())));
    }
    Ok(certs)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    if contains(pem, b"ENCRYPTED PRIVATE KEY") || contains(pem, b"Proc-Type: 4,ENCRYPTED") {
        return Err(Error::Config(format!(
            "the TLS client key file {} holds an encrypted key: ringship takes no passphrase; give it decrypted \
             (openssl pkey -in KEY -out KEY.plain), readable by this service only",
            path.display()
        )));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let why = if CertificateDer::pem_slice_iter(pem).next().is_some() {
            "holds a certificate where the private key belongs".to_owned()
        } else if pem.iter().all(u8::is_ascii_whitespace) {
            "is empty".to_owned()
        } else {
            format!("holds no PEM private key ({e})")
        };
        Error::Config(format!("the TLS client key file {} {why}", path.display()))
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The verifier of [`Tls::danger_accept_invalid_certs`]: every certificate
/// passes; signatures are still checked, so the handshake itself is sound.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS failure a server's certificate or settings cause, as a permanent
/// send error naming the cause and what to change; `None` for anything
/// else. `trust` says which CAs were trusted.
pub(crate) fn failure(error: &str, trust: &str) -> Option<SendError> {
    const BAD_CERTIFICATE: &str = "invalid peer certificate: ";
    if let Some(at) = error.find(BAD_CERTIFICATE) {
        let reason = crate::escape::sanitize(&error[at + BAD_CERTIFICATE.len()..]);
        let hint = if reason.contains("CaUsedAsEndEntity") {
            "the server presents a CA certificate as its own, as a self-signed one often is: give the server a \
             certificate its CA issued, and that CA with Tls::ca_file"
        } else if reason.contains("UnknownIssuer") {
            "no trusted CA issued it: give its CA with Tls::ca_file"
        } else if reason.contains("expired") || reason.contains("Expired") {
            "it has expired: renew the server's certificate"
        } else if reason.contains("not valid yet") || reason.contains("NotValidYet") {
            "it is not valid yet: check the server's and this machine's clocks"
        } else if reason.contains("not valid for name") || reason.contains("NotValidForName") {
            "it is for another name: give the name it carries with Tls::server_name, or fix the certificate"
        } else {
            "fix the server's certificate"
        };
        return Some(SendError::permanent(format!(
            "the server's TLS certificate is not accepted: {reason}; {hint} (trusted: {trust})"
        )));
    }
    if error.contains("peer sent no certificates") {
        return Some(SendError::permanent(
            "the server sent no TLS certificate; fix the server's TLS settings (it must present a certificate \
             for the endpoint's host name)",
        ));
    }
    if let Some(at) = error.find("received fatal alert: ") {
        let alert = error[at + "received fatal alert: ".len()..].split_whitespace().next().unwrap_or_default();
        let hint = if CLIENT_CERT_REFUSALS.contains(&alert) {
            "it wants a client certificate it accepts (Tls::client_cert): one signed by a CA it trusts, still \
             valid"
        } else if HANDSHAKE_REFUSALS.contains(&alert) {
            "it takes no TLS version or cipher suite ringship offers, has no certificate for the name asked, \
             or wants a client certificate (Tls::client_cert)"
        } else {
            return None;
        };
        return Some(SendError::permanent(format!(
            "the server refused the TLS handshake ({alert}): {hint}; fix the TLS settings"
        )));
    }
    if let Some(at) = error.find("peer is incompatible: ") {
        return Some(SendError::permanent(format!(
            "the server's TLS is incompatible with ringship's ({}); fix the server's TLS settings",
            crate::escape::sanitize(&error[at + "peer is incompatible: ".len()..])
        )));
    }
    None
}

/// TLS alerts (as rustls names them) with which a server refuses a
/// handshake for good: no TLS version or cipher suite in common, no
/// certificate for the name asked.
const HANDSHAKE_REFUSALS: [&str; 4] =
    ["HandshakeFailure", "ProtocolVersion", "InsufficientSecurity", "UnrecognisedName"];

/// And those with which it refuses the client's certificate, or its
/// lack of one.
const CLIENT_CERT_REFUSALS: [&str; 9] = [
    "NoCertificate",
    "BadCertificate",
    "UnsupportedCertificate",
    "CertificateRevoked",
    "CertificateExpired",
    "CertificateUnknown",
    "UnknownCA",
    "AccessDenied",
    "CertificateRequired",
];
