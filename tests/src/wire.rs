//! Reading provider wire formats back in tests: SSE events and the text and
//! tool calls they carry.

use serde_json::Value;

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|error| panic!("event data is not JSON ({error}): {}", self.data))
    }
}

/// Splits a complete SSE body into events, checking the framing strictly:
/// every event must end with a blank line.
pub fn events(body: &[u8]) -> Vec<Event> {
    let text = std::str::from_utf8(body).expect("SSE body is UTF-8");
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "SSE body must end with a blank line: {text:?}"
    );
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    event = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            Event {
                event,
                data: data.join("\n"),
            }
        })
        .collect()
}

/// The assistant text of an OpenAI stream (choice 0).
pub fn openai_stream_text(body: &[u8]) -> String {
    events(body)
        .iter()
        .filter(|event| event.data != "[DONE]")
        .filter_map(|event| {
            event.json()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The assistant text of an Anthropic stream (all text blocks).
pub fn anthropic_stream_text(body: &[u8]) -> String {
    events(body)
        .iter()
        .map(Event::json)
        .filter(|json| {
            json["type"] == "content_block_delta" && json["delta"]["type"] == "text_delta"
        })
        .filter_map(|json| json["delta"]["text"].as_str().map(str::to_owned))
        .collect()
}

/// Tool-call arguments of an OpenAI stream, concatenated per tool index.
pub fn openai_stream_tool_arguments(body: &[u8]) -> Vec<String> {
    let mut arguments: Vec<String> = Vec::new();
    for event in events(body).iter().filter(|event| event.data != "[DONE]") {
        let json = event.json();
        let Some(calls) = json["choices"][0]["delta"]["tool_calls"].as_array() else {
            continue;
        };
        for call in calls {
            let index = call["index"].as_u64().expect("tool call index") as usize;
            if arguments.len() <= index {
                arguments.resize(index + 1, String::new());
            }
            if let Some(fragment) = call["function"]["arguments"].as_str() {
                arguments[index].push_str(fragment);
            }
        }
    }
    arguments
}

/// `input_json_delta` fragments of an Anthropic stream, concatenated per block.
pub fn anthropic_stream_tool_inputs(body: &[u8]) -> Vec<String> {
    let mut inputs = std::collections::BTreeMap::<u64, String>::new();
    for json in events(body).iter().map(Event::json) {
        if json["type"] == "content_block_delta" && json["delta"]["type"] == "input_json_delta" {
            let index = json["index"].as_u64().expect("block index");
            inputs
                .entry(index)
                .or_default()
                .push_str(json["delta"]["partial_json"].as_str().unwrap_or_default());
        }
    }
    inputs.into_values().collect()
}
