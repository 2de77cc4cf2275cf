//! The `x-mock-*` request headers that choose what the mock answers.
//!
//! The scenario travels in headers rather than in the JSON body so the body stays a genuine
//! provider request (the proxy under test may inspect or rewrite it), and so one mock instance
//! can serve many concurrent tests that each want something different.
//!
//! Parsing is strict: an unknown scenario, a malformed number or a header given twice is a
//! `400` naming the header, because a silently ignored typo would make a test pass for the
//! wrong reason.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// Header choosing the [`Scenario`].
pub const SCENARIO_HEADER: &str = "x-mock-scenario";
/// Header overriding the assistant text.
pub const TEXT_HEADER: &str = "x-mock-text";
/// Header giving how many characters of text each content delta carries.
pub const CHUNK_SIZE_HEADER: &str = "x-mock-chunk-size";
/// Header giving how many content deltas the text is split into.
pub const CHUNKS_HEADER: &str = "x-mock-chunks";
/// Header giving the delay between two stream events, in milliseconds.
pub const DELAY_MS_HEADER: &str = "x-mock-delay-ms";
/// Header asking for an error answer with this HTTP status.
pub const STATUS_HEADER: &str = "x-mock-status";

/// The assistant text when `x-mock-text` is absent.
pub const DEFAULT_TEXT: &str =
    "Hello from the mock upstream. The quick brown fox jumps over the lazy dog.";
/// Characters per content delta when neither `x-mock-chunk-size` nor `x-mock-chunks` is given.
pub const DEFAULT_CHUNK_SIZE: usize = 8;
/// Upper bound for `x-mock-chunks`, so a typo cannot make the mock build a gigantic answer.
pub const MAX_CHUNKS: usize = 1_000_000;

/// What kind of answer the mock produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Plain assistant text.
    Text,
    /// Two tool calls (`get_weather`, then `bash`) and no text.
    Tools,
    /// Assistant text followed by one tool call (`get_weather`).
    TextAndTools,
    /// Anthropic: a thinking block with a signature, then the text. Responses: a reasoning
    /// item (summary and encrypted content), then the text. Chat Completions: just the text.
    Thinking,
    /// A stream that breaks off with an in-band error event after part of the text; a
    /// non-streaming request gets an "overloaded" HTTP error instead.
    StreamError,
    /// The text, reported as cut off by the output token limit: finish reason `length`
    /// (Chat Completions), stop reason `max_tokens` (Anthropic), status `incomplete` with
    /// reason `max_output_tokens` (Responses, streamed as `response.incomplete`).
    Incomplete,
    /// Responses only: part of the text, then status `failed` with a `server_error` (streamed
    /// as `response.failed`, not streamed as a `200` response object). The other APIs have no
    /// such status and answer `400`.
    Failed,
    /// Never send response headers (for upstream-timeout tests); gives up after two minutes.
    Hang,
}

impl Scenario {
    const NAMES: [(&'static str, Scenario); 8] = [
        ("text", Scenario::Text),
        ("tools", Scenario::Tools),
        ("text_and_tools", Scenario::TextAndTools),
        ("thinking", Scenario::Thinking),
        ("stream_error", Scenario::StreamError),
        ("incomplete", Scenario::Incomplete),
        ("failed", Scenario::Failed),
        ("hang", Scenario::Hang),
    ];

    /// The header value that selects this scenario.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, scenario)| *scenario == self)
            .map_or("text", |(name, _)| name)
    }

    fn parse(value: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, scenario)| *scenario)
    }
}

/// How the assistant text is cut into content deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Each delta carries this many characters (the last one may carry fewer).
    Size(usize),
    /// Exactly this many deltas, of near-equal length (the text is repeated if it is shorter).
    Count(usize),
}

/// Everything the `x-mock-*` headers of one request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controls {
    pub scenario: Scenario,
    pub text: String,
    pub split: Split,
    pub delay: Duration,
    pub status: Option<StatusCode>,
}

impl Default for Controls {
    fn default() -> Self {
        Self {
            scenario: Scenario::Text,
            text: DEFAULT_TEXT.to_owned(),
            split: Split::Size(DEFAULT_CHUNK_SIZE),
            delay: Duration::ZERO,
            status: None,
        }
    }
}

/// A control header the mock could not make sense of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError {
    header: &'static str,
    reason: String,
}

impl HeaderError {
    fn new(header: &'static str, reason: impl Into<String>) -> Self {
        Self {
            header,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mock upstream: invalid {} header: {}",
            self.header, self.reason
        )
    }
}

impl std::error::Error for HeaderError {}

impl Controls {
    /// Reads the control headers; absent headers keep their defaults.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, HeaderError> {
        let mut controls = Self::default();

        if let Some(value) = single(headers, SCENARIO_HEADER)? {
            controls.scenario = Scenario::parse(value).ok_or_else(|| {
                let known: Vec<&str> = Scenario::NAMES.iter().map(|(name, _)| *name).collect();
                HeaderError::new(
                    SCENARIO_HEADER,
                    format!(
                        "unknown scenario {value:?} (expected one of: {})",
                        known.join(", ")
                    ),
                )
            })?;
        }

        if let Some(text) = single(headers, TEXT_HEADER)? {
            controls.text = text.to_owned();
        }

        let chunk_size = positive(headers, CHUNK_SIZE_HEADER)?;
        let chunks = positive(headers, CHUNKS_HEADER)?;
        controls.split = match (chunk_size, chunks) {
            (Some(_), Some(_)) => {
                return Err(HeaderError::new(
                    CHUNKS_HEADER,
                    format!("cannot be combined with {CHUNK_SIZE_HEADER}"),
                ));
            }
            (Some(size), None) => Split::Size(size),
            (None, Some(count)) if count > MAX_CHUNKS => {
                return Err(HeaderError::new(
                    CHUNKS_HEADER,
                    format!("{count} is more than the limit of {MAX_CHUNKS}"),
                ));
            }
            (None, Some(count)) => Split::Count(count),
            (None, None) => Split::Size(DEFAULT_CHUNK_SIZE),
        };

        if let Some(millis) = number::<u64>(headers, DELAY_MS_HEADER)? {
            controls.delay = Duration::from_millis(millis);
        }

        if let Some(code) = number::<u16>(headers, STATUS_HEADER)? {
            let status = StatusCode::from_u16(code)
                .ok()
                .filter(|status| status.is_client_error() || status.is_server_error())
                .ok_or_else(|| {
                    HeaderError::new(
                        STATUS_HEADER,
                        format!("{code} is not an error status (expected 400-599)"),
                    )
                })?;
            controls.status = Some(status);
        }

        Ok(controls)
    }
}

/// The header's only value as UTF-8 text, or `None` when the header is absent.
///
/// Values are taken as raw UTF-8 (not just visible ASCII) so tests can send multi-byte text
/// through `x-mock-text` and check that deltas split on character boundaries.
fn single<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, HeaderError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(HeaderError::new(name, "given more than once"));
    }
    std::str::from_utf8(value.as_bytes())
        .map(Some)
        .map_err(|_| HeaderError::new(name, "not valid UTF-8"))
}

fn number<T>(headers: &HeaderMap, name: &'static str) -> Result<Option<T>, HeaderError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let Some(value) = single(headers, name)? else {
        return Ok(None);
    };
    value
        .trim()
        .parse()
        .map(Some)
        .map_err(|err| HeaderError::new(name, format!("{value:?} is not a valid number: {err}")))
}

fn positive(headers: &HeaderMap, name: &'static str) -> Result<Option<usize>, HeaderError> {
    match number::<usize>(headers, name)? {
        Some(0) => Err(HeaderError::new(name, "must be at least 1")),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                *name,
                HeaderValue::from_bytes(value.as_bytes()).expect("test header value"),
            );
        }
        map
    }

    #[test]
    fn absent_headers_give_defaults() {
        assert_eq!(
            Controls::from_headers(&HeaderMap::new()),
            Ok(Controls::default())
        );
    }

    #[test]
    fn every_header_is_read() {
        let controls = Controls::from_headers(&headers(&[
            (SCENARIO_HEADER, "text_and_tools"),
            (TEXT_HEADER, "héllo wörld"),
            (CHUNKS_HEADER, "12"),
            (DELAY_MS_HEADER, "25"),
            (STATUS_HEADER, "429"),
        ]))
        .expect("valid headers");
        assert_eq!(controls.scenario, Scenario::TextAndTools);
        assert_eq!(controls.text, "héllo wörld");
        assert_eq!(controls.split, Split::Count(12));
        assert_eq!(controls.delay, Duration::from_millis(25));
        assert_eq!(controls.status, Some(StatusCode::TOO_MANY_REQUESTS));
    }

    #[test]
    fn scenario_names_round_trip() {
        for (name, scenario) in Scenario::NAMES {
            assert_eq!(scenario.name(), name);
            assert_eq!(Scenario::parse(name), Some(scenario));
        }
    }

    #[test]
    fn bad_values_name_the_header() {
        let cases: &[(&[(&'static str, &str)], &str)] = &[
            (&[(SCENARIO_HEADER, "tool")], SCENARIO_HEADER),
            (&[(CHUNK_SIZE_HEADER, "0")], CHUNK_SIZE_HEADER),
            (&[(CHUNK_SIZE_HEADER, "eight")], CHUNK_SIZE_HEADER),
            (&[(CHUNKS_HEADER, "-3")], CHUNKS_HEADER),
            (&[(CHUNKS_HEADER, "1000001")], CHUNKS_HEADER),
            (
                &[(CHUNKS_HEADER, "4"), (CHUNK_SIZE_HEADER, "4")],
                CHUNKS_HEADER,
            ),
            (&[(DELAY_MS_HEADER, "1.5")], DELAY_MS_HEADER),
            (&[(STATUS_HEADER, "200")], STATUS_HEADER),
            (&[(STATUS_HEADER, "99999")], STATUS_HEADER),
            (
                &[(SCENARIO_HEADER, "text"), (SCENARIO_HEADER, "tools")],
                SCENARIO_HEADER,
            ),
        ];
        for (pairs, header) in cases {
            let err = Controls::from_headers(&headers(pairs)).expect_err("must be rejected");
            assert!(
                err.to_string().contains(header),
                "{err} should name {header}"
            );
        }
    }

    #[test]
    fn non_utf8_text_is_rejected() {
        let mut map = HeaderMap::new();
        map.insert(
            TEXT_HEADER,
            HeaderValue::from_bytes(&[0xff, 0xfe]).expect("obs-text is a valid header value"),
        );
        assert!(Controls::from_headers(&map).is_err());
    }
}
