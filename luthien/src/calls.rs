//! `luthien calls`: the recorded calls from a terminal, over the control plane's Debug gRPC API
//! (`luthien.admin.v1.DebugService`) with its admin key: `list`, `show`, `diff` and `tail`.
//! Human output by default (colour only on a terminal), `--json` for scripts.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use luthien_api::Api;
use luthien_controlplane::debug::structs::from_struct;
use luthien_controlplane::diff::CallDiff;
use luthien_dataplane::ClientTls;
use luthien_dataplane::config::ControlPlaneTls;
use luthien_proto::admin::v1::debug_service_client::DebugServiceClient;
use luthien_proto::admin::v1::{
    ActivityEvent, CallSummary, GetCallDiffRequest, GetCallRequest, ListCallsRequest,
    StreamActivityRequest,
};
use luthien_store::events::{Body, EventPayload};
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::render::{self, Colour, Style};

#[derive(Debug, clap::Subcommand)]
pub enum CallsCommand {
    /// The newest recorded calls, filtered.
    List(ListArgs),
    /// One call: its summary, events, prompt and answer.
    Show(CallArgs),
    /// What the policies changed in one call: the request and the response, as word diffs.
    Diff(CallArgs),
    /// Follow the live activity: every call event as the control planes record it.
    Tail(TailArgs),
}

/// How to reach the control plane.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The control plane's gRPC address (its --grpc-listen).
    #[arg(
        long = "control-plane",
        env = "LUTHIEN_CONTROL_PLANE",
        default_value = "http://127.0.0.1:50051"
    )]
    control_plane: String,
    /// The control plane's admin key (its --admin-key), sent as `authorization: Bearer`; a
    /// control plane without one answers loopback clients only.
    #[arg(long = "admin-key", env = "LUTHIEN_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    #[command(flatten)]
    tls: ControlPlaneTls,
    /// Print JSON (for `tail`, one object per line) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Calls started since this long ago (`2h`, `30m`) or since this time
    /// (`2026-11-27T06:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// Calls started before this long ago or this time.
    #[arg(long)]
    until: Option<String>,
    /// Exact model name.
    #[arg(long)]
    model: Option<String>,
    /// `openai`, `anthropic` or `openai_responses`.
    #[arg(long)]
    api: Option<Api>,
    /// Call status: completed, blocked, upstream_error, in_progress, …
    #[arg(long)]
    status: Option<String>,
    /// Client session id.
    #[arg(long)]
    session: Option<String>,
    /// Calls with at least one event of this type (`policy`: the calls a policy acted on).
    #[arg(long = "event-type")]
    event_type: Option<String>,
    /// Calls whose id contains this text.
    #[arg(long = "call-id")]
    call_id: Option<String>,
    /// How many calls (newest first).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// The next page: the cursor a previous list printed.
    #[arg(long)]
    cursor: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The call id (`x-luthien-call-id` of the response).
    call_id: String,
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Only this call's events.
    #[arg(long = "call-id")]
    call_id: Option<String>,
    /// Only calls to this model.
    #[arg(long)]
    model: Option<String>,
    /// Only events of this type (`request`, `policy`, `response`).
    #[arg(long = "event-type")]
    event_type: Option<String>,
}

type Client = DebugServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds the admin key to every request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub async fn run(command: CallsCommand) -> anyhow::Result<ExitCode> {
    let style = Style::stdout();
    match command {
        CallsCommand::List(args) => list(args, style).await,
        CallsCommand::Show(args) => show(args, style).await,
        CallsCommand::Diff(args) => diff(args, style).await,
        CallsCommand::Tail(args) => tail(args, style).await,
    }
}

async fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    let address = &args.control_plane;
    let mut endpoint = Endpoint::from_shared(address.clone())
        .with_context(|| format!("--control-plane `{address}` is not a URL"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = ClientTls::load(&args.tls).map_err(anyhow::Error::msg)? {
        let host = endpoint.uri().host().unwrap_or_default().to_owned();
        endpoint = endpoint
            .tls_config(tls.config(&host))
            .context("the control plane's TLS settings")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {address}"))?;
    let bearer = match &args.admin_key {
        Some(key) => Some(
            format!("Bearer {key}")
                .parse()
                .context("--admin-key holds characters a header cannot carry")?,
        ),
        None => None,
    };
    Ok(DebugServiceClient::with_interceptor(
        channel,
        Bearer(bearer),
    ))
}

/// A gRPC error as the operator needs it: what failed, and the fix for the common ones.
fn status_error(what: &str, status: tonic::Status) -> anyhow::Error {
    let hint = match status.code() {
        tonic::Code::Unauthenticated => {
            " (give the control plane's admin key: --admin-key or LUTHIEN_ADMIN_KEY)"
        }
        tonic::Code::Unimplemented => {
            " (this control plane does not serve the Debug API here: without an admin key it serves it on a loopback address only)"
        }
        _ => "",
    };
    anyhow::anyhow!("{what}: {}{hint}", status.message())
}

async fn list(args: ListArgs, style: Style) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.client).await?;
    let time = |flag: &str, text: &Option<String>| {
        text.as_deref()
            .map(|text| render::parse_time(flag, text))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let request = ListCallsRequest {
        since_micros: time("--since", &args.since)?,
        until_micros: time("--until", &args.until)?,
        model: args.model.unwrap_or_default(),
        api: args.api.map_or(0, |api| api.kind().into()),
        status: args.status.unwrap_or_default(),
        session_id: args.session.unwrap_or_default(),
        event_type: args.event_type.unwrap_or_default(),
        call_id_contains: args.call_id.unwrap_or_default(),
        limit: args.limit,
        cursor: args.cursor.unwrap_or_default(),
    };
    let page = client
        .list_calls(request)
        .await
        .map_err(|status| status_error("listing calls", status))?
        .into_inner();
    if args.client.json {
        let calls: Vec<Value> = page.calls.iter().map(summary_json).collect();
        let next = (!page.next_cursor.is_empty()).then_some(&page.next_cursor);
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"calls": calls, "next_cursor": next}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if page.calls.is_empty() {
        println!("no calls match");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}",
        style.paint(
            Colour::Bold,
            &format!(
                "{:<24} {:<36} {:<9} {:<22} {:<14} {:>8} {:>11}  {}",
                "started", "call id", "api", "model", "status", "ms", "tokens", "policies · prompt"
            )
        )
    );
    for call in &page.calls {
        let api = Api::from_kind(call.api).map_or("?", Api::name);
        let duration = call
            .duration_ms
            .map(|ms| format!("{ms:.0}"))
            .unwrap_or_else(|| "-".to_owned());
        let tokens = match (call.input_tokens, call.output_tokens) {
            (None, None) => "-".to_owned(),
            (input, output) => format!(
                "{}/{}",
                input.map_or("-".to_owned(), |n| n.to_string()),
                output.map_or("-".to_owned(), |n| n.to_string())
            ),
        };
        let policies = if call.policies.is_empty() {
            String::new()
        } else {
            style.paint(Colour::Yellow, &format!("[{}] ", call.policies.join(", ")))
        };
        println!(
            "{:<24} {:<36} {:<9} {:<22} {} {:>8} {:>11}  {policies}{}",
            render::time(call.created_at_micros),
            call.call_id,
            api,
            render::one_line(&call.model, 22),
            pad(style.status(&call.status), &call.status, 14),
            duration,
            tokens,
            render::one_line(&call.preview, 60),
        );
    }
    if !page.next_cursor.is_empty() {
        println!("\nmore: --cursor {}", page.next_cursor);
    }
    Ok(ExitCode::SUCCESS)
}

/// Pads a painted text to `width` by its visible length.
fn pad(painted: String, visible: &str, width: usize) -> String {
    let fill = width.saturating_sub(visible.chars().count());
    format!("{painted}{}", " ".repeat(fill))
}

async fn show(args: CallArgs, style: Style) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.client).await?;
    let detail = client
        .get_call(GetCallRequest {
            call_id: args.call_id.clone(),
        })
        .await
        .map_err(|status| status_error(&format!("call {}", args.call_id), status))?
        .into_inner();
    let events: Vec<(u32, i64, String, Value)> = detail
        .events
        .into_iter()
        .map(|event| {
            let payload = event.payload.map(from_struct).unwrap_or(Value::Null);
            (
                event.sequence,
                event.timestamp_micros,
                event.event_type,
                payload,
            )
        })
        .collect();
    let call = detail.call.unwrap_or_default();
    if args.client.json {
        let events: Vec<Value> = events
            .into_iter()
            .map(|(sequence, at, event_type, payload)| {
                json!({"sequence": sequence, "timestamp_micros": at,
                       "event_type": event_type, "payload": payload})
            })
            .collect();
        let trace_url = (!detail.trace_url.is_empty()).then_some(&detail.trace_url);
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "call": summary_json(&call), "events": events, "trace_url": trace_url}))?
        );
        return Ok(ExitCode::SUCCESS);
    }

    let api = Api::from_kind(call.api);
    let field =
        |name: &str, value: String| println!("  {:<10} {value}", style.paint(Colour::Dim, name));
    println!(
        "{}",
        style.paint(Colour::Bold, &format!("call {}", call.call_id))
    );
    field(
        "api",
        format!(
            "{}{}",
            api.map_or("?", Api::name),
            if call.stream { " (streamed)" } else { "" }
        ),
    );
    field("model", call.model.clone());
    field("status", style.status(&call.status));
    field("started", render::time(call.created_at_micros));
    if let Some(ms) = call.duration_ms {
        let first = call
            .time_to_first_chunk_ms
            .map(|first| format!(" (first chunk after {first:.1} ms)"))
            .unwrap_or_default();
        field("duration", format!("{ms:.1} ms{first}"));
    }
    if call.input_tokens.is_some() || call.output_tokens.is_some() {
        let count = |n: Option<u64>| n.map_or("?".to_owned(), |n| n.to_string());
        field(
            "tokens",
            format!(
                "{} in, {} out",
                count(call.input_tokens),
                count(call.output_tokens)
            ),
        );
    }
    if !call.session_id.is_empty() {
        field("session", call.session_id.clone());
    }
    field(
        "policies",
        if call.policies.is_empty() {
            "none acted".to_owned()
        } else {
            call.policies.join(", ")
        },
    );
    field(
        "changed",
        if call.policy_changed {
            format!("yes (luthien calls diff {})", call.call_id)
        } else {
            "no".to_owned()
        },
    );
    if !detail.trace_url.is_empty() {
        field("trace", detail.trace_url.clone());
    }

    println!("\n{}", style.paint(Colour::Bold, "events"));
    let mut request = None;
    let mut response = None;
    for (sequence, at, event_type, payload) in events {
        let decoded: Option<EventPayload> = serde_json::from_value(payload).ok();
        let summary = decoded.as_ref().map_or_else(
            || "(not readable by this version)".to_owned(),
            EventPayload::summary,
        );
        println!(
            "  #{sequence:<3} {}  {event_type:<9} {summary}",
            render::time(at)
        );
        match decoded {
            Some(EventPayload::Request { final_, .. }) => request = Some(final_.value()),
            Some(EventPayload::Response { final_, detail, .. }) => {
                if let Some(detail) = detail {
                    println!("        {}", style.paint(Colour::Yellow, &detail));
                }
                response = final_.as_ref().map(Body::value);
            }
            _ => {}
        }
    }
    if let Some(text) = request
        .as_ref()
        .and_then(luthien_api::request::last_user_text)
    {
        println!(
            "\n{}",
            style.paint(Colour::Bold, "last user message (as forwarded)")
        );
        println!("{}", indent(&text));
    }
    if let (Some(api), Some(mut response)) = (api, response) {
        let mut texts = Vec::new();
        luthien_policy::shapes::for_each_response_text(api, &mut response, |text| {
            texts.push(text.clone());
        });
        if !texts.is_empty() {
            println!(
                "\n{}",
                style.paint(Colour::Bold, "response text (as the client got it)")
            );
            println!("{}", indent(&texts.join("\n\n")));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn diff(args: CallArgs, style: Style) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.client).await?;
    let diff = client
        .get_call_diff(GetCallDiffRequest {
            call_id: args.call_id.clone(),
        })
        .await
        .map_err(|status| status_error(&format!("the diff of call {}", args.call_id), status))?
        .into_inner()
        .diff
        .map(from_struct)
        .unwrap_or(Value::Null);
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&diff)?);
        return Ok(ExitCode::SUCCESS);
    }
    let diff: CallDiff = serde_json::from_value(diff)
        .context("the control plane's diff is not one this version of luthien reads")?;
    println!(
        "{}",
        style.paint(Colour::Bold, &format!("call {}", args.call_id))
    );
    print!("{}", render::diff(&diff, style));
    Ok(ExitCode::SUCCESS)
}

async fn tail(args: TailArgs, style: Style) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.client).await?;
    let mut stream = client
        .stream_activity(StreamActivityRequest {
            call_id: args.call_id.unwrap_or_default(),
            model: args.model.unwrap_or_default(),
            event_type: args.event_type.unwrap_or_default(),
        })
        .await
        .map_err(|status| status_error("following the activity", status))?
        .into_inner();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
            event = stream.next() => event,
        };
        match event {
            None => {
                eprintln!("luthien: the control plane ended the activity stream");
                return Ok(ExitCode::FAILURE);
            }
            Some(Err(status)) => return Err(status_error("the activity stream", status)),
            Some(Ok(event)) if args.client.json => println!("{}", activity_json(&event)),
            Some(Ok(event)) => println!("{}", activity_line(&event, style)),
        }
    }
}

fn activity_line(event: &ActivityEvent, style: Style) -> String {
    let status = if event.status.is_empty() {
        String::new()
    } else {
        format!(" {}", style.status(&event.status))
    };
    format!(
        "{} {} {:<9} {:<22}{status} {}",
        render::time(event.timestamp_micros),
        style.paint(Colour::Dim, &event.call_id),
        event.event_type,
        render::one_line(&event.model, 22),
        event.summary,
    )
}

fn activity_json(event: &ActivityEvent) -> Value {
    json!({
        "call_id": event.call_id,
        "sequence": event.sequence,
        "event_type": event.event_type,
        "model": event.model,
        "api": Api::from_kind(event.api).map(Api::name),
        "timestamp_micros": event.timestamp_micros,
        "summary": event.summary,
        "status": (!event.status.is_empty()).then_some(&event.status),
        "control_plane": event.control_plane,
    })
}

/// A call summary as the HTTP debug API writes it.
fn summary_json(call: &CallSummary) -> Value {
    let text = |value: &String| (!value.is_empty()).then(|| value.clone());
    json!({
        "call_id": call.call_id,
        "created_at_micros": call.created_at_micros,
        "completed_at_micros": (call.completed_at_micros != 0).then_some(call.completed_at_micros),
        "api": Api::from_kind(call.api).map(Api::name),
        "model": call.model,
        "stream": call.stream,
        "status": call.status,
        "duration_ms": call.duration_ms,
        "time_to_first_chunk_ms": call.time_to_first_chunk_ms,
        "usage": {"input_tokens": call.input_tokens, "output_tokens": call.output_tokens},
        "session_id": text(&call.session_id),
        "trace_id": text(&call.trace_id),
        "policy_changed": call.policy_changed,
        "preview": text(&call.preview),
        "policies": call.policies,
    })
}
