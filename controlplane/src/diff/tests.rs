//! End-to-end tests of [`diff_call`] on realistic OpenAI and Anthropic calls.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;

fn openai_request() -> Value {
    json!({
        "model": "gpt-4",
        "max_tokens": 100,
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "The quick brown fox jumps over the lazy dog. What animal is it?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"fox\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_0", "content": "A fox is a mammal."},
            {"role": "user", "content": [{"type": "text", "text": "Answer briefly."}]}
        ],
        "tools": [
            {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}
        ]
    })
}

fn openai_response() -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4-0613",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "It is a fox.",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\":\"rm -rf /\"}"}}
                ]
            },
            "finish_reason": "tool_calls"
        }],
        "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62}
    })
}

fn anthropic_request() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": "Be brief and polite.",
        "messages": [
            {"role": "user", "content": "List the files."},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Running ls."},
                {"type": "tool_use", "id": "toolu_0", "name": "bash", "input": {"cmd": "ls"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_0", "content": "a.txt b.txt"}
            ]}
        ],
        "tools": [{"name": "bash", "input_schema": {"type": "object"}}]
    })
}

fn anthropic_response() -> Value {
    json!({
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "There are two files."},
            {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"cmd": "cat a.txt"}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {"input_tokens": 80, "output_tokens": 20}
    })
}

/// Runs [`diff_call`] with a generous budget (tests run unoptimized on a shared machine)
/// and checks the invariants every diff must keep.
fn diff(
    api: Api,
    request: (Option<&Value>, Option<&Value>),
    response: (Option<&Value>, Option<&Value>),
) -> CallDiff {
    let options = DiffOptions {
        time_budget: Duration::from_secs(30),
    };
    let result = diff_call(api, request, response, &options);
    assert!(!result.truncated);
    check_invariants(&result, request, response);
    result
}

fn check_invariants(
    result: &CallDiff,
    request: (Option<&Value>, Option<&Value>),
    response: (Option<&Value>, Option<&Value>),
) {
    for (patch, (before, after)) in [
        (&result.json_patch.request, request),
        (&result.json_patch.response, response),
    ] {
        let mut doc = before.cloned().unwrap_or_default();
        json_patch::patch(&mut doc, patch).unwrap();
        assert_eq!(&doc, after.unwrap_or(&Value::Null), "patch {patch}");
    }
    let json = serde_json::to_value(result).unwrap();
    let back: CallDiff = serde_json::from_value(json).unwrap();
    assert_eq!(&back, result);
}

fn ops(diff: &CallDiff) -> Vec<(Op, Option<usize>, Option<usize>)> {
    diff.request
        .messages
        .iter()
        .map(|m| (m.op, m.before_index, m.after_index))
        .collect()
}

fn equal_run(
    before: std::ops::Range<usize>,
    shift: isize,
) -> Vec<(Op, Option<usize>, Option<usize>)> {
    before
        .map(|i| (Op::Equal, Some(i), Some(i.wrapping_add_signed(shift))))
        .collect()
}

fn segments(segments: &Option<Vec<Segment>>) -> Vec<(SegmentOp, &str)> {
    segments
        .iter()
        .flatten()
        .map(|s| (s.op, s.text.as_str()))
        .collect()
}

fn patch_json(patch: &json_patch::Patch) -> Value {
    serde_json::to_value(patch).unwrap()
}

#[test]
fn identical_call_is_unchanged() {
    for (api, request, response) in [
        (Api::OpenAiChat, openai_request(), openai_response()),
        (
            Api::AnthropicMessages,
            anthropic_request(),
            anthropic_response(),
        ),
    ] {
        let result = diff(
            api,
            (Some(&request), Some(&request)),
            (Some(&response), Some(&response)),
        );
        assert!(!result.request.changed && !result.response.changed);
        assert!(result.request.params.is_empty() && result.response.params.is_empty());
        assert!(
            result
                .request
                .messages
                .iter()
                .all(|m| m.op == Op::Equal && m.segments.is_none())
        );
        assert!(result.request.tools.iter().all(|t| t.op == Op::Equal));
        assert!(result.response.tool_calls.iter().all(|t| t.op == Op::Equal));
        let text = result.response.text.as_ref().unwrap();
        assert!(text.segments.is_none());
        assert!(result.json_patch.request.is_empty() && result.json_patch.response.is_empty());
        // Unchanged content is still there, for the UI's collapsed view.
        assert_eq!(
            result.request.messages.len(),
            request["messages"].as_array().unwrap().len()
        );
    }
}

#[test]
fn model_and_max_tokens_change_are_params() {
    let before = openai_request();
    let mut after = before.clone();
    after["model"] = json!("gpt-4o");
    after.as_object_mut().unwrap().remove("max_tokens");
    let result = diff(Api::OpenAiChat, (Some(&before), Some(&after)), (None, None));
    assert!(result.request.changed);
    let params = serde_json::to_value(&result.request.params).unwrap();
    assert_eq!(
        params,
        json!([
            {"path": "model", "before": "gpt-4", "after": "gpt-4o"},
            {"path": "max_tokens", "before": 100, "after": null}
        ])
    );
    assert_eq!(ops(&result), equal_run(0..5, 0));
    assert!(!result.response.changed);
}

#[test]
fn inserted_system_message_is_one_insert() {
    let before = openai_request();
    let mut after = before.clone();
    let inserted = json!({"role": "system", "content": "Never reveal secrets."});
    after["messages"]
        .as_array_mut()
        .unwrap()
        .insert(0, inserted.clone());
    let result = diff(Api::OpenAiChat, (Some(&before), Some(&after)), (None, None));

    let mut expected = vec![(Op::Insert, None, Some(0))];
    expected.extend(equal_run(0..5, 1));
    assert_eq!(ops(&result), expected);
    let insert = &result.request.messages[0];
    assert_eq!(insert.role.as_deref(), Some("system"));
    assert_eq!(insert.after.as_ref(), Some(&inserted));
    assert!(insert.before.is_none() && insert.segments.is_none());
    // The patch is content-aligned too: one add, not a replace per shifted message.
    assert_eq!(
        patch_json(&result.json_patch.request),
        json!([{"op": "add", "path": "/messages/0", "value": inserted}])
    );
}

#[test]
fn removed_message_is_one_delete() {
    let before = anthropic_request();
    let mut after = before.clone();
    let removed = after["messages"].as_array_mut().unwrap().remove(1);
    let result = diff(
        Api::AnthropicMessages,
        (Some(&before), Some(&after)),
        (None, None),
    );
    assert_eq!(
        ops(&result),
        [
            (Op::Equal, Some(0), Some(0)),
            (Op::Delete, Some(1), None),
            (Op::Equal, Some(2), Some(1)),
        ]
    );
    assert_eq!(result.request.messages[1].before.as_ref(), Some(&removed));
    assert_eq!(
        result.request.messages[1].role.as_deref(),
        Some("assistant")
    );
    assert_eq!(
        patch_json(&result.json_patch.request),
        json!([{"op": "remove", "path": "/messages/1"}])
    );
}

#[test]
fn edited_message_is_one_change_with_word_segments() {
    let before = openai_request();
    let mut after = before.clone();
    after["messages"][1]["content"] =
        json!("The quick brown cat jumps over the lazy dog. What animal is it?");
    let result = diff(Api::OpenAiChat, (Some(&before), Some(&after)), (None, None));

    let mut expected = equal_run(0..1, 0);
    expected.push((Op::Change, Some(1), Some(1)));
    expected.extend(equal_run(2..5, 0));
    assert_eq!(ops(&result), expected);
    let change = &result.request.messages[1];
    assert_eq!(change.role.as_deref(), Some("user"));
    assert_eq!(
        segments(&change.segments),
        [
            (SegmentOp::Equal, "The quick brown "),
            (SegmentOp::Delete, "fox"),
            (SegmentOp::Insert, "cat"),
            (
                SegmentOp::Equal,
                " jumps over the lazy dog. What animal is it?"
            ),
        ]
    );
}

#[test]
fn edited_text_part_is_diffed_too() {
    let before = openai_request();
    let mut after = before.clone();
    after["messages"][4]["content"][0]["text"] = json!("Answer in detail.");
    let result = diff(Api::OpenAiChat, (Some(&before), Some(&after)), (None, None));
    let change = &result.request.messages[4];
    assert_eq!(change.op, Op::Change);
    assert_eq!(
        segments(&change.segments),
        [
            (SegmentOp::Equal, "Answer "),
            (SegmentOp::Delete, "briefly"),
            (SegmentOp::Insert, "in detail"),
            (SegmentOp::Equal, "."),
        ]
    );
}

#[test]
fn anthropic_system_change() {
    let before = anthropic_request();
    let mut after = before.clone();
    after["system"] = json!([
        {"type": "text", "text": "Be short and polite.", "cache_control": {"type": "ephemeral"}}
    ]);
    let result = diff(
        Api::AnthropicMessages,
        (Some(&before), Some(&after)),
        (None, None),
    );
    let system = result.request.system.as_ref().unwrap();
    assert_eq!(system.before.as_deref(), Some("Be brief and polite."));
    assert_eq!(system.after.as_deref(), Some("Be short and polite."));
    assert_eq!(
        segments(&system.segments),
        [
            (SegmentOp::Equal, "Be "),
            (SegmentOp::Delete, "brief"),
            (SegmentOp::Insert, "short"),
            (SegmentOp::Equal, " and polite."),
        ]
    );
    assert!(result.request.params.is_empty());
    assert_eq!(ops(&result), equal_run(0..3, 0));
}

#[test]
fn system_change_that_keeps_the_text_is_a_param() {
    let mut before = anthropic_request();
    before["system"] = json!([{"type": "text", "text": "Be brief."}]);
    let mut after = before.clone();
    after["system"][0]["cache_control"] = json!({"type": "ephemeral"});
    let result = diff(
        Api::AnthropicMessages,
        (Some(&before), Some(&after)),
        (None, None),
    );
    assert!(result.request.system.as_ref().unwrap().segments.is_none());
    assert_eq!(result.request.params.len(), 1);
    assert_eq!(result.request.params[0].path, "system");
}

#[test]
fn system_absent_on_both_sides_is_null() {
    let request = openai_request();
    let result = diff(
        Api::OpenAiChat,
        (Some(&request), Some(&request)),
        (None, None),
    );
    assert!(result.request.system.is_none());
    let json = serde_json::to_value(&result).unwrap();
    assert_eq!(json["request"]["system"], Value::Null);
}

#[test]
fn tools_added_removed_and_changed() {
    let before = openai_request();
    let mut after = before.clone();
    let tools = after["tools"].as_array_mut().unwrap();
    tools.remove(1); // bash
    tools[0]["function"]["description"] = json!("Looks things up.");
    tools.push(json!({"type": "function", "function": {"name": "python", "parameters": {}}}));
    let result = diff(Api::OpenAiChat, (Some(&before), Some(&after)), (None, None));
    let tools: Vec<_> = result
        .request
        .tools
        .iter()
        .map(|t| {
            (
                t.op,
                t.name.as_deref(),
                t.before.is_some(),
                t.after.is_some(),
            )
        })
        .collect();
    assert_eq!(
        tools,
        [
            (Op::Change, Some("lookup"), true, true),
            (Op::Delete, Some("bash"), true, false),
            (Op::Insert, Some("python"), false, true),
        ]
    );

    let before = anthropic_request();
    let mut after = before.clone();
    after.as_object_mut().unwrap().remove("tools");
    let result = diff(
        Api::AnthropicMessages,
        (Some(&before), Some(&after)),
        (None, None),
    );
    assert_eq!(result.request.tools.len(), 1);
    assert_eq!(result.request.tools[0].op, Op::Delete);
    assert_eq!(result.request.tools[0].name.as_deref(), Some("bash"));
}

#[test]
fn uppercased_response_text() {
    let before = anthropic_response();
    let mut after = before.clone();
    after["content"][0]["text"] = json!("THERE ARE TWO FILES.");
    let result = diff(
        Api::AnthropicMessages,
        (None, None),
        (Some(&before), Some(&after)),
    );
    assert!(result.response.changed && !result.request.changed);
    let text = result.response.text.as_ref().unwrap();
    assert_eq!(text.before.as_deref(), Some("There are two files."));
    assert_eq!(text.after.as_deref(), Some("THERE ARE TWO FILES."));
    assert_eq!(
        segments(&text.segments),
        [
            (SegmentOp::Delete, "There are two files"),
            (SegmentOp::Insert, "THERE ARE TWO FILES"),
            (SegmentOp::Equal, "."),
        ]
    );
    assert!(result.response.params.is_empty());
    assert!(result.response.tool_calls.iter().all(|t| t.op == Op::Equal));
}

#[test]
fn openai_tool_call_removed_and_finish_reason_changed() {
    let before = openai_response();
    let mut after = before.clone();
    after["choices"][0]["message"]
        .as_object_mut()
        .unwrap()
        .remove("tool_calls");
    after["choices"][0]["finish_reason"] = json!("stop");
    let result = diff(Api::OpenAiChat, (None, None), (Some(&before), Some(&after)));
    let calls = serde_json::to_value(&result.response.tool_calls).unwrap();
    assert_eq!(
        calls,
        json!([{
            "op": "delete", "id": "call_1", "name": "bash",
            "before": {"id": "call_1", "name": "bash", "arguments": {"cmd": "rm -rf /"}},
            "after": null
        }])
    );
    let finish = serde_json::to_value(&result.response.finish_reason).unwrap();
    assert_eq!(finish, json!({"before": "tool_calls", "after": "stop"}));
    assert!(result.response.text.as_ref().unwrap().segments.is_none());
    assert!(result.response.params.is_empty());
}

#[test]
fn anthropic_tool_use_removed_and_stop_reason_changed() {
    let before = anthropic_response();
    let mut after = before.clone();
    after["content"].as_array_mut().unwrap().pop();
    after["stop_reason"] = json!("end_turn");
    let result = diff(
        Api::AnthropicMessages,
        (None, None),
        (Some(&before), Some(&after)),
    );
    assert_eq!(result.response.tool_calls.len(), 1);
    let call = &result.response.tool_calls[0];
    assert_eq!(call.op, Op::Delete);
    assert_eq!(call.id.as_deref(), Some("toolu_1"));
    assert_eq!(
        call.before.as_ref().unwrap().arguments,
        json!({"cmd": "cat a.txt"})
    );
    let finish = result.response.finish_reason.as_ref().unwrap();
    assert_eq!(
        (&finish.before, &finish.after),
        (&json!("tool_use"), &json!("end_turn"))
    );
}

/// A tool call the filter replaced with a text block: the two texts read as two paragraphs
/// ("check." and "Tool call bash …" once ran together as "check.Tool call bash …"), while
/// the blocks citations split one sentence into stay one sentence.
#[test]
fn anthropic_text_blocks_are_paragraphs_unless_citations_split_them() {
    let before = anthropic_response();
    let mut after = before.clone();
    after["content"][1] =
        json!({"type": "text", "text": "Tool call bash was blocked by policy: no-shell"});
    let result = diff(
        Api::AnthropicMessages,
        (None, None),
        (Some(&before), Some(&after)),
    );
    let text = result.response.text.as_ref().unwrap();
    assert_eq!(
        text.after.as_deref(),
        Some("There are two files.\n\nTool call bash was blocked by policy: no-shell")
    );

    let cited = json!({"content": [
        {"type": "text", "text": "The answer is "},
        {"type": "text", "text": "42", "citations": [{"type": "char_location", "cited_text": "42"}]},
        {"type": "text", "text": ", as the source says."}
    ]});
    let result = diff(
        Api::AnthropicMessages,
        (None, None),
        (Some(&cited), Some(&cited)),
    );
    assert_eq!(
        result.response.text.as_ref().unwrap().after.as_deref(),
        Some("The answer is 42, as the source says.")
    );
}

#[test]
fn tool_calls_pair_by_id_then_position() {
    let before = openai_response();
    let mut after = before.clone();
    let calls = after["choices"][0]["message"]["tool_calls"]
        .as_array_mut()
        .unwrap();
    // A new call in front, the original one with safer arguments, then one with a fresh id.
    calls[0]["function"]["arguments"] = json!("{\"cmd\":\"ls\"}");
    calls.insert(
        0,
        json!({"id": "call_9", "type": "function", "function": {"name": "web", "arguments": "not json"}}),
    );
    let result = diff(Api::OpenAiChat, (None, None), (Some(&before), Some(&after)));
    let calls: Vec<_> = result
        .response
        .tool_calls
        .iter()
        .map(|c| (c.op, c.id.as_deref()))
        .collect();
    assert_eq!(
        calls,
        [(Op::Change, Some("call_1")), (Op::Insert, Some("call_9"))]
    );
    let changed = &result.response.tool_calls[0];
    assert_eq!(
        changed.after.as_ref().unwrap().arguments,
        json!({"cmd": "ls"})
    );
    // Arguments that are not JSON stay a string.
    assert_eq!(
        result.response.tool_calls[1]
            .after
            .as_ref()
            .unwrap()
            .arguments,
        json!("not json")
    );

    // Different ids: paired by position.
    let mut renamed = before.clone();
    renamed["choices"][0]["message"]["tool_calls"][0]["id"] = json!("call_2");
    let result = diff(
        Api::OpenAiChat,
        (None, None),
        (Some(&before), Some(&renamed)),
    );
    assert_eq!(result.response.tool_calls.len(), 1);
    assert_eq!(result.response.tool_calls[0].op, Op::Change);
    assert_eq!(result.response.tool_calls[0].id.as_deref(), Some("call_2"));
}

#[test]
fn usage_and_other_fields_change() {
    let before = openai_response();
    let mut after = before.clone();
    after["usage"]["completion_tokens"] = json!(3);
    after["choices"][0]["logprobs"] = json!({"content": []});
    after["system_fingerprint"] = json!("fp_1");
    let result = diff(Api::OpenAiChat, (None, None), (Some(&before), Some(&after)));
    let usage = result.response.usage.as_ref().unwrap();
    assert_eq!(usage.before["completion_tokens"], 12);
    assert_eq!(usage.after["completion_tokens"], 3);
    let paths: Vec<_> = result
        .response
        .params
        .iter()
        .map(|p| p.path.as_str())
        .collect();
    assert_eq!(paths, ["system_fingerprint", "choices[0].logprobs"]);
    assert!(result.response.params.iter().all(|p| p.before.is_null()));

    let before = anthropic_response();
    let mut after = before.clone();
    after["usage"]["output_tokens"] = json!(5);
    after["content"].as_array_mut().unwrap().insert(
        0,
        json!({"type": "thinking", "thinking": "hmm", "signature": "x"}),
    );
    let result = diff(
        Api::AnthropicMessages,
        (None, None),
        (Some(&before), Some(&after)),
    );
    assert_eq!(
        result.response.usage.as_ref().unwrap().after["output_tokens"],
        5
    );
    assert_eq!(result.response.params.len(), 1);
    assert_eq!(result.response.params[0].path, "content (other blocks)");
    assert!(result.response.text.as_ref().unwrap().segments.is_none());
}

#[test]
fn missing_sides() {
    let request = anthropic_request();
    let response = anthropic_response();

    // A blocked call: no original response, the final one is the policy's.
    let result = diff(
        Api::AnthropicMessages,
        (Some(&request), Some(&request)),
        (None, Some(&response)),
    );
    assert!(result.response.changed && !result.request.changed);
    let text = result.response.text.as_ref().unwrap();
    assert_eq!(text.before, None);
    assert_eq!(
        segments(&text.segments),
        [(SegmentOp::Insert, "There are two files.")]
    );
    assert!(
        result
            .response
            .tool_calls
            .iter()
            .all(|c| c.op == Op::Insert)
    );
    let finish = result.response.finish_reason.as_ref().unwrap();
    assert_eq!(finish.before, Value::Null);
    assert_eq!(
        patch_json(&result.json_patch.response),
        json!([{"op": "replace", "path": "", "value": response}])
    );

    // A call in progress: no final request or response yet.
    let result = diff(
        Api::AnthropicMessages,
        (Some(&request), None),
        (Some(&response), None),
    );
    assert!(result.request.changed && result.response.changed);
    assert!(
        result
            .request
            .messages
            .iter()
            .all(|m| m.op == Op::Delete && m.after.is_none())
    );
    assert!(result.request.tools.iter().all(|t| t.op == Op::Delete));
    assert_eq!(
        segments(&result.request.system.as_ref().unwrap().segments),
        [(SegmentOp::Delete, "Be brief and polite.")]
    );
    assert!(result.request.params.iter().all(|p| p.after.is_null()));
    assert!(
        result
            .response
            .tool_calls
            .iter()
            .all(|c| c.op == Op::Delete)
    );

    // Nothing at all.
    let result = diff(Api::OpenAiChat, (None, None), (None, None));
    assert!(!result.request.changed && !result.response.changed);
    assert!(result.response.text.is_none() && result.response.finish_reason.is_none());
    assert!(result.json_patch.request.is_empty());

    // Not even JSON objects (an error body as a string): no panic, still a valid patch.
    let odd = json!("upstream exploded");
    let result = diff(
        Api::OpenAiChat,
        (Some(&odd), Some(&request)),
        (Some(&json!([1])), Some(&odd)),
    );
    assert!(result.request.changed && result.response.changed);
}

#[test]
fn json_shape_for_the_ui() {
    let before = openai_request();
    let mut after = before.clone();
    after["messages"][1]["content"] =
        json!("The quick brown cat jumps over the lazy dog. What animal is it?");
    let result = diff(
        Api::OpenAiChat,
        (Some(&before), Some(&after)),
        (Some(&openai_response()), None),
    );
    let json = serde_json::to_value(&result).unwrap();
    let change = &json["request"]["messages"][1];
    assert_eq!(change["op"], "change");
    assert_eq!(
        change["segments"][1],
        json!({"op": "delete", "text": "fox"})
    );
    // Segments are left out where there are none, indexes are null where absent.
    let equal = json["request"]["messages"][0].as_object().unwrap();
    assert!(!equal.contains_key("segments"));
    assert!(json["response"]["text"]["after"].is_null());
    assert!(json["response"]["tool_calls"][0]["after"].is_null());
    for key in [
        "request",
        "response",
        "json_patch",
        "truncated",
        "elapsed_ms",
    ] {
        assert!(json.get(key).is_some(), "{key}");
    }
    assert!(json["json_patch"]["request"].is_array());
}

/// A ~4 MB conversation where every message changed, diffed with a tiny budget.
#[test]
fn huge_payload_is_truncated_not_slow() {
    let word = |i: usize| ["alpha", "beta", "gamma", "delta", "epsilon"][i % 5];
    let text = |seed: usize| -> String {
        (0..400)
            .map(|i| word(i * seed + i / 7))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let messages: Vec<Value> = (0..1500)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": text(i + 1)}))
        .collect();
    let before = json!({"model": "gpt-4", "messages": messages});
    let mut after = before.clone();
    for (i, message) in after["messages"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        message["content"] = json!(text(i + 7).to_uppercase());
    }
    assert!(serde_json::to_string(&before).unwrap().len() > 3_000_000);
    let response = openai_response();

    let options = DiffOptions {
        time_budget: Duration::from_millis(1),
    };
    let started = std::time::Instant::now();
    let result = diff_call(
        Api::OpenAiChat,
        (Some(&before), Some(&after)),
        (Some(&response), Some(&response)),
        &options,
    );
    let took = started.elapsed();
    assert!(result.truncated);
    // Linear work only (hashing, copying); generous for an unoptimized build.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(result.elapsed_ms > 0.0);
    // Coarse but complete and correct.
    assert_eq!(result.request.messages.len(), 1500);
    check_invariants(
        &result,
        (Some(&before), Some(&after)),
        (Some(&response), Some(&response)),
    );
    for message in result
        .request
        .messages
        .iter()
        .filter(|m| m.op == Op::Change)
    {
        let segments = message.segments.as_ref().unwrap();
        assert!(segments.len() <= 3, "{} segments", segments.len());
    }
}

/// One word changed in a multi-MB text: prefix/suffix trimming keeps this cheap and exact.
#[test]
fn small_edit_in_huge_text_stays_exact() {
    let filler = "lorem ipsum dolor sit amet ".repeat(100_000);
    let before = json!({"model": "m", "messages": [{"role": "user", "content": format!("{filler}fox {filler}")}]});
    let after = json!({"model": "m", "messages": [{"role": "user", "content": format!("{filler}cat {filler}")}]});
    let result = diff(Api::OpenAiChat, (Some(&before), Some(&after)), (None, None));
    let change = &result.request.messages[0];
    let segs = segments(&change.segments);
    assert_eq!(segs.len(), 4);
    assert_eq!(segs[1], (SegmentOp::Delete, "fox"));
    assert_eq!(segs[2], (SegmentOp::Insert, "cat"));
}

/// Random edits of realistic bodies: whatever the edit and the budget, patches turn the
/// original into the final and segments rebuild both texts.
#[test]
fn random_edits_keep_invariants() {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut rng = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % n.max(1) as u64).unwrap()
    };
    let fixtures = [
        (Api::OpenAiChat, openai_request()),
        (Api::OpenAiChat, openai_response()),
        (Api::AnthropicMessages, anthropic_request()),
        (Api::AnthropicMessages, anthropic_response()),
    ];
    let mut edited = 0;
    for round in 0..400 {
        let (api, before) = &fixtures[round % fixtures.len()];
        let mut after = before.clone();
        for _ in 0..=rng(4) {
            mutate(&mut after, &mut rng);
        }
        edited += usize::from(before != &after);
        for budget in [Duration::from_secs(30), Duration::ZERO] {
            let options = DiffOptions {
                time_budget: budget,
            };
            let sides = (Some(before), Some(&after));
            let result = diff_call(*api, sides, sides, &options);
            check_invariants(&result, sides, sides);
            assert_eq!(result.request.changed, before != &after);
            for message in &result.request.messages {
                let Some(segments) = &message.segments else {
                    continue;
                };
                let text =
                    |m: &Option<Value>| messages::message_text(m.as_ref()).unwrap_or_default();
                assert_eq!(rebuild(segments, SegmentOp::Insert), text(&message.before));
                assert_eq!(rebuild(segments, SegmentOp::Delete), text(&message.after));
            }
        }
    }
    assert!(edited > 300, "only {edited} rounds edited anything");
}

fn rebuild(segments: &[Segment], skip: SegmentOp) -> String {
    segments
        .iter()
        .filter(|s| s.op != skip)
        .map(|s| s.text.as_str())
        .collect()
}

/// One random edit somewhere in `value`: insert, remove, duplicate or rewrite.
fn mutate(value: &mut Value, rng: &mut impl FnMut(usize) -> usize) {
    let words = ["fox", "cat", "the", "ünï", " ", "\n", "bash"];
    match value {
        Value::Array(items) if !items.is_empty() && rng(3) > 0 => {
            let i = rng(items.len());
            match rng(4) {
                0 => {
                    items.remove(i);
                }
                1 => {
                    let copy = items[rng(items.len())].clone();
                    items.insert(i, copy);
                }
                2 => {
                    let j = rng(items.len());
                    items.swap(i, j);
                }
                _ => mutate(&mut items[i], rng),
            }
        }
        Value::Object(map) if !map.is_empty() && rng(3) > 0 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng(keys.len())];
            match rng(5) {
                0 => {
                    map.remove(key);
                }
                1 => {
                    map.insert(format!("new~/{}", rng(9)), json!({"x": [1, "two"]}));
                }
                _ => {
                    if let Some(child) = map.get_mut(key) {
                        mutate(child, rng);
                    }
                }
            }
        }
        Value::String(text) => {
            let mut parts: Vec<String> = text.split(' ').map(str::to_owned).collect();
            let i = rng(parts.len());
            parts[i] = words[rng(words.len())].to_owned();
            *text = parts.join(" ");
        }
        Value::Number(_) => *value = json!(rng(1000)),
        other => *other = json!([words[rng(words.len())]]),
    }
}

#[test]
fn responses_calls_diff_input_instructions_output_text_and_function_calls() {
    let request = |secret: &str| {
        json!({
            "model": "gpt-5",
            "instructions": format!("The user is {secret}."),
            "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": "call_0", "name": "lookup", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_0", "output": "ok"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": format!("Mail {secret}")}]}
            ]
        })
    };
    let response = |text: &str, calls: Value| {
        let mut output = vec![
            json!({"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"}),
            json!({"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}),
        ];
        output.extend(calls.as_array().unwrap().iter().cloned());
        json!({"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-5",
            "output": output, "usage": {"input_tokens": 5, "output_tokens": 7}})
    };
    let call = |id: &str, name: &str| {
        json!({"type": "function_call", "id": format!("fc_{id}"), "call_id": format!("call_{id}"),
            "name": name, "arguments": "{\"city\":\"Paris\"}", "status": "completed"})
    };
    let (request_before, request_after) = (request("a@b.co"), request("[REDACTED]"));
    let response_before = response(
        "Sunny, a@b.co.",
        json!([call("1", "get_weather"), call("2", "bash")]),
    );
    let response_after = response(
        "Sunny, [REDACTED].",
        json!([call("1", "get_weather"), {"type": "message", "id": "msg_luthien_2", "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": "blocked", "annotations": []}]}]),
    );
    let result = diff(
        Api::OpenAiResponses,
        (Some(&request_before), Some(&request_after)),
        (Some(&response_before), Some(&response_after)),
    );
    // `instructions` is the system prompt, `input` the conversation (a string is one message).
    let system = result.request.system.as_ref().unwrap();
    assert_eq!(system.before.as_deref(), Some("The user is a@b.co."));
    assert_eq!(system.after.as_deref(), Some("The user is [REDACTED]."));
    assert!(
        result.request.params.is_empty(),
        "{:?}",
        result.request.params
    );
    let changed: Vec<_> = result
        .request
        .messages
        .iter()
        .filter(|message| message.op == Op::Change)
        .map(|message| message.after_index)
        .collect();
    assert_eq!(changed, [Some(3)]);

    let response = &result.response;
    let text = response.text.as_ref().unwrap();
    assert_eq!(text.before.as_deref(), Some("Sunny, a@b.co."));
    assert_eq!(text.after.as_deref(), Some("Sunny, [REDACTED].\n\nblocked"));
    let calls: Vec<_> = response
        .tool_calls
        .iter()
        .map(|call| (call.op, call.id.as_deref(), call.name.as_deref()))
        .collect();
    assert_eq!(
        calls,
        [
            (Op::Equal, Some("call_1"), Some("get_weather")),
            (Op::Delete, Some("call_2"), Some("bash"))
        ]
    );
    assert_eq!(
        response.finish_reason.as_ref().map(|change| &change.after),
        Some(&json!("completed"))
    );
    // The reasoning item is unchanged, so it is not listed; the added message's id is.
    assert!(
        response
            .params
            .iter()
            .all(|param| !param.path.contains("other items"))
    );

    let plain = diff(
        Api::OpenAiResponses,
        (Some(&json!({"input": "hi"})), Some(&json!({"input": "HI"}))),
        (None, None),
    );
    assert_eq!(plain.request.messages[0].role.as_deref(), Some("user"));
}
