//! `luthien replay`: reads recorded calls straight from the event store,
//! runs them through a policy file and prints what would change. Nothing is
//! sent to any LLM and nothing is written.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use luthien_controlplane::activity::ActivityBus;
use luthien_controlplane::debug::DebugService;
use luthien_controlplane::policy_source::PolicySource;
use luthien_controlplane::replay::ReplayOutcome;
use luthien_store::{CallFilter, Store, StoreOptions};

use crate::render::{self, Colour, Style};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The policy file to try.
    #[arg(long)]
    policy: PathBuf,
    /// One recorded call to replay (prints its full diff).
    #[arg(long = "call-id", conflicts_with_all = ["since", "limit"])]
    call_id: Option<String>,
    /// Replay calls recorded since this long ago (`2h`, `30m`) or since this
    /// time (`2026-11-27T06:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// How many of the newest calls to replay.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// The event store to read.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://luthien.db"
    )]
    database_url: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let policies = PolicySource::from_file(&args.policy)?;
    let store = Store::open(
        &args.database_url,
        StoreOptions {
            migrate: false,
            ..StoreOptions::default()
        },
    )
    .await
    .context("opening the event store")?;
    let service = DebugService::new(Some(store), ActivityBus::in_process(), policies, None);

    if let Some(call_id) = &args.call_id {
        let outcome = service.replay_call(call_id, None).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&outcome)?);
        } else {
            print_one(&outcome, Style::stdout());
        }
        return Ok(ExitCode::SUCCESS);
    }

    let filter = CallFilter {
        since_micros: args
            .since
            .as_deref()
            .map(|since| render::parse_time("--since", since))
            .transpose()?,
        limit: Some(args.limit),
        ..CallFilter::default()
    };
    let page = service.list_calls(filter).await?;
    let mut outcomes = Vec::with_capacity(page.calls.len());
    for call in &page.calls {
        outcomes.push(service.replay_call(&call.call_id, None).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (call, outcome) in page.calls.iter().zip(&outcomes) {
        println!(
            "{}  {:<24} {}",
            outcome.call_id,
            call.model,
            verdict(outcome)
        );
    }
    let blocked = outcomes
        .iter()
        .filter(|outcome| outcome.blocked.is_some())
        .count();
    let changed = outcomes.iter().filter(|outcome| outcome.changed).count();
    let failed = outcomes
        .iter()
        .filter(|outcome| outcome.error.is_some())
        .count();
    println!(
        "\n{} calls replayed: {changed} would change ({blocked} blocked), {} unchanged, {failed} with policy errors",
        outcomes.len(),
        outcomes.len() - changed,
    );
    Ok(ExitCode::SUCCESS)
}

fn verdict(outcome: &ReplayOutcome) -> String {
    match (&outcome.blocked, outcome.changed) {
        (Some(reason), _) => format!("blocked: {reason}"),
        (None, true) => "changed".to_owned(),
        (None, false) => "unchanged".to_owned(),
    }
}

fn print_one(outcome: &ReplayOutcome, style: Style) {
    println!(
        "{}",
        style.paint(
            Colour::Bold,
            &format!("call {}: {}", outcome.call_id, verdict(outcome))
        )
    );
    if let Some(error) = &outcome.error {
        println!(
            "{}",
            style.paint(Colour::Red, &format!("policy error: {error}"))
        );
    }
    println!("recorded final (before) against replayed final (after):");
    print!("{}", render::diff(&outcome.diff, style));
    for event in &outcome.policy_events {
        let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
        println!(
            "policy event: {} {}: {}",
            text("policy"),
            text("action"),
            text("summary")
        );
    }
}
