//! The `consumers` section: who calls, and the credentials that identify them. A leaf module
//! (no project imports), so that `auth` can read it without depending on the whole schema.

use schemars::JsonSchema;
use serde::Deserialize;

/// A known caller and its credentials.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique name; also what a JWT's consumer claim (`sub` by default) is matched against.
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// API keys, stored as SHA-256 digests.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyCredential>,
    /// Basic credentials.
    #[serde(default)]
    pub basic: Option<BasicCredential>,
    /// Client certificates (mTLS) that identify this consumer.
    #[serde(default)]
    pub certificates: Vec<CertIdentity>,
}

/// A client certificate, by one of its facts.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertIdentity {
    /// Subject common name.
    #[serde(default)]
    pub cn: Option<String>,
    /// A subjectAltName (DNS name, e-mail, URI or IP, as text).
    #[serde(default)]
    pub san: Option<String>,
    /// Hex SHA-256 fingerprint of the DER certificate.
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCredential {
    /// Hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    #[serde(default)]
    pub sha256: Option<String>,
    /// The key itself; only accepted as `${ENV_VAR}` so that keys stay out of files.
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    /// Defaults to the consumer name.
    #[serde(default)]
    pub username: Option<String>,
    /// argon2id (`$argon2id$...`) or bcrypt (`$2b$...`) hash of the password.
    pub password_hash: String,
}
