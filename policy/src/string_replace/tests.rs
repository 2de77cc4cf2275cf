//! `string_replace` on whole bodies and on realistic streams of both APIs.

use serde_json::json;

use super::*;
use crate::shapes::fixtures::*;

fn policy(pairs: &[(&str, &str)], apply_to: ApplyTo) -> StringReplace {
    let replacements = pairs
        .iter()
        .map(|(from, to)| Replacement {
            from: (*from).to_owned(),
            to: (*to).to_owned(),
        })
        .collect();
    StringReplace::from_config(
        "redact".to_owned(),
        StringReplaceConfig {
            replacements,
            apply_to,
        },
    )
    .unwrap()
}

fn call(pairs: &[(&str, &str)], api: Api) -> Box<dyn CallPolicy> {
    policy(pairs, ApplyTo::Both).start_call(&CallInfo::new("c1", api, "m", true))
}

fn json_events(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .map(|event| event.json().cloned().unwrap_or_else(|| json!(event.data())))
        .collect()
}

#[tokio::test]
async fn replaces_in_request_text_only_where_configured() {
    let mut request = openai_request();
    call(&[("paris", "PARIS"), ("be", "BE")], Api::OpenAiChat)
        .on_request(&mut request)
        .await
        .unwrap();
    assert_eq!(request["messages"][0]["content"], "BE brief");
    // Tool-call arguments keep their text.
    assert_eq!(
        request["messages"][2]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"paris\"}"
    );

    let response_only = policy(&[("be", "BE")], ApplyTo::Response).start_call(&CallInfo::new(
        "c2",
        Api::OpenAiChat,
        "m",
        false,
    ));
    let mut request = openai_request();
    let mut response_only = response_only;
    response_only.on_request(&mut request).await.unwrap();
    assert_eq!(request, openai_request());
}

#[tokio::test]
async fn replaces_in_response_text_but_not_tool_input_or_thinking() {
    let mut response: Value = serde_json::from_str(ANTHROPIC_RESPONSE).unwrap();
    call(
        &[("check", "verify"), ("paris", "X"), ("weather", "X")],
        Api::AnthropicMessages,
    )
    .on_response(&mut response)
    .await
    .unwrap();
    assert_eq!(response["content"][0]["thinking"], "the user wants weather");
    assert_eq!(response["content"][1]["text"], "Let me verify.");
    assert_eq!(response["content"][2]["input"]["city"], "paris");

    let mut request = anthropic_request();
    let mut request_only = policy(&[("Checking", "Looking")], ApplyTo::Request)
        .start_call(&CallInfo::new("c3", Api::AnthropicMessages, "m", false));
    request_only.on_request(&mut request).await.unwrap();
    assert_eq!(request["messages"][1]["content"][1]["text"], "Looking.");
    let mut response: Value = serde_json::from_str(ANTHROPIC_RESPONSE).unwrap();
    request_only.on_response(&mut response).await.unwrap();
    assert_eq!(response["content"][1]["text"], "Let me check.");
}

#[tokio::test]
async fn openai_match_split_over_three_chunks() {
    let stream = openai_text_stream(&["The pass", "wo", "rd is hunter2", "."]);
    let output = run_stream(
        call(&[("password", "[secret]")], Api::OpenAiChat).as_mut(),
        &stream,
    )
    .await;
    assert_eq!(
        streamed_text(Api::OpenAiChat, &output),
        "The [secret] is hunter2."
    );
    let events = json_events(&output);
    // role, "The ", ("wo" was all held: dropped), "[secret] is hunter2", ".", finish, usage, [DONE]
    assert_eq!(events.len(), 7);
    assert_eq!(events[1]["choices"][0]["delta"], json!({"content": "The "}));
    assert_eq!(
        events[2]["choices"][0]["delta"],
        json!({"content": "[secret] is hunter2"})
    );
    assert_eq!(events[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[5]["choices"], json!([]));
    assert_eq!(events[6], json!("[DONE]"));
}

#[tokio::test]
async fn openai_held_text_is_flushed_in_a_chunk_just_before_the_finish_chunk() {
    let stream = openai_text_stream(&["ends with pass"]);
    let output = run_stream(
        call(&[("password", "x")], Api::OpenAiChat).as_mut(),
        &stream,
    )
    .await;
    let events = json_events(&output);
    assert_eq!(events[1]["choices"][0]["delta"]["content"], "ends with ");
    assert_eq!(
        events[2],
        json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion.chunk",
            "created": 1741570283, "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_eb9dce56a8",
            "choices": [{"index": 0, "delta": {"content": "pass"}, "logprobs": null, "finish_reason": null}]
        })
    );
    assert_eq!(events[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(streamed_text(Api::OpenAiChat, &output), "ends with pass");
}

#[tokio::test]
async fn openai_patterns_at_chunk_boundaries() {
    let pieces = ["foo", "bar", "foo", "", "barfoo"];
    let stream = openai_text_stream(&pieces);
    let output = run_stream(
        call(&[("foo", "1"), ("bar", "2")], Api::OpenAiChat).as_mut(),
        &stream,
    )
    .await;
    assert_eq!(streamed_text(Api::OpenAiChat, &output), "12121");
}

#[tokio::test]
async fn openai_unaffected_chunks_stay_byte_identical() {
    let stream = openai_text_stream(&["nothing ", "to see"]);
    let input = decode(&stream);
    let output = run_stream(call(&[("secret", "x")], Api::OpenAiChat).as_mut(), &stream).await;
    assert_eq!(encode(&output), encode(&input));
    assert!(output.iter().all(|event| !event.is_modified()));
}

#[tokio::test]
async fn openai_choices_are_buffered_independently() {
    let chunk = |index, content: &str| {
        data_event(&openai_chunk_for_choice(
            index,
            json!({"content": content}),
            None,
        ))
    };
    let finish = |index| data_event(&openai_chunk_for_choice(index, json!({}), Some("stop")));
    let stream = [
        chunk(0, "a sec"),
        chunk(1, "b se"),
        chunk(0, "ret"),
        finish(0),
        chunk(1, "c"),
        finish(1),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let output = run_stream(call(&[("secret", "X")], Api::OpenAiChat).as_mut(), &stream).await;
    let texts: Vec<(u64, String)> = json_events(&output)
        .iter()
        .filter_map(|event| {
            let choice = event.pointer("/choices/0")?;
            Some((
                choice["index"].as_u64()?,
                choice.pointer("/delta/content")?.as_str()?.to_owned(),
            ))
        })
        .collect();
    let text_of = |index| {
        texts
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, t)| t.as_str())
            .collect::<String>()
    };
    assert_eq!(text_of(0), "a X");
    assert_eq!(text_of(1), "b sec");
    // Choice 1's held "se" is flushed before its own finish chunk, not before choice 0's.
    let events = json_events(&output);
    let flush = events
        .iter()
        .position(|e| e["choices"][0]["delta"]["content"] == "sec")
        .unwrap();
    assert_eq!(events[flush + 1]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[flush + 1]["choices"][0]["index"], 1);
}

#[tokio::test]
async fn openai_finish_in_the_same_chunk_as_text_appends_the_flush_to_it() {
    let stream = [
        data_event(&openai_chunk(json!({"content": "x sec"}), None)),
        data_event(&openai_chunk(json!({"content": "re"}), Some("length"))),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let output = run_stream(call(&[("secret", "X")], Api::OpenAiChat).as_mut(), &stream).await;
    let events = json_events(&output);
    assert_eq!(events.len(), 3);
    assert_eq!(events[1]["choices"][0]["delta"]["content"], "secre");
    assert_eq!(events[1]["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn openai_tool_call_arguments_are_never_rewritten() {
    let output = run_stream(
        call(&[("paris", "X"), ("city", "Y")], Api::OpenAiChat).as_mut(),
        OPENAI_TOOL_STREAM,
    )
    .await;
    assert_eq!(encode(&output), OPENAI_TOOL_STREAM);
}

#[tokio::test]
async fn text_still_held_when_the_stream_breaks_off_is_flushed_at_the_end() {
    let stream = data_event(&openai_chunk(json!({"content": "cut sec"}), None));
    let output = run_stream(call(&[("secret", "X")], Api::OpenAiChat).as_mut(), &stream).await;
    let events = json_events(&output);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["id"], "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG");
    assert_eq!(streamed_text(Api::OpenAiChat, &output), "cut sec");
}

#[tokio::test]
async fn anthropic_match_split_over_three_deltas_and_flush_before_block_stop() {
    let stream = anthropic_text_stream(&["The pass", "wo", "rd is pass"]);
    let output = run_stream(
        call(&[("password", "[secret]")], Api::AnthropicMessages).as_mut(),
        &stream,
    )
    .await;
    assert_eq!(
        streamed_text(Api::AnthropicMessages, &output),
        "The [secret] is pass"
    );
    let types: Vec<&str> = output
        .iter()
        .map(|event| event.event_type().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta", // "The "
            "content_block_delta", // "[secret] is "
            "content_block_delta", // flushed "pass"
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(
        output[4].json(),
        Some(
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "pass"}})
        )
    );
}

#[tokio::test]
async fn anthropic_thinking_tool_input_and_other_events_pass_untouched() {
    let input = decode(ANTHROPIC_STREAM);
    let output = run_stream(
        call(&[("weather", "W"), ("paris", "P")], Api::AnthropicMessages).as_mut(),
        ANTHROPIC_STREAM,
    )
    .await;
    assert_eq!(output.len(), input.len());
    assert_eq!(
        streamed_text(Api::AnthropicMessages, &output),
        "Let me check the W. One moment."
    );
    for (sent, received) in output.iter().zip(&input) {
        if sent.event_type() != Some("content_block_delta")
            || received.data().contains("thinking_delta")
        {
            assert_eq!(sent.to_bytes(), received.to_bytes());
        }
    }
    assert!(encode(&output).contains("{\\\"city\\\": \\\"paris\\\"}"));
}
