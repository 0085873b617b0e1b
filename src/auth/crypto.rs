//! The JWT crypto provider: jsonwebtoken's aws-lc-rs provider, except that ECDSA public keys are
//! parsed once and kept (jsonwebtoken re-parses the key bytes on every verification, which is
//! about a third of an ES256 check). Installed once per process before the first verification.

use aws_lc_rs::signature::{
    ParsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED,
};
use jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, KeyUtils};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// Parsed keys kept; keys come from configuration and JWKS, so this is never reached in
/// practice, but a bound keeps a misbehaving JWKS from growing it forever.
const MAX_KEYS: usize = 1024;

/// Parsed keys by (curve tag, key bytes).
type KeyMap = HashMap<(u8, Vec<u8>), Arc<ParsedPublicKey>>;

static PARSED: LazyLock<Mutex<KeyMap>> = LazyLock::new(|| Mutex::new(HashMap::new()));

struct EcVerifier {
    alg: Algorithm,
    key: Arc<ParsedPublicKey>,
}

impl signature::Verifier<Vec<u8>> for EcVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        self.key
            .verify_sig(msg, sig)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for EcVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn parsed(
    tag: u8,
    alg: &'static dyn VerificationAlgorithm,
    bytes: &[u8],
) -> jsonwebtoken::errors::Result<Arc<ParsedPublicKey>> {
    let mut m = PARSED.lock();
    if let Some(k) = m.get(&(tag, bytes.to_vec())) {
        return Ok(k.clone());
    }
    let k = Arc::new(ParsedPublicKey::new(alg, bytes).map_err(|_| {
        jsonwebtoken::errors::Error::from(jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey)
    })?);
    if m.len() >= MAX_KEYS {
        m.clear();
    }
    m.insert((tag, bytes.to_vec()), k.clone());
    Ok(k)
}

fn new_verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    let (tag, v): (u8, &'static dyn VerificationAlgorithm) = match alg {
        Algorithm::ES256 => (0, &ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => (1, &ECDSA_P384_SHA384_FIXED),
        _ => return (DEFAULT_PROVIDER.verifier_factory)(alg, key),
    };
    if key.family() != jsonwebtoken::AlgorithmFamily::Ec {
        return Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into());
    }
    let key = parsed(tag, v, key.try_get_as_bytes()?)?;
    Ok(Box::new(EcVerifier { alg: *alg, key }))
}

static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| {
    let k = &DEFAULT_PROVIDER.key_utils;
    CryptoProvider {
        signer_factory: DEFAULT_PROVIDER.signer_factory,
        verifier_factory: new_verifier,
        key_utils: KeyUtils {
            rsa_pub_components_from_private_key: k.rsa_pub_components_from_private_key,
            rsa_pub_components_from_public_key: k.rsa_pub_components_from_public_key,
            ec_pub_components_from_private_key: k.ec_pub_components_from_private_key,
            ed_pub_components_from_private_key: k.ed_pub_components_from_private_key,
            compute_digest: k.compute_digest,
        },
    }
});

/// Installs the provider (idempotent; a provider installed earlier by someone else stays).
pub fn install() {
    let _ = PROVIDER.install_default();
}
