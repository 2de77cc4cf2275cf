//! RFC 6902 JSON Patches, with arrays aligned by content.
//!
//! `json_patch::diff` compares arrays by position, so a prepended message turns into a
//! `replace` of every message plus an `add` at the end. This differ aligns array elements
//! by content hash (like [`super::messages`]) and emits `add`/`remove` for the inserted and
//! removed elements only. Past the deadline a differing subtree becomes one `replace`: a
//! coarser patch, but still one that turns the original into the final.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};
use similar::{Algorithm, DiffOp, capture_diff_slices_deadline};

use super::Budget;
use super::messages::content_hash;

/// A patch turning `before` into `after`; an absent side counts as `null`.
pub(super) fn diff(before: Option<&Value>, after: Option<&Value>, budget: &Budget) -> Patch {
    let mut differ = Differ {
        budget,
        pointer: PointerBuf::new(),
        ops: Vec::new(),
    };
    differ.value(
        before.unwrap_or(&Value::Null),
        after.unwrap_or(&Value::Null),
    );
    Patch(differ.ops)
}

struct Differ<'b> {
    budget: &'b Budget,
    /// Where the value being compared lives, in the document as patched so far.
    pointer: PointerBuf,
    ops: Vec<PatchOperation>,
}

impl Differ<'_> {
    fn value(&mut self, before: &Value, after: &Value) {
        match (before, after) {
            _ if before == after => {}
            (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_))
                if self.budget.expired() =>
            {
                self.budget.mark_truncated();
                self.replace(after);
            }
            (Value::Object(old), Value::Object(new)) => self.object(old, new),
            (Value::Array(old), Value::Array(new)) => self.array(old, new),
            _ => self.replace(after),
        }
    }

    fn object(&mut self, before: &Map<String, Value>, after: &Map<String, Value>) {
        for (key, new) in after {
            self.pointer.push_back(key);
            match before.get(key) {
                Some(old) => self.value(old, new),
                None => self.add(new),
            }
            self.pointer.pop_back();
        }
        for key in before.keys().filter(|key| !after.contains_key(*key)) {
            self.pointer.push_back(key);
            self.remove();
            self.pointer.pop_back();
        }
    }

    /// Ops are emitted front to back; before each diff op the patched array starts with
    /// `after[..new_index]` followed by `before[old_index..]`, so `new_index` is where
    /// the op applies.
    fn array(&mut self, before: &[Value], after: &[Value]) {
        let old: Vec<u64> = before.iter().map(content_hash).collect();
        let new: Vec<u64> = after.iter().map(content_hash).collect();
        let deadline = Some(self.budget.deadline());
        for op in capture_diff_slices_deadline(Algorithm::Myers, &old, &new, deadline) {
            let (o, n) = (op.old_range(), op.new_range());
            let olds = before.get(o.clone()).unwrap_or_default();
            let news = after.get(n.clone()).unwrap_or_default();
            match op {
                // Equal hashes: the values are equal barring a collision, which this
                // handles by recursing like a replaced element.
                DiffOp::Equal { .. } | DiffOp::Replace { .. } => {
                    let paired = olds.len().min(news.len());
                    for (k, (old, new)) in olds.iter().zip(news).enumerate() {
                        self.at(n.start + k, |d| d.value(old, new));
                    }
                    for _ in paired..olds.len() {
                        self.at(n.start + paired, Self::remove);
                    }
                    for (k, new) in news.iter().enumerate().skip(paired) {
                        self.at(n.start + k, |d| d.add(new));
                    }
                }
                DiffOp::Delete { .. } => {
                    for _ in olds {
                        self.at(n.start, Self::remove);
                    }
                }
                DiffOp::Insert { .. } => {
                    for (k, new) in news.iter().enumerate() {
                        self.at(n.start + k, |d| d.add(new));
                    }
                }
            }
        }
    }

    fn at(&mut self, index: usize, emit: impl FnOnce(&mut Self)) {
        self.pointer.push_back(index);
        emit(self);
        self.pointer.pop_back();
    }

    fn add(&mut self, value: &Value) {
        self.ops.push(PatchOperation::Add(AddOperation {
            path: self.pointer.clone(),
            value: value.clone(),
        }));
    }

    fn remove(&mut self) {
        self.ops.push(PatchOperation::Remove(RemoveOperation {
            path: self.pointer.clone(),
        }));
    }

    fn replace(&mut self, value: &Value) {
        self.ops.push(PatchOperation::Replace(ReplaceOperation {
            path: self.pointer.clone(),
            value: value.clone(),
        }));
    }
}
