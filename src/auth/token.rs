//! Finding the token: `Authorization: Bearer`, then the cookie, then the `access_token` query
//! parameter.

use actix_web::http::header;
use actix_web::HttpRequest;

use super::AuthError;

/// The raw token of `request`, by the contract's order of precedence.
pub fn extract_token(request: &HttpRequest, cookie_name: &str) -> Result<String, AuthError> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Malformed);
        }
        return Ok(token.trim().to_string());
    }
    if let Some(cookie) = request.cookie(cookie_name) {
        if !cookie.value().is_empty() {
            return Ok(cookie.value().to_string());
        }
    }
    let query = request.query_string();
    if !query.is_empty() {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
        if let Some((_, token)) = pairs
            .into_iter()
            .find(|(k, v)| k == TOKEN_PARAMETER && !v.is_empty())
        {
            return Ok(token);
        }
    }
    Err(AuthError::Missing)
}

/// Whether `request`'s token is its cookie (no `Authorization` header, a cookie): a credential
/// the browser adds by itself, whichever page opens the connection.
pub fn token_is_cookie(request: &HttpRequest, cookie_name: &str) -> bool {
    request.headers().get(header::AUTHORIZATION).is_none()
        && request
            .cookie(cookie_name)
            .is_some_and(|cookie| !cookie.value().is_empty())
}

/// The query parameter that may carry a token.
const TOKEN_PARAMETER: &str = "access_token";

/// `query` with the value of every `access_token` parameter replaced, for logging. Keys are
/// compared as the token lookup reads them (percent-decoded, `+` as a space), so no spelling of
/// the key that authenticates (`access%5Ftoken`, `%61ccess_token`...) slips past.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(key, _)| key);
            let decoded_key = form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(decoded, _)| decoded);
            if decoded_key.as_deref() == Some(TOKEN_PARAMETER) {
                format!("{key}=REDACTED")
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::cookie::Cookie;
    use actix_web::test::TestRequest;

    #[test]
    fn header_wins_over_cookie_and_query() {
        let request = TestRequest::get()
            .uri("/api/events?access_token=from-query")
            .insert_header((header::AUTHORIZATION, "Bearer from-header"))
            .cookie(Cookie::new("access_token", "from-cookie"))
            .to_http_request();
        assert_eq!(extract_token(&request, "access_token"), Ok("from-header".into()));
    }

    #[test]
    fn cookie_wins_over_query() {
        let request = TestRequest::get()
            .uri("/api/events?access_token=from-query")
            .cookie(Cookie::new("session", "from-cookie"))
            .to_http_request();
        assert_eq!(extract_token(&request, "session"), Ok("from-cookie".into()));
    }

    #[test]
    fn query_parameter_is_the_last_resort() {
        let request = TestRequest::get()
            .uri("/api/events?types=a.b&access_token=from%2Dquery")
            .to_http_request();
        assert_eq!(extract_token(&request, "access_token"), Ok("from-query".into()));
    }

    #[test]
    fn no_token_anywhere_is_missing() {
        let request = TestRequest::get().uri("/api/events").to_http_request();
        assert_eq!(extract_token(&request, "access_token"), Err(AuthError::Missing));
    }

    #[test]
    fn authorization_header_without_bearer_is_malformed() {
        let request = TestRequest::get()
            .insert_header((header::AUTHORIZATION, "Basic dXNlcjpwYXNz"))
            .to_http_request();
        assert_eq!(extract_token(&request, "access_token"), Err(AuthError::Malformed));
    }

    #[test]
    fn query_tokens_are_redacted() {
        assert_eq!(
            redact_query("types=a.b&access_token=secret.jwt.value&since=ack"),
            "types=a.b&access_token=REDACTED&since=ack"
        );
    }

    #[test]
    fn every_spelling_of_the_token_key_that_authenticates_is_redacted() {
        for key in [
            "access%5Ftoken",
            "%61ccess_token",
            "access_%74oken",
            "%61%63%63%65%73%73%5f%74%6f%6b%65%6e",
        ] {
            let query = format!("types=a.b&{key}=secret.jwt.value");
            let request = TestRequest::get()
                .uri(&format!("/api/events?{query}"))
                .to_http_request();
            assert_eq!(
                extract_token(&request, "access_token"),
                Ok("secret.jwt.value".into()),
                "{key}"
            );
            assert_eq!(redact_query(&query), format!("types=a.b&{key}=REDACTED"), "{key}");
        }
    }

    #[test]
    fn a_key_that_only_looks_like_the_token_key_is_kept() {
        assert_eq!(
            redact_query("access_token2=x&access+token=y"),
            "access_token2=x&access+token=y"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// `access_token` with any of its characters percent-encoded (either case), or with noise.
    fn token_key() -> impl Strategy<Value = String> {
        let spelled = prop::collection::vec((any::<bool>(), any::<bool>()), TOKEN_PARAMETER.len()).prop_map(
            |choices| {
                TOKEN_PARAMETER
                    .bytes()
                    .zip(choices)
                    .map(|(byte, (encode, upper))| match (encode, upper) {
                        (false, _) => char::from(byte).to_string(),
                        (true, false) => format!("%{byte:02x}"),
                        (true, true) => format!("%{byte:02X}"),
                    })
                    .collect::<String>()
            },
        );
        prop_oneof![spelled, "[a-z_%0-9+]{0,14}"]
    }

    fn pair() -> impl Strategy<Value = String> {
        (token_key(), "[A-Za-z0-9._%=+-]{0,20}", any::<bool>()).prop_map(|(key, value, has_value)| {
            if has_value {
                format!("{key}={value}")
            } else {
                key
            }
        })
    }

    proptest! {
        #[test]
        fn no_token_value_survives_redaction_in_any_spelling(pairs in prop::collection::vec(pair(), 0..6)) {
            let query = pairs.join("&");
            let redacted = redact_query(&query);
            let decoded: Vec<(String, String)> = serde_urlencoded::from_str(&redacted).unwrap_or_default();
            for (key, value) in decoded {
                prop_assert!(
                    key != TOKEN_PARAMETER || value.is_empty() || value == "REDACTED",
                    "{query:?} redacted to {redacted:?}"
                );
            }
        }

        #[test]
        fn redaction_keeps_every_other_parameter(pairs in prop::collection::vec(pair(), 0..6)) {
            let query = pairs.join("&");
            let redacted = redact_query(&query);
            let kept = |q: &str| -> Vec<(String, String)> {
                serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(key, _)| key != TOKEN_PARAMETER)
                    .collect()
            };
            prop_assert_eq!(kept(&redacted), kept(&query));
        }
    }
}
