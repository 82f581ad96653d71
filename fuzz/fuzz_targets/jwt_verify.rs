//! `JwtVerifier::verify` on arbitrary strings (what a client puts in `Authorization`, the cookie
//! or `access_token`): never panics, and nothing unsigned verifies.
#![no_main]

mod common;

use std::sync::OnceLock;

use event_gateway::auth::JwtVerifier;
use libfuzzer_sys::fuzz_target;

static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();

fuzz_target!(|token: &str| {
    let verifier = VERIFIER.get_or_init(common::verifier);
    if let Ok(claims) = verifier.verify(token) {
        // Only possible if the fuzzer forged an HMAC-SHA256 under the secret.
        panic!("an arbitrary string verified: {token:?} -> {claims:?}");
    }
});
