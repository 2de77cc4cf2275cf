//! Terminal renderings shared by `luthien calls` and `luthien replay`: the readable form of a
//! [`CallDiff`], times and durations, and colour (only when the output is a terminal and
//! `NO_COLOR` is unset).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use luthien_controlplane::diff::{self, CallDiff, Op, Segment, SegmentOp, TextChange};
use serde_json::Value;

/// Whether and how to colour text.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    colour: bool,
}

/// The few colours the renderings use.
#[derive(Clone, Copy, Debug)]
pub enum Colour {
    Red,
    Green,
    Yellow,
    Dim,
    Bold,
}

impl Style {
    /// Colour when standard output is a terminal and `NO_COLOR` is not set (no-color.org).
    pub fn stdout() -> Self {
        Self {
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    /// Plain text, whatever the output.
    #[cfg(test)]
    pub fn plain() -> Self {
        Self { colour: false }
    }

    pub fn paint(self, colour: Colour, text: &str) -> String {
        if !self.colour {
            return text.to_owned();
        }
        let code = match colour {
            Colour::Red => "31",
            Colour::Green => "32",
            Colour::Yellow => "33",
            Colour::Dim => "2",
            Colour::Bold => "1",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// A call status coloured by how it ended.
    pub fn status(self, status: &str) -> String {
        let colour = match status {
            "completed" => Colour::Green,
            "in_progress" => Colour::Dim,
            "blocked" | "client_cancelled" | "unpoliced" => Colour::Yellow,
            _ => Colour::Red,
        };
        self.paint(colour, status)
    }

    /// A word-level diff inline: removed text red and added text green on a terminal,
    /// `[-removed-]{+added+}` otherwise (as `git diff --word-diff` writes it).
    pub fn segments(self, segments: &[Segment]) -> String {
        segments
            .iter()
            .map(|segment| match (segment.op, self.colour) {
                (SegmentOp::Equal, _) => segment.text.clone(),
                (SegmentOp::Delete, true) => self.paint(Colour::Red, &segment.text),
                (SegmentOp::Insert, true) => self.paint(Colour::Green, &segment.text),
                (SegmentOp::Delete, false) => format!("[-{}-]", segment.text),
                (SegmentOp::Insert, false) => format!("{{+{}+}}", segment.text),
            })
            .collect()
    }
}

/// The readable form of a diff: what changed in the request and in the response, each change
/// on its own line, texts as word diffs.
pub fn diff(diff: &CallDiff, style: Style) -> String {
    let mut out = String::new();
    let changed = |changed: bool| {
        if changed {
            style.paint(Colour::Yellow, "changed")
        } else {
            "unchanged".to_owned()
        }
    };
    let request = &diff.request;
    let _ = writeln!(out, "request: {}", changed(request.changed));
    // One change per entry; a multi-line text goes on indented under its entry.
    let entry = |out: &mut String, text: String| {
        let _ = writeln!(out, "  {}", text.replace('\n', "\n    "));
    };
    for param in &request.params {
        entry(
            &mut out,
            value_change(&param.path, &param.before, &param.after),
        );
    }
    if let Some(system) = text_change("system", request.system.as_ref(), style) {
        entry(&mut out, system);
    }
    for (index, message) in request.messages.iter().enumerate() {
        let role = message.role.as_deref().unwrap_or("message");
        let label = format!("message {} ({role})", index + 1);
        match message.op {
            Op::Equal => {}
            Op::Change => {
                let text = match &message.segments {
                    Some(segments) => style.segments(segments),
                    None => "content changed (not text)".to_owned(),
                };
                entry(&mut out, format!("{label} changed: {text}"));
            }
            Op::Insert => {
                let text = message.after.as_ref().map(message_text).unwrap_or_default();
                let text = style.paint(Colour::Green, &text);
                entry(&mut out, format!("{label} added: {text}"));
            }
            Op::Delete => {
                let text = message
                    .before
                    .as_ref()
                    .map(message_text)
                    .unwrap_or_default();
                let text = style.paint(Colour::Red, &text);
                entry(&mut out, format!("{label} removed: {text}"));
            }
        }
    }
    for tool in request.tools.iter().filter(|tool| tool.op != Op::Equal) {
        let name = tool.name.as_deref().unwrap_or("?");
        entry(&mut out, format!("tool `{name}` {}", op_word(tool.op)));
    }

    let response = &diff.response;
    let _ = writeln!(out, "response: {}", changed(response.changed));
    if let Some(text) = text_change("text", response.text.as_ref(), style) {
        entry(&mut out, text);
    }
    for call in response
        .tool_calls
        .iter()
        .filter(|call| call.op != Op::Equal)
    {
        let name = call.name.as_deref().unwrap_or("?");
        let id = call
            .id
            .as_deref()
            .map(|id| format!(" ({id})"))
            .unwrap_or_default();
        entry(
            &mut out,
            format!("tool call `{name}`{id} {}", op_word(call.op)),
        );
    }
    for (label, change) in [
        ("finish reason", &response.finish_reason),
        ("usage", &response.usage),
    ] {
        if let Some(change) = change
            .as_ref()
            .filter(|change| change.before != change.after)
        {
            entry(&mut out, value_change(label, &change.before, &change.after));
        }
    }
    for param in &response.params {
        entry(
            &mut out,
            value_change(&param.path, &param.before, &param.after),
        );
    }
    if diff.truncated {
        let _ = writeln!(
            out,
            "(the diff ran out of time: some parts are shown whole rather than word by word)"
        );
    }
    out
}

/// `label: word diff`, or what was added or removed; `None` when the text is the same.
fn text_change(label: &str, change: Option<&TextChange>, style: Style) -> Option<String> {
    let change = change?;
    let line = match (&change.segments, &change.before, &change.after) {
        (Some(segments), _, _) => style.segments(segments),
        (None, None, Some(after)) => format!("added: {}", style.paint(Colour::Green, after)),
        (None, Some(before), None) => format!("removed: {}", style.paint(Colour::Red, before)),
        (None, _, _) => return None,
    };
    Some(format!("{label}: {line}"))
}

fn op_word(op: Op) -> &'static str {
    match op {
        Op::Equal => "unchanged",
        Op::Change => "changed",
        Op::Insert => "added",
        Op::Delete => "removed",
    }
}

/// `path: before -> after`, an absent side shown as `(absent)`.
fn value_change(path: &str, before: &Value, after: &Value) -> String {
    let show = |value: &Value| match value {
        Value::Null => "(absent)".to_owned(),
        other => other.to_string(),
    };
    format!("{path}: {} -> {}", show(before), show(after))
}

/// The text of a message as the diff reads it, else its JSON (a tool call, an image).
fn message_text(message: &Value) -> String {
    diff::message_text(Some(message)).unwrap_or_else(|| message.to_string())
}

/// A unix time in microseconds as RFC 3339 (UTC, milliseconds).
pub fn time(micros: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// `--since`/`--until`: a duration ago (`2h`, `30m`) or a time (`2026-11-27T06:00:00Z`), as
/// unix microseconds.
pub fn parse_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    let at = match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .with_context(|| format!("{flag} {text} is before the epoch"))?,
        Err(_) => humantime::parse_rfc3339_weak(text).with_context(|| {
            format!("{flag} `{text}`: use a duration (2h) or a time (2026-11-27T06:00:00Z)")
        })?,
    };
    let micros = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros();
    Ok(i64::try_from(micros).unwrap_or(i64::MAX))
}

/// `text` on one line, cut to `width` characters with an ellipsis.
pub fn one_line(text: &str, width: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= width {
        return flat;
    }
    let mut cut: String = flat.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use luthien_controlplane::diff::{DiffOptions, diff_call};
    use luthien_policy::shapes::Api;
    use serde_json::json;

    #[test]
    fn a_diff_reads_as_lines_of_changes_without_debug_text() {
        let request = json!({"model": "gpt-4o", "messages": [
            {"role": "user", "content": "the quick brown fox\nsleeps"}]});
        let rewritten = json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "the quick brown cat\nsleeps"}]});
        let response = json!({"choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "hello"}}]});
        let caps = json!({"choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "HELLO"}}]});
        let diff = diff_call(
            Api::OpenAiChat,
            (Some(&request), Some(&rewritten)),
            (Some(&response), Some(&caps)),
            &DiffOptions::default(),
        );
        let text = super::diff(&diff, Style::plain());
        assert!(text.starts_with("request: changed\n"), "{text}");
        assert!(
            text.contains("  model: \"gpt-4o\" -> \"gpt-4o-mini\"\n"),
            "{text}"
        );
        assert!(text.contains("(system) added: be brief\n"), "{text}");
        assert!(
            // A second line of a text stays indented under its entry.
            text.contains("(user) changed: the quick brown [-fox-]{+cat+}\n    sleeps\n"),
            "{text}"
        );
        assert!(
            text.contains("response: changed\n  text: [-hello-]{+HELLO+}\n"),
            "{text}"
        );
        // Rust's debug forms of the diff types never reach the reader.
        assert!(
            !text.contains("Some(") && !text.contains("Change"),
            "{text}"
        );
        assert!(
            !text.contains('\x1b'),
            "no colour codes off a terminal: {text}"
        );
    }

    #[test]
    fn colour_replaces_the_brackets_on_a_terminal() {
        let style = Style { colour: true };
        let segments = [
            Segment {
                op: SegmentOp::Equal,
                text: "a ".into(),
            },
            Segment {
                op: SegmentOp::Delete,
                text: "b".into(),
            },
            Segment {
                op: SegmentOp::Insert,
                text: "c".into(),
            },
        ];
        assert_eq!(
            style.segments(&segments),
            "a \x1b[31mb\x1b[0m\x1b[32mc\x1b[0m"
        );
    }

    #[test]
    fn times_parse_as_durations_ago_or_dates() {
        let now = parse_time("--since", "0s").unwrap();
        let two_hours = parse_time("--since", "2h").unwrap();
        assert!((now - two_hours - 7_200_000_000).abs() < 1_000_000);
        assert_eq!(
            parse_time("--since", "2026-11-27T06:00:00Z").unwrap(),
            1_795_759_200_000_000
        );
        let error = parse_time("--since", "yesterday").unwrap_err().to_string();
        assert!(error.contains("use a duration"), "{error}");
        assert_eq!(time(1_795_759_200_123_000), "2026-11-27T06:00:00.123Z");
    }

    #[test]
    fn one_line_flattens_and_cuts() {
        assert_eq!(one_line("a\n  b", 10), "a b");
        assert_eq!(one_line("abcdefghij", 5), "abcd…");
    }
}
