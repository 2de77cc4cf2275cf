//! Server-sent events: reassembling upstream frames into events, and the event type policies see.
//!
//! Upstream bodies arrive in frames that ignore event boundaries. [`SseDecoder`] cuts the byte
//! stream into events at blank lines without interpreting them. [`SseEvent`] keeps an event's
//! wire bytes for as long as no policy changes it, so an untouched event leaves byte-identical,
//! and parses its fields and JSON only when a policy first asks for them.

use std::sync::OnceLock;

use bytes::{Buf, Bytes, BytesMut};
use serde_json::Value;

/// Default of [`SseDecoder`]'s cap on one unfinished event (`--max-sse-event-bytes`): far above
/// any real event (a large tool call's arguments arrive in many small deltas), far below what
/// would hurt a control plane holding many streams.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Reassembles a `text/event-stream` body, fed frame by frame, into raw events.
///
/// Holds at most `max_event_bytes` of one unfinished event: an upstream that never sends a
/// blank line must not grow the control plane without limit. Past the cap the decoder drops
/// what it held and decodes nothing more of the stream ([`EventTooLarge`]).
#[derive(Debug)]
pub struct SseDecoder {
    /// The start of an event whose terminating blank line has not arrived yet.
    partial: BytesMut,
    scanner: EventScanner,
    max_event_bytes: usize,
    overflowed: bool,
}

/// An event grew past the decoder's cap before it ended; the stream is no longer decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("upstream sent an SSE event larger than {limit} bytes (no blank line); decoding stopped")]
pub struct EventTooLarge {
    pub limit: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    /// A decoder holding at most `max_event_bytes` of an unfinished event.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            partial: BytesMut::new(),
            scanner: EventScanner::default(),
            max_event_bytes,
            overflowed: false,
        }
    }

    /// Feeds the next body frame; pushes every event it completes to `out`, in order.
    ///
    /// Events lying wholly inside `frame` are slices of it, not copies; only the bytes of an
    /// event split across frames are buffered. Once an unfinished event would exceed the cap,
    /// every call returns [`EventTooLarge`] (events completed before it are still pushed).
    pub fn push(&mut self, mut frame: Bytes, out: &mut Vec<SseEvent>) -> Result<(), EventTooLarge> {
        if self.overflowed {
            return Err(self.overflow());
        }
        if !self.partial.is_empty() {
            let Some(end) = self.scanner.scan(&frame) else {
                return self.hold(&frame);
            };
            self.partial.extend_from_slice(&frame[..end]);
            out.push(SseEvent::from_wire(self.partial.split().freeze()));
            frame.advance(end);
        }
        let mut start = 0;
        while let Some(len) = self.scanner.scan(&frame[start..]) {
            out.push(SseEvent::from_wire(frame.slice(start..start + len)));
            start += len;
        }
        self.hold(&frame[start..])
    }

    /// Keeps `rest` as part of the unfinished event, unless that passes the cap.
    fn hold(&mut self, rest: &[u8]) -> Result<(), EventTooLarge> {
        if self.partial.len() + rest.len() > self.max_event_bytes {
            // Give the memory back now, not when the call ends.
            self.partial = BytesMut::new();
            self.overflowed = true;
            return Err(self.overflow());
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    fn overflow(&self) -> EventTooLarge {
        EventTooLarge {
            limit: self.max_event_bytes,
        }
    }

    /// The body ended: returns what is left of an event that never got its blank line
    /// (nothing after an overflow).
    pub fn finish(&mut self) -> Option<SseEvent> {
        self.scanner = EventScanner::default();
        (!self.partial.is_empty()).then(|| SseEvent::from_wire(self.partial.split().freeze()))
    }

    /// Bytes held for an incomplete event.
    pub fn buffered_len(&self) -> usize {
        self.partial.len()
    }

    /// A copy of the bytes held for the incomplete event, which stay held: for a caller that
    /// stops policing mid-stream and must still send what it withheld.
    pub fn pending(&self) -> Bytes {
        Bytes::copy_from_slice(&self.partial)
    }
}

/// Finds where events end in a byte stream that arrives in pieces.
///
/// An event ends at a blank line; lines may end in `\n`, `\r\n` or `\r`, mixed. Blank lines
/// before an event's first line belong to that event instead of forming empty events, so no
/// byte of the stream is lost or reordered.
#[derive(Debug, Default)]
struct EventScanner {
    /// The current line has a byte other than its terminator.
    line_has_content: bool,
    /// The current event has a non-blank line, so the next blank line ends it.
    event_has_content: bool,
    /// The last byte scanned was a `\r`; a `\n` right after it belongs to the same line end.
    pending_cr: PendingCr,
}

#[derive(Clone, Copy, Debug, Default)]
enum PendingCr {
    #[default]
    None,
    /// The `\r` ended a line.
    EndsLine,
    /// The `\r` ended a blank line, and with it the event.
    EndsEvent,
}

impl EventScanner {
    /// Scans the next bytes of the stream. Returns the length of the prefix of `bytes` that
    /// completes the current event (and starts over for the next one), or `None` when all of
    /// `bytes` belongs to the current event.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let &first = bytes.first()?;
        let mut pos = 0;
        match std::mem::take(&mut self.pending_cr) {
            PendingCr::None => {}
            PendingCr::EndsLine => pos = usize::from(first == b'\n'),
            PendingCr::EndsEvent => return Some(self.end_event(usize::from(first == b'\n'))),
        }
        while let Some(offset) = bytes[pos..].iter().position(|&b| b == b'\n' || b == b'\r') {
            let terminator = pos + offset;
            if offset > 0 {
                self.line_has_content = true;
                self.event_has_content = true;
            }
            pos = terminator + 1;
            let ends_event = !std::mem::take(&mut self.line_has_content) && self.event_has_content;
            if bytes[terminator] == b'\r' {
                match bytes.get(pos) {
                    Some(b'\n') => pos += 1,
                    Some(_) => {}
                    // Whether a `\n` follows is only known with the next frame.
                    None => {
                        self.pending_cr = if ends_event {
                            PendingCr::EndsEvent
                        } else {
                            PendingCr::EndsLine
                        };
                        return None;
                    }
                }
            }
            if ends_event {
                return Some(self.end_event(pos));
            }
        }
        if pos < bytes.len() {
            self.line_has_content = true;
            self.event_has_content = true;
        }
        None
    }

    fn end_event(&mut self, len: usize) -> usize {
        *self = Self::default();
        len
    }
}

/// One server-sent event of a streamed response.
///
/// An event read from upstream keeps its wire bytes until [`SseEvent::json_mut`] is called, and
/// [`SseEvent::to_bytes`] returns them unchanged; its fields and JSON are parsed at most once,
/// on first use. A rewritten or injected event is serialised as `event:` (when it has a type)
/// and one compact `data:` line; `id:`, `retry:` and comment lines of a rewritten event are
/// dropped (neither OpenAI nor Anthropic sends them).
#[derive(Clone, Debug)]
pub struct SseEvent {
    repr: Repr,
}

#[derive(Clone, Debug)]
enum Repr {
    /// Exactly as received.
    Wire {
        bytes: Bytes,
        fields: OnceLock<WireFields>,
        json: OnceLock<Option<Value>>,
    },
    /// Rewritten or built by a policy.
    Json {
        event_type: Option<String>,
        value: Value,
        /// `value` serialised, cached by [`SseEvent::data`]; reset whenever `value` may change.
        data: OnceLock<String>,
    },
}

/// The fields of a wire event that policies read.
#[derive(Clone, Debug, Default)]
struct WireFields {
    event_type: Option<String>,
    /// The `data:` lines joined by `\n`.
    data: String,
    /// Some line is a comment or a field the spec defines (`data`, `event`, `id`, `retry`).
    recognized: bool,
}

impl WireFields {
    /// Parses the fields as the SSE spec says: `name: value` (one optional space after the
    /// colon), lines starting with `:` are comments, unknown fields are ignored.
    fn parse(wire: &[u8]) -> Self {
        let text = String::from_utf8_lossy(wire);
        let mut fields = Self::default();
        let mut has_data = false;
        // Splitting `\r\n` at both bytes yields an extra empty line, ignored like all others.
        for line in text.split(['\n', '\r']) {
            let (name, value) = match line.split_once(':') {
                Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            if line.starts_with(':') || matches!(name, "event" | "data" | "id" | "retry") {
                fields.recognized = true;
            }
            match name {
                "event" => fields.event_type = (!value.is_empty()).then(|| value.to_owned()),
                "data" => {
                    if has_data {
                        fields.data.push('\n');
                    }
                    fields.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
        fields
    }
}

impl SseEvent {
    /// An event as read from the wire: its bytes, including the terminating blank line.
    pub fn from_wire(bytes: Bytes) -> Self {
        Self {
            repr: Repr::Wire {
                bytes,
                fields: OnceLock::new(),
                json: OnceLock::new(),
            },
        }
    }

    /// An event built by a policy, e.g. an injected `content_block_delta`.
    pub fn from_json(event_type: Option<&str>, value: Value) -> Self {
        Self {
            repr: Repr::Json {
                event_type: event_type.map(str::to_owned),
                value,
                data: OnceLock::new(),
            },
        }
    }

    /// The `event:` field (Anthropic names every event; OpenAI names none).
    pub fn event_type(&self) -> Option<&str> {
        match &self.repr {
            Repr::Wire { bytes, fields, .. } => wire_fields(bytes, fields).event_type.as_deref(),
            Repr::Json { event_type, .. } => event_type.as_deref(),
        }
    }

    /// Whether the event is one by the SSE spec's lights: some line of it is a comment or a
    /// field it defines (`data`, `event`, `id`, `retry`). A JSON body or an HTML error page
    /// sent as a stream is not.
    pub fn is_server_sent_event(&self) -> bool {
        match &self.repr {
            Repr::Wire { bytes, fields, .. } => wire_fields(bytes, fields).recognized,
            Repr::Json { .. } => true,
        }
    }

    /// The `data:` lines joined by `\n`; empty for an event without data (e.g. a comment).
    pub fn data(&self) -> &str {
        match &self.repr {
            Repr::Wire { bytes, fields, .. } => &wire_fields(bytes, fields).data,
            Repr::Json { value, data, .. } => data.get_or_init(|| value.to_string()),
        }
    }

    /// The data parsed as JSON; `None` for `[DONE]`, comments and other non-JSON data.
    pub fn json(&self) -> Option<&Value> {
        match &self.repr {
            Repr::Wire {
                bytes,
                fields,
                json,
            } => wire_json(bytes, fields, json),
            Repr::Json { value, .. } => Some(value),
        }
    }

    /// The JSON data, for rewriting. From this call on the event counts as modified and is
    /// re-serialised on output, even if the caller changes nothing — so look with
    /// [`SseEvent::json`] first and call this only to make a change.
    pub fn json_mut(&mut self) -> Option<&mut Value> {
        if let Repr::Wire {
            bytes,
            fields,
            json,
        } = &mut self.repr
        {
            wire_json(bytes, fields, json)?;
            let value = json.take().flatten()?;
            let event_type = fields.take().and_then(|fields| fields.event_type);
            self.repr = Repr::Json {
                event_type,
                value,
                data: OnceLock::new(),
            };
        }
        match &mut self.repr {
            Repr::Json { value, data, .. } => {
                *data = OnceLock::new();
                Some(value)
            }
            Repr::Wire { .. } => None,
        }
    }

    /// True for OpenAI's end-of-stream marker, `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        match &self.repr {
            Repr::Wire { .. } => self.data().trim() == "[DONE]",
            Repr::Json { .. } => false,
        }
    }

    /// True when the event was rewritten or built by a policy, so it no longer has wire bytes.
    pub fn is_modified(&self) -> bool {
        matches!(self.repr, Repr::Json { .. })
    }

    /// The bytes to send: the original wire bytes of an unmodified event (no copy), otherwise
    /// `event: <type>\n` (when typed) and `data: <compact JSON>\n\n`.
    pub fn to_bytes(&self) -> Bytes {
        match &self.repr {
            Repr::Wire { bytes, .. } => bytes.clone(),
            Repr::Json {
                event_type,
                value,
                data,
            } => {
                let mut out = Vec::with_capacity(data.get().map_or(256, |data| data.len() + 32));
                if let Some(event_type) = event_type {
                    out.extend_from_slice(b"event: ");
                    out.extend_from_slice(event_type.as_bytes());
                    out.push(b'\n');
                }
                out.extend_from_slice(b"data: ");
                match data.get() {
                    Some(data) => out.extend_from_slice(data.as_bytes()),
                    // Compact JSON escapes newlines, so one `data:` line always holds it.
                    None => out.extend_from_slice(value.to_string().as_bytes()),
                }
                out.extend_from_slice(b"\n\n");
                Bytes::from(out)
            }
        }
    }
}

fn wire_fields<'a>(bytes: &Bytes, fields: &'a OnceLock<WireFields>) -> &'a WireFields {
    fields.get_or_init(|| WireFields::parse(bytes))
}

fn wire_json<'a>(
    bytes: &Bytes,
    fields: &OnceLock<WireFields>,
    json: &'a OnceLock<Option<Value>>,
) -> Option<&'a Value> {
    json.get_or_init(|| serde_json::from_str(&wire_fields(bytes, fields).data).ok())
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode_frames<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for frame in frames {
            decoder
                .push(Bytes::copy_from_slice(frame), &mut events)
                .unwrap();
        }
        events.extend(decoder.finish());
        events
    }

    fn wire(events: &[SseEvent]) -> Vec<Bytes> {
        events.iter().map(SseEvent::to_bytes).collect()
    }

    const OPENAI: &str = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );

    const ANTHROPIC_CRLF: &str = concat!(
        "event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n",
        ": keepalive\r\n\r\n",
        "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\r\n\r\n",
    );

    #[test]
    fn splits_a_frame_holding_several_events() {
        let events = decode_frames([OPENAI.as_bytes()]);
        assert_eq!(events.len(), 3);
        assert_eq!(wire(&events).concat(), OPENAI.as_bytes());
        assert_eq!(
            events[0]
                .json()
                .and_then(|v| v.pointer("/choices/0/delta/content")),
            Some(&json!("Hi"))
        );
        assert!(events[2].is_done());
        assert!(events[2].json().is_none());
    }

    #[test]
    fn events_split_at_every_byte_offset_reassemble_identically() {
        for stream in [OPENAI, ANTHROPIC_CRLF] {
            let whole = wire(&decode_frames([stream.as_bytes()]));
            for cut in 0..=stream.len() {
                let (head, tail) = stream.as_bytes().split_at(cut);
                assert_eq!(wire(&decode_frames([head, tail])), whole, "cut at {cut}");
            }
            let byte_by_byte = decode_frames(stream.as_bytes().chunks(1));
            assert_eq!(wire(&byte_by_byte), whole);
        }
    }

    #[test]
    fn crlf_events_and_comments() {
        let events = decode_frames([ANTHROPIC_CRLF.as_bytes()]);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].event_type(), Some("ping"));
        assert_eq!(events[0].data(), "{\"type\": \"ping\"}");
        assert_eq!(events[1].data(), "");
        assert_eq!(events[1].event_type(), None);
        assert_eq!(
            events[2].json().and_then(|v| v.pointer("/delta/text")),
            Some(&json!("Hello"))
        );
    }

    #[test]
    fn mixed_and_bare_cr_line_ends() {
        let stream = "data: a\r\rdata: b\n\r\ndata: c\r\n\ndata: d\r";
        let events = decode_frames([stream.as_bytes()]);
        let data: Vec<&str> = events.iter().map(SseEvent::data).collect();
        assert_eq!(data, ["a", "b", "c", "d"]);
        assert_eq!(wire(&events).concat(), stream.as_bytes());
        // A `\r` at a frame's end: the `\n` in the next frame still belongs to the same event.
        let events = decode_frames([&b"data: a\r\n\r"[..], b"\ndata: b\n\n"]);
        assert_eq!(
            wire(&events),
            [
                Bytes::from_static(b"data: a\r\n\r\n"),
                Bytes::from_static(b"data: b\n\n")
            ]
        );
    }

    #[test]
    fn multi_line_data_is_joined() {
        let events = decode_frames([&b"event: x\ndata: {\"a\":\ndata:1}\nid: 7\n\n"[..]]);
        assert_eq!(events[0].data(), "{\"a\":\n1}");
        assert_eq!(events[0].json(), Some(&json!({"a": 1})));
    }

    #[test]
    fn leading_blank_lines_join_the_next_event_and_trailing_bytes_come_from_finish() {
        let events = decode_frames([&b"\n\ndata: 1\n\ndata: 2"[..]]);
        assert_eq!(
            wire(&events),
            [
                Bytes::from_static(b"\n\ndata: 1\n\n"),
                Bytes::from_static(b"data: 2")
            ]
        );
        assert_eq!(events[1].data(), "2");
    }

    #[test]
    fn an_event_past_the_cap_stops_decoding_and_frees_the_buffer() {
        let mut decoder = SseDecoder::new(64);
        let mut events = Vec::new();
        // A complete event, then the start of one that never ends.
        decoder
            .push(Bytes::from_static(b"data: 1\n\ndata: "), &mut events)
            .unwrap();
        assert_eq!(events.len(), 1);
        decoder
            .push(Bytes::from(vec![b'x'; 50]), &mut events)
            .unwrap();
        assert_eq!(decoder.buffered_len(), 56);
        let overflow = decoder.push(Bytes::from(vec![b'x'; 50]), &mut events);
        assert_eq!(overflow, Err(EventTooLarge { limit: 64 }));
        assert_eq!(decoder.buffered_len(), 0);
        // Nothing more is decoded, even a well-formed event.
        assert_eq!(
            decoder.push(Bytes::from_static(b"\n\ndata: 2\n\n"), &mut events),
            Err(EventTooLarge { limit: 64 })
        );
        assert_eq!(events.len(), 1);
        assert!(decoder.finish().is_none());
    }

    #[test]
    fn events_are_recognised_by_their_fields() {
        for wire in [
            "data: {}\n\n",
            "event: ping\ndata: {}\n\n",
            ": keepalive\n\n",
            "id: 7\n\n",
            "retry: 1000\n\n",
        ] {
            let event = SseEvent::from_wire(Bytes::from(wire));
            assert!(event.is_server_sent_event(), "{wire:?}");
        }
        for wire in [
            "{\"error\": {\"message\": \"x\"}}",
            "<html><body>502</body></html>\n\n",
        ] {
            let event = SseEvent::from_wire(Bytes::from(wire));
            assert!(!event.is_server_sent_event(), "{wire:?}");
        }
    }

    #[test]
    fn one_frame_larger_than_the_cap_is_never_copied() {
        let mut decoder = SseDecoder::new(1024);
        let mut events = Vec::new();
        let frame = Bytes::from(vec![b'x'; 1_000_000]);
        assert!(decoder.push(frame, &mut events).is_err());
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn whole_events_in_a_frame_are_not_copied() {
        let frame = Bytes::from_static(OPENAI.as_bytes());
        let mut events = Vec::new();
        SseDecoder::default()
            .push(frame.clone(), &mut events)
            .unwrap();
        assert_eq!(events[0].to_bytes().as_ptr(), frame.as_ptr());
    }

    #[test]
    fn unmodified_events_keep_their_bytes_and_modified_ones_are_reserialised() {
        let raw = "event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 0}\n\n";
        let mut event = SseEvent::from_wire(Bytes::from_static(raw.as_bytes()));
        assert!(event.json().is_some());
        assert_eq!(event.to_bytes(), raw.as_bytes());
        assert!(!event.is_modified());

        if let Some(value) = event.json_mut() {
            value["index"] = json!(1);
        }
        assert!(event.is_modified());
        assert_eq!(event.event_type(), Some("content_block_delta"));
        assert_eq!(
            event.data(),
            "{\"type\":\"content_block_delta\",\"index\":1}"
        );
        // The cached data is dropped when the value may change again.
        if let Some(value) = event.json_mut() {
            value["index"] = json!(2);
        }
        assert_eq!(
            event.to_bytes(),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2}\n\n"
                .as_bytes()
        );
    }

    #[test]
    fn non_json_events_cannot_be_rewritten() {
        let mut done = SseEvent::from_wire(Bytes::from_static(b"data: [DONE]\n\n"));
        assert!(done.json_mut().is_none());
        assert!(done.is_done());
        assert_eq!(done.to_bytes(), "data: [DONE]\n\n".as_bytes());
    }

    #[test]
    fn injected_events_serialise_with_and_without_type() {
        let typed = SseEvent::from_json(Some("ping"), json!({"type": "ping"}));
        assert_eq!(
            typed.to_bytes(),
            "event: ping\ndata: {\"type\":\"ping\"}\n\n".as_bytes()
        );
        let untyped = SseEvent::from_json(None, json!({"text": "a\nb"}));
        assert_eq!(
            untyped.to_bytes(),
            "data: {\"text\":\"a\\nb\"}\n\n".as_bytes()
        );
    }
}
