//! JWTs as a backend would mint them: HS256 with the gateway's secret by default, every claim
//! adjustable so tests can break exactly one rule at a time.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

/// The secret every test gateway is configured with (`GATEWAY__AUTH__JWT_SECRET`).
pub const TEST_SECRET: &str = "integration-test-secret-do-not-use-0123456789";

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock before 1970")
        .as_secs() as i64
}

#[derive(Clone)]
pub struct TokenBuilder {
    claims: Map<String, Value>,
    algorithm: Algorithm,
    secret: String,
}

impl TokenBuilder {
    /// A token for `sub` with `role`, no orgs yet, expiring in one hour.
    pub fn new(sub: &str, role: &str) -> Self {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(sub));
        claims.insert("role".into(), json!(role));
        claims.insert("orgs".into(), json!([]));
        claims.insert("exp".into(), json!(now_secs() + 3600));
        TokenBuilder {
            claims,
            algorithm: Algorithm::HS256,
            secret: TEST_SECRET.to_string(),
        }
    }

    /// Adds one org to the token's `orgs`.
    pub fn org(mut self, org: &str) -> Self {
        if let Some(Value::Array(orgs)) = self.claims.get_mut("orgs") {
            orgs.push(json!(org));
        }
        self
    }

    pub fn tenant_id(self, tenant_id: &str) -> Self {
        self.claim("tenantId", json!(tenant_id))
    }

    pub fn contractor_id(self, contractor_id: &str) -> Self {
        self.claim("contractorId", json!(contractor_id))
    }

    /// Sets `exp` to now plus `seconds` (negative for an already expired token).
    pub fn expires_in(self, seconds: i64) -> Self {
        self.claim("exp", json!(now_secs() + seconds))
    }

    /// Sets or replaces any claim, including a malformed value.
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims.insert(name.into(), value);
        self
    }

    /// Removes a claim entirely.
    pub fn without(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    pub fn secret(mut self, secret: &str) -> Self {
        self.secret = secret.to_string();
        self
    }

    pub fn sign(self) -> String {
        jsonwebtoken::encode(
            &Header::new(self.algorithm),
            &Value::Object(self.claims),
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .expect("signing a test token")
    }

    /// Signs with an RSA private key (PEM) as RS256, naming `kid` in the header.
    pub fn sign_rs256(self, private_key_pem: &[u8], kid: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(
            &header,
            &Value::Object(self.claims),
            &EncodingKey::from_rsa_pem(private_key_pem).expect("an RSA private key in PEM"),
        )
        .expect("signing a test token")
    }

    /// The same claims under `{"alg":"none"}` with an empty signature, as an attacker would send.
    pub fn unsigned_alg_none(self) -> String {
        let header = json!({"alg": "none", "typ": "JWT"}).to_string();
        let claims = Value::Object(self.claims).to_string();
        format!(
            "{}.{}.",
            base64url(header.as_bytes()),
            base64url(claims.as_bytes())
        )
    }
}

/// An `ops` token for `sub` in one org.
pub fn ops(sub: &str, org: &str) -> String {
    TokenBuilder::new(sub, "ops").org(org).sign()
}

/// A `service` token (publisher) for the given orgs.
pub fn service(orgs: &[&str]) -> String {
    orgs.iter()
        .fold(TokenBuilder::new("backend", "service"), |token, org| {
            token.org(org)
        })
        .sign()
}

/// Unpadded base64url, as JWT segments use (RFC 7515 §2).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64url(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(super::base64url(&[0xfb, 0xff]), "-_8", "url-safe alphabet");
    }
}
