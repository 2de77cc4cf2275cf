//! Literal find-and-replace, over whole strings and over text that arrives in pieces.
//!
//! Matching is case-sensitive and leftmost-longest: the match that starts first wins, and of
//! the patterns matching at that position the longest one. Matches do not overlap, and
//! replacement text is never searched again.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use regex::Regex;

/// A compiled set of `from` → `to` replacements.
#[derive(Debug)]
pub(super) struct Replacer {
    /// The escaped `from`s as one alternation, longest first: the regex engine picks the first
    /// listed alternative at the leftmost position, which makes that the leftmost-longest match.
    search: Regex,
    to_by_from: HashMap<String, String>,
    /// Every proper prefix of every `from`: a tail of streamed text that is one of these could
    /// still become a match, so it is held until more text (or the end) decides.
    proper_prefixes: HashSet<String>,
    /// The longest `from`, in bytes; held text is always shorter.
    longest_from: usize,
}

impl Replacer {
    /// Compiles `(from, to)` pairs. Each `from` must be non-empty and listed once; errors start
    /// with the offending key, e.g. `replacements[1].from: must not be empty`.
    pub(super) fn new(pairs: Vec<(String, String)>) -> Result<Self, String> {
        if pairs.is_empty() {
            return Err("replacements: must list at least one {from, to}".to_owned());
        }
        let mut to_by_from = HashMap::with_capacity(pairs.len());
        let mut proper_prefixes = HashSet::new();
        for (position, (from, to)) in pairs.into_iter().enumerate() {
            if from.is_empty() {
                return Err(format!("replacements[{position}].from: must not be empty"));
            }
            for (end, _) in from.char_indices().skip(1) {
                proper_prefixes.insert(from[..end].to_owned());
            }
            if to_by_from.insert(from, to).is_some() {
                return Err(format!(
                    "replacements[{position}].from: repeats an earlier `from`"
                ));
            }
        }
        let mut froms: Vec<&str> = to_by_from.keys().map(String::as_str).collect();
        froms.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        let longest_from = froms.first().map_or(0, |from| from.len());
        let alternation: Vec<String> = froms.into_iter().map(regex::escape).collect();
        let search =
            Regex::new(&alternation.join("|")).map_err(|error| format!("replacements: {error}"))?;
        Ok(Self {
            search,
            to_by_from,
            proper_prefixes,
            longest_from,
        })
    }

    /// Replaces every match in `text` and returns how many there were; leaves it untouched
    /// (no allocation) when nothing matches.
    pub(super) fn replace_all(&self, text: &mut String) -> usize {
        let mut matches = self.search.find_iter(text).peekable();
        if matches.peek().is_none() {
            return 0;
        }
        let mut replaced = String::with_capacity(text.len());
        let mut copied = 0;
        let mut count = 0;
        for found in matches {
            replaced.push_str(&text[copied..found.start()]);
            replaced.push_str(self.to(found.as_str()));
            copied = found.end();
            count += 1;
        }
        replaced.push_str(&text[copied..]);
        *text = replaced;
        count
    }

    fn to<'a>(&'a self, from: &'a str) -> &'a str {
        self.to_by_from.get(from).map_or(from, String::as_str)
    }

    /// Where the tail of `text` that must be held starts: the earliest position at or after
    /// `start` from which the rest of `text` is a proper prefix of some `from`, or `text.len()`
    /// when nothing needs holding.
    fn hold_point(&self, text: &str, start: usize) -> usize {
        let earliest = text
            .len()
            .saturating_sub(self.longest_from.saturating_sub(1))
            .max(start);
        (earliest..text.len())
            .find(|&tail| {
                text.is_char_boundary(tail) && self.proper_prefixes.contains(&text[tail..])
            })
            .unwrap_or(text.len())
    }
}

/// The held-back text of one content stream (one OpenAI choice, one Anthropic block).
#[derive(Debug, Default)]
pub(super) struct StreamBuffer {
    held: String,
    /// Matches replaced so far in this content stream.
    replaced: usize,
}

impl StreamBuffer {
    /// Adds the next piece of the stream and returns the text that is now certain: everything
    /// except a tail that is a proper prefix of some `from`, with matches replaced. Borrows
    /// `piece` when it passes unchanged.
    ///
    /// A match starting before the held tail is final: had more text been able to change the
    /// match at that position, the text from there on would be a proper prefix of a `from`,
    /// i.e. held.
    pub(super) fn push<'a>(&mut self, replacer: &Replacer, piece: &'a str) -> Cow<'a, str> {
        if self.held.is_empty()
            && replacer.hold_point(piece, 0) == piece.len()
            && !replacer.search.is_match(piece)
        {
            return Cow::Borrowed(piece);
        }
        self.held.push_str(piece);
        let mut certain = String::with_capacity(self.held.len());
        let mut consumed = 0;
        loop {
            let hold_point = replacer.hold_point(&self.held, consumed);
            match replacer.search.find_at(&self.held, consumed) {
                Some(found) if found.start() < hold_point => {
                    certain.push_str(&self.held[consumed..found.start()]);
                    certain.push_str(replacer.to(found.as_str()));
                    consumed = found.end();
                    self.replaced += 1;
                }
                _ => {
                    certain.push_str(&self.held[consumed..hold_point]);
                    self.held.drain(..hold_point);
                    return Cow::Owned(certain);
                }
            }
        }
    }

    /// The stream ended: returns the held text, with the matches it contains replaced (a
    /// shorter `from` may sit inside a tail that could have grown into a longer one).
    pub(super) fn finish(&mut self, replacer: &Replacer) -> String {
        let mut rest = std::mem::take(&mut self.held);
        self.replaced += replacer.replace_all(&mut rest);
        rest
    }

    /// Matches replaced in this content stream so far.
    pub(super) fn replaced(&self) -> usize {
        self.replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replacer(pairs: &[(&str, &str)]) -> Replacer {
        Replacer::new(
            pairs
                .iter()
                .map(|(from, to)| ((*from).to_owned(), (*to).to_owned()))
                .collect(),
        )
        .unwrap()
    }

    fn replace_all(replacer: &Replacer, text: &str) -> String {
        let mut text = text.to_owned();
        replacer.replace_all(&mut text);
        text
    }

    /// Streams `pieces`, checking that nothing longer than a `from` is ever held.
    fn stream(replacer: &Replacer, pieces: &[&str]) -> String {
        let mut buffer = StreamBuffer::default();
        let mut out = String::new();
        for piece in pieces {
            out += &buffer.push(replacer, piece);
            assert!(
                buffer.held.len() < replacer.longest_from,
                "held {:?}",
                buffer.held
            );
        }
        out + &buffer.finish(replacer)
    }

    #[test]
    fn replaces_whole_strings_leftmost_longest() {
        let replacer = replacer(&[("foo", "1"), ("foobar", "2"), ("bar", "3")]);
        assert_eq!(replace_all(&replacer, "foobar foo bar fooba"), "2 1 3 1ba");
        assert_eq!(replace_all(&replacer, "none"), "none");
    }

    #[test]
    fn replacement_text_is_not_searched_again() {
        let replacer = replacer(&[("a", "aa")]);
        assert_eq!(replace_all(&replacer, "aXa"), "aaXaa");
        assert_eq!(stream(&replacer, &["a", "Xa"]), "aaXaa");
    }

    #[test]
    fn a_match_split_over_three_pieces_is_caught() {
        let replacer = replacer(&[("secret", "[redacted]")]);
        let mut buffer = StreamBuffer::default();
        assert_eq!(buffer.push(&replacer, "my sec"), "my ");
        assert_eq!(buffer.push(&replacer, "re"), "");
        assert_eq!(buffer.push(&replacer, "t key"), "[redacted] key");
        assert_eq!(buffer.finish(&replacer), "");
    }

    #[test]
    fn unaffected_text_passes_borrowed_and_undelayed() {
        let replacer = replacer(&[("secret", "x")]);
        let mut buffer = StreamBuffer::default();
        assert!(matches!(
            buffer.push(&replacer, "hello world"),
            Cow::Borrowed("hello world")
        ));
        // Only the tail that could start a match is held.
        assert_eq!(buffer.push(&replacer, "hello s"), "hello ");
        assert_eq!(buffer.push(&replacer, "ecretary"), "xary");
    }

    #[test]
    fn held_text_that_cannot_grow_is_released() {
        let replacer = replacer(&[("secret", "x")]);
        let mut buffer = StreamBuffer::default();
        assert_eq!(buffer.push(&replacer, "sec"), "");
        assert_eq!(buffer.push(&replacer, "ond"), "second");
    }

    #[test]
    fn a_shorter_match_inside_a_held_tail_is_replaced_at_the_end() {
        let replacer = replacer(&[("abcd", "1"), ("b", "2")]);
        assert_eq!(stream(&replacer, &["ab", "c"]), "a2c");
        assert_eq!(stream(&replacer, &["ab", "cd"]), "1");
        assert_eq!(stream(&replacer, &["ab", "cx"]), "a2cx");
    }

    #[test]
    fn every_split_of_the_text_gives_the_whole_string_result() {
        let replacer = replacer(&[
            ("foo", "F"),
            ("foobar", "FB"),
            ("oba", "O"),
            ("héllo", "H"),
            ("ab", ""),
        ]);
        let text = "xfoobarfoobafoo héllo héll abab foofoobar";
        let expected = replace_all(&replacer, text);
        let boundaries: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for (i, &first) in boundaries.iter().enumerate() {
            for &second in &boundaries[i..] {
                let pieces = [&text[..first], &text[first..second], &text[second..]];
                assert_eq!(
                    stream(&replacer, &pieces),
                    expected,
                    "split at {first}, {second}"
                );
            }
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(stream(&replacer, &pieces), expected);
    }

    #[test]
    fn rejects_empty_and_repeated_patterns() {
        let error = |pairs: &[(&str, &str)]| {
            Replacer::new(
                pairs
                    .iter()
                    .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
                    .collect(),
            )
            .unwrap_err()
        };
        assert_eq!(
            error(&[("a", "b"), ("", "c")]),
            "replacements[1].from: must not be empty"
        );
        assert_eq!(
            error(&[("a", "b"), ("a", "c")]),
            "replacements[1].from: repeats an earlier `from`"
        );
        assert!(error(&[]).contains("at least one"));
    }
}
