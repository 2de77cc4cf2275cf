use serde_json::json;

use super::*;
use crate::shapes::Api;
use crate::shapes::fixtures::{decode, encode, run_stream, streamed_text};
use crate::tool_calls::ToolCall;
use crate::tool_calls::fixtures::check_sdk_stream;

fn filter(yaml: &str) -> Result<ToolCallFilter, String> {
    let config: ToolCallFilterConfig = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
    ToolCallFilter::from_config("filter".to_owned(), config)
}

fn call_info(api: Api, stream: bool) -> CallInfo {
    CallInfo::new("c1", api, "m", stream)
}

fn tool(name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: Some("call_1".to_owned()),
        name: name.to_owned(),
        arguments: arguments.to_owned(),
    }
}

/// The name of the rule that removes the call, if any.
async fn verdict(policy: &ToolCallFilter, call: &ToolCall) -> Option<String> {
    let decision = policy.inspector.inspect(Subject::ToolCall(call)).await;
    decision
        .event
        .map(|event| event.data["rule"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn rules_match_on_names_regexes_and_json_paths() {
    let policy = filter(
        r#"
rules:
  - name: no-rm
    tools: [bash, "shell*"]
    arguments_regex: 'rm\s+-[a-z]*r[a-z]*f'
  - name: etc
    arguments_json_path: {path: "$.path", regex: "^/etc/"}
  - name: any-deploy
    tools: [deploy]
  - name: force-push
    tools: [git]
    arguments_json_path: {path: "$.args[*]", regex: "^--force$"}
  - name: has-sudo-key
    arguments_json_path: {path: "$.sudo"}
"#,
    )
    .unwrap();
    let cases = [
        (tool("bash", r#"{"command": "rm -rf /"}"#), Some("no-rm")),
        (
            tool("shell_exec", r#"{"command":"sudo rm  -vrf ~"}"#),
            Some("no-rm"),
        ),
        (tool("bash", r#"{"command": "ls -la"}"#), None),
        // The name must match too.
        (tool("python", r#"{"code": "os.system('rm -rf /')"}"#), None),
        (
            tool("write_file", r#"{"path": "/etc/passwd", "content": "x"}"#),
            Some("etc"),
        ),
        (tool("write_file", r#"{"path": "/home/etc/x"}"#), None),
        (tool("deploy", "{}"), Some("any-deploy")),
        (
            tool("git", r#"{"args": ["push", "--force"]}"#),
            Some("force-push"),
        ),
        (
            tool("git", r#"{"args": ["push", "--force-with-lease"]}"#),
            None,
        ),
        (tool("anything", r#"{"sudo": false}"#), Some("has-sudo-key")),
        // Not JSON: the regex still searches the raw text, JSON paths never match.
        (tool("bash", r#"{"command": "rm -rf /"#), Some("no-rm")),
        (tool("write_file", r#"{"path": "/etc/x""#), None),
    ];
    for (call, expected) in cases {
        assert_eq!(
            verdict(&policy, &call).await.as_deref(),
            expected,
            "{} {}",
            call.name,
            call.arguments
        );
    }
}

#[tokio::test]
async fn the_regex_sees_compact_json_and_the_path_sees_decoded_strings() {
    let policy = filter(
        r#"
rules:
  - name: raw
    arguments_regex: '"command":"echo \\"hi\\""'
  - name: decoded
    arguments_json_path: {path: "$.text", regex: '^say "hi"$'}
"#,
    )
    .unwrap();
    // Spaces as Anthropic streams them, an escape as JSON writes it.
    assert_eq!(
        verdict(&policy, &tool("bash", r#"{"command": "echo \"hi\""}"#))
            .await
            .as_deref(),
        Some("raw")
    );
    assert_eq!(
        verdict(&policy, &tool("note", r#"{"text": "say \u0022hi\u0022"}"#))
            .await
            .as_deref(),
        Some("decoded")
    );
}

#[tokio::test]
async fn the_first_matching_rule_names_the_replacement_and_the_event() {
    let policy = filter(
        r#"
rules:
  - {name: first, tools: [bash]}
  - {name: second, tools: ["*"]}
replacement_text: "[{name} removed by {rule}]"
"#,
    )
    .unwrap();
    let decision = policy
        .inspector
        .inspect(Subject::ToolCall(&tool("bash", "{}")))
        .await;
    assert_eq!(
        decision.replacement.as_deref(),
        Some("[bash removed by first]")
    );
    let event = decision.event.unwrap();
    assert_eq!(event.action, "blocked");
    assert_eq!(event.summary, "removed tool call `bash` (rule `first`)");
    assert_eq!(
        event.data,
        json!({"tool": "bash", "tool_call_id": "call_1", "rule": "first"})
    );
    // Text is never inspected.
    assert_eq!(
        policy.inspector.inspect(Subject::Text("bash")).await,
        Decision::keep()
    );
}

#[test]
fn invalid_configs_name_the_key() {
    let cases = [
        ("rules: []", "rules: must not be empty"),
        ("rules: [{name: ''}]", "rules[0].name: must not be empty"),
        (
            "rules: [{name: a}]",
            "rules[0]: give at least one of tools, arguments_regex, arguments_json_path",
        ),
        (
            "rules: [{name: a, tools: [x]}, {name: a, tools: [y]}]",
            "rules[1].name: \"a\" is used by an earlier rule",
        ),
        (
            "rules: [{name: a, tools: []}]",
            "rules[0].tools: must not be empty",
        ),
        (
            "rules: [{name: a, arguments_regex: '('}]",
            "rules[0].arguments_regex: regex parse error",
        ),
        (
            "rules: [{name: a, arguments_json_path: {path: 'command'}}]",
            "rules[0].arguments_json_path.path: ",
        ),
        (
            "rules: [{name: a, arguments_json_path: {path: '$.a', regex: '['}}]",
            "rules[0].arguments_json_path.regex: regex parse error",
        ),
        (
            "rules: [{name: a, tools: [x]}]\nreplacement_text: '{tool} blocked'",
            "replacement_text: unknown placeholder {tool}; known: {name}, {rule}",
        ),
    ];
    for (yaml, expected) in cases {
        let error = filter(yaml).err().unwrap_or_default();
        assert!(error.starts_with(expected), "{yaml}: {error}");
    }
}

#[test]
fn the_policy_file_registers_it_and_reports_errors_in_place() {
    let chain = crate::config::parse_chain(
        "policies:\n  - type: tool_call_filter\n    name: tools\n    config:\n      rules: [{name: no-bash, tools: [bash]}]\n",
        "policies.yaml",
    )
    .unwrap();
    assert_eq!(chain.policy_names(), ["tools"]);
    assert!(!chain.read_only());
    let error = crate::config::parse_chain(
        "policies: [{type: tool_call_filter, config: {rules: [{name: x, tool: [bash]}]}}]",
        "policies.yaml",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        error.starts_with("policies.yaml: policies[0] (tool_call_filter): config.rules[0].tool: unknown field `tool`"),
        "{error}"
    );
}

/// A streamed and a non-streamed answer in each API where `bash` wants `rm -rf`.
const OPENAI_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"bash\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"command\\\":\\\"rm -\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"rf /tmp/x\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: [DONE]\n\n",
);

const RESPONSES_STREAM: &str = concat!(
    "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_68af0b0ec8f08196\",\"object\":\"response\",\"created_at\":1756300046,\"status\":\"in_progress\",\"background\":false,\"error\":null,\"incomplete_details\":null,\"instructions\":null,\"max_output_tokens\":null,\"model\":\"gpt-5-2025-08-07\",\"output\":[],\"parallel_tool_calls\":true,\"previous_response_id\":null,\"reasoning\":{\"effort\":\"medium\",\"summary\":null},\"store\":true,\"temperature\":1.0,\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":1.0,\"truncation\":\"disabled\",\"usage\":null,\"user\":null,\"metadata\":{}}}\n\n",
    "event: response.in_progress\ndata: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{\"id\":\"resp_68af0b0ec8f08196\",\"object\":\"response\",\"created_at\":1756300046,\"status\":\"in_progress\",\"background\":false,\"error\":null,\"incomplete_details\":null,\"instructions\":null,\"max_output_tokens\":null,\"model\":\"gpt-5-2025-08-07\",\"output\":[],\"parallel_tool_calls\":true,\"previous_response_id\":null,\"reasoning\":{\"effort\":\"medium\",\"summary\":null},\"store\":true,\"temperature\":1.0,\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":1.0,\"truncation\":\"disabled\",\"usage\":null,\"user\":null,\"metadata\":{}}}\n\n",
    "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":2,\"output_index\":0,\"item\":{\"id\":\"msg_68af0b19f0e48196\",\"type\":\"message\",\"status\":\"in_progress\",\"content\":[],\"role\":\"assistant\"}}\n\n",
    "event: response.content_part.added\ndata: {\"type\":\"response.content_part.added\",\"sequence_number\":3,\"item_id\":\"msg_68af0b19f0e48196\",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"\"}}\n\n",
    "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_68af0b19f0e48196\",\"output_index\":0,\"content_index\":0,\"delta\":\"Cleaning up.\",\"logprobs\":[],\"obfuscation\":\"Xk2\"}\n\n",
    "event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"sequence_number\":5,\"item_id\":\"msg_68af0b19f0e48196\",\"output_index\":0,\"content_index\":0,\"text\":\"Cleaning up.\",\"logprobs\":[]}\n\n",
    "event: response.content_part.done\ndata: {\"type\":\"response.content_part.done\",\"sequence_number\":6,\"item_id\":\"msg_68af0b19f0e48196\",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"Cleaning up.\"}}\n\n",
    "event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"sequence_number\":7,\"output_index\":0,\"item\":{\"id\":\"msg_68af0b19f0e48196\",\"type\":\"message\",\"status\":\"completed\",\"content\":[{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"Cleaning up.\"}],\"role\":\"assistant\"}}\n\n",
    "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":8,\"output_index\":1,\"item\":{\"id\":\"fc_68af0b1d4e5f8196\",\"type\":\"function_call\",\"status\":\"in_progress\",\"arguments\":\"\",\"call_id\":\"call_1\",\"name\":\"bash\"}}\n\n",
    "event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":9,\"item_id\":\"fc_68af0b1d4e5f8196\",\"output_index\":1,\"delta\":\"{\\\"command\\\":\\\"rm -\",\"obfuscation\":\"a1\"}\n\n",
    "event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":10,\"item_id\":\"fc_68af0b1d4e5f8196\",\"output_index\":1,\"delta\":\"rf /tmp/x\\\"}\",\"obfuscation\":\"b2\"}\n\n",
    "event: response.function_call_arguments.done\ndata: {\"type\":\"response.function_call_arguments.done\",\"sequence_number\":11,\"item_id\":\"fc_68af0b1d4e5f8196\",\"output_index\":1,\"arguments\":\"{\\\"command\\\":\\\"rm -rf /tmp/x\\\"}\"}\n\n",
    "event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"sequence_number\":12,\"output_index\":1,\"item\":{\"id\":\"fc_68af0b1d4e5f8196\",\"type\":\"function_call\",\"status\":\"completed\",\"arguments\":\"{\\\"command\\\":\\\"rm -rf /tmp/x\\\"}\",\"call_id\":\"call_1\",\"name\":\"bash\"}}\n\n",
    "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":13,\"response\":{\"id\":\"resp_68af0b0ec8f08196\",\"object\":\"response\",\"created_at\":1756300046,\"status\":\"completed\",\"background\":false,\"error\":null,\"incomplete_details\":null,\"instructions\":null,\"max_output_tokens\":null,\"model\":\"gpt-5-2025-08-07\",\"output\":[{\"id\":\"msg_68af0b19f0e48196\",\"type\":\"message\",\"status\":\"completed\",\"content\":[{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"Cleaning up.\"}],\"role\":\"assistant\"},{\"id\":\"fc_68af0b1d4e5f8196\",\"type\":\"function_call\",\"status\":\"completed\",\"arguments\":\"{\\\"command\\\":\\\"rm -rf /tmp/x\\\"}\",\"call_id\":\"call_1\",\"name\":\"bash\"}],\"parallel_tool_calls\":true,\"previous_response_id\":null,\"reasoning\":{\"effort\":\"medium\",\"summary\":null},\"store\":true,\"temperature\":1.0,\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":1.0,\"truncation\":\"disabled\",\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":87,\"output_tokens_details\":{\"reasoning_tokens\":64},\"total_tokens\":123},\"user\":null,\"metadata\":{}}}\n\n",
);

const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Cleaning up.\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"bash\",\"input\":{}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"command\\\": \\\"rm -\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"rf /tmp/x\\\"}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":30}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

const POLICY: &str = "rules: [{name: no-rm-rf, tools: [bash], arguments_regex: 'rm\\s+-rf'}]";

#[tokio::test]
async fn streams_lose_the_call_and_get_the_text_in_both_apis() {
    let policy = filter(POLICY).unwrap();
    for (api, stream, kept) in [
        (Api::OpenAiChat, OPENAI_STREAM, 1),
        (Api::AnthropicMessages, ANTHROPIC_STREAM, 4),
        (Api::OpenAiResponses, RESPONSES_STREAM, 8),
    ] {
        let mut call = policy.start_call(&call_info(api, true));
        let out = run_stream(call.as_mut(), stream).await;
        let upstream = decode(stream);
        assert_eq!(encode(&out[..kept]), encode(&upstream[..kept]), "{api:?}");
        let text = streamed_text(api, &out);
        assert!(
            text.ends_with("Tool call bash was blocked by policy: no-rm-rf"),
            "{api:?}: {text}"
        );
        let wire = encode(&out);
        assert!(!wire.contains("rm -"), "{api:?}: {wire}");
        match api {
            Api::OpenAiChat => assert!(wire.contains("\"finish_reason\":\"stop\"")),
            Api::AnthropicMessages => {
                assert!(wire.contains("\"stop_reason\":\"end_turn\""));
                assert!(wire.contains("\"index\":1,\"content_block\":{\"type\":\"text\""));
            }
            Api::OpenAiResponses => {
                let completed = check_sdk_stream(&out).unwrap().unwrap();
                assert_eq!(completed["status"], "completed");
                assert_eq!(
                    completed["output"][1],
                    json!({"id": "msg_luthien_68af0b1d4e5f8196", "type": "message", "status": "completed",
                        "content": [{"type": "output_text", "annotations": [], "logprobs": [],
                            "text": "Tool call bash was blocked by policy: no-rm-rf"}],
                        "role": "assistant"})
                );
                assert!(!wire.contains("fc_68af0b1d4e5f8196"), "{wire}");
            }
        }
        let events = call.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data["tool"], "bash");
        assert_eq!(events[0].data["rule"], "no-rm-rf");
    }
}

#[tokio::test]
async fn non_streamed_answers_lose_the_call_in_both_apis() {
    let policy = filter(POLICY).unwrap();
    let mut openai = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"rm -rf /tmp/x\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}}
        ], "refusal": null}, "logprobs": null, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    });
    let mut call = policy.start_call(&call_info(Api::OpenAiChat, false));
    call.on_response(&mut openai).await.unwrap();
    let message = &openai["choices"][0]["message"];
    assert_eq!(
        message["content"],
        "Tool call bash was blocked by policy: no-rm-rf"
    );
    assert_eq!(message["tool_calls"].as_array().unwrap().len(), 1);
    assert_eq!(message["tool_calls"][0]["id"], "call_2");
    // One of two removed: the finish reason stays.
    assert_eq!(openai["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(call.take_events()[0].data["tool_call_id"], "call_1");

    let mut anthropic = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "Cleaning up."},
            {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "rm -rf /tmp/x"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 30}
    });
    let mut call = policy.start_call(&call_info(Api::AnthropicMessages, false));
    call.on_response(&mut anthropic).await.unwrap();
    assert_eq!(
        anthropic["content"],
        json!([
            {"type": "text", "text": "Cleaning up."},
            {"type": "text", "text": "Tool call bash was blocked by policy: no-rm-rf"}
        ])
    );
    assert_eq!(anthropic["stop_reason"], "end_turn");
    assert_eq!(call.take_events()[0].data["tool_call_id"], "toolu_1");

    // Responses: the call item becomes a message item in its place; the status stays.
    let text = json!({"id": "msg_1", "type": "message", "status": "completed", "content": [
        {"type": "output_text", "annotations": [], "logprobs": [], "text": "Cleaning up."}
    ], "role": "assistant"});
    let mut responses = json!({
        "id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-5",
        "output": [
            text,
            {"id": "fc_1", "type": "function_call", "status": "completed", "arguments": "{\"command\":\"rm -rf /tmp/x\"}", "call_id": "call_1", "name": "bash"},
            {"id": "fc_2", "type": "function_call", "status": "completed", "arguments": "{\"command\":\"ls\"}", "call_id": "call_2", "name": "bash"}
        ],
        "usage": {"input_tokens": 10, "output_tokens": 30, "total_tokens": 40}
    });
    let original = responses.clone();
    let mut call = policy.start_call(&call_info(Api::OpenAiResponses, false));
    call.on_response(&mut responses).await.unwrap();
    let mut expected = original;
    expected["output"][1] = json!({"id": "msg_luthien_1", "type": "message", "status": "completed", "content": [
        {"type": "output_text", "annotations": [], "logprobs": [], "text": "Tool call bash was blocked by policy: no-rm-rf"}
    ], "role": "assistant"});
    assert_eq!(responses, expected);
    assert_eq!(call.take_events()[0].data["tool_call_id"], "call_1");
}
