//! Listener certificates chosen by SNI. Each certificate serves the names listed in the config or,
//! by default, the DNS names of its subjectAltName; `*.example.com` names match one label. A
//! client without SNI, or with an unknown name, gets the first certificate.

use crate::common::defaults as d;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// Loads and checks every certificate; errors name the file.
    pub fn load(certs: &[CertKey]) -> Result<SniResolver, (usize, String)> {
        pingora::tls::install_default_crypto_provider();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for (i, c) in certs.iter().enumerate() {
            let (key, names) = load_one(c).map_err(|m| (i, m))?;
            let key = Arc::new(key);
            for n in names {
                let n = n.to_ascii_lowercase();
                match n.strip_prefix("*.") {
                    Some(suffix) => wildcard
                        .entry(suffix.to_string())
                        .or_insert_with(|| key.clone()),
                    None => exact.entry(n).or_insert_with(|| key.clone()),
                };
            }
            default.get_or_insert(key);
        }
        let default = default.ok_or((0, "no certificate".to_string()))?;
        Ok(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

fn load_one(c: &CertKey) -> Result<(CertifiedKey, Vec<String>), String> {
    let cert_pem =
        std::fs::read(&c.cert).map_err(|e| format!("cannot read certificate {}: {e}", c.cert))?;
    let key_pem = std::fs::read(&c.key).map_err(|e| format!("cannot read key {}: {e}", c.key))?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{} holds no PEM certificate", c.cert))?
        .clone();
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| format!("{} holds no PEM private key", c.key))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key {}: {e}", c.key))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("key {} does not match certificate {}: {e}", c.key, c.cert))?;
    let names = if c.names.is_empty() {
        san_names(&leaf)
    } else {
        c.names.clone()
    };
    Ok((certified, names))
}

fn san_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                out.push(d.to_string());
            }
        }
    }
    out
}

/// The verifier of client certificates for a listener with `client_auth` set.
pub fn client_verifier(
    ca_file: &str,
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read {ca_file}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        let c = c.map_err(|e| format!("{ca_file}: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("{ca_file}: unusable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{ca_file} holds no CA certificate"));
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    );
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| format!("client CA: {e}"))
}

/// Parses the client's leaf certificate once per connection, after the handshake (which already
/// verified it); the result travels with the connection digest to every request on it.
pub fn client_cert_facts(der: &[u8]) -> Option<crate::context::ClientCert> {
    use sha2::Digest;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject_cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(String::from);
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            use x509_parser::extensions::GeneralName;
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        Some(s.to_string())
                    }
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => <[u8; 4]>::try_from(*b)
                            .ok()
                            .map(|a| std::net::IpAddr::from(a).to_string()),
                        16 => <[u8; 16]>::try_from(*b)
                            .ok()
                            .map(|a| std::net::IpAddr::from(a).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let sha256 = sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(crate::context::ClientCert {
        subject_cn,
        sans,
        sha256,
    })
}

/// Pingora TLS callbacks of listeners: record the verified client certificate's facts.
pub struct ClientCertCallbacks;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for ClientCertCallbacks {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        let facts = client_cert_facts(der)?;
        Some(Arc::new(Arc::new(facts)))
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificates; the one whose names match the client's SNI is served, the first otherwise.
    pub certificates: Vec<CertKey>,
    /// Offer HTTP/2 by ALPN.
    #[serde(default = "d::yes")]
    pub http2: bool,
    /// Client certificates (mutual TLS): `none`, `optional` (verified when presented) or
    /// `required` (the handshake fails without a valid one).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM bundle of the CAs that issue client certificates.
    #[serde(default)]
    pub client_ca: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertKey {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Server names served with this certificate; read from the certificate's SANs when absent.
    #[serde(default)]
    pub names: Vec<String>,
}
