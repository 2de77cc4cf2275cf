//! The policy file: which policies run, in which order, with which settings.
//!
//! ```yaml
//! policies:                 # run in this order on requests, in reverse on responses
//!   - type: all_caps
//!   - type: string_replace
//!     name: redact-foo      # optional, defaults to the type; shown in logs and records
//!     config:               # optional, policy-specific
//!       replacements: [{from: foo, to: "[redacted]"}]
//! ```
//!
//! Unknown keys are errors at every level, and every error names the file, the policy (index,
//! type and name) and the offending key.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::all_caps::AllCaps;
use crate::noop::Noop;
use crate::string_replace::StringReplace;
use crate::{Chain, FromConfig, Policy};

/// Builds one policy from its name and `config` mapping.
type BuildPolicy = fn(String, serde_yaml_ng::Value) -> Result<Arc<dyn Policy>, String>;

/// Every policy `type` the file can name. Adding a policy type is one line here.
const POLICY_TYPES: &[(&str, BuildPolicy)] = &[
    (Noop::KIND, build::<Noop>),
    (AllCaps::KIND, build::<AllCaps>),
    (StringReplace::KIND, build::<StringReplace>),
    (
        crate::tool_call_filter::ToolCallFilter::KIND,
        build::<crate::tool_call_filter::ToolCallFilter>,
    ),
    (
        crate::llm_judge::LlmJudge::KIND,
        build::<crate::llm_judge::LlmJudge>,
    ),
    (
        crate::regex_redact::RegexRedact::KIND,
        build::<crate::regex_redact::RegexRedact>,
    ),
    (crate::block::Block::KIND, build::<crate::block::Block>),
    (crate::remote::Remote::KIND, build::<crate::remote::Remote>),
];

fn build<P: FromConfig>(
    name: String,
    config: serde_yaml_ng::Value,
) -> Result<Arc<dyn Policy>, String> {
    let config = serde_path_to_error::deserialize(config).map_err(|error| {
        let path = error.path().to_string();
        match path.as_str() {
            "." => format!("config: {}", error.inner()),
            _ => format!("config.{path}: {}", error.inner()),
        }
    })?;
    let policy = P::from_config(name, config).map_err(|error| format!("config.{error}"))?;
    Ok(Arc::new(policy))
}

/// The policy types the file can name, in registry order.
pub fn known_policy_types() -> impl Iterator<Item = &'static str> {
    POLICY_TYPES.iter().map(|(kind, _)| *kind)
}

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read policy file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// Bad YAML, or a top-level or policy-entry key that is missing or unknown.
    #[error("{file}: {error}")]
    Syntax {
        file: String,
        error: serde_yaml_ng::Error,
    },
    #[error("{file}: policies[{index}] ({policy}): {message}")]
    Policy {
        file: String,
        index: usize,
        policy: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    policies: Vec<PolicyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyEntry {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    config: Option<serde_yaml_ng::Value>,
}

/// Reads and parses the policy file at `path`.
pub fn load_chain_file(path: &Path) -> Result<Chain, ConfigError> {
    let file = path.display().to_string();
    let yaml = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: file.clone(),
        error,
    })?;
    parse_chain(&yaml, &file)
}

/// Parses a policy file's text; `source` names it in errors (usually its path).
pub fn parse_chain(yaml: &str, source: &str) -> Result<Chain, ConfigError> {
    let file: PolicyFile = serde_yaml_ng::from_str(yaml).map_err(|error| ConfigError::Syntax {
        file: source.to_owned(),
        error,
    })?;
    let mut policies: Vec<Arc<dyn Policy>> = Vec::with_capacity(file.policies.len());
    for (index, PolicyEntry { kind, name, config }) in file.policies.into_iter().enumerate() {
        let policy = match &name {
            Some(name) => format!("{kind} {name:?}"),
            None => kind.clone(),
        };
        let policy_error = |message: String| ConfigError::Policy {
            file: source.to_owned(),
            index,
            policy,
            message,
        };
        let Some((_, build)) = POLICY_TYPES.iter().find(|(known, _)| *known == kind) else {
            let known: Vec<&str> = known_policy_types().collect();
            return Err(policy_error(format!(
                "unknown policy type; known types: {}",
                known.join(", ")
            )));
        };
        let name = name.unwrap_or(kind);
        if name.trim().is_empty() {
            return Err(policy_error("name: must not be empty".to_owned()));
        }
        // Names identify policies in logs and call records, so two entries may not share one.
        if let Some(first) = policies.iter().position(|policy| policy.name() == name) {
            return Err(policy_error(format!(
                "name: {name:?} is already used by policies[{first}]"
            )));
        }
        // An absent `config` is an empty mapping, so a required key is reported as missing.
        let config = match config {
            None | Some(serde_yaml_ng::Value::Null) => {
                serde_yaml_ng::Value::Mapping(Default::default())
            }
            Some(config) => config,
        };
        policies.push(build(name, config).map_err(policy_error)?);
    }
    Ok(Chain::new(policies))
}

/// The chain used when no policy file is given: a single `noop`.
pub fn noop_chain() -> Chain {
    Chain::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(yaml: &str) -> String {
        parse_chain(yaml, "policies.yaml").unwrap_err().to_string()
    }

    #[test]
    fn parses_an_ordered_chain() {
        let chain = parse_chain(
            "policies:\n\
             \x20 - type: all_caps\n\
             \x20 - type: string_replace\n\
             \x20   name: redact-foo\n\
             \x20   config:\n\
             \x20     replacements: [{from: foo, to: \"[redacted]\"}]\n\
             \x20     apply_to: response\n\
             \x20 - type: noop\n\
             \x20   config: {}\n",
            "policies.yaml",
        )
        .unwrap();
        assert_eq!(chain.policy_names(), ["all_caps", "redact-foo", "noop"]);
        let kinds: Vec<&str> = chain
            .policies()
            .iter()
            .map(|policy| policy.kind())
            .collect();
        assert_eq!(kinds, ["all_caps", "string_replace", "noop"]);
        assert!(!chain.read_only());
        assert!(
            parse_chain("policies: [{type: noop}]", "x")
                .unwrap()
                .read_only()
        );
    }

    #[test]
    fn request_only_chains_leave_responses_in_observe_mode() {
        let request_only = parse_chain(
            "policies:\n  - {type: block, config: {rules: [{name: r, models_deny: [x]}]}}\n  - {type: string_replace, config: {replacements: [{from: a, to: b}], apply_to: request}}",
            "x",
        )
        .unwrap();
        assert!(!request_only.read_only());
        assert!(!request_only.transforms_responses());
        let caps = parse_chain("policies: [{type: block, config: {rules: [{name: r, models_deny: [x]}]}}, {type: all_caps}]", "x").unwrap();
        assert!(caps.transforms_responses());
    }

    #[test]
    fn only_chains_with_a_request_side_policy_parse_requests() {
        let inspects = |yaml: &str| parse_chain(yaml, "x").unwrap().inspects_requests();
        for response_only in [
            "policies: [{type: noop}]",
            "policies: [{type: all_caps}]",
            "policies: [{type: regex_redact, config: {presets: [emails], apply_to: response}}]",
            "policies: [{type: string_replace, config: {replacements: [{from: a, to: b}], apply_to: response}}]",
            "policies: [{type: tool_call_filter, config: {rules: [{name: r, tools: [bash]}]}}]",
            "policies: [{type: remote, config: {endpoint: 'http://127.0.0.1:1', phases: [stream]}}]",
        ] {
            assert!(!inspects(response_only), "{response_only}");
        }
        for request_side in [
            "policies: [{type: all_caps}, {type: block, config: {rules: [{name: r, models_deny: [x]}]}}]",
            "policies: [{type: regex_redact, config: {presets: [emails]}}]",
            "policies: [{type: remote, config: {endpoint: 'http://127.0.0.1:1'}}]",
        ] {
            assert!(inspects(request_side), "{request_side}");
        }
    }

    #[test]
    fn unknown_types_list_the_known_ones() {
        let message = error("policies: [{type: noop}, {type: all_cap, name: shout}]");
        let known: Vec<&str> = known_policy_types().collect();
        assert_eq!(
            message,
            format!(
                "policies.yaml: policies[1] (all_cap \"shout\"): unknown policy type; known types: {}",
                known.join(", ")
            )
        );
        for kind in ["noop", "all_caps", "string_replace"] {
            assert!(known.contains(&kind), "{kind} is registered");
        }
    }

    #[test]
    fn unknown_keys_are_named_at_every_level() {
        let top = error("policies: []\npolicy: []");
        assert!(
            top.starts_with("policies.yaml: unknown field `policy`"),
            "{top}"
        );
        let entry = error("policies: [{type: noop, nmae: x}]");
        assert!(
            entry.starts_with("policies.yaml: policies[0]: unknown field `nmae`"),
            "{entry}"
        );
        let config = error(
            "policies: [{type: string_replace, config: {replacements: [{from: a, too: b}]}}]",
        );
        assert!(
            config.starts_with(
                "policies.yaml: policies[0] (string_replace): config.replacements[0].too: \
                 unknown field `too`"
            ),
            "{config}"
        );
        let no_config = error("policies: [{type: all_caps, config: {shout: true}}]");
        assert!(
            no_config.contains("policies[0] (all_caps): config.shout: unknown field `shout`"),
            "{no_config}"
        );
    }

    #[test]
    fn invalid_policy_configs_are_rejected() {
        let missing = error("policies: [{type: string_replace}]");
        assert!(
            missing.contains("config: missing field `replacements`"),
            "{missing}"
        );
        let empty_from = error(
            "policies: [{type: string_replace, config: {replacements: [{from: '', to: x}]}}]",
        );
        assert!(
            empty_from
                .ends_with("(string_replace): config.replacements[0].from: must not be empty"),
            "{empty_from}"
        );
        let apply_to = error(
            "policies: [{type: string_replace, config: {replacements: [{from: a, to: b}], apply_to: all}}]",
        );
        assert!(
            apply_to.contains("config.apply_to: unknown variant `all`"),
            "{apply_to}"
        );
    }

    #[test]
    fn names_must_be_unique() {
        assert_eq!(
            error("policies: [{type: noop}, {type: all_caps, name: noop}]"),
            "policies.yaml: policies[1] (all_caps \"noop\"): name: \"noop\" is already used by policies[0]"
        );
    }

    #[test]
    fn missing_policies_and_bad_yaml_are_errors() {
        assert!(error("{}").contains("missing field `policies`"));
        assert!(error("policies: [").starts_with("policies.yaml: "));
        assert!(
            parse_chain("policies: []", "x")
                .unwrap()
                .policy_names()
                .is_empty()
        );
    }

    #[test]
    fn load_chain_file_names_an_unreadable_file() {
        let error = load_chain_file(Path::new("/nonexistent/policies.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot read policy file /nonexistent/policies.yaml: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_parsed_chain_runs_end_to_end() {
        use crate::CallInfo;
        use crate::shapes::Api;
        use crate::shapes::fixtures::{data_event, decode, openai_chunk, streamed_text};
        use serde_json::json;

        let yaml = "policies:\n\
                    \x20 - type: all_caps\n\
                    \x20 - type: string_replace\n\
                    \x20   config: {replacements: [{from: secret, to: hidden}]}\n";
        let chain = parse_chain(yaml, "policies.yaml").unwrap();
        let info = CallInfo::new("c1", Api::OpenAiChat, "gpt-4o", true);
        let mut call = chain.start_call(&info);

        let mut request = json!({"messages": [{"role": "user", "content": "my secret"}]});
        call.on_request(&mut request).await.unwrap();
        assert_eq!(request["messages"][0]["content"], "my hidden");

        // The stream breaks off while string_replace holds "sec": its flush at the end still
        // goes through all_caps, which comes after it in response order.
        let stream = data_event(&openai_chunk(json!({"content": "a sec"}), None));
        let mut out = Vec::new();
        for event in decode(&stream) {
            call.on_event_into(event, &mut out).await.unwrap();
        }
        assert_eq!(streamed_text(Api::OpenAiChat, &out), "A ");
        out.extend(call.on_stream_end().await.unwrap());
        assert_eq!(streamed_text(Api::OpenAiChat, &out), "A SEC");
    }

    #[test]
    fn the_noop_chain_has_one_noop() {
        assert_eq!(noop_chain().policy_names(), ["noop"]);
    }
}
