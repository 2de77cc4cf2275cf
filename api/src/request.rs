//! What a request says, read the same way everywhere it is read: the `block` policy's rules,
//! the calls list's preview, the `luthien calls show` prompt.

use serde_json::Value;

/// The text of the last message with role `user`: a string content, or its `text` parts
/// (OpenAI) / blocks (Anthropic) joined by newlines. `None` when there is no user message.
/// Both APIs keep the conversation in `messages` with the same roles and text shapes.
pub fn last_user_text(request: &Value) -> Option<String> {
    let message = request
        .get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))?;
    Some(match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|part| part.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    })
}
