//! Claim validation behind the signature: arbitrary bytes are signed (HS256, the verifier's
//! secret) as the claims of a token (under the standard header, or an arbitrary one), then
//! verified. Never panics; verified claims satisfy the contract (non-empty sub/role, 1..=max_orgs distinct
//! valid orgs, no empty tenantId/contractorId).
#![no_main]

mod common;

use std::sync::OnceLock;

use base64::Engine;
use event_gateway::auth::JwtVerifier;
use jsonwebtoken::crypto::sign;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();

/// The input is the claims text, signed under the standard `{"alg":"HS256","typ":"JWT"}`
/// header; or, when it starts with a NUL byte, `\0<header>\0<claims>`.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    const STANDARD: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;
    match data.split_first() {
        Some((0, rest)) => match rest.iter().position(|&b| b == 0) {
            Some(nul) => (&rest[..nul], &rest[nul + 1..]),
            None => (rest, b"{}"),
        },
        _ => (STANDARD, data),
    }
}

fuzz_target!(|data: &[u8]| {
    let verifier = VERIFIER.get_or_init(common::verifier);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (header, claims) = split(data);
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let key = EncodingKey::from_secret(common::SECRET.as_bytes());
    let signature = sign(message.as_bytes(), &key, Algorithm::HS256).expect("HS256 signs");
    let token = format!("{message}.{signature}");
    if let Ok(claims) = verifier.verify(&token) {
        common::check_claims(&claims);
    }
});
