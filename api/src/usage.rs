//! Token usage as the providers report it, in one shape for both APIs.

use serde::{Deserialize, Serialize};

/// Token usage of a call, when the provider reported it (OpenAI `prompt_tokens` /
/// `completion_tokens`, Anthropic `input_tokens` / `output_tokens`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}
