//! The admin key guarding the debug API. Without a key, debug endpoints only
//! listen on loopback (see the server); with one, every request needs it.

use std::sync::Arc;

use subtle::ConstantTimeEq;

/// The configured admin key, if any.
#[derive(Clone, Default)]
pub struct AdminKey(Option<Arc<str>>);

/// Cookie the web UI's login sets.
pub const COOKIE: &str = "luthien_admin";

impl AdminKey {
    pub fn new(key: Option<String>) -> Self {
        Self(key.filter(|key| !key.is_empty()).map(Arc::from))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Checks a presented key (from `authorization: Bearer` or the cookie).
    pub fn accepts(&self, presented: Option<&str>) -> bool {
        match &self.0 {
            None => true,
            Some(expected) => presented.is_some_and(|presented| {
                bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
            }),
        }
    }

    /// The key in an `authorization` header value.
    pub fn from_bearer(header: Option<&str>) -> Option<&str> {
        header?.strip_prefix("Bearer ").map(str::trim)
    }

    /// The key in a `cookie` header value.
    pub fn from_cookie(header: Option<&str>) -> Option<&str> {
        header?.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_accepts_everything_and_a_key_only_itself() {
        assert!(AdminKey::new(None).accepts(None));
        let key = AdminKey::new(Some("s3cret".into()));
        assert!(key.accepts(Some("s3cret")));
        assert!(!key.accepts(Some("s3cre")));
        assert!(!key.accepts(None));
    }

    #[test]
    fn keys_are_found_in_bearer_and_cookie_headers() {
        assert_eq!(AdminKey::from_bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(AdminKey::from_bearer(Some("Basic abc")), None);
        assert_eq!(
            AdminKey::from_cookie(Some("theme=dark; luthien_admin=abc; x=y")),
            Some("abc")
        );
        assert_eq!(AdminKey::from_cookie(Some("theme=dark")), None);
    }
}
