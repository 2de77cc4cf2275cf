//! An ordered list of policies, run as layers of middleware.
//!
//! Requests go through the policies in file order; responses and stream events come back in
//! reverse order, so the first policy in the file sees the request first and the response last.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use luthien_telemetry::metrics::Label;
use serde_json::Value;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::noop::Noop;
use super::{CallInfo, CallPolicy, Policy, PolicyError, PolicyEvent, RequestVerdict, SseEvent};
use crate::PolicyMetrics;

/// The configured policies, shared by all calls.
#[derive(Clone)]
pub struct Chain {
    policies: Vec<Arc<dyn Policy>>,
    metrics: Option<Arc<PolicyMetrics>>,
}

impl Chain {
    /// A chain running `policies` in this order (an empty chain passes everything through).
    pub fn new(policies: Vec<Arc<dyn Policy>>) -> Self {
        Self {
            policies,
            metrics: None,
        }
    }

    /// The chain, measuring its calls' policy hooks into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<PolicyMetrics>) -> Self {
        for policy in &self.policies {
            policy.register_metrics(&metrics);
        }
        self.metrics = Some(metrics);
        self
    }

    /// Waits, at most `grace`, for the policies' [background tasks](Policy::background_tasks);
    /// false when some were still running.
    pub async fn wait_background(&self, grace: Duration) -> bool {
        let trackers: Vec<&TaskTracker> = self
            .policies
            .iter()
            .filter_map(|policy| policy.background_tasks())
            .collect();
        for tracker in &trackers {
            tracker.close();
        }
        let all = futures_util::future::join_all(trackers.iter().map(|tracker| tracker.wait()));
        tokio::time::timeout(grace, all).await.is_ok()
    }

    /// True when no policy can change anything, so calls can run in observe mode.
    pub fn read_only(&self) -> bool {
        self.policies.iter().all(|policy| policy.read_only())
    }

    /// True when some policy looks at requests; otherwise the control plane
    /// forwards them without parsing.
    pub fn inspects_requests(&self) -> bool {
        self.policies
            .iter()
            .any(|policy| policy.inspects_requests())
    }

    /// True when some policy may change responses; otherwise responses run
    /// in observe mode.
    pub fn transforms_responses(&self) -> bool {
        self.policies
            .iter()
            .any(|policy| policy.transforms_responses())
    }

    /// The policies' names, in order.
    pub fn policy_names(&self) -> Vec<&str> {
        self.policies.iter().map(|policy| policy.name()).collect()
    }

    pub fn policies(&self) -> &[Arc<dyn Policy>] {
        &self.policies
    }

    /// Creates every policy's state for one call.
    pub fn start_call(&self, call: &CallInfo) -> CallChain {
        CallChain {
            names: self
                .policies
                .iter()
                .map(|policy| policy.name().to_owned())
                .collect(),
            calls: self
                .policies
                .iter()
                .map(|policy| policy.start_call(call))
                .collect(),
            labels: self
                .policies
                .iter()
                .map(|policy| match &self.metrics {
                    Some(metrics) => metrics.label(policy.name()),
                    None => Label::new(policy.name()),
                })
                .collect(),
            metrics: self.metrics.clone(),
            inspects_requests: self
                .policies
                .iter()
                .map(|policy| policy.inspects_requests())
                .collect(),
            stage_input: Vec::new(),
            stage_output: Vec::new(),
        }
    }
}

/// The single `noop` policy.
impl Default for Chain {
    fn default() -> Self {
        Self::new(vec![Arc::new(Noop::default())])
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.policies
                    .iter()
                    .map(|policy| format!("{} ({})", policy.name(), policy.kind())),
            )
            .finish()
    }
}

/// The chain's state for one call.
pub struct CallChain {
    /// The policies' names, in file order (for their recorded events).
    names: Vec<String>,
    /// One per policy, in file order.
    calls: Vec<Box<dyn CallPolicy>>,
    /// Events between two policies; kept across events so the steady state allocates nothing.
    stage_input: Vec<SseEvent>,
    stage_output: Vec<SseEvent>,
    /// The policies' metrics labels, in file order.
    labels: Vec<Label>,
    metrics: Option<Arc<PolicyMetrics>>,
    /// Which policies' request hooks run, in file order.
    inspects_requests: Vec<bool>,
}

/// Runs one policy hook under a `luthien.policy` span and records its latency.
async fn traced<T>(
    metrics: Option<&PolicyMetrics>,
    label: &Label,
    phase: &'static str,
    work: impl Future<Output = Result<T, PolicyError>>,
) -> Result<T, PolicyError> {
    let span = tracing::info_span!(
        "luthien.policy",
        luthien.policy.name = label.as_str(),
        luthien.policy.phase = phase,
    );
    let started = Instant::now();
    let result = work.instrument(span).await;
    if let Some(metrics) = metrics {
        metrics.observe(label, phase, started.elapsed(), result.is_err());
    }
    result
}

impl CallChain {
    /// Runs the request through the policies in order; the first `Respond` ends the call and
    /// the policies after it never see the request.
    pub async fn on_request(&mut self, request: &mut Value) -> Result<RequestVerdict, PolicyError> {
        let metrics = self.metrics.as_deref();
        let hooks = self.calls.iter_mut().zip(&self.labels);
        for ((call, label), _) in hooks
            .zip(&self.inspects_requests)
            .filter(|(_, inspects)| **inspects)
        {
            if let RequestVerdict::Respond(response) =
                traced(metrics, label, "request", call.on_request(request)).await?
            {
                return Ok(RequestVerdict::Respond(response));
            }
        }
        Ok(RequestVerdict::Continue)
    }

    /// Runs a complete response through the policies in reverse order.
    pub async fn on_response(&mut self, response: &mut Value) -> Result<(), PolicyError> {
        let metrics = self.metrics.as_deref();
        for (call, label) in self.calls.iter_mut().zip(&self.labels).rev() {
            traced(metrics, label, "response", call.on_response(response)).await?;
        }
        Ok(())
    }

    /// Runs one upstream event through the policies in reverse order, each one's output events
    /// feeding the one before it; returns what goes to the client (0..N events).
    pub async fn on_event(&mut self, event: SseEvent) -> Result<Vec<SseEvent>, PolicyError> {
        let mut out = Vec::new();
        self.on_event_into(event, &mut out).await?;
        Ok(out)
    }

    /// [`CallChain::on_event`], appending to a buffer the caller reuses across events.
    pub async fn on_event_into(
        &mut self,
        event: SseEvent,
        out: &mut Vec<SseEvent>,
    ) -> Result<(), PolicyError> {
        let mut input = std::mem::take(&mut self.stage_input);
        input.push(event);
        let result = self.run_stages(0, &mut input, out).await;
        input.clear(); // only an error leaves events behind
        self.stage_input = input;
        result
    }

    /// The upstream stream ended: every policy flushes what it holds. What the policy at
    /// response-order position k flushes still passes through the `on_event` of the policies
    /// after it in response order (before it in the file), before they flush in turn.
    pub async fn on_stream_end(&mut self) -> Result<Vec<SseEvent>, PolicyError> {
        let mut out = Vec::new();
        let mut flushed = Vec::new();
        for stage in 0..self.calls.len() {
            let label = self.stage_label(stage);
            let metrics = self.metrics.clone();
            let call = self.stage(stage);
            let flushing = call.on_stream_end(&mut flushed);
            traced(metrics.as_deref(), &label, "stream_end", flushing).await?;
            self.run_stages(stage + 1, &mut flushed, &mut out).await?;
        }
        Ok(out)
    }

    /// Events the policies recorded since the last call, with the name of
    /// the policy that recorded each.
    pub fn take_events(&mut self) -> Vec<(String, PolicyEvent)> {
        let mut taken = Vec::new();
        for (name, call) in self.names.iter().zip(&mut self.calls) {
            taken.extend(
                call.take_events()
                    .into_iter()
                    .map(|event| (name.clone(), event)),
            );
        }
        taken
    }

    /// The policy at `stage` in response order (the last policy of the file is stage 0).
    fn stage_label(&self, stage: usize) -> Label {
        self.labels[self.calls.len() - 1 - stage].clone()
    }

    fn stage(&mut self, stage: usize) -> &mut dyn CallPolicy {
        let position = self.calls.len() - 1 - stage;
        self.calls[position].as_mut()
    }

    /// Runs `events` through the stages `first..` in response order, appending the result to
    /// `out`; leaves `events` empty.
    async fn run_stages(
        &mut self,
        first: usize,
        events: &mut Vec<SseEvent>,
        out: &mut Vec<SseEvent>,
    ) -> Result<(), PolicyError> {
        let stages = self.calls.len();
        let mut output = std::mem::take(&mut self.stage_output);
        let metrics = self.metrics.clone();
        for stage in first..stages {
            let label = self.stage_label(stage);
            let call = self.stage(stage);
            let last = stage + 1 == stages;
            let target = if last { &mut *out } else { &mut output };
            for event in events.drain(..) {
                // Per event: latency only; a span per event would drown the trace.
                let started = Instant::now();
                let result = call.on_event(event, target).await;
                if let Some(metrics) = &metrics {
                    metrics.observe(&label, "stream_event", started.elapsed(), result.is_err());
                }
                result?;
            }
            if !last {
                std::mem::swap(events, &mut output);
            }
        }
        if first >= stages {
            out.append(events);
        }
        self.stage_output = output;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::ImmediateResponse;
    use crate::shapes::{self, Api};

    /// Appends its name to `trail` in requests, responses and events, so the order in which
    /// policies ran can be read off the result. `hold` keeps every event until the stream ends;
    /// `block` answers every request itself; `responses_only` declares it never looks at
    /// requests.
    struct Tagger {
        name: &'static str,
        hold: bool,
        block: bool,
        responses_only: bool,
    }

    impl Tagger {
        fn new(name: &'static str) -> Self {
            Self {
                name,
                hold: false,
                block: false,
                responses_only: false,
            }
        }
    }

    impl Policy for Tagger {
        fn kind(&self) -> &'static str {
            "tagger"
        }
        fn name(&self) -> &str {
            self.name
        }
        fn read_only(&self) -> bool {
            false
        }
        fn inspects_requests(&self) -> bool {
            !self.responses_only
        }
        fn start_call(&self, _: &CallInfo) -> Box<dyn CallPolicy> {
            Box::new(TaggerCall {
                name: self.name,
                hold: self.hold,
                block: self.block,
                held: Vec::new(),
            })
        }
    }

    struct TaggerCall {
        name: &'static str,
        hold: bool,
        block: bool,
        held: Vec<SseEvent>,
    }

    fn tag(value: &mut Value, name: &str) {
        if let Some(trail) = value["trail"].as_array_mut() {
            trail.push(json!(name));
        }
    }

    #[async_trait]
    impl CallPolicy for TaggerCall {
        async fn on_request(&mut self, request: &mut Value) -> Result<RequestVerdict, PolicyError> {
            tag(request, self.name);
            if self.block {
                return Ok(RequestVerdict::Respond(shapes::error_response(
                    Api::OpenAiChat,
                    403,
                    self.name,
                )));
            }
            Ok(RequestVerdict::Continue)
        }

        async fn on_response(&mut self, response: &mut Value) -> Result<(), PolicyError> {
            tag(response, self.name);
            Ok(())
        }

        async fn on_event(
            &mut self,
            mut event: SseEvent,
            out: &mut Vec<SseEvent>,
        ) -> Result<(), PolicyError> {
            if let Some(value) = event.json_mut() {
                tag(value, self.name);
            }
            if self.hold {
                self.held.push(event)
            } else {
                out.push(event)
            }
            Ok(())
        }

        async fn on_stream_end(&mut self, out: &mut Vec<SseEvent>) -> Result<(), PolicyError> {
            out.append(&mut self.held);
            Ok(())
        }
    }

    fn chain(policies: Vec<Tagger>) -> CallChain {
        let policies = policies
            .into_iter()
            .map(|policy| Arc::new(policy) as Arc<dyn Policy>)
            .collect();
        Chain::new(policies).start_call(&CallInfo::new("c1", Api::OpenAiChat, "m", true))
    }

    fn event(number: u64) -> SseEvent {
        SseEvent::from_json(None, json!({"n": number, "trail": []}))
    }

    fn trails(events: &[SseEvent]) -> Vec<Value> {
        events
            .iter()
            .map(|event| event.json().unwrap()["trail"].clone())
            .collect()
    }

    #[tokio::test]
    async fn requests_run_in_order_and_responses_in_reverse() {
        let mut call = chain(vec![Tagger::new("a"), Tagger::new("b"), Tagger::new("c")]);
        let mut request = json!({"trail": []});
        assert!(matches!(
            call.on_request(&mut request).await.unwrap(),
            RequestVerdict::Continue
        ));
        assert_eq!(request["trail"], json!(["a", "b", "c"]));
        let mut response = json!({"trail": []});
        call.on_response(&mut response).await.unwrap();
        assert_eq!(response["trail"], json!(["c", "b", "a"]));
    }

    #[tokio::test]
    async fn request_hooks_of_response_only_policies_are_skipped() {
        let responses_only = Tagger {
            responses_only: true,
            ..Tagger::new("b")
        };
        let mut call = chain(vec![Tagger::new("a"), responses_only, Tagger::new("c")]);
        let mut request = json!({"trail": []});
        call.on_request(&mut request).await.unwrap();
        assert_eq!(request["trail"], json!(["a", "c"]));
        let mut response = json!({"trail": []});
        call.on_response(&mut response).await.unwrap();
        assert_eq!(response["trail"], json!(["c", "b", "a"]));

        let only = Tagger {
            responses_only: true,
            ..Tagger::new("only")
        };
        let policies: Vec<Arc<dyn Policy>> = vec![Arc::new(only)];
        assert!(!Chain::new(policies).inspects_requests());
    }

    #[tokio::test]
    async fn the_first_respond_stops_the_request() {
        let blocker = Tagger {
            block: true,
            ..Tagger::new("b")
        };
        let mut call = chain(vec![Tagger::new("a"), blocker, Tagger::new("c")]);
        let mut request = json!({"trail": []});
        let verdict = call.on_request(&mut request).await.unwrap();
        let RequestVerdict::Respond(ImmediateResponse { status, reason, .. }) = verdict else {
            panic!("expected Respond");
        };
        assert_eq!((status, reason.as_str()), (403, "b"));
        assert_eq!(request["trail"], json!(["a", "b"]));
    }

    #[tokio::test]
    async fn events_run_in_reverse_order() {
        let mut call = chain(vec![Tagger::new("a"), Tagger::new("b")]);
        let mut out = Vec::new();
        call.on_event_into(event(1), &mut out).await.unwrap();
        call.on_event_into(event(2), &mut out).await.unwrap();
        assert_eq!(trails(&out), [json!(["b", "a"]), json!(["b", "a"])]);
        assert!(call.on_stream_end().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn flushed_events_pass_through_the_policies_after_the_flusher() {
        let holder = Tagger {
            hold: true,
            ..Tagger::new("b")
        };
        let mut call = chain(vec![Tagger::new("a"), holder, Tagger::new("c")]);
        assert!(call.on_event(event(1)).await.unwrap().is_empty());
        assert!(call.on_event(event(2)).await.unwrap().is_empty());
        let flushed = call.on_stream_end().await.unwrap();
        // c tagged them on the way in, b held them, a tags them after b flushed.
        assert_eq!(
            trails(&flushed),
            [json!(["c", "b", "a"]), json!(["c", "b", "a"])]
        );
        assert_eq!(flushed[1].json().unwrap()["n"], 2);
    }

    #[tokio::test]
    async fn an_empty_chain_passes_events_through() {
        let mut call = chain(Vec::new());
        let raw = SseEvent::from_wire(Bytes::from_static(b"data: [DONE]\n\n"));
        let out = call.on_event(raw).await.unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].is_done());
        assert!(Chain::new(Vec::new()).read_only());
    }

    #[test]
    fn the_default_chain_is_a_read_only_noop() {
        let chain = Chain::default();
        assert!(chain.read_only());
        assert_eq!(chain.policy_names(), ["noop"]);
        assert!(!Chain::new(vec![Arc::new(Tagger::new("a"))]).read_only());
    }

    #[test]
    fn call_chain_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let mut call = chain(vec![Tagger::new("a")]);
        let mut value = json!({});
        assert_send(&call.on_request(&mut value));
        assert_send(&call.on_event(event(1)));
        assert_send(&call.on_stream_end());
    }
}
