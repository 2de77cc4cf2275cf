//! `regex_redact` on whole bodies and on realistic streams of both APIs.

use serde_json::json;

use super::*;
use crate::shapes::fixtures::*;

const CARD: &str = "4111 1111 1111 1111";
const EMAIL: &str = "jane.doe@example.com";

fn policy(yaml: &str) -> RegexRedact {
    let config: RegexRedactConfig = serde_yaml_ng::from_str(yaml).unwrap();
    RegexRedact::from_config("redact".to_owned(), config).unwrap()
}

fn config_error(yaml: &str) -> String {
    let config: RegexRedactConfig = serde_yaml_ng::from_str(yaml).unwrap();
    RegexRedact::from_config("redact".to_owned(), config).unwrap_err()
}

fn all_presets() -> RegexRedact {
    policy("presets: [emails, phone_numbers, credit_cards, api_keys]")
}

fn call(policy: &RegexRedact, api: Api) -> Box<dyn CallPolicy> {
    policy.start_call(&CallInfo::new("c1", api, "m", true))
}

fn json_events(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .map(|event| event.json().cloned().unwrap_or_else(|| json!(event.data())))
        .collect()
}

/// Splits `text` into pieces of `size` characters.
fn pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

#[tokio::test]
async fn redacts_request_text_and_tool_data_and_records_counts_not_secrets() {
    let policy = all_presets();
    let mut call = call(&policy, Api::AnthropicMessages);
    let mut request = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Escalate to ops@example.com."}],
        "messages": [
            {"role": "user", "content": format!("My card is {CARD}, call +44 20 7946 0958")},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "user mailed bob@example.com", "signature": "sig"},
                {"type": "tool_use", "id": "t1", "name": "send", "input": {"to": ["bob@example.com"], "n": 3}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "AWS_KEY=AKIAIOSFODNN7EXAMPLE"}]},
                {"type": "tool_result", "tool_use_id": "t2", "content": "sent to bob@example.com"},
                {"type": "text", "text": "thanks"}
            ]}
        ]
    });
    call.on_request(&mut request).await.unwrap();
    assert_eq!(
        request["system"][0]["text"],
        "Escalate to [REDACTED:emails]."
    );
    assert_eq!(
        request["messages"][0]["content"],
        "My card is [REDACTED:credit_cards], call [REDACTED:phone_numbers]"
    );
    // Thinking is signed: untouched.
    assert_eq!(
        request["messages"][1]["content"][0]["thinking"],
        "user mailed bob@example.com"
    );
    assert_eq!(
        request["messages"][1]["content"][1]["input"],
        json!({"to": ["[REDACTED:emails]"], "n": 3})
    );
    assert_eq!(
        request["messages"][2]["content"][0]["content"][0]["text"],
        "AWS_KEY=[REDACTED:api_keys]"
    );
    assert_eq!(
        request["messages"][2]["content"][1]["content"],
        "sent to [REDACTED:emails]"
    );

    let events = call.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "redacted");
    assert_eq!(
        events[0].data,
        json!({"phase": "request", "count": 6, "counts": {"emails": 3, "phone_numbers": 1, "credit_cards": 1, "api_keys": 1}})
    );
    assert_eq!(
        events[0].summary,
        "redacted 6 match(es) in the request: emails ×3, phone_numbers ×1, credit_cards ×1, api_keys ×1"
    );
    let recorded = format!("{:?}", events);
    for secret in [CARD, "example.com", "AKIA", "7946"] {
        assert!(!recorded.contains(secret), "{secret} in {recorded}");
    }
}

#[tokio::test]
async fn openai_request_tool_arguments_are_redacted_as_json() {
    let policy = policy("presets: [emails]");
    let mut request = json!({"model": "gpt-4o", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "write to a@b.io"}]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "mail", "arguments": "{\"to\": \"a@b.io\", \"cc\": [\"c@d.io\"]}"}},
            {"id": "c2", "type": "function", "function": {"name": "noop", "arguments": "{\"x\": 1}"}},
            {"id": "c3", "type": "function", "function": {"name": "raw", "arguments": "not json a@b.io"}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "sent to a@b.io"}
    ]});
    call(&policy, Api::OpenAiChat)
        .on_request(&mut request)
        .await
        .unwrap();
    assert_eq!(
        request["messages"][0]["content"][0]["text"],
        "write to [REDACTED:emails]"
    );
    let calls = &request["messages"][1]["tool_calls"];
    assert_eq!(
        calls[0]["function"]["arguments"],
        "{\"to\":\"[REDACTED:emails]\",\"cc\":[\"[REDACTED:emails]\"]}"
    );
    // Untouched arguments keep their exact text.
    assert_eq!(calls[1]["function"]["arguments"], "{\"x\": 1}");
    assert_eq!(
        calls[2]["function"]["arguments"],
        "not json [REDACTED:emails]"
    );
    assert_eq!(
        request["messages"][2]["content"],
        "sent to [REDACTED:emails]"
    );
}

#[tokio::test]
async fn apply_to_limits_the_phases() {
    let request_only = policy("{presets: [emails], apply_to: request}");
    let mut call = call(&request_only, Api::OpenAiChat);
    let mut response: Value = serde_json::from_str(OPENAI_TOOL_RESPONSE).unwrap();
    response["choices"][0]["message"]["content"] = json!("mail x@y.com");
    let original = response.clone();
    call.on_response(&mut response).await.unwrap();
    assert_eq!(response, original);
    let stream = openai_text_stream(&["mail x@y", ".com"]);
    let output = run_stream(call.as_mut(), &stream).await;
    assert_eq!(streamed_text(Api::OpenAiChat, &output), "mail x@y.com");
    assert!(call.take_events().is_empty());

    let response_only = policy("{presets: [emails], apply_to: response}");
    let mut request = json!({"messages": [{"role": "user", "content": "x@y.com"}]});
    self::call(&response_only, Api::OpenAiChat)
        .on_request(&mut request)
        .await
        .unwrap();
    assert_eq!(request["messages"][0]["content"], "x@y.com");
}

#[tokio::test]
async fn non_streamed_responses_redact_text_but_not_tool_calls_or_thinking() {
    let policy = all_presets();
    let mut openai: Value = serde_json::from_str(OPENAI_TOOL_RESPONSE).unwrap();
    openai["choices"][0]["message"]["content"] = json!(format!("Card {CARD} noted."));
    openai["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] =
        json!("{\"email\":\"a@b.io\"}");
    let mut call = call(&policy, Api::OpenAiChat);
    call.on_response(&mut openai).await.unwrap();
    assert_eq!(
        openai["choices"][0]["message"]["content"],
        "Card [REDACTED:credit_cards] noted."
    );
    assert_eq!(
        openai["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"email\":\"a@b.io\"}"
    );
    let events = call.take_events();
    assert_eq!(events[0].data["phase"], "response");
    assert_eq!(events[0].data["counts"], json!({"credit_cards": 1}));

    let mut anthropic: Value = serde_json::from_str(ANTHROPIC_RESPONSE).unwrap();
    anthropic["content"][0]["thinking"] = json!("mail a@b.io");
    anthropic["content"][1]["text"] = json!("Mail a@b.io or sk-proj-abcdefghij0123456789XYZ.");
    self::call(&policy, Api::AnthropicMessages)
        .on_response(&mut anthropic)
        .await
        .unwrap();
    assert_eq!(anthropic["content"][0]["thinking"], "mail a@b.io");
    assert_eq!(
        anthropic["content"][1]["text"],
        "Mail [REDACTED:emails] or [REDACTED:api_keys]."
    );
}

#[tokio::test]
async fn openai_card_split_over_three_events_mid_group() {
    let policy = all_presets();
    let mut call = call(&policy, Api::OpenAiChat);
    let stream = openai_text_stream(&["Your card 4111 11", "11 1111 1", "111 is on file."]);
    let output = run_stream(call.as_mut(), &stream).await;
    assert_eq!(
        streamed_text(Api::OpenAiChat, &output),
        "Your card [REDACTED:credit_cards] is on file."
    );
    let events = json_events(&output);
    // role, (3 text chunks all held: dropped), flushed text, finish, usage, [DONE]
    assert_eq!(events.len(), 5, "{events:#?}");
    assert_eq!(
        events[1]["choices"][0]["delta"],
        json!({"content": "Your card [REDACTED:credit_cards] is on file."})
    );
    assert_eq!(events[1]["id"], "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG");
    assert_eq!(events[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[3]["usage"]["total_tokens"], 21);
    assert_eq!(events[4], json!("[DONE]"));
    let recorded = call.take_events();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].data,
        json!({"phase": "streamed response", "count": 1, "counts": {"credit_cards": 1}})
    );
}

#[tokio::test]
async fn anthropic_email_split_at_the_at_sign() {
    let policy = all_presets();
    let mut call = call(&policy, Api::AnthropicMessages);
    let stream = anthropic_text_stream(&["Write to jane.doe", "@", "example.com today."]);
    let output = run_stream(call.as_mut(), &stream).await;
    assert_eq!(
        streamed_text(Api::AnthropicMessages, &output),
        "Write to [REDACTED:emails] today."
    );
    // The held text goes out just before content_block_stop, and the event sequence stays valid.
    let types: Vec<&str> = output.iter().filter_map(SseEvent::event_type).collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(call.take_events()[0].data["counts"], json!({"emails": 1}));
}

#[tokio::test]
async fn long_text_flows_with_a_bounded_delay_and_matches_at_every_split_are_caught() {
    let policy =
        policy("{presets: [emails, credit_cards, phone_numbers, api_keys], max_match_chars: 32}");
    let text = format!(
        "Dear customer, we charged {CARD} and mailed {EMAIL}; questions? Call +1-202-555-0143 or \
         use key sk-ant-api03-{} please. Thanks for shopping with us, have a nice day!",
        "aB3dE6gH9-".repeat(9)
    );
    let expected = "Dear customer, we charged [REDACTED:credit_cards] and mailed [REDACTED:emails]; \
                    questions? Call [REDACTED:phone_numbers] or use key [REDACTED:api_keys] please. \
                    Thanks for shopping with us, have a nice day!";
    for size in [1, 2, 3, 5, 7, 11, 64, 1000] {
        for api in Api::ALL {
            let pieces = pieces(&text, size);
            let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let stream = match api {
                Api::OpenAiChat => openai_text_stream(&pieces),
                Api::AnthropicMessages => anthropic_text_stream(&pieces),
                Api::OpenAiResponses => responses_text_stream(&pieces),
            };
            let mut call = call(&policy, api);
            let mut out = Vec::new();
            for event in decode(&stream) {
                call.on_event(event, &mut out).await.unwrap();
            }
            // Everything went out before the terminator.
            let sent = streamed_text(api, &out);
            call.on_stream_end(&mut out).await.unwrap();
            assert_eq!(streamed_text(api, &out), expected, "size {size}, {api:?}");
            assert_eq!(sent, expected);
            // Every whole copy of the text (Responses repeats it four times) is redacted too.
            let wire = encode(&out);
            for secret in ["@", "202-555", "aB3dE6gH9"] {
                assert!(!wire.contains(secret), "{api:?} leaks {secret}: {wire}");
            }
            if api == Api::OpenAiResponses {
                let mut rebuilt = crate::reconstruct::Reconstructor::new(api);
                out.iter().for_each(|event| rebuilt.push(event));
                let rebuilt = rebuilt.finish().unwrap();
                assert_eq!(rebuilt["output"][0]["content"][0]["text"], expected);
                let completed = out.last().unwrap().json().unwrap();
                assert_eq!(completed["response"], rebuilt);
            }
            let counts = &call.take_events()[0].data["counts"];
            assert_eq!(
                counts,
                &json!({"emails": 1, "phone_numbers": 1, "credit_cards": 1, "api_keys": 1})
            );
        }
    }
}

#[tokio::test]
async fn plain_text_is_held_back_by_the_window_only() {
    let policy = policy("{patterns: [{name: secret, regex: 'SECRET-[0-9]+'}], max_match_chars: 8}");
    let mut call = call(&policy, Api::OpenAiChat);
    let mut out = Vec::new();
    for piece in ["Hello there, ", "general Kenobi"] {
        let chunk = data_event(&openai_chunk(json!({"content": piece}), None));
        for event in decode(&chunk) {
            call.on_event(event, &mut out).await.unwrap();
        }
    }
    // 7 characters are held.
    assert_eq!(streamed_text(Api::OpenAiChat, &out), "Hello there, general");
    call.on_stream_end(&mut out).await.unwrap();
    assert_eq!(
        streamed_text(Api::OpenAiChat, &out),
        "Hello there, general Kenobi"
    );
}

#[tokio::test]
async fn several_openai_choices_are_redacted_independently() {
    let mut stream = String::new();
    for (index, piece) in [(0, "a@b"), (1, "x@y"), (0, ".io"), (1, ".org")] {
        stream += &data_event(&openai_chunk_for_choice(
            index,
            json!({"content": piece}),
            None,
        ));
    }
    stream += &data_event(&openai_chunk_for_choice(0, json!({}), Some("stop")));
    stream += &data_event(&openai_chunk_for_choice(1, json!({}), Some("stop")));
    stream += "data: [DONE]\n\n";
    let policy = policy("presets: [emails]");
    let mut call = call(&policy, Api::OpenAiChat);
    let output = run_stream(call.as_mut(), &stream).await;
    let mut texts = [String::new(), String::new()];
    for event in &output {
        if let Some(value) = event.json() {
            crate::shapes::for_each_stream_text(Api::OpenAiChat, value, |index, text| {
                texts[index].push_str(text)
            });
        }
    }
    assert_eq!(texts, ["[REDACTED:emails]", "[REDACTED:emails]"]);
    assert_eq!(call.take_events()[0].data["count"], 2);
}

#[tokio::test]
async fn tool_call_chunks_and_thinking_pass_byte_identical() {
    let policy = all_presets();
    let input = decode(ANTHROPIC_STREAM);
    let output = run_stream(
        call(&policy, Api::AnthropicMessages).as_mut(),
        ANTHROPIC_STREAM,
    )
    .await;
    assert_eq!(
        streamed_text(Api::AnthropicMessages, &output),
        "Let me check the weather. One moment."
    );
    for event in &output {
        let is_text = event
            .json()
            .and_then(|v| v.pointer("/delta/type"))
            .and_then(Value::as_str)
            == Some("text_delta");
        if !is_text {
            assert!(
                input.iter().any(|i| i.to_bytes() == event.to_bytes()),
                "{:?}",
                event.data()
            );
        }
    }
    let output = run_stream(call(&policy, Api::OpenAiChat).as_mut(), OPENAI_TOOL_STREAM).await;
    assert_eq!(streamed_text(Api::OpenAiChat, &output), "Let me check.");
    for event in decode(OPENAI_TOOL_STREAM) {
        if event.data().contains("tool_calls") {
            assert!(output.iter().any(|o| o.to_bytes() == event.to_bytes()));
        }
    }
}

#[tokio::test]
async fn held_text_is_flushed_when_the_stream_breaks_off() {
    let policy = all_presets();
    let mut call = call(&policy, Api::OpenAiChat);
    let stream = data_event(&openai_chunk(json!({"content": "mail a@b.io"}), None));
    let mut out = Vec::new();
    for event in decode(&stream) {
        call.on_event(event, &mut out).await.unwrap();
    }
    assert_eq!(streamed_text(Api::OpenAiChat, &out), "");
    call.on_stream_end(&mut out).await.unwrap();
    assert_eq!(
        streamed_text(Api::OpenAiChat, &out),
        "mail [REDACTED:emails]"
    );
    assert_eq!(
        out[0].json().unwrap()["id"],
        "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
    );
    assert_eq!(call.take_events().len(), 1);
}

#[tokio::test]
async fn finish_in_the_same_chunk_as_text_keeps_both() {
    let policy = policy("{presets: [emails], max_match_chars: 4}");
    let mut call = call(&policy, Api::OpenAiChat);
    // The first "abc" is held; the second sends exactly "abc" (the first) and holds itself,
    // then its chunk ends the choice: it must carry both.
    let stream = data_event(&openai_chunk(json!({"content": "abc"}), None))
        + &data_event(&openai_chunk(json!({"content": "abc"}), Some("stop")))
        + "data: [DONE]\n\n";
    let output = run_stream(call.as_mut(), &stream).await;
    assert_eq!(streamed_text(Api::OpenAiChat, &output), "abcabc");
    assert_eq!(output.len(), 2);
}

#[test]
fn user_patterns_and_replacement_template() {
    let policy = policy(
        "{patterns: [{name: ticket, regex: 'TICKET-[0-9]+'}, {name: word, regex: '(?i)\\bpineapple\\b'}], \
         replacement: '<{name}/{name}>'}",
    );
    let mut counts = policy.redactor.new_counts();
    let mut text = "TICKET-42 and Pineapple, not pineapples".to_owned();
    policy.redactor.redact_all(&mut text, &mut counts);
    assert_eq!(text, "<ticket/ticket> and <word/word>, not pineapples");
}

#[test]
fn invalid_configs_name_the_key_and_the_pattern() {
    assert!(config_error("{}").starts_with("presets: give at least one preset or pattern"));
    assert_eq!(
        config_error("{patterns: [{name: ok, regex: a}, {name: orders, regex: '(ORD-[0-9]+'}]}"),
        "patterns[1].regex: pattern \"orders\" is not a valid regex: unclosed group"
    );
    assert_eq!(
        config_error("{patterns: [{name: any, regex: 'x*'}]}"),
        "patterns[0].regex: pattern \"any\" matches the empty string"
    );
    assert_eq!(
        config_error("{presets: [emails], patterns: [{name: emails, regex: x}]}"),
        "patterns[0].name: \"emails\" is already used by a preset or an earlier pattern"
    );
    assert_eq!(
        config_error("{patterns: [{name: ' ', regex: x}]}"),
        "patterns[0].name: must not be empty"
    );
    assert_eq!(
        config_error("{presets: [emails, emails]}"),
        "presets[1]: emails is listed twice"
    );
    assert_eq!(
        config_error("{presets: [emails], max_match_chars: 0}"),
        "max_match_chars: must be between 1 and 4096"
    );
    let unknown = serde_yaml_ng::from_str::<RegexRedactConfig>("{presets: [ssn]}")
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("unknown variant `ssn`"), "{unknown}");
}
