//! Named regexes, whole-string redaction, and redaction of text that arrives in pieces.
//!
//! Matching is leftmost first: of the patterns matching in a text, the match that starts first
//! wins; at the same start the longer one, then the one listed first. Matches do not overlap,
//! replacement text is never searched again, and empty matches are ignored. A pattern may carry
//! a validator (the Luhn check of card numbers): a candidate it rejects is skipped and that
//! pattern's search goes on after it.
//!
//! # Streams
//!
//! A [`StreamBuffer`] holds back the last `max_match_chars - 1` characters of a content stream:
//! a match that is still to come ends in text not yet received, and at most `max_match_chars`
//! long, it starts inside that tail. Everything before it is decided as if the whole text were
//! known, so a split stream gives the whole-string result for every match up to
//! `max_match_chars`. A longer match is caught too when its beginning already matches (an API
//! key: `sk-` and twenty characters): a match running into the end of the received text is held
//! until it ends, up to [`LONG_MATCH_CHARS`].

use std::borrow::Cow;

use regex::Regex;

/// A match still growing at the end of a stream's text is held at most this many characters (or
/// `max_match_chars`, when larger); then it is redacted as far as it goes.
pub(super) const LONG_MATCH_CHARS: usize = 1024;

/// Accepts or rejects a candidate match.
pub(super) type Validator = fn(&str) -> bool;

/// One compiled pattern.
#[derive(Debug)]
pub(super) struct Pattern {
    /// Index into [`Redactor::names`].
    pub(super) name: usize,
    pub(super) regex: Regex,
    pub(super) validate: Option<Validator>,
}

/// A compiled set of named patterns and their replacements.
#[derive(Debug)]
pub(super) struct Redactor {
    patterns: Vec<Pattern>,
    /// Distinct pattern names, in configuration order (several patterns may share one: a preset).
    names: Vec<String>,
    /// The replacement text, by name.
    replacements: Vec<String>,
    /// `max_match_chars`: the longest match a split stream is guaranteed to catch.
    max_match_chars: usize,
}

/// Matches per pattern name (indexed like [`Redactor::names`]).
pub(super) type Counts = Vec<usize>;

/// A pattern's next candidate in a text.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    pattern: usize,
    start: usize,
    end: usize,
    /// The match runs into the end of a text that may still grow: more text can change it, so
    /// it is validated only once it is decided.
    open: bool,
}

impl Redactor {
    /// `names[i]` is replaced by `replacements[i]`; every pattern's `name` indexes them.
    pub(super) fn new(
        patterns: Vec<Pattern>,
        names: Vec<String>,
        replacements: Vec<String>,
        max_match_chars: usize,
    ) -> Self {
        Self {
            patterns,
            names,
            replacements,
            max_match_chars,
        }
    }

    pub(super) fn names(&self) -> &[String] {
        &self.names
    }

    pub(super) fn new_counts(&self) -> Counts {
        vec![0; self.names.len()]
    }

    /// Redacts every match in `text`, counting them in `counts`; returns how many there were and
    /// leaves `text` untouched (no allocation) when nothing matches.
    pub(super) fn redact_all(&self, text: &mut String, counts: &mut Counts) -> usize {
        let mut searches = Searches::new(self);
        if self.next(text, 0, true, &mut searches).is_none() {
            return 0;
        }
        let mut out = String::with_capacity(text.len());
        let before: usize = counts.iter().sum();
        self.scan(text, 0, usize::MAX, true, &mut searches, &mut out, counts);
        *text = out;
        counts.iter().sum::<usize>() - before
    }

    /// Redacts `text[from..]` into `out` up to the point where text must be held; returns that
    /// point. `decide_before`: a match starting before it is decided (a stream's window start);
    /// `complete`: `text` is the whole text, so nothing is held.
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        text: &str,
        from: usize,
        decide_before: usize,
        complete: bool,
        searches: &mut Searches,
        out: &mut String,
        counts: &mut Counts,
    ) -> usize {
        let mut consumed = from;
        loop {
            let candidate = match self.next(text, consumed, complete, searches) {
                Some(candidate) if candidate.start < decide_before => candidate,
                _ => break,
            };
            if candidate.open && !self.too_long(&text[candidate.start..]) {
                out.push_str(&text[consumed..candidate.start]);
                return candidate.start;
            }
            // A match forced while still open was never validated.
            let valid = !candidate.open || self.is_valid(candidate, text);
            out.push_str(&text[consumed..candidate.start]);
            let name = self.patterns[candidate.pattern].name;
            if valid {
                out.push_str(&self.replacements[name]);
                counts[name] += 1;
            } else {
                out.push_str(&text[candidate.start..candidate.end]);
            }
            consumed = candidate.end;
        }
        let hold_from = if complete {
            text.len()
        } else {
            decide_before.max(consumed).min(text.len())
        };
        out.push_str(&text[consumed..hold_from]);
        hold_from
    }

    /// True when an open match has grown past what a stream may hold.
    fn too_long(&self, matched: &str) -> bool {
        matched.chars().count() >= LONG_MATCH_CHARS.max(self.max_match_chars)
    }

    fn is_valid(&self, candidate: Candidate, text: &str) -> bool {
        self.patterns[candidate.pattern]
            .validate
            .is_none_or(|validate| validate(&text[candidate.start..candidate.end]))
    }

    /// The leftmost candidate at or after `from`: at equal starts an open one (it may still
    /// grow), then the longest, then the first listed.
    ///
    /// Each pattern's last search is reused while it still answers for `from` (calls on one
    /// text must have non-decreasing `from`), so a text is searched about once per pattern
    /// however many matches it has.
    fn next(
        &self,
        text: &str,
        from: usize,
        complete: bool,
        searches: &mut Searches,
    ) -> Option<Candidate> {
        let mut best: Option<Candidate> = None;
        for (pattern, search) in searches.0.iter_mut().enumerate() {
            let found = match search {
                Some(search) if from <= search.reusable_until => search.candidate,
                _ => {
                    let fresh = self.pattern_next(pattern, text, from, complete);
                    *search = Some(fresh);
                    fresh.candidate
                }
            };
            let Some(candidate) = found else {
                continue;
            };
            let better = match best {
                None => true,
                Some(best) => {
                    (
                        candidate.start,
                        !candidate.open,
                        std::cmp::Reverse(candidate.end),
                    ) < (best.start, !best.open, std::cmp::Reverse(best.end))
                }
            };
            if better {
                best = Some(candidate);
            }
        }
        best
    }

    /// One pattern's next non-empty candidate at or after `from` that its validator accepts, or
    /// that is still open.
    fn pattern_next(&self, pattern: usize, text: &str, from: usize, complete: bool) -> Search {
        let Pattern {
            regex, validate, ..
        } = &self.patterns[pattern];
        let mut search = Search {
            candidate: None,
            reusable_until: usize::MAX,
        };
        let mut at = from;
        while at <= text.len() {
            let Some(found) = regex.find_at(text, at) else {
                break;
            };
            if found.is_empty() {
                match next_char_boundary(text, found.end()) {
                    Some(next) => at = next,
                    None => break,
                }
                continue;
            }
            let open = !complete && found.end() == text.len();
            if open || validate.is_none_or(|validate| validate(found.as_str())) {
                search.candidate = Some(Candidate {
                    pattern,
                    start: found.start(),
                    end: found.end(),
                    open,
                });
                search.reusable_until = search.reusable_until.min(found.start());
                break;
            }
            // A search starting inside the rejected candidate could find something else.
            search.reusable_until = search.reusable_until.min(found.start());
            at = found.end();
        }
        search
    }
}

/// One pattern's last search in a text.
#[derive(Clone, Copy, Debug)]
struct Search {
    candidate: Option<Candidate>,
    /// The search gives the same answer from any position up to this one.
    reusable_until: usize,
}

/// Every pattern's last search in one text (`None`: not searched yet).
struct Searches(Vec<Option<Search>>);

impl Searches {
    fn new(redactor: &Redactor) -> Self {
        Self(vec![None; redactor.patterns.len()])
    }
}

/// The position of the character after the one at `at`; `None` at the end of `text`.
fn next_char_boundary(text: &str, at: usize) -> Option<usize> {
    text[at..].chars().next().map(|c| at + c.len_utf8())
}

/// The held-back text of one content stream (one OpenAI choice, one Anthropic block).
#[derive(Debug, Default)]
pub(super) struct StreamBuffer {
    /// Text received and not sent yet, after `context` bytes that were already sent: the
    /// character before the held text, kept so that `\b` and `^` see what precedes it.
    held: String,
    context: usize,
    counts: Counts,
}

impl StreamBuffer {
    /// Adds the next piece of the stream and returns the text that is now decided, redacted.
    /// Borrows `piece` when that is exactly `piece` (e.g. an empty piece).
    pub(super) fn push<'a>(&mut self, redactor: &Redactor, piece: &'a str) -> Cow<'a, str> {
        if self.counts.is_empty() {
            self.counts = redactor.new_counts();
        }
        self.held.push_str(piece);
        let window_start = window_start(&self.held, self.context, redactor.max_match_chars);
        let mut certain = String::new();
        let hold_from = redactor.scan(
            &self.held,
            self.context,
            window_start,
            false,
            &mut Searches::new(redactor),
            &mut certain,
            &mut self.counts,
        );
        // Keep one character before the held text as context.
        let keep_from = self.held[..hold_from]
            .char_indices()
            .next_back()
            .map_or(hold_from, |(index, _)| index);
        self.held.drain(..keep_from);
        self.context = hold_from - keep_from;
        if certain == piece {
            Cow::Borrowed(piece)
        } else {
            Cow::Owned(certain)
        }
    }

    /// The content stream ended: returns the held text, redacted.
    pub(super) fn finish(&mut self, redactor: &Redactor) -> String {
        if self.counts.is_empty() {
            self.counts = redactor.new_counts();
        }
        let mut rest = String::with_capacity(self.held.len());
        redactor.scan(
            &self.held,
            self.context,
            usize::MAX,
            true,
            &mut Searches::new(redactor),
            &mut rest,
            &mut self.counts,
        );
        self.held.clear();
        self.context = 0;
        rest
    }

    /// Matches redacted in this content stream so far, per name (empty before the first push).
    pub(super) fn counts(&self) -> &[usize] {
        &self.counts
    }

    /// Bytes held (not counting the context character).
    #[cfg(test)]
    pub(super) fn held_len(&self) -> usize {
        self.held.len() - self.context
    }
}

/// Where the last `max_match_chars - 1` characters of `text[from..]` start.
fn window_start(text: &str, from: usize, max_match_chars: usize) -> usize {
    let tail = max_match_chars.saturating_sub(1);
    if tail == 0 {
        return text.len();
    }
    text[from..]
        .char_indices()
        .rev()
        .nth(tail - 1)
        .map_or(from, |(index, _)| from + index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(patterns: &[(&str, &str)], max_match_chars: usize) -> Redactor {
        let mut names: Vec<String> = Vec::new();
        let patterns = patterns
            .iter()
            .map(|(name, regex)| {
                let index = names.iter().position(|n| n == name).unwrap_or_else(|| {
                    names.push((*name).to_owned());
                    names.len() - 1
                });
                Pattern {
                    name: index,
                    regex: Regex::new(regex).unwrap(),
                    validate: None,
                }
            })
            .collect();
        let replacements = names.iter().map(|name| format!("<{name}>")).collect();
        Redactor::new(patterns, names, replacements, max_match_chars)
    }

    fn redact_all(redactor: &Redactor, text: &str) -> String {
        let mut text = text.to_owned();
        redactor.redact_all(&mut text, &mut redactor.new_counts());
        text
    }

    /// Streams `pieces`, checking the held text stays bounded.
    fn stream(redactor: &Redactor, pieces: &[&str]) -> String {
        let mut buffer = StreamBuffer::default();
        let mut out = String::new();
        for piece in pieces {
            out += &buffer.push(redactor, piece);
            assert!(
                buffer.held.chars().count() <= LONG_MATCH_CHARS.max(redactor.max_match_chars) + 1
            );
        }
        out + &buffer.finish(redactor)
    }

    #[test]
    fn leftmost_then_longest_then_first_listed() {
        let redactor = redactor(&[("a", "ab"), ("b", "abc"), ("c", "bcd"), ("d", "ab")], 64);
        assert_eq!(redact_all(&redactor, "abcd ab xbcd"), "<b>d <a> x<c>");
    }

    #[test]
    fn counts_by_name_and_leaves_unmatched_text_alone() {
        let redactor = redactor(&[("digits", r"\d+"), ("word", "secret")], 64);
        let mut counts = redactor.new_counts();
        let mut text = "a 12 secret 3".to_owned();
        assert_eq!(redactor.redact_all(&mut text, &mut counts), 3);
        assert_eq!(text, "a <digits> <word> <digits>");
        assert_eq!(counts, [2, 1]);
        let mut text = "nothing".to_owned();
        assert_eq!(redactor.redact_all(&mut text, &mut counts), 0);
    }

    #[test]
    fn empty_matches_are_ignored() {
        let redactor = redactor(&[("x", r"x*")], 64);
        assert_eq!(redact_all(&redactor, "axxbx"), "a<x>b<x>");
        assert_eq!(stream(&redactor, &["ax", "xb", "x"]), "a<x>b<x>");
    }

    #[test]
    fn validators_skip_candidates() {
        let mut redactor = redactor(&[("even", r"\d+")], 64);
        redactor.patterns[0].validate = Some(|m| m.len() % 2 == 0);
        assert_eq!(
            redact_all(&redactor, "1 22 333 4444"),
            "1 <even> 333 <even>"
        );
        assert_eq!(
            stream(&redactor, &["1 2", "2 33", "3 44", "44"]),
            "1 <even> 333 <even>"
        );
    }

    #[test]
    fn a_match_split_over_three_pieces_is_caught_and_plain_text_flows_after_the_window() {
        let redactor = redactor(&[("key", r"key-[0-9]{4}")], 12);
        let mut buffer = StreamBuffer::default();
        // 11 characters are held.
        assert_eq!(buffer.push(&redactor, "hello world, my ke"), "hello w");
        assert_eq!(buffer.push(&redactor, "y-1"), "orl");
        // The match is complete but starts inside the window: it could still grow.
        assert_eq!(buffer.push(&redactor, "234 ok"), "d, my ");
        assert_eq!(buffer.held_len(), 11);
        assert_eq!(buffer.push(&redactor, " and more text"), "<key> ok an");
        assert_eq!(buffer.finish(&redactor), "d more text");
        assert_eq!(buffer.counts(), [1]);
    }

    #[test]
    fn word_boundaries_see_the_text_already_sent() {
        let redactor = redactor(&[("num", r"\b[0-9]{3}\b")], 4);
        // "x123" has no boundary before 1 even though "x" was sent before "456" arrived.
        let mut buffer = StreamBuffer::default();
        assert_eq!(buffer.push(&redactor, "aaaaaaaaax"), "aaaaaaa");
        assert_eq!(buffer.push(&redactor, "123"), "aax");
        assert_eq!(buffer.push(&redactor, " 456"), "123 ");
        assert_eq!(buffer.finish(&redactor), "<num>");
        let anchored = self::redactor(&[("start", r"^ab")], 4);
        assert_eq!(stream(&anchored, &["xxxxxxxx", "ab"]), "xxxxxxxxab");
        assert_eq!(stream(&anchored, &["a", "bab"]), "<start>ab");
    }

    #[test]
    fn a_long_match_that_starts_matching_early_is_held_until_it_ends() {
        // The window must fit the shortest match (23 characters) for its beginning to match.
        let redactor = redactor(&[("key", r"sk-[A-Za-z0-9]{20,}")], 24);
        let key = format!("sk-{}", "a1".repeat(80));
        let text = format!("my key is {key} thanks");
        let pieces: Vec<String> = text
            .as_bytes()
            .chunks(3)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        assert_eq!(stream(&redactor, &pieces), "my key is <key> thanks");
    }

    #[test]
    fn a_match_that_never_ends_is_cut_at_the_long_match_limit() {
        let redactor = redactor(&[("run", r"x+")], 8);
        let text = "x".repeat(LONG_MATCH_CHARS * 2 + 10);
        let pieces: Vec<&str> = (0..text.len()).map(|i| &text[i..=i]).collect();
        assert_eq!(stream(&redactor, &pieces), "<run><run><run>");
    }

    #[test]
    fn every_split_of_the_text_gives_the_whole_string_result() {
        let redactor = redactor(
            &[
                ("email", r"[a-z.]+@[a-z]+\.[a-z]{2,}"),
                ("num", r"\b[0-9]{3,5}\b"),
                ("héllo", "héllo+"),
            ],
            24,
        );
        let text = "mail a.b@ex.com or 123 or 12345678 héllooo x@y.zz! 99 héll";
        let expected = redact_all(&redactor, text);
        assert_eq!(
            expected,
            "mail <email> or <num> or 12345678 <héllo> <email>! 99 héll"
        );
        let boundaries: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for (i, &first) in boundaries.iter().enumerate() {
            for &second in &boundaries[i..] {
                let pieces = [&text[..first], &text[first..second], &text[second..]];
                assert_eq!(
                    stream(&redactor, &pieces),
                    expected,
                    "split at {first}, {second}"
                );
            }
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(stream(&redactor, &pieces), expected);
    }

    #[test]
    fn a_large_text_with_many_matches_is_searched_about_once_per_pattern() {
        let mut redactor = redactor(
            &[
                ("email", r"[a-z]+@[a-z]+\.io"),
                ("even", r"\b[0-9]{2,}\b"),
                ("never", "zzz"),
            ],
            64,
        );
        redactor.patterns[1].validate = Some(|m| m.len() % 2 == 0);
        let text = "mail ab@cd.io 123 4567 and some filler text. ".repeat(20_000);
        let mut counts = redactor.new_counts();
        let mut redacted = text.clone();
        let started = std::time::Instant::now();
        redactor.redact_all(&mut redacted, &mut counts);
        assert_eq!(counts, [20_000, 20_000, 0]);
        assert!(redacted.starts_with("mail <email> 123 <even> and"));
        // Quadratic re-searching would take minutes here.
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn window_start_counts_characters() {
        assert_eq!(window_start("abcdef", 0, 3), 4);
        assert_eq!(window_start("abcdef", 5, 3), 5);
        assert_eq!(window_start("aéé", 0, 3), 1);
        assert_eq!(window_start("ab", 0, 1), 2);
        assert_eq!(window_start("ab", 0, 64), 0);
    }
}
