use luthien_mock_upstream::MockUpstream;
use serde_json::json;

use super::*;
use crate::shapes::Api;
use crate::shapes::fixtures::{encode, run_stream, streamed_text};
use crate::tool_calls::ToolCall;

const VIOLATION: &str = r#"{"violation": true, "score": 0.9, "explanation": "deletes files"}"#;
const FINE: &str = r#"{"violation": false, "score": 0.1, "explanation": "harmless"}"#;

fn config(base_url: &str, extra: &str) -> LlmJudgeConfig {
    let yaml =
        format!("base_url: {base_url}\nmodel: judge-model\nrules: Never delete files.\n{extra}");
    serde_yaml_ng::from_str(&yaml).unwrap()
}

fn judge(base_url: &str, extra: &str) -> Result<LlmJudge, String> {
    LlmJudge::from_config("judge".to_owned(), config(base_url, extra))
}

/// A judge whose answers the mock scripts through `x-mock-text`.
fn scripted(mock: &MockUpstream, answer: &str, extra: &str) -> LlmJudge {
    let headers = json!({"x-mock-text": answer}).to_string();
    judge(
        &mock.openai_base_url(),
        &format!("headers: {headers}\n{extra}"),
    )
    .unwrap()
}

fn bash() -> ToolCall {
    ToolCall {
        id: Some("call_1".to_owned()),
        name: "bash".to_owned(),
        arguments: r#"{"command": "rm -rf /"}"#.to_owned(),
    }
}

#[test]
fn verdicts_are_read_leniently() {
    let cases = [
        (VIOLATION, Some(true), 0.9, "deletes files"),
        (
            "```json\n{\"violation\": false, \"score\": 0}\n```",
            Some(false),
            0.0,
            "",
        ),
        (
            "Sure! Here it is: {\"violation\": \"true\", \"score\": \"0.75\", \"explanation\": \"x\"} Hope it helps.",
            Some(true),
            0.75,
            "x",
        ),
        ("{\"violation\": true}", Some(true), 1.0, ""),
        ("{\"violation\": \"no\"}", Some(false), 0.0, ""),
        ("{\"score\": 7}", None, 1.0, ""),
        (
            "{\"score\": -1, \"explanation\": [\"a\"]}",
            None,
            0.0,
            "[\"a\"]",
        ),
    ];
    for (content, violation, score, explanation) in cases {
        let verdict = parse_verdict(content).unwrap();
        assert_eq!(
            verdict,
            Verdict {
                violation,
                score,
                explanation: explanation.to_owned()
            },
            "{content}"
        );
    }
    for content in [
        "no",
        "{}",
        "{\"explanation\": \"only\"}",
        "{\"violation\": \"maybe\"}",
        "{\"score\": \"high\"}",
        "[1, 2]",
    ] {
        assert!(parse_verdict(content).is_err(), "{content}");
    }
}

#[test]
fn a_violation_false_never_blocks_and_the_score_decides_otherwise() {
    let verdict = |violation, score| Verdict {
        violation,
        score,
        explanation: String::new(),
    };
    assert!(verdict(Some(true), 0.5).blocks(0.5));
    assert!(!verdict(Some(true), 0.4).blocks(0.5));
    assert!(!verdict(Some(false), 0.9).blocks(0.5));
    assert!(verdict(None, 0.9).blocks(0.5));
    assert!(verdict(Some(true), 0.0).blocks(0.0));
}

#[test]
fn invalid_configs_name_the_key() {
    let cases = [
        (
            "ftp://judge",
            "",
            "base_url: \"ftp://judge\" is not an http(s) URL",
        ),
        ("not a url", "", "base_url: \"not a url\" is not a URL"),
        (
            "http://judge",
            "threshold: 1.5",
            "threshold: 1.5 is not between 0 and 1",
        ),
        ("http://judge", "timeout: soon", "timeout: "),
        (
            "http://judge",
            "timeout: 0s",
            "timeout: must be more than 0",
        ),
        (
            "http://judge",
            "api_key: a\napi_key_env: B",
            "api_key_env: give api_key or api_key_env, not both",
        ),
        (
            "http://judge",
            "api_key_env: LUTHIEN_TEST_SURELY_UNSET_VARIABLE",
            "api_key_env: environment variable LUTHIEN_TEST_SURELY_UNSET_VARIABLE is not set",
        ),
        (
            "http://judge",
            "headers: {\"bad header\": x}",
            "headers.bad header: not a valid header name",
        ),
        ("http://judge", "tools: []", "tools: must not be empty"),
        (
            "http://judge",
            "prompt_template: '{tool}'",
            "prompt_template: unknown placeholder {tool}",
        ),
        (
            "http://judge",
            "replacement_text: '{rule}'",
            "replacement_text: unknown placeholder {rule}",
        ),
        (
            "http://judge",
            "text_replacement_text: '{name}'",
            "text_replacement_text: unknown placeholder {name}",
        ),
    ];
    for (base_url, extra, expected) in cases {
        let error = judge(base_url, extra).err().unwrap_or_default();
        assert!(error.starts_with(expected), "{extra}: {error}");
    }
    let yaml = "base_url: http://judge\nmodel: m\nrules: ''";
    let config: LlmJudgeConfig = serde_yaml_ng::from_str(yaml).unwrap();
    let error = LlmJudge::from_config("j".to_owned(), config)
        .err()
        .unwrap_or_default();
    assert_eq!(error, "rules: must not be empty");
}

#[test]
fn the_policy_file_registers_it() {
    let chain = crate::config::parse_chain(
        "policies:\n  - type: llm_judge\n    config: {base_url: 'http://127.0.0.1:9/v1', model: m, rules: be nice, on_error: allow, judge_text: true}\n",
        "policies.yaml",
    )
    .unwrap();
    assert_eq!(chain.policy_names(), ["llm_judge"]);
    let error = crate::config::parse_chain(
        "policies: [{type: llm_judge, config: {base_url: 'http://x', model: m, rules: r, on_eror: allow}}]",
        "policies.yaml",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        error.contains("config.on_eror: unknown field `on_eror`"),
        "{error}"
    );
}

#[tokio::test]
async fn a_violation_blocks_with_the_explanation_and_the_request_is_well_formed() {
    let mock = MockUpstream::start().await.unwrap();
    let policy = scripted(&mock, VIOLATION, "api_key: sk-judge\nthreshold: 0.8");
    let decision = policy.judge.inspect(Subject::ToolCall(&bash())).await;
    assert_eq!(
        decision.replacement.as_deref(),
        Some("Tool call bash was blocked by the LLM judge: deletes files")
    );
    let event = decision.event.unwrap();
    assert_eq!(event.action, "blocked");
    assert_eq!(
        event.summary,
        "judge blocked tool call `bash` (score 0.90): deletes files"
    );
    assert_eq!(
        event.data,
        json!({"tool": "bash", "tool_call_id": "call_1", "score": 0.9, "threshold": 0.8, "violation": true, "explanation": "deletes files"})
    );

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.header("authorization"), Some("Bearer sk-judge"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body = request.json();
    assert_eq!(body["model"], "judge-model");
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    assert_eq!(body["messages"][0]["content"], SYSTEM_PROMPT);
    let prompt = body["messages"][1]["content"].as_str().unwrap();
    assert!(prompt.contains("Never delete files."), "{prompt}");
    assert!(prompt.contains("`bash`"), "{prompt}");
    // Arguments go to the judge as compact JSON.
    assert!(prompt.contains(r#"{"command":"rm -rf /"}"#), "{prompt}");
}

#[tokio::test]
async fn no_violation_or_a_score_below_the_threshold_keeps_the_call() {
    let mock = MockUpstream::start().await.unwrap();
    for (answer, extra) in [(FINE, ""), (VIOLATION, "threshold: 0.95")] {
        let policy = scripted(&mock, answer, extra);
        assert_eq!(
            policy.judge.inspect(Subject::ToolCall(&bash())).await,
            Decision::keep()
        );
    }
}

#[tokio::test]
async fn tools_outside_the_list_and_text_without_judge_text_are_not_judged() {
    let mock = MockUpstream::start().await.unwrap();
    let policy = scripted(&mock, VIOLATION, "tools: [\"shell*\"]");
    assert_eq!(
        policy.judge.inspect(Subject::ToolCall(&bash())).await,
        Decision::keep()
    );
    assert_eq!(
        policy.judge.inspect(Subject::Text("rm -rf")).await,
        Decision::keep()
    );
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn judge_failures_follow_on_error() {
    let mock = MockUpstream::start().await.unwrap();
    let hang = "headers: {x-mock-scenario: hang}\ntimeout: 200ms\n";
    let failing = [
        (hang.to_owned(), "the judge did not answer within 200ms"),
        (
            "headers: {x-mock-status: '503'}\n".to_owned(),
            "the judge answered 503 Service Unavailable",
        ),
        (
            "headers: {x-mock-text: 'I cannot help with that.'}\n".to_owned(),
            "the judge's answer is not a JSON object",
        ),
    ];
    for (extra, error) in failing {
        let base = mock.openai_base_url();
        let blocking = judge(&base, &extra).unwrap();
        let decision = blocking.judge.inspect(Subject::ToolCall(&bash())).await;
        assert_eq!(
            decision.replacement.as_deref(),
            Some("Tool call bash was blocked by the LLM judge: the policy judge was unavailable")
        );
        let event = decision.event.unwrap();
        assert_eq!(event.action, "blocked");
        assert!(
            event.data["judge_error"]
                .as_str()
                .unwrap()
                .starts_with(error),
            "{event:?}"
        );
        assert_eq!(event.data["on_error"], "block");

        let allowing = judge(&base, &format!("{extra}on_error: allow")).unwrap();
        let decision = allowing.judge.inspect(Subject::ToolCall(&bash())).await;
        assert_eq!(decision.replacement, None);
        let event = decision.event.unwrap();
        assert_eq!(event.action, "judge_failed");
        assert!(
            event.summary.contains("allowed (on_error: allow)"),
            "{}",
            event.summary
        );
    }
    // Nothing listens there.
    let closed = judge("http://127.0.0.1:9/v1", "on_error: allow").unwrap();
    let decision = closed.judge.inspect(Subject::ToolCall(&bash())).await;
    assert_eq!(decision.replacement, None);
    assert!(
        decision.event.unwrap().data["judge_error"]
            .as_str()
            .unwrap()
            .starts_with("judge request failed"),
    );
}

#[tokio::test]
async fn streamed_calls_are_judged_whole_and_text_too_when_asked() {
    let mock = MockUpstream::start().await.unwrap();
    let policy = scripted(&mock, VIOLATION, "judge_text: true");
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Deleting \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"everything.\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"bash\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"command\\\": \\\"rm -rf \\\\\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"/\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":30}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let info = CallInfo::new("c1", Api::AnthropicMessages, "m", true);
    let mut call = policy.start_call(&info);
    let out = run_stream(call.as_mut(), stream).await;
    assert_eq!(
        streamed_text(Api::AnthropicMessages, &out),
        "This response was blocked by the LLM judge: deletes filesTool call bash was blocked by the LLM judge: deletes files"
    );
    assert!(encode(&out).contains("\"stop_reason\":\"end_turn\""));
    let events = call.take_events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].data["target"], "text");
    assert_eq!(events[1].data["tool"], "bash");
    // The judge saw the whole text and the whole arguments (split inside an escape).
    let prompts: Vec<String> = mock
        .requests()
        .iter()
        .map(|request| {
            request.json()["messages"][1]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(prompts.len(), 2);
    assert!(
        prompts[0].contains("Deleting everything."),
        "{}",
        prompts[0]
    );
    assert!(
        prompts[1].contains(r#"{"command":"rm -rf \"/"}"#),
        "{}",
        prompts[1]
    );
}

#[tokio::test]
async fn the_tool_calls_of_one_choice_are_judged_concurrently() {
    let mock = MockUpstream::start().await.unwrap();
    // Every judge request hangs until its 300 ms timeout; four judged one by one would take
    // 1.2 s.
    let policy = judge(
        &mock.openai_base_url(),
        "headers: {x-mock-scenario: hang}\ntimeout: 300ms\non_error: allow\n",
    )
    .unwrap();
    let calls: Vec<Value> = (0..4)
        .map(|index| json!({"id": format!("call_{index}"), "type": "function", "function": {"name": "bash", "arguments": "{}"}}))
        .collect();
    let mut response = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": calls}, "finish_reason": "tool_calls"}]});
    let original = response.clone();
    let info = CallInfo::new("c1", Api::OpenAiChat, "m", false);
    let mut call = policy.start_call(&info);
    let started = std::time::Instant::now();
    call.on_response(&mut response).await.unwrap();
    assert_eq!(response, original);
    assert_eq!(mock.requests().len(), 4);
    let events = call.take_events();
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|event| event.action == "judge_failed"));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn responses_calls_and_texts_are_judged_in_every_copy() {
    use crate::tool_calls::fixtures::{
        StreamBuilder, check_sdk_stream, function_call, message, reasoning, response_object,
    };

    let mock = MockUpstream::start().await.unwrap();
    let policy = scripted(&mock, VIOLATION, "judge_text: true");
    let text = "Deleting everything.";
    let thought = reasoning("rs_1", "gAAAAABor1sQ3v0n");
    let items = [
        thought.clone(),
        message("msg_1", text),
        function_call("fc_1", "call_1", "bash", r#"{"command":"rm -rf \"/\""}"#),
    ];
    // Deltas of 4 characters split the text and the escaped quotes.
    let stream = StreamBuilder::complete(&items, 4);
    let info = CallInfo::new("c1", Api::OpenAiResponses, "m", true);
    let mut call = policy.start_call(&info);
    let out = run_stream(call.as_mut(), &stream).await;
    let completed = check_sdk_stream(&out)
        .unwrap_or_else(|error| panic!("{error}\n{}", encode(&out)))
        .unwrap();
    let text_blocked = "This response was blocked by the LLM judge: deletes files";
    let call_blocked = "Tool call bash was blocked by the LLM judge: deletes files";
    assert_eq!(
        streamed_text(Api::OpenAiResponses, &out),
        format!("{text_blocked}{call_blocked}")
    );
    let wire = encode(&out);
    assert!(
        !wire.contains("Deleting") && !wire.contains("rm -rf"),
        "{wire}"
    );
    assert_eq!(completed["output"][0], thought);
    assert_eq!(completed["output"][1]["content"][0]["text"], text_blocked);
    assert_eq!(
        completed["output"][2],
        json!({"id": "msg_luthien_1", "type": "message", "status": "completed", "content": [
            {"type": "output_text", "annotations": [], "logprobs": [], "text": call_blocked}
        ], "role": "assistant"})
    );
    assert_eq!(completed["status"], "completed");
    let events = call.take_events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].data["target"], "text");
    assert_eq!(events[1].data["tool"], "bash");
    assert_eq!(events[1].data["tool_call_id"], "call_1");
    // The judge saw the whole text and the whole arguments.
    let prompts: Vec<String> = mock
        .requests()
        .iter()
        .map(|request| {
            request.json()["messages"][1]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(prompts.len(), 2);
    assert!(prompts[0].contains(text), "{}", prompts[0]);
    assert!(
        prompts[1].contains(r#"{"command":"rm -rf \"/\""}"#),
        "{}",
        prompts[1]
    );

    // Non-streamed: the same answer is judged and rewritten the same way.
    let mut body = response_object("completed", &items);
    let info = CallInfo::new("c2", Api::OpenAiResponses, "m", false);
    let mut call = policy.start_call(&info);
    call.on_response(&mut body).await.unwrap();
    assert_eq!(body, completed);
    assert_eq!(call.take_events().len(), 2);
}

#[tokio::test]
async fn responses_calls_the_judge_allows_pass_byte_identical() {
    use crate::tool_calls::fixtures::{StreamBuilder, custom_tool_call, function_call, message};

    let mock = MockUpstream::start().await.unwrap();
    let policy = scripted(&mock, FINE, "judge_text: true\ntools: [bash, apply_patch]");
    let items = [
        message("msg_1", "Listing files."),
        function_call("fc_1", "call_1", "bash", r#"{"command":"ls"}"#),
        function_call("fc_2", "call_2", "read_file", r#"{"path":"a"}"#),
        custom_tool_call(
            "ctc_1",
            "call_3",
            "apply_patch",
            "*** Begin Patch\n*** End Patch",
        ),
    ];
    let stream = StreamBuilder::complete(&items, 5);
    let info = CallInfo::new("c1", Api::OpenAiResponses, "m", true);
    let mut call = policy.start_call(&info);
    let out = run_stream(call.as_mut(), &stream).await;
    assert_eq!(encode(&out), stream);
    assert!(call.take_events().is_empty());
    // The text, bash and apply_patch were judged; read_file is not in `tools`.
    let prompts: Vec<String> = mock
        .requests()
        .iter()
        .map(|request| {
            request.json()["messages"][1]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(prompts.len(), 3);
    assert!(prompts[2].contains("`apply_patch`") && prompts[2].contains("*** Begin Patch"));
}
