//! JWT verification into `Claims` (pinned algorithms, required `exp`, optional `iss`/`aud`/`nbf`,
//! keys by `kid` from a JWKS file) and HS256 minting for the `token` command and the quickstart.

use std::collections::HashMap;
use std::str::FromStr;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{AuthError, AuthSettings};
use crate::clock::unix_secs;
use crate::event::OrgId;

/// A verified token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub orgs: Vec<OrgId>,
    pub tenant_id: Option<String>,
    pub contractor_id: Option<String>,
    /// Expiry, in seconds since the epoch; the stream closes with `auth.expired` then.
    pub exp: u64,
}

/// Claims as they arrive, loosely typed so that a wrong shape is reported as a claim problem
/// rather than as an unreadable token.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawClaims {
    sub: Option<serde_json::Value>,
    role: Option<serde_json::Value>,
    orgs: Option<serde_json::Value>,
    tenant_id: Option<serde_json::Value>,
    contractor_id: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
}

fn optional_string(value: Option<serde_json::Value>, name: &str) -> Result<Option<String>, AuthError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(AuthError::Claims(format!("{name} must be a non-empty string"))),
    }
}

impl RawClaims {
    fn validate(self, max_orgs: usize) -> Result<Claims, AuthError> {
        let sub =
            optional_string(self.sub, "sub")?.ok_or_else(|| AuthError::Claims("sub is required".into()))?;
        let role = optional_string(self.role, "role")?
            .ok_or_else(|| AuthError::Claims("role is required".into()))?;
        let orgs = match self.orgs {
            Some(serde_json::Value::Array(items)) if !items.is_empty() => items,
            _ => return Err(AuthError::Claims("orgs must be a non-empty array".into())),
        };
        if orgs.len() > max_orgs {
            return Err(AuthError::Claims(format!("orgs lists more than {max_orgs} orgs")));
        }
        let mut parsed: Vec<OrgId> = Vec::with_capacity(orgs.len());
        for org in orgs {
            let org = org
                .as_str()
                .and_then(|raw| OrgId::parse(raw).ok())
                .ok_or_else(|| AuthError::Claims("each org must match [A-Za-z0-9_-]{1,64}".into()))?;
            if !parsed.contains(&org) {
                parsed.push(org);
            }
        }
        let exp = self
            .exp
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| AuthError::Claims("exp must be a number of seconds".into()))?;
        Ok(Claims {
            sub,
            role,
            orgs: parsed,
            tenant_id: optional_string(self.tenant_id, "tenantId")?,
            contractor_id: optional_string(self.contractor_id, "contractorId")?,
            exp,
        })
    }
}

/// Where verification keys come from.
enum Keys {
    /// One key (an HS secret or a public key) for every token.
    Single(DecodingKey),
    /// Keys of a JWKS file, chosen by the token's `kid`.
    ByKid(HashMap<String, DecodingKey>),
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("`auth.algorithms`: unknown algorithm {0:?}")]
    UnknownAlgorithm(String),
    #[error("`auth.algorithms`: {0:?} cannot be verified with the configured key")]
    AlgorithmMismatch(String),
    #[error("`auth.public_key_pem`: not an RSA, EC or Ed25519 public key in PEM form")]
    BadPem,
    #[error("`auth.public_key_pem`: cannot read {path}: {source}")]
    ReadPem { path: String, source: std::io::Error },
    #[error("`auth.jwks_path`: cannot read {path}: {message}")]
    Jwks { path: String, message: String },
    #[error("`auth.jwt_secret`: a secret is required for HS* algorithms")]
    NoSecret,
}

/// Verifies tokens. Built once at start-up; cheap to share.
pub struct JwtVerifier {
    keys: Keys,
    /// One validation per accepted algorithm: the algorithm is never taken from the token.
    validations: HashMap<Algorithm, Validation>,
    max_orgs: usize,
}

fn family_matches(algorithm: Algorithm, key: &DecodingKey) -> bool {
    algorithm.family() == key.family()
}

fn default_algorithm(key: &DecodingKey) -> Algorithm {
    use jsonwebtoken::AlgorithmFamily;
    match key.family() {
        AlgorithmFamily::Hmac => Algorithm::HS256,
        AlgorithmFamily::Rsa => Algorithm::RS256,
        AlgorithmFamily::Ec => Algorithm::ES256,
        _ => Algorithm::EdDSA,
    }
}

fn load_pem(raw: &str) -> Result<DecodingKey, KeyError> {
    let pem = if raw.trim_start().starts_with("-----BEGIN") {
        raw.to_string()
    } else {
        std::fs::read_to_string(raw).map_err(|source| KeyError::ReadPem {
            path: raw.to_string(),
            source,
        })?
    };
    let pem = pem.as_bytes();
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map_err(|_| KeyError::BadPem)
}

fn load_jwks(path: &str) -> Result<(HashMap<String, DecodingKey>, Vec<Algorithm>), KeyError> {
    let jwks_error = |message: String| KeyError::Jwks {
        path: path.to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| jwks_error(e.to_string()))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| jwks_error(e.to_string()))?;
    let mut keys = HashMap::new();
    let mut algorithms = Vec::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.algorithm, AlgorithmParameters::Other(_)) {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| jwks_error(format!("key {kid}: {e}")))?;
        let algorithm = jwk
            .common
            .key_algorithm
            .and_then(|alg| Algorithm::from_str(&alg.to_string()).ok())
            .unwrap_or_else(|| default_algorithm(&key));
        if !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
        }
        keys.insert(kid, key);
    }
    if keys.is_empty() {
        return Err(jwks_error("no usable key with a kid".into()));
    }
    Ok((keys, algorithms))
}

impl JwtVerifier {
    /// Builds the verifier from settings; `secret` is the HS secret in use (configured or
    /// generated at start-up).
    pub fn new(
        settings: &AuthSettings,
        secret: Option<&SecretString>,
        max_orgs: usize,
    ) -> Result<Self, KeyError> {
        let (keys, key_algorithms) = if !settings.jwks_path.is_empty() {
            let (keys, algorithms) = load_jwks(&settings.jwks_path)?;
            (Keys::ByKid(keys), algorithms)
        } else if !settings.public_key_pem.is_empty() {
            let key = load_pem(&settings.public_key_pem)?;
            let algorithm = default_algorithm(&key);
            (Keys::Single(key), vec![algorithm])
        } else {
            let secret = secret.ok_or(KeyError::NoSecret)?;
            let key = DecodingKey::from_secret(secret.expose_secret().as_bytes());
            (Keys::Single(key), vec![Algorithm::HS256])
        };
        let algorithms = if settings.algorithms.is_empty() {
            key_algorithms
        } else {
            settings
                .algorithms
                .iter()
                .map(|name| Algorithm::from_str(name).map_err(|_| KeyError::UnknownAlgorithm(name.clone())))
                .collect::<Result<Vec<_>, _>>()?
        };
        for algorithm in &algorithms {
            let usable = match &keys {
                Keys::Single(key) => family_matches(*algorithm, key),
                Keys::ByKid(keys) => keys.values().any(|key| family_matches(*algorithm, key)),
            };
            if !usable {
                return Err(KeyError::AlgorithmMismatch(format!("{algorithm:?}")));
            }
        }
        let validations = algorithms
            .into_iter()
            .map(|algorithm| {
                let mut validation = Validation::new(algorithm);
                validation.leeway = settings.leeway_secs;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.set_required_spec_claims(&["exp"]);
                if settings.issuer.is_empty() {
                    validation.iss = None;
                } else {
                    validation.set_issuer(&[&settings.issuer]);
                    validation.required_spec_claims.insert("iss".into());
                }
                if settings.audience.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&[&settings.audience]);
                    validation.required_spec_claims.insert("aud".into());
                }
                (algorithm, validation)
            })
            .collect();
        Ok(Self {
            keys,
            validations,
            max_orgs,
        })
    }

    /// Verifies `token` and its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        check_structure(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| match header_alg(token) {
            // A readable header with an algorithm this library refuses, such as `none`.
            Some(alg) => AuthError::Algorithm(alg),
            None => AuthError::Malformed,
        })?;
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or_else(|| AuthError::Algorithm(format!("{:?}", header.alg)))?;
        let key = match &self.keys {
            Keys::Single(key) => key,
            Keys::ByKid(keys) => header
                .kid
                .as_deref()
                .and_then(|kid| keys.get(kid))
                .ok_or(AuthError::UnknownKey)?,
        };
        if !family_matches(header.alg, key) {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let data = jsonwebtoken::decode::<RawClaims>(token, key, validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::Issuer,
            ErrorKind::InvalidAudience => AuthError::Audience,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
                AuthError::Algorithm(format!("{:?}", header.alg))
            }
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::Issuer,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::Audience,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::Claims(format!("{claim} is required")),
            ErrorKind::InvalidClaimFormat(claim) => AuthError::Claims(format!("{claim} is malformed")),
            ErrorKind::Json(_) => AuthError::Claims("the claims are not a JSON object".into()),
            _ => AuthError::Malformed,
        })?;
        data.claims.validate(self.max_orgs)
    }
}

/// Checks what the JWT library leaves open (RFC 7515, compact serialization): exactly three
/// base64url segments, a header that is a JSON object without duplicate members (which parsers
/// may read differently), and no `crit` extension, since this gateway understands none.
fn check_structure(token: &str) -> Result<(), AuthError> {
    let segments: Vec<&str> = token.split('.').collect();
    let base64url = |segment: &str| {
        segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let [header, payload, signature] = segments[..] else {
        return Err(AuthError::Malformed);
    };
    if header.is_empty() || payload.is_empty() || ![header, payload, signature].into_iter().all(base64url) {
        return Err(AuthError::Malformed);
    }
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let members = serde_json::from_slice::<UniqueMembers>(&header).map_err(|_| AuthError::Malformed)?;
    if members.0.iter().any(|name| name == "crit") {
        return Err(AuthError::CriticalHeader);
    }
    Ok(())
}

/// The member names of a JSON object, refusing one that names a member twice.
struct UniqueMembers(Vec<String>);

impl<'de> Deserialize<'de> for UniqueMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;

        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = UniqueMembers;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueMembers, A::Error> {
                let mut names: Vec<String> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if names.contains(&name) {
                        return Err(serde::de::Error::custom(format!("member {name:?} appears twice")));
                    }
                    map.next_value::<serde::de::IgnoredAny>()?;
                    names.push(name);
                }
                Ok(UniqueMembers(names))
            }
        }

        deserializer.deserialize_map(Members)
    }
}

/// The `alg` of a token whose header is readable JSON, even when the algorithm is unknown.
fn header_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(str::to_string)
}

/// Claims as minted by `TokenMinter`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MintedClaims<'a> {
    sub: &'a str,
    role: &'a str,
    orgs: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contractor_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    iat: u64,
    exp: u64,
}

/// Mints HS256 tokens with the configured secret (development, tests, the quickstart).
pub struct TokenMinter {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

/// What a minted token says.
pub struct TokenRequest<'a> {
    pub sub: &'a str,
    pub role: &'a str,
    pub orgs: &'a [String],
    pub tenant_id: Option<&'a str>,
    pub contractor_id: Option<&'a str>,
    pub ttl_secs: u64,
}

impl TokenMinter {
    pub fn new(secret: &SecretString, settings: &AuthSettings) -> Self {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Self {
            key: EncodingKey::from_secret(secret.expose_secret().as_bytes()),
            issuer: non_empty(&settings.issuer),
            audience: non_empty(&settings.audience),
        }
    }

    pub fn mint(&self, request: &TokenRequest<'_>) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_secs();
        let claims = MintedClaims {
            sub: request.sub,
            role: request.role,
            orgs: request.orgs,
            tenant_id: request.tenant_id,
            contractor_id: request.contractor_id,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
            iat: now,
            exp: now + request.ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    const SECRET: &str = "unit-test-secret";

    fn settings() -> AuthSettings {
        Settings::load_from(None, Some(HashMap::new()))
            .expect("defaults load")
            .auth
    }

    fn verifier(settings: &AuthSettings) -> JwtVerifier {
        JwtVerifier::new(settings, Some(&SecretString::from(SECRET)), 64).expect("verifier builds")
    }

    fn sign(header: Header, claims: &serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret.as_bytes())).expect("encodes")
    }

    fn encode(text: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    /// A token with `header` (JSON text) and base64url `body`, validly HS256-signed with SECRET.
    fn resign(header: &str, body: &str) -> String {
        use hmac::Mac;
        let signing_input = format!("{}.{body}", encode(header));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
        mac.update(signing_input.as_bytes());
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    fn good_claims() -> serde_json::Value {
        serde_json::json!({"sub": "u1", "role": "ops", "orgs": ["o1"], "exp": unix_secs() + 60})
    }

    fn with(mut claims: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
        claims[key] = value;
        claims
    }

    #[test]
    fn a_valid_token_yields_its_claims() {
        let token = sign(Header::new(Algorithm::HS256), &good_claims(), SECRET);
        let claims = verifier(&settings()).verify(&token).expect("valid token");
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.orgs, vec![OrgId::parse("o1").expect("valid")]);
    }

    #[test]
    fn each_bad_token_gets_its_own_reason() {
        let now = unix_secs();
        let none_header =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(good_claims().to_string());
        let cases: Vec<(&str, String, &str)> = vec![
            ("garbage", "not-a-jwt".into(), "malformed_token"),
            (
                "wrong secret",
                sign(Header::new(Algorithm::HS256), &good_claims(), "other"),
                "invalid_signature",
            ),
            (
                "expired beyond leeway",
                sign(
                    Header::new(Algorithm::HS256),
                    &with(good_claims(), "exp", (now - 120).into()),
                    SECRET,
                ),
                "token_expired",
            ),
            (
                "alg none",
                format!("{none_header}.{body}."),
                "algorithm_not_allowed",
            ),
            (
                "a trailing dot",
                format!("{}.", sign(Header::new(Algorithm::HS256), &good_claims(), SECRET)),
                "malformed_token",
            ),
            (
                "alg twice",
                format!(
                    "{}.{body}.",
                    encode(r#"{"alg":"HS256","alg":"none","typ":"JWT"}"#)
                ),
                "malformed_token",
            ),
            (
                "a critical extension",
                resign(r#"{"alg":"HS256","typ":"JWT","crit":["x-ext"],"x-ext":1}"#, &body),
                "unsupported_critical_header",
            ),
            (
                "a padded segment",
                format!("{}=", sign(Header::new(Algorithm::HS256), &good_claims(), SECRET)),
                "malformed_token",
            ),
            (
                "HS512 when only HS256 is accepted",
                sign(Header::new(Algorithm::HS512), &good_claims(), SECRET),
                "algorithm_not_allowed",
            ),
            (
                "not yet valid",
                sign(
                    Header::new(Algorithm::HS256),
                    &with(good_claims(), "nbf", (now + 600).into()),
                    SECRET,
                ),
                "token_not_yet_valid",
            ),
            (
                "no exp",
                sign(
                    Header::new(Algorithm::HS256),
                    &serde_json::json!({"sub":"u","role":"ops","orgs":["o"]}),
                    SECRET,
                ),
                "invalid_claims",
            ),
            (
                "no sub",
                sign(
                    Header::new(Algorithm::HS256),
                    &serde_json::json!({"role":"ops","orgs":["o"],"exp":now+60}),
                    SECRET,
                ),
                "invalid_claims",
            ),
            (
                "no role",
                sign(
                    Header::new(Algorithm::HS256),
                    &serde_json::json!({"sub":"u","orgs":["o"],"exp":now+60}),
                    SECRET,
                ),
                "invalid_claims",
            ),
            (
                "empty orgs",
                sign(
                    Header::new(Algorithm::HS256),
                    &with(good_claims(), "orgs", serde_json::json!([])),
                    SECRET,
                ),
                "invalid_claims",
            ),
            (
                "bad org id",
                sign(
                    Header::new(Algorithm::HS256),
                    &with(good_claims(), "orgs", serde_json::json!(["a b"])),
                    SECRET,
                ),
                "invalid_claims",
            ),
            (
                "orgs not an array",
                sign(
                    Header::new(Algorithm::HS256),
                    &with(good_claims(), "orgs", "o1".into()),
                    SECRET,
                ),
                "invalid_claims",
            ),
            (
                "too many orgs",
                sign(
                    Header::new(Algorithm::HS256),
                    &with(good_claims(), "orgs", (0..65).map(|i| format!("o{i}")).collect()),
                    SECRET,
                ),
                "invalid_claims",
            ),
        ];
        let verifier = verifier(&settings());
        for (name, token, code) in cases {
            let err = verifier.verify(&token).expect_err(name);
            assert_eq!(err.code(), code, "{name}: {err}");
        }
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let mut settings = settings();
        settings.issuer = "https://auth.example".into();
        settings.audience = "event-gateway".into();
        let verifier = verifier(&settings);
        let good = with(
            with(good_claims(), "iss", "https://auth.example".into()),
            "aud",
            "event-gateway".into(),
        );
        assert!(verifier
            .verify(&sign(Header::new(Algorithm::HS256), &good, SECRET))
            .is_ok());
        let wrong_iss = with(good.clone(), "iss", "https://evil.example".into());
        assert_eq!(
            verifier.verify(&sign(Header::new(Algorithm::HS256), &wrong_iss, SECRET)),
            Err(AuthError::Issuer)
        );
        let wrong_aud = with(good, "aud", "other".into());
        assert_eq!(
            verifier.verify(&sign(Header::new(Algorithm::HS256), &wrong_aud, SECRET)),
            Err(AuthError::Audience)
        );
        let no_issuer = with(good_claims(), "aud", "event-gateway".into());
        assert_eq!(
            verifier.verify(&sign(Header::new(Algorithm::HS256), &no_issuer, SECRET)),
            Err(AuthError::Issuer)
        );
    }

    #[test]
    fn minted_tokens_verify() {
        let settings = settings();
        let orgs = vec!["o1".to_string(), "o2".to_string()];
        let token = TokenMinter::new(&SecretString::from(SECRET), &settings)
            .mint(&TokenRequest {
                sub: "u",
                role: "tenant",
                orgs: &orgs,
                tenant_id: Some("t"),
                contractor_id: None,
                ttl_secs: 60,
            })
            .expect("mints");
        let claims = verifier(&settings).verify(&token).expect("valid");
        assert_eq!(claims.tenant_id.as_deref(), Some("t"));
        assert_eq!(claims.orgs.len(), 2);
    }

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn sign_with(alg: Algorithm, kid: Option<&str>, private_pem: &str) -> String {
        let pem = std::fs::read(fixture(private_pem)).expect("fixture key");
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .expect("private key parses");
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, &good_claims(), &key).expect("encodes")
    }

    fn public_key_verifier(public_pem: &str) -> JwtVerifier {
        let mut settings = settings();
        settings.public_key_pem = fixture(public_pem);
        JwtVerifier::new(&settings, None, 64).expect("verifier builds")
    }

    #[test]
    fn public_keys_verify_their_own_algorithm_only() {
        let cases = [
            ("rsa-public.pem", Algorithm::RS256, "rsa-private.pem"),
            ("ec-public.pem", Algorithm::ES256, "ec-private.pem"),
            ("ed-public.pem", Algorithm::EdDSA, "ed-private.pem"),
        ];
        for (public, alg, private) in cases {
            let verifier = public_key_verifier(public);
            assert!(
                verifier.verify(&sign_with(alg, None, private)).is_ok(),
                "{alg:?} with {public}"
            );
            let hs = sign(Header::new(Algorithm::HS256), &good_claims(), SECRET);
            assert_eq!(
                verifier.verify(&hs).map_err(|e| e.code()),
                Err("algorithm_not_allowed"),
                "{public}"
            );
        }
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        // The algorithm-confusion attack: an HS256 token whose secret is the public key text.
        let public = std::fs::read_to_string(fixture("rsa-public.pem")).expect("fixture key");
        let forged = sign(Header::new(Algorithm::HS256), &good_claims(), &public);
        let verifier = public_key_verifier("rsa-public.pem");
        assert_eq!(
            verifier.verify(&forged).map_err(|e| e.code()),
            Err("algorithm_not_allowed")
        );
    }

    #[test]
    fn pem_text_is_accepted_as_well_as_a_path() {
        let mut settings = settings();
        settings.public_key_pem = std::fs::read_to_string(fixture("ed-public.pem")).expect("fixture key");
        let verifier = JwtVerifier::new(&settings, None, 64).expect("verifier builds");
        assert!(verifier
            .verify(&sign_with(Algorithm::EdDSA, None, "ed-private.pem"))
            .is_ok());
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid() {
        let mut settings = settings();
        settings.jwks_path = fixture("jwks.json");
        let verifier = JwtVerifier::new(&settings, None, 64).expect("verifier builds");
        assert!(verifier
            .verify(&sign_with(Algorithm::RS256, Some("rsa-2026"), "rsa-private.pem"))
            .is_ok());
        assert!(verifier
            .verify(&sign_with(Algorithm::EdDSA, Some("ed-2026"), "ed-private.pem"))
            .is_ok());
        let unknown = sign_with(Algorithm::RS256, Some("retired"), "rsa-private.pem");
        assert_eq!(verifier.verify(&unknown), Err(AuthError::UnknownKey));
        let wrong_key = sign_with(Algorithm::RS256, Some("ed-2026"), "rsa-private.pem");
        assert_eq!(
            verifier.verify(&wrong_key).map_err(|e| e.code()),
            Err("algorithm_not_allowed")
        );
    }

    #[test]
    fn algorithms_of_another_family_than_the_key_stop_start_up() {
        let mut settings = settings();
        settings.public_key_pem = fixture("rsa-public.pem");
        settings.algorithms = vec!["HS256".into()];
        assert!(matches!(
            JwtVerifier::new(&settings, None, 64),
            Err(KeyError::AlgorithmMismatch(_))
        ));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::settings::Settings;

    const SECRET: &str = "property-test-secret";

    fn verifier() -> JwtVerifier {
        let settings = Settings::load_from(None, Some(HashMap::new())).expect("defaults load");
        JwtVerifier::new(&settings.auth, Some(&SecretString::from(SECRET)), 64).expect("verifier builds")
    }

    fn minter() -> TokenMinter {
        let settings = Settings::load_from(None, Some(HashMap::new())).expect("defaults load");
        TokenMinter::new(&SecretString::from(SECRET), &settings.auth)
    }

    proptest! {
        #[test]
        fn any_text_is_refused_with_a_reason_never_a_panic(token in "(?s).{0,200}") {
            prop_assert!(verifier().verify(&token).is_err());
        }

        #[test]
        fn any_jwt_shaped_text_is_refused(header in "[A-Za-z0-9_-]{0,60}", body in "[A-Za-z0-9_-]{0,120}", signature in "[A-Za-z0-9_-]{0,43}") {
            let token = format!("{header}.{body}.{signature}");
            prop_assert!(verifier().verify(&token).is_err());
        }

        #[test]
        fn minted_claims_verify_to_themselves(
            sub in "[A-Za-z0-9@._-]{1,40}",
            role in "[a-z]{1,12}",
            orgs in prop::collection::btree_set("[A-Za-z0-9_-]{1,64}", 1..8),
            tenant_id in prop::option::of("[A-Za-z0-9-]{1,20}"),
        ) {
            let orgs: Vec<String> = orgs.into_iter().collect();
            let token = minter()
                .mint(&TokenRequest { sub: &sub, role: &role, orgs: &orgs, tenant_id: tenant_id.as_deref(), contractor_id: None, ttl_secs: 60 })
                .expect("mints");
            let claims = verifier().verify(&token).expect("a minted token verifies");
            prop_assert_eq!(claims.sub, sub);
            prop_assert_eq!(claims.role, role);
            prop_assert_eq!(claims.orgs.iter().map(|o| o.to_string()).collect::<Vec<_>>(), orgs);
            prop_assert_eq!(claims.tenant_id, tenant_id);
        }

        #[test]
        fn a_minted_token_with_any_byte_changed_never_verifies_to_other_claims(position in any::<prop::sample::Index>(), replacement in any::<u8>()) {
            let orgs = vec!["org-1".to_string()];
            let token = minter()
                .mint(&TokenRequest { sub: "u1", role: "ops", orgs: &orgs, tenant_id: None, contractor_id: None, ttl_secs: 60 })
                .expect("mints");
            let original = verifier().verify(&token).expect("verifies");
            let mut bytes = token.into_bytes();
            let at = position.index(bytes.len());
            bytes[at] = replacement;
            if let Ok(tampered) = String::from_utf8(bytes) {
                if let Ok(claims) = verifier().verify(&tampered) {
                    prop_assert_eq!(claims, original);
                }
            }
        }
    }
}
