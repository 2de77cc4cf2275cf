//! The web UI's login session: a signed, expiring token in an `HttpOnly` cookie, never the
//! admin key itself.
//!
//! A token is `v1.<expiry unix seconds>.<nonce>.<signature>`, the signature an HMAC-SHA256 of
//! the rest under a key derived from the admin key. Every control plane sharing the admin key
//! accepts the others' sessions, and changing the key ends them all. Logging out clears the
//! cookie; the token itself stays valid until it expires (at most [`SESSION_TTL`]).

use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use luthien_api::time::unix_seconds;
use sha2::Sha256;

/// Cookie holding the session token.
pub const COOKIE: &str = "luthien_session";

/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

const VERSION: &str = "v1";

/// Signs and checks session tokens for one admin key.
#[derive(Clone)]
pub struct Sessions {
    key: [u8; 32],
}

impl Sessions {
    /// Sessions of `admin_key`: the signing key is derived from it, so it never signs as is.
    pub fn new(admin_key: &str) -> Self {
        let mut key = [0u8; 32];
        key.copy_from_slice(&sign_with(
            admin_key.as_bytes(),
            b"luthien debug session key",
        ));
        Self { key }
    }

    /// A new token, valid for [`SESSION_TTL`] from `now`.
    pub fn issue(&self, now: SystemTime) -> String {
        let expiry = unix_seconds(now) + SESSION_TTL.as_secs();
        let nonce = uuid::Uuid::new_v4().simple();
        let payload = format!("{VERSION}.{expiry}.{nonce}");
        let signature = hex::encode(sign_with(&self.key, payload.as_bytes()));
        format!("{payload}.{signature}")
    }

    /// Whether `token` was issued by these sessions and has not expired at `now`.
    pub fn accepts(&self, token: &str, now: SystemTime) -> bool {
        let Some((payload, signature)) = token.rsplit_once('.') else {
            return false;
        };
        let Ok(signature) = hex::decode(signature) else {
            return false;
        };
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key) else {
            return false;
        };
        mac.update(payload.as_bytes());
        // Constant-time comparison of the signature.
        if mac.verify_slice(&signature).is_err() {
            return false;
        }
        let mut fields = payload.split('.');
        let (Some(VERSION), Some(expiry), Some(_nonce), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        expiry
            .parse::<u64>()
            .is_ok_and(|expiry| unix_seconds(now) < expiry)
    }

    /// The session token in a `cookie` header value.
    pub fn from_cookie(header: Option<&str>) -> Option<&str> {
        header?.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
    }
}

fn sign_with(key: &[u8], message: &[u8]) -> Vec<u8> {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => vec![0; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_signed_expire_and_never_carry_the_key() {
        let sessions = Sessions::new("s3cret-admin-key");
        let now = SystemTime::now();
        let token = sessions.issue(now);
        assert!(!token.contains("s3cret"), "{token}");
        assert!(sessions.accepts(&token, now));
        assert!(sessions.accepts(&token, now + SESSION_TTL - Duration::from_secs(1)));
        assert!(!sessions.accepts(&token, now + SESSION_TTL), "expired");

        // Tampering with any part breaks the signature.
        let (payload, signature) = token.rsplit_once('.').unwrap();
        let later = payload.replacen(
            &(unix_seconds(now) + SESSION_TTL.as_secs()).to_string(),
            &(unix_seconds(now) + 10 * SESSION_TTL.as_secs()).to_string(),
            1,
        );
        assert!(!sessions.accepts(&format!("{later}.{signature}"), now));
        assert!(!sessions.accepts("s3cret-admin-key", now));
        assert!(!sessions.accepts("", now));
        // Another key's sessions are not these.
        assert!(!Sessions::new("other-key").accepts(&token, now));
    }

    #[test]
    fn the_token_is_found_in_a_cookie_header() {
        assert_eq!(
            Sessions::from_cookie(Some("theme=dark; luthien_session=v1.1.a.b; x=y")),
            Some("v1.1.a.b")
        );
        assert_eq!(Sessions::from_cookie(Some("luthien_admin=key")), None);
    }
}
