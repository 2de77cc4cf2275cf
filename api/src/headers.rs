//! Which request headers are credentials.
//!
//! The one rule both planes apply: the data plane never sends a credential to the control
//! plane or a log, the control plane never sends one to a remote policy server, and the store
//! never keeps one. It is deliberately broad: a harmless header lost from a record
//! (`idempotency-key`) costs less than a credential that leaves the data plane.

/// Words that mark a header as a credential wherever they appear in its name.
const CREDENTIAL_WORDS: [&str; 6] = ["key", "token", "secret", "password", "cookie", "auth"];

/// True for a header name that carries credentials (case-insensitive): `authorization`,
/// `proxy-authorization`, `x-api-key`, `api-key`, `x-goog-api-key`, `cookie`, `set-cookie`,
/// and anything named like a key, token, secret, password, cookie or auth.
pub fn is_credential(name: &str) -> bool {
    CREDENTIAL_WORDS.iter().any(|word| {
        name.as_bytes()
            .windows(word.len())
            .any(|window| window.eq_ignore_ascii_case(word.as_bytes()))
    })
}

/// The credential of an `authorization: Bearer <credential>` value. The scheme is
/// case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, credential) = authorization.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_whatever_the_schemes_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn credentials_are_recognised_in_any_case() {
        for name in [
            "authorization",
            "Proxy-Authorization",
            "x-api-key",
            "api-key",
            "x-goog-api-key",
            "cookie",
            "set-cookie",
            "x-auth-token",
            "openai-secret",
            "x-password",
            "X-Session-Token",
        ] {
            assert!(is_credential(name), "{name}");
        }
        for name in [
            "anthropic-version",
            "anthropic-beta",
            "user-agent",
            "content-type",
            "x-claude-code-session-id",
            "traceparent",
        ] {
            assert!(!is_credential(name), "{name}");
        }
    }
}
