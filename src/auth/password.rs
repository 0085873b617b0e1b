//! Password hashes of Basic credentials: argon2id (PHC string `$argon2id$...`) and bcrypt
//! (`$2a$`, `$2b$`, `$2y$`). Verification is deliberately slow, so callers run it on the blocking
//! pool and cache successes.

#[derive(Debug, Clone)]
pub enum PasswordHash {
    Argon2(String),
    Bcrypt(String),
}

impl PasswordHash {
    pub fn parse(s: &str) -> Result<PasswordHash, String> {
        if s.starts_with("$argon2") {
            argon2::PasswordHash::new(s)
                .map(|_| PasswordHash::Argon2(s.to_string()))
                .map_err(|e| format!("invalid argon2 hash: {e}"))
        } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| s.starts_with(p)) {
            s.parse::<bcrypt::HashParts>()
                .map(|_| PasswordHash::Bcrypt(s.to_string()))
                .map_err(|e| format!("invalid bcrypt hash: {e}"))
        } else {
            Err(
                "expected an argon2id (`$argon2id$...`) or bcrypt (`$2b$...`) hash; \
                 plain passwords are not accepted"
                    .into(),
            )
        }
    }

    /// Checks a password (CPU-heavy: milliseconds).
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Argon2(h) => {
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(h).is_ok_and(|parsed| {
                    argon2::Argon2::default()
                        .verify_password(password, &parsed)
                        .is_ok()
                })
            }
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        }
    }
}
