//! [`Api`]: the provider APIs Luthien serves natively, and every name each one goes by.

use std::fmt;
use std::str::FromStr;

use luthien_proto::common::v1::Api as ProtoApi;

/// A provider API. Bodies always stay in the API's own format; nothing converts between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI `POST /v1/chat/completions`.
    OpenAiChat,
    /// Anthropic `POST /v1/messages`.
    AnthropicMessages,
    /// OpenAI `POST /v1/responses`.
    OpenAiResponses,
}

impl Api {
    /// Every API, in the order the documentation lists them.
    pub const ALL: [Api; 3] = [
        Api::OpenAiChat,
        Api::AnthropicMessages,
        Api::OpenAiResponses,
    ];

    /// The short name used in records, the debug API's `api` filter, the activity stream and
    /// remote policy servers' `api` field: `openai`, `anthropic`, `openai_responses`.
    /// [`FromStr`] reads it back.
    pub fn name(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai",
            Api::AnthropicMessages => "anthropic",
            Api::OpenAiResponses => "openai_responses",
        }
    }

    /// The `api` label of metrics, the same on both planes: `openai_chat`, `anthropic_messages`,
    /// `openai_responses`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai_chat",
            Api::AnthropicMessages => "anthropic_messages",
            Api::OpenAiResponses => "openai_responses",
        }
    }

    /// `gen_ai.provider.name` of the OpenTelemetry GenAI conventions: `openai` for both of
    /// OpenAI's APIs (the conventions name the provider, not the endpoint).
    pub fn provider(self) -> &'static str {
        match self {
            Api::OpenAiChat | Api::OpenAiResponses => "openai",
            Api::AnthropicMessages => "anthropic",
        }
    }

    /// True for OpenAI's APIs, which share the error format, the key header and the
    /// auxiliary endpoints' provider.
    pub fn is_openai(self) -> bool {
        matches!(self, Api::OpenAiChat | Api::OpenAiResponses)
    }

    /// The protocol's name for this API.
    pub fn kind(self) -> ProtoApi {
        match self {
            Api::OpenAiChat => ProtoApi::OpenaiChat,
            Api::AnthropicMessages => ProtoApi::AnthropicMessages,
            Api::OpenAiResponses => ProtoApi::OpenaiResponses,
        }
    }

    /// The API a protocol message names; `None` for `UNSPECIFIED` or a value this build does
    /// not know (a newer data plane).
    pub fn from_kind(kind: i32) -> Option<Api> {
        match ProtoApi::try_from(kind).ok()? {
            ProtoApi::OpenaiChat => Some(Api::OpenAiChat),
            ProtoApi::AnthropicMessages => Some(Api::AnthropicMessages),
            ProtoApi::OpenaiResponses => Some(Api::OpenAiResponses),
            ProtoApi::Unspecified => None,
        }
    }

    /// Guesses the API of a request whose path does not name it (an unknown route,
    /// `/v1/models`): Anthropic's SDKs send `anthropic-version` and their key as `x-api-key`,
    /// OpenAI's neither; a path under `/responses` is the Responses API's. Also picks the
    /// provider of the auxiliary endpoints the APIs share.
    pub fn guess(path: &str, headers: &http::HeaderMap) -> Api {
        if headers.contains_key("anthropic-version")
            || headers.contains_key("x-api-key")
            || path.ends_with("/messages")
            || path.contains("/messages/")
        {
            Api::AnthropicMessages
        } else if path.ends_with("/responses") || path.contains("/responses/") {
            Api::OpenAiResponses
        } else {
            Api::OpenAiChat
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`Api::name`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownApi(pub String);

impl fmt::Display for UnknownApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<&str> = Api::ALL.iter().map(|api| api.name()).collect();
        write!(
            f,
            "unknown api {:?} (expected one of: {})",
            self.0,
            known.join(", ")
        )
    }
}

impl std::error::Error for UnknownApi {}

/// Records, filters and activity messages carry an API by [`Api::name`].
impl serde::Serialize for Api {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Api {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Api, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Api {
    type Err = UnknownApi;

    /// Reads [`Api::name`] back; the metric label is accepted too, so a name copied from a
    /// dashboard works in a filter.
    fn from_str(name: &str) -> Result<Api, UnknownApi> {
        Api::ALL
            .into_iter()
            .find(|api| name == api.name() || name == api.metric_label())
            .ok_or_else(|| UnknownApi(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn names_read_back() {
        for api in Api::ALL {
            assert_eq!(api.name().parse::<Api>(), Ok(api));
            assert_eq!(api.metric_label().parse::<Api>(), Ok(api));
            assert_eq!(Api::from_kind(api.kind() as i32), Some(api));
        }
        let error = "gemini".parse::<Api>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown api \"gemini\" (expected one of: openai, anthropic, openai_responses)"
        );
        assert_eq!(Api::from_kind(0), None);
        assert_eq!(Api::from_kind(99), None);
    }

    #[test]
    fn serde_uses_the_name() {
        assert_eq!(
            serde_json::to_string(&Api::AnthropicMessages).unwrap(),
            "\"anthropic\""
        );
        assert_eq!(
            serde_json::from_str::<Api>("\"openai\"").unwrap(),
            Api::OpenAiChat
        );
        assert!(serde_json::from_str::<Api>("\"gemini\"").is_err());
    }

    #[test]
    fn guess_recognises_anthropic_requests() {
        let mut headers = HeaderMap::new();
        assert_eq!(Api::guess("/v1/models", &headers), Api::OpenAiChat);
        assert_eq!(
            Api::guess("/v1/responses/resp_1", &headers),
            Api::OpenAiResponses
        );
        assert_eq!(
            Api::guess("/v1/messages/count_tokens", &headers),
            Api::AnthropicMessages
        );
        headers.insert("x-api-key", HeaderValue::from_static("sk-ant"));
        assert_eq!(Api::guess("/v1/models", &headers), Api::AnthropicMessages);
        headers.clear();
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        assert_eq!(Api::guess("/v1/models", &headers), Api::AnthropicMessages);
    }
}
