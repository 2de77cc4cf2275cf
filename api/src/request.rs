//! What a request says, read the same way everywhere it is read: the `block` policy's rules,
//! the calls list's preview, `luthien calls show`, the diff's message texts.

use serde_json::Value;

/// The text pieces of a message's `content`: the string itself, or the `text` of each text
/// part (OpenAI `text`, Responses `input_text` and `output_text`) / block (Anthropic), in
/// order. Nothing for any other shape.
pub fn content_texts(content: &Value) -> impl Iterator<Item = &str> {
    let (whole, parts) = match content {
        Value::String(text) => (Some(text.as_str()), None),
        Value::Array(parts) => (None, Some(parts)),
        _ => (None, None),
    };
    whole.into_iter().chain(
        parts
            .into_iter()
            .flatten()
            .filter(|part| {
                matches!(
                    part.get("type").and_then(Value::as_str),
                    Some("text" | "input_text" | "output_text")
                )
            })
            .filter_map(|part| part.get("text").and_then(Value::as_str)),
    )
}

/// The `content` of the last message with role `user`. Chat Completions and Anthropic keep
/// the conversation in `messages` with the same roles and text shapes; the Responses API in
/// `input`, either a string (the user's message itself) or a list of items among which the
/// messages have a `role` (items of other types — function calls and outputs, reasoning —
/// have none). `instructions` is the system prompt, not a user message. A conversation
/// continued with `previous_response_id` lives on the provider: only this request's `input`
/// is seen.
/// `None` when there is no user message; `Some(None)` when it has no content.
fn last_user_content(request: &Value) -> Option<Option<&Value>> {
    let conversation = match request.get("messages") {
        Some(messages) => messages,
        None => match request.get("input")? {
            input @ Value::String(_) => return Some(Some(input)),
            items => items,
        },
    };
    let message = conversation
        .as_array()?
        .iter()
        .rev()
        .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))?;
    Some(message.get("content"))
}

/// The last user message's text pieces; nothing when it has no content.
fn last_user_texts(request: &Value) -> Option<impl Iterator<Item = &str>> {
    Some(
        last_user_content(request)?
            .into_iter()
            .flat_map(content_texts),
    )
}

/// The text of the last message with role `user`, its pieces joined by newlines. `None` when
/// there is no user message.
pub fn last_user_text(request: &Value) -> Option<String> {
    Some(last_user_texts(request)?.collect::<Vec<_>>().join("\n"))
}

/// The first `max_chars` characters of [`last_user_text`], without copying the rest of a long
/// prompt.
pub fn last_user_preview(request: &Value, max_chars: usize) -> Option<String> {
    let mut preview = String::new();
    let mut taken = 0;
    for (index, text) in last_user_texts(request)?.enumerate() {
        for c in (index > 0).then_some('\n').into_iter().chain(text.chars()) {
            if taken == max_chars {
                return Some(preview);
            }
            preview.push(c);
            taken += 1;
        }
    }
    Some(preview)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_last_user_message_reads_alike_whole_and_as_a_preview() {
        let request = json!({"messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": [
                {"type": "text", "text": "héllo"},
                {"type": "image_url", "image_url": {"url": "x"}},
                {"type": "text", "text": "world"}
            ]}
        ]});
        assert_eq!(last_user_text(&request).as_deref(), Some("héllo\nworld"));
        assert_eq!(last_user_preview(&request, 7).as_deref(), Some("héllo\nw"));
        assert_eq!(last_user_preview(&request, 100), last_user_text(&request));
        assert_eq!(last_user_text(&json!({"messages": []})), None);
        assert_eq!(
            last_user_text(&json!({"messages": [{"role": "user"}]})).as_deref(),
            Some("")
        );
    }

    #[test]
    fn a_responses_input_is_a_string_or_items() {
        assert_eq!(
            last_user_text(&json!({"instructions": "be brief", "input": "hi there"})).as_deref(),
            Some("hi there")
        );
        let request = json!({"input": [
            {"role": "user", "content": "first"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://example.com/a.png"},
                {"type": "input_text", "text": "here"}
            ]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "done"}
        ]});
        assert_eq!(last_user_text(&request).as_deref(), Some("look\nhere"));
        assert_eq!(
            last_user_text(&json!({"input": [], "previous_response_id": "resp_1"})),
            None
        );
    }
}
