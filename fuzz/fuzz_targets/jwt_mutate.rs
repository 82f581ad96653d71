//! A token minted by `TokenMinter` (HS256, the verifier's secret) for arbitrary claims, then
//! mutated in its header and payload (byte edits, or a whole segment replaced by the base64 of
//! arbitrary bytes). A mutated token must never verify with claims other than those the
//! validly-signed original verifies to.
#![no_main]

mod common;

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use base64::Engine;
use event_gateway::auth::{JwtVerifier, TokenMinter, TokenRequest};
use libfuzzer_sys::fuzz_target;

static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
static MINTER: OnceLock<TokenMinter> = OnceLock::new();

#[derive(Arbitrary, Debug)]
enum Edit<'a> {
    /// Overwrite the byte at `pos` (modulo the length of `header.payload`).
    Set {
        pos: u16,
        byte: u8,
    },
    Insert {
        pos: u16,
        byte: u8,
    },
    Remove {
        pos: u16,
    },
    /// Replace the header segment with the base64url of these bytes.
    Header(&'a [u8]),
    /// Replace the payload segment with the base64url of these bytes.
    Payload(&'a [u8]),
    /// Keep the segments, but pad/append raw bytes to the header or payload text.
    AppendHeader(&'a [u8]),
    AppendPayload(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    sub: &'a str,
    role: &'a str,
    orgs: Vec<&'a str>,
    tenant_id: Option<&'a str>,
    contractor_id: Option<&'a str>,
    edits: Vec<Edit<'a>>,
}

fn split(token: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let text = std::str::from_utf8(token).expect("minted token is text");
    let mut parts = text.splitn(3, '.');
    let header = parts.next().unwrap_or_default().as_bytes().to_vec();
    let payload = parts.next().unwrap_or_default().as_bytes().to_vec();
    let signature = parts.next().unwrap_or_default().as_bytes().to_vec();
    (header, payload, signature)
}

fuzz_target!(|input: Input<'_>| {
    let verifier = VERIFIER.get_or_init(common::verifier);
    let minter = MINTER.get_or_init(|| {
        TokenMinter::new(
            &secrecy::SecretString::from(common::SECRET),
            &common::auth_settings(),
        )
    });
    let orgs: Vec<String> = input.orgs.iter().take(8).map(|org| org.to_string()).collect();
    let Ok(original) = minter.mint(&TokenRequest {
        sub: input.sub,
        role: input.role,
        orgs: &orgs,
        tenant_id: input.tenant_id,
        contractor_id: input.contractor_id,
        ttl_secs: 3600,
    }) else {
        return;
    };
    let expected = verifier.verify(&original);
    if let Ok(claims) = &expected {
        common::check_claims(claims);
    }

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (mut header, mut payload, signature) = split(original.as_bytes());
    for edit in input.edits.iter().take(16) {
        // Byte edits address `header.payload` as one run of text, the dot included.
        let mut message = [header.as_slice(), b".", payload.as_slice()].concat();
        let at = |pos: u16, len: usize| if len == 0 { 0 } else { pos as usize % len };
        match *edit {
            Edit::Set { pos, byte } => {
                let i = at(pos, message.len());
                message[i] = byte;
            }
            Edit::Insert { pos, byte } => {
                let i = at(pos, message.len() + 1);
                message.insert(i, byte);
            }
            Edit::Remove { pos } => {
                let i = at(pos, message.len());
                message.remove(i);
            }
            Edit::Header(bytes) => header = b64.encode(bytes).into_bytes(),
            Edit::Payload(bytes) => payload = b64.encode(bytes).into_bytes(),
            Edit::AppendHeader(bytes) => header.extend_from_slice(bytes),
            Edit::AppendPayload(bytes) => payload.extend_from_slice(bytes),
        }
        if matches!(edit, Edit::Set { .. } | Edit::Insert { .. } | Edit::Remove { .. }) {
            // Split back on the first dot: an edit may remove it or add another.
            match message.iter().position(|&b| b == b'.') {
                Some(dot) => {
                    header = message[..dot].to_vec();
                    payload = message[dot + 1..].to_vec();
                }
                None => {
                    header = message;
                    payload = Vec::new();
                }
            }
        }
    }
    let mutated = [
        header.as_slice(),
        b".",
        payload.as_slice(),
        b".",
        signature.as_slice(),
    ]
    .concat();
    let Ok(mutated) = String::from_utf8(mutated) else {
        return;
    };
    if mutated == original {
        return;
    }
    if let Ok(claims) = verifier.verify(&mutated) {
        match &expected {
            Ok(original_claims) => assert_eq!(
                &claims, original_claims,
                "mutated token {mutated:?} (from {original:?}) verified with different claims"
            ),
            Err(error) => panic!(
                "mutated token {mutated:?} verified as {claims:?}, the original {original:?} did not ({error})"
            ),
        }
    }
});
