//! The policy itself: a tool call whose arguments name a path outside the allowed directory is
//! removed and replaced by a text saying why.
//!
//! Everything else — finding tool calls in all three APIs, holding streamed calls until their
//! arguments are complete, renumbering the calls kept, rewriting the finish reason when none is
//! left — is `luthien_policy::tool_calls`, the same code the built-in `tool_call_filter` runs.
//! This file only answers its one question: keep this call, or replace it with what?

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use luthien_policy::tool_calls::{Decision, GuardCall, Inspector, Subject};
use luthien_policy::{CallInfo, CallPolicy, Policy, PolicyEvent};
use serde_json::json;

use crate::paths::paths_outside;

/// The configured policy: shared by all calls.
#[derive(Clone, Debug)]
pub struct Guard {
    allowed: Arc<PathBuf>,
}

impl Guard {
    pub fn new(allowed: impl Into<PathBuf>) -> Self {
        Self {
            allowed: Arc::new(allowed.into()),
        }
    }

    pub fn allowed_dir(&self) -> &Path {
        &self.allowed
    }
}

impl Policy for Guard {
    fn kind(&self) -> &'static str {
        "path_guard"
    }

    fn name(&self) -> &str {
        "path-guard"
    }

    fn read_only(&self) -> bool {
        false
    }

    /// Requests are never sent to it: `Describe` asks for the response and stream phases.
    fn inspects_requests(&self) -> bool {
        false
    }

    fn start_call(&self, call: &CallInfo) -> Box<dyn CallPolicy> {
        Box::new(GuardCall::new(call.api, Arc::new(self.clone())))
    }
}

#[async_trait]
impl Inspector for Guard {
    async fn inspect(&self, subject: Subject<'_>) -> Decision {
        let Subject::ToolCall(call) = subject else {
            return Decision::keep();
        };
        let paths = paths_outside(&self.allowed, &call.arguments);
        if paths.is_empty() {
            return Decision::keep();
        }
        let paths = paths.join(", ");
        Decision {
            replacement: Some(format!(
                "[path-guard] Removed the call to `{}`: it touches {paths}, outside the allowed directory {}.",
                call.name,
                self.allowed.display()
            )),
            event: Some(PolicyEvent {
                action: "blocked".to_owned(),
                summary: format!("removed tool call `{}` touching {paths}", call.name),
                data: json!({"tool": call.name, "paths": paths, "allowed": self.allowed.display().to_string()}),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use luthien_policy::Api;
    use serde_json::Value;

    fn call(api: Api) -> Box<dyn CallPolicy> {
        Guard::new("/workspace").start_call(&CallInfo::new("c1", api, "m", false))
    }

    fn openai_call(name: &str, arguments: Value) -> Value {
        json!({"id": format!("call_{name}"), "type": "function",
               "function": {"name": name, "arguments": arguments.to_string()}})
    }

    #[tokio::test]
    async fn openai_responses_lose_the_calls_outside_the_allowed_dir() {
        let mut response = json!({"choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": null, "tool_calls": [
            openai_call("read_file", json!({"path": "src/main.rs"})),
            openai_call("bash", json!({"command": "cat /etc/passwd"})),
        ]}}]});
        let mut call = call(Api::OpenAiChat);
        call.on_response(&mut response).await.unwrap();
        let message = &response["choices"][0]["message"];
        let kept: Vec<&str> = message["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|call| call["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(kept, ["read_file"]);
        let text = message["content"].as_str().unwrap();
        assert!(
            text.contains("Removed the call to `bash`: it touches /etc/passwd"),
            "{text}"
        );
        assert_eq!(response["choices"][0]["finish_reason"], "tool_calls");
        let events = call.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].action, "blocked");
        assert_eq!(events[0].data["paths"], "/etc/passwd");
    }

    #[tokio::test]
    async fn anthropic_responses_turn_the_only_call_into_text_and_end_the_turn() {
        let mut response = json!({"type": "message", "role": "assistant", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "read_file",
                         "input": {"path": "../../home/me/.ssh/id_rsa"}}]});
        let mut call = call(Api::AnthropicMessages);
        call.on_response(&mut response).await.unwrap();
        assert_eq!(response["content"][0]["type"], "text");
        assert_eq!(response["stop_reason"], "end_turn");
    }
}
