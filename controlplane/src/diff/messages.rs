//! Content alignment of JSON arrays (messages, tools), and message texts.
//!
//! A positional diff of `messages[]` is useless to people: a policy that prepends a system
//! message shifts every index, so every message looks replaced. Instead each element is
//! hashed (canonically: key order does not matter) and the hash sequences are diffed, so
//! the inserted message is one insert and the rest stay equal. Elements that only differ
//! in content land in a replaced region, where they are paired by a slot key (a message's
//! role, a tool's name) into `change`s; the rest are inserts and deletes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::Value;
use similar::{Algorithm, DiffOp, capture_diff_slices_deadline};

use super::{Budget, MessageDiff, Op, ToolDiff, text};

/// Two aligned elements; `None` on the side an element is absent from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pair {
    pub op: Op,
    pub before: Option<usize>,
    pub after: Option<usize>,
}

/// Aligns `before` and `after` by content, in order. Elements in a replaced region are
/// paired into [`Op::Change`] when their `slot` keys line up.
pub(super) fn align<'a>(
    before: &'a [Value],
    after: &'a [Value],
    slot: impl Fn(&'a Value) -> Option<&'a str>,
    budget: &Budget,
) -> Vec<Pair> {
    let old: Vec<u64> = before.iter().map(content_hash).collect();
    let new: Vec<u64> = after.iter().map(content_hash).collect();
    let ops =
        capture_diff_slices_deadline(Algorithm::Patience, &old, &new, Some(budget.deadline()));
    let mut pairs = Vec::with_capacity(before.len().max(after.len()));
    for op in ops {
        match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => {
                for k in 0..len {
                    let (b, a) = (old_index + k, new_index + k);
                    // Equal hashes of unequal values would be a collision; stay truthful.
                    let op = if before.get(b) == after.get(a) {
                        Op::Equal
                    } else {
                        Op::Change
                    };
                    pairs.push(Pair {
                        op,
                        before: Some(b),
                        after: Some(a),
                    });
                }
            }
            DiffOp::Delete {
                old_index, old_len, ..
            } => pairs.extend((old_index..old_index + old_len).map(deleted)),
            DiffOp::Insert {
                new_index, new_len, ..
            } => pairs.extend((new_index..new_index + new_len).map(inserted)),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                let old_slots: Vec<_> = before
                    .iter()
                    .skip(old_index)
                    .take(old_len)
                    .map(&slot)
                    .collect();
                let new_slots: Vec<_> = after
                    .iter()
                    .skip(new_index)
                    .take(new_len)
                    .map(&slot)
                    .collect();
                pair_slots(
                    &old_slots,
                    &new_slots,
                    (old_index, new_index),
                    budget,
                    &mut pairs,
                );
            }
        }
    }
    pairs
}

/// Pairs a replaced region by slot key: same-key runs become changes, the rest inserts and
/// deletes. Past the deadline the content diff above may hand over the whole array.
fn pair_slots(
    old: &[Option<&str>],
    new: &[Option<&str>],
    (old_base, new_base): (usize, usize),
    budget: &Budget,
    pairs: &mut Vec<Pair>,
) {
    let deadline = Some(budget.deadline());
    for op in capture_diff_slices_deadline(Algorithm::Myers, old, new, deadline) {
        let (o, n) = (
            old_base + op.old_range().start,
            new_base + op.new_range().start,
        );
        match op {
            DiffOp::Equal { len, .. } => pairs.extend((0..len).map(|k| Pair {
                op: Op::Change,
                before: Some(o + k),
                after: Some(n + k),
            })),
            DiffOp::Delete { old_len, .. } => pairs.extend((o..o + old_len).map(deleted)),
            DiffOp::Insert { new_len, .. } => pairs.extend((n..n + new_len).map(inserted)),
            DiffOp::Replace {
                old_len, new_len, ..
            } => {
                pairs.extend((o..o + old_len).map(deleted));
                pairs.extend((n..n + new_len).map(inserted));
            }
        }
    }
}

fn deleted(index: usize) -> Pair {
    Pair {
        op: Op::Delete,
        before: Some(index),
        after: None,
    }
}

fn inserted(index: usize) -> Pair {
    Pair {
        op: Op::Insert,
        before: None,
        after: Some(index),
    }
}

/// Aligns two `messages` arrays; changed messages carry a word diff of their text.
pub(super) fn diff_messages(
    before: &[Value],
    after: &[Value],
    budget: &Budget,
) -> Vec<MessageDiff> {
    align(before, after, message_role, budget)
        .into_iter()
        .map(|pair| {
            let b = pair.before.and_then(|i| before.get(i));
            let a = pair.after.and_then(|i| after.get(i));
            let segments = (pair.op == Op::Change).then(|| {
                text::word_segments(
                    &message_text(b).unwrap_or_default(),
                    &message_text(a).unwrap_or_default(),
                    budget,
                )
            });
            MessageDiff {
                op: pair.op,
                before_index: pair.before,
                after_index: pair.after,
                role: a.or(b).and_then(message_role).map(str::to_owned),
                before: b.cloned(),
                after: a.cloned(),
                segments,
            }
        })
        .collect()
}

/// Aligns two `tools` arrays, pairing changed definitions by tool name.
pub(super) fn diff_tools(before: &[Value], after: &[Value], budget: &Budget) -> Vec<ToolDiff> {
    align(before, after, tool_name, budget)
        .into_iter()
        .map(|pair| {
            let b = pair.before.and_then(|i| before.get(i));
            let a = pair.after.and_then(|i| after.get(i));
            ToolDiff {
                op: pair.op,
                name: a.or(b).and_then(tool_name).map(str::to_owned),
                before: b.cloned(),
                after: a.cloned(),
            }
        })
        .collect()
}

fn message_role(message: &Value) -> Option<&str> {
    message.get("role").and_then(Value::as_str)
}

/// A tool's name: OpenAI `function.name`, else `name` (Anthropic, OpenAI custom tools).
fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("function")
        .and_then(|f| f.get("name"))
        .or_else(|| tool.get("name"))
        .and_then(Value::as_str)
}

/// The text of a message (or of Anthropic's `system`): string content as is, or the `text`
/// parts/blocks joined by blank lines. `None` when it has no text at all.
pub fn message_text(message: Option<&Value>) -> Option<String> {
    content_text(message?.get("content")?)
}

/// The text of a content value: a string, or the `text` of its text parts/blocks.
pub(super) fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(_) => {
            let texts: Vec<&str> = luthien_api::request::content_texts(content).collect();
            (!texts.is_empty()).then(|| texts.join("\n\n"))
        }
        _ => None,
    }
}

/// A hash of `value` that, like `Value`'s equality, ignores object key order.
pub(super) fn content_hash(value: &Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    hash_into(value, &mut hasher);
    hasher.finish()
}

fn hash_into(value: &Value, hasher: &mut DefaultHasher) {
    match value {
        Value::Null => 0u8.hash(hasher),
        Value::Bool(b) => (1u8, b).hash(hasher),
        Value::Number(n) => (2u8, n).hash(hasher),
        Value::String(s) => (3u8, s).hash(hasher),
        Value::Array(items) => {
            (4u8, items.len()).hash(hasher);
            for item in items {
                hash_into(item, hasher);
            }
        }
        Value::Object(map) => {
            // Entries are hashed separately and summed: addition is order-independent.
            let sum = map.iter().fold(0u64, |sum, (key, item)| {
                let mut entry = DefaultHasher::new();
                key.hash(&mut entry);
                hash_into(item, &mut entry);
                sum.wrapping_add(entry.finish())
            });
            (5u8, map.len(), sum).hash(hasher);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn hash_ignores_key_order_but_not_values() {
        let a: Value = serde_json::from_str(r#"{"role":"user","content":"hi"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"content":"hi","role":"user"}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(
            content_hash(&a),
            content_hash(&json!({"role": "user", "content": "ho"}))
        );
        assert_ne!(content_hash(&json!([1, 2])), content_hash(&json!([2, 1])));
    }

    #[test]
    fn replaced_region_pairs_by_slot() {
        let before = [
            json!({"role": "user", "content": "a"}),
            json!({"role": "assistant", "content": "b"}),
        ];
        let after = [
            json!({"role": "system", "content": "s"}),
            json!({"role": "user", "content": "a2"}),
        ];
        let budget = Budget::new(std::time::Instant::now(), std::time::Duration::from_secs(5));
        let pairs = align(&before, &after, message_role, &budget);
        let ops: Vec<_> = pairs.iter().map(|p| (p.op, p.before, p.after)).collect();
        assert_eq!(
            ops,
            [
                (Op::Insert, None, Some(0)),
                (Op::Change, Some(0), Some(1)),
                (Op::Delete, Some(1), None),
            ]
        );
    }
}
