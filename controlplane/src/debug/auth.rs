//! The admin key guarding the debug API. Without a key, the debug routes answer loopback
//! clients only (see `debug::http`) and the Debug gRPC services are served on a loopback
//! gRPC address only; with one, every request needs it.

use std::sync::Arc;

use subtle::ConstantTimeEq;

/// The configured admin key, if any.
#[derive(Clone, Default)]
pub struct AdminKey(Option<Arc<str>>);

impl AdminKey {
    pub fn new(key: Option<String>) -> Self {
        Self(key.filter(|key| !key.is_empty()).map(Arc::from))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The key itself, to derive other secrets from (the UI's session signing key).
    pub fn secret(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// Checks a presented key (from `authorization: Bearer`, or the UI's login form).
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
        luthien_api::headers::bearer_token(header?)
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
    fn keys_are_found_in_bearer_headers() {
        assert_eq!(AdminKey::from_bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(AdminKey::from_bearer(Some("Basic abc")), None);
    }
}
