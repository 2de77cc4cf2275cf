//! W3C trace context (`traceparent`, `tracestate`) in and out of spans.
//!
//! Without span export the helpers still pass a client's context along
//! unchanged, so a trace that starts before Luthien is not cut.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A W3C trace context as two header values (empty when absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct W3cContext {
    pub traceparent: String,
    pub tracestate: String,
}

impl W3cContext {
    /// The trace id (32 hex digits) of a well-formed `traceparent`.
    pub fn trace_id(&self) -> Option<&str> {
        let mut parts = self.traceparent.split('-');
        let _version = parts.next()?;
        let trace_id = parts.next()?;
        (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(trace_id)
    }
}

struct Pair<'a>(&'a W3cContext);

impl Extractor for Pair<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            "traceparent" => &self.0.traceparent,
            "tracestate" => &self.0.tracestate,
            _ => return None,
        };
        (!value.is_empty()).then_some(value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[derive(Default)]
struct Collect(HashMap<String, String>);

impl Injector for Collect {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// Makes `incoming` the parent of `span` (which must not have started).
/// Does nothing when the context is absent or spans are not exported.
pub fn set_parent(span: &tracing::Span, incoming: &W3cContext) {
    if incoming.traceparent.is_empty() || span.is_disabled() {
        return;
    }
    let context = TraceContextPropagator::new().extract(&Pair(incoming));
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// The context to hand to the next hop for `span`: the span's own when it
/// is exported, else `fallback` (the caller's), unchanged.
pub fn outgoing(span: &tracing::Span, fallback: &W3cContext) -> W3cContext {
    if !crate::tracing_enabled() || span.is_disabled() {
        return fallback.clone();
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return fallback.clone();
    }
    let mut collected = Collect::default();
    TraceContextPropagator::new().inject_context(&context, &mut collected);
    W3cContext {
        traceparent: collected.0.remove("traceparent").unwrap_or_default(),
        tracestate: collected.0.remove("tracestate").unwrap_or_default(),
    }
}

/// Renames `span` in its exported form (`otel.name`), also once started.
pub fn rename(span: &tracing::Span, name: String) {
    if !crate::tracing_enabled() || span.is_disabled() {
        return;
    }
    let context = span.context();
    let started = context.span();
    if started.span_context().is_valid() {
        started.update_name(name);
    } else {
        span.record("otel.name", name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_is_read_from_a_traceparent() {
        let context = W3cContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: String::new(),
        };
        assert_eq!(context.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(W3cContext::default().trace_id(), None);
    }
}
