//! Word-level text diffs, bounded by the call's time budget.
//!
//! Three steps keep large texts cheap and the output readable: the common prefix and suffix
//! (cut at whitespace, so no word is split) are stripped before diffing, which turns "one
//! word changed in a 2 MB prompt" into a diff of a few bytes; only the middle is tokenized
//! into Unicode words and diffed with a deadline; finally changes separated by a single
//! space are merged, so "quick brown → slow red" reads as one replacement, not two.

use std::time::Duration;

use similar::{Algorithm, ChangeTag, TextDiff};

use super::{Budget, Segment, SegmentOp, TextChange};

/// Rough cost per byte of tokenizing and diffing a changed region. Tokenization cannot be
/// interrupted once started, so a region whose estimated cost exceeds the remaining budget
/// is not word-diffed at all.
const NANOS_PER_BYTE: u64 = 50;

/// Pairs two optional texts; segments only when they differ (an absent text diffs as "").
pub(super) fn text_change(
    before: Option<String>,
    after: Option<String>,
    budget: &Budget,
) -> TextChange {
    let segments = (before != after).then(|| {
        word_segments(
            before.as_deref().unwrap_or_default(),
            after.as_deref().unwrap_or_default(),
            budget,
        )
    });
    TextChange {
        before,
        after,
        segments,
    }
}

/// Word-level segments turning `before` into `after`: adjacent segments never share an op.
pub(super) fn word_segments(before: &str, after: &str, budget: &Budget) -> Vec<Segment> {
    let mut out = Segments::default();
    let (prefix, suffix) = common_affixes(before, after);
    let parts = (
        before.get(..prefix),
        before.get(prefix..before.len() - suffix),
        after.get(prefix..after.len() - suffix),
        before.get(before.len() - suffix..),
    );
    let (Some(head), Some(old_mid), Some(new_mid), Some(tail)) = parts else {
        // Unreachable by construction (cuts are at char boundaries); stay correct anyway.
        out.push(SegmentOp::Delete, before);
        out.push(SegmentOp::Insert, after);
        return out.0;
    };
    out.push(SegmentOp::Equal, head);
    diff_middle(old_mid, new_mid, budget, &mut out);
    out.push(SegmentOp::Equal, tail);
    tidy(out.0)
}

/// Byte lengths of the common prefix and suffix of `a` and `b`, shrunk to whitespace so
/// that a partly matching word ("fox" vs "for") stays whole in the middle. They never
/// overlap in either string.
fn common_affixes(a: &str, b: &str) -> (usize, usize) {
    if a == b {
        return (a.len(), 0);
    }
    let mut prefix = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    // The bytes before `prefix` are identical in both strings, so a cut that is a char
    // boundary (or follows whitespace) in `a` is one in `b` too; the same holds for the suffix.
    while !a.is_char_boundary(prefix) {
        prefix -= 1;
    }
    prefix = a[..prefix]
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());

    let room = a.len().min(b.len()) - prefix;
    let suffix = a
        .bytes()
        .rev()
        .zip(b.bytes().rev())
        .take(room)
        .take_while(|(x, y)| x == y)
        .count();
    let mut cut = a.len() - suffix;
    while !a.is_char_boundary(cut) {
        cut += 1;
    }
    cut = a[cut..]
        .find(char::is_whitespace)
        .map_or(a.len(), |i| cut + i);
    (prefix, a.len() - cut)
}

/// Diffs the changed middle by Unicode words, or as one delete + insert when out of time.
fn diff_middle(old: &str, new: &str, budget: &Budget, out: &mut Segments) {
    if old.is_empty() || new.is_empty() {
        out.push(SegmentOp::Delete, old);
        out.push(SegmentOp::Insert, new);
        return;
    }
    let bytes = u64::try_from(old.len() + new.len()).unwrap_or(u64::MAX);
    let estimate = Duration::from_nanos(bytes.saturating_mul(NANOS_PER_BYTE));
    if budget.expired() || budget.remaining() < estimate {
        budget.mark_truncated();
        out.push(SegmentOp::Delete, old);
        out.push(SegmentOp::Insert, new);
        return;
    }
    let diff = TextDiff::configure()
        .algorithm(Algorithm::Myers)
        .deadline(budget.deadline())
        .diff_unicode_words(old, new);
    for change in diff.iter_all_changes() {
        let op = match change.tag() {
            ChangeTag::Equal => SegmentOp::Equal,
            ChangeTag::Delete => SegmentOp::Delete,
            ChangeTag::Insert => SegmentOp::Insert,
        };
        out.push(op, change.value());
    }
    // Past the deadline Myers returns a valid but possibly coarser diff.
    if budget.expired() {
        budget.mark_truncated();
    }
}

/// Merges change runs separated only by a short run of spaces, and orders each run as one
/// delete then one insert: `[-quick+slow][ ][-brown+red]` becomes `[-quick brown+slow red]`.
/// Newlines are never bridged, so line structure stays visible.
fn tidy(segments: Vec<Segment>) -> Vec<Segment> {
    let is_bridge = |s: &Segment| {
        s.op == SegmentOp::Equal
            && s.text.chars().count() <= 2
            && s.text
                .chars()
                .all(|c| c.is_whitespace() && c != '\n' && c != '\r')
    };
    let mut out = Segments::default();
    let mut i = 0;
    while let Some(segment) = segments.get(i) {
        if segment.op == SegmentOp::Equal {
            out.push(SegmentOp::Equal, &segment.text);
            i += 1;
            continue;
        }
        let (mut deleted, mut inserted) = (String::new(), String::new());
        loop {
            while let Some(s) = segments.get(i).filter(|s| s.op != SegmentOp::Equal) {
                match s.op {
                    SegmentOp::Delete => deleted.push_str(&s.text),
                    _ => inserted.push_str(&s.text),
                }
                i += 1;
            }
            match (segments.get(i), segments.get(i + 1)) {
                (Some(gap), Some(next)) if is_bridge(gap) && next.op != SegmentOp::Equal => {
                    deleted.push_str(&gap.text);
                    inserted.push_str(&gap.text);
                    i += 1;
                }
                _ => break,
            }
        }
        out.push(SegmentOp::Delete, &deleted);
        out.push(SegmentOp::Insert, &inserted);
    }
    out.0
}

/// Segments under construction: empty texts are dropped, same-op neighbours merged.
#[derive(Default)]
struct Segments(Vec<Segment>);

impl Segments {
    fn push(&mut self, op: SegmentOp, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(last) if last.op == op => last.text.push_str(text),
            _ => self.0.push(Segment {
                op,
                text: text.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget::new(std::time::Instant::now(), Duration::from_secs(5))
    }

    fn render(segments: &[Segment]) -> Vec<(SegmentOp, &str)> {
        segments.iter().map(|s| (s.op, s.text.as_str())).collect()
    }

    fn rebuild(segments: &[Segment], skip: SegmentOp) -> String {
        segments
            .iter()
            .filter(|s| s.op != skip)
            .map(|s| s.text.as_str())
            .collect()
    }

    #[test]
    fn one_word_replaced() {
        let segments = word_segments(
            "The quick brown fox jumps.",
            "The quick brown cat jumps.",
            &budget(),
        );
        assert_eq!(
            render(&segments),
            [
                (SegmentOp::Equal, "The quick brown "),
                (SegmentOp::Delete, "fox"),
                (SegmentOp::Insert, "cat"),
                (SegmentOp::Equal, " jumps."),
            ]
        );
    }

    #[test]
    fn partly_matching_word_stays_whole() {
        let segments = word_segments("a fox b", "a for b", &budget());
        assert_eq!(
            render(&segments),
            [
                (SegmentOp::Equal, "a "),
                (SegmentOp::Delete, "fox"),
                (SegmentOp::Insert, "for"),
                (SegmentOp::Equal, " b"),
            ]
        );
    }

    #[test]
    fn neighbouring_changes_merge_across_a_space() {
        let segments = word_segments("the quick brown fox", "the slow red fox", &budget());
        assert_eq!(
            render(&segments),
            [
                (SegmentOp::Equal, "the "),
                (SegmentOp::Delete, "quick brown"),
                (SegmentOp::Insert, "slow red"),
                (SegmentOp::Equal, " fox"),
            ]
        );
    }

    #[test]
    fn segments_rebuild_both_sides() {
        let cases = [
            ("", "new"),
            ("old", ""),
            ("héllo wörld", "héllo wörld!"),
            ("abc", "abc def"),
            ("x\ny z", "x\ny\nz"),
            ("ünïcödé ✓ text", "ünïcödé ✗ text"),
            ("same", "same"),
            ("aaa", "aaaa"),
            ("a b c d e", "e d c b a"),
        ];
        for (before, after) in cases {
            let segments = word_segments(before, after, &budget());
            assert_eq!(rebuild(&segments, SegmentOp::Insert), before, "{before:?}");
            assert_eq!(rebuild(&segments, SegmentOp::Delete), after, "{after:?}");
            for pair in segments.windows(2) {
                assert_ne!(pair[0].op, pair[1].op, "{segments:?}");
            }
        }
    }

    #[test]
    fn out_of_time_gives_one_delete_and_one_insert() {
        let expired = Budget::new(std::time::Instant::now(), Duration::ZERO);
        let segments = word_segments("keep one two keep", "keep three four keep", &expired);
        assert_eq!(
            render(&segments),
            [
                (SegmentOp::Equal, "keep "),
                (SegmentOp::Delete, "one two"),
                (SegmentOp::Insert, "three four"),
                (SegmentOp::Equal, " keep"),
            ]
        );
        assert!(expired.truncated());
    }
}
