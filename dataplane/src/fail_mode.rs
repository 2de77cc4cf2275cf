//! The fail mode: what a call does when its control plane fails — unreachable, silent past a
//! deadline, or breaking the protocol. Decided here and nowhere else; the request and response
//! phases (`proxy`) and the stream pump (`stream`) ask [`FailMode::rule`].
//!
//! The window is the whole call: a failure before the first response byte refuses the call with
//! a 503 (closed) or lets it go on unpoliced (open); after it, the same rule ends the stream
//! with an in-band error event (closed) or lets the rest pass unmodified (open).

use axum::http::StatusCode;

use crate::api::{Api, ApiError};
use crate::control::ControlError;

/// What to do when the control plane cannot be reached, times out or errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailMode {
    /// Refuse the call: 503 before any response byte was sent, an in-band
    /// error event in the client's protocol after.
    Closed,
    /// Let the call proceed unmodified and log that it did.
    Open,
}

/// Where in the call the control plane failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Nothing was sent to the client yet: a refusal is an HTTP error.
    BeforeResponse,
    /// The client has response bytes: a refusal is an in-band error event.
    MidStream,
}

/// The fail mode's answer for one failure.
#[derive(Debug)]
pub enum Ruling {
    /// Go on without the control plane; the rest of the call is not policed.
    Proceed,
    /// Stop the call with this error in the client's format.
    Refuse(ApiError),
}

impl FailMode {
    /// Rules on a control-plane failure of a call of `api`, and logs the ruling (the current
    /// span carries the call id).
    pub fn rule(self, api: Api, stage: Stage, error: &ControlError) -> Ruling {
        let at = match stage {
            Stage::BeforeResponse => "before the response",
            Stage::MidStream => "mid-stream",
        };
        match self {
            FailMode::Open => {
                tracing::warn!(%error, "control plane failed {at}; fail-open: the call goes on unpoliced");
                Ruling::Proceed
            }
            FailMode::Closed => {
                tracing::warn!(%error, "control plane failed {at}; fail-closed: the call is refused");
                Ruling::Refuse(ApiError::new(
                    api,
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("policy control plane unavailable: {error}"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn closed_refuses_in_the_clients_format_and_open_proceeds() {
        let error = ControlError::Timeout(Duration::from_secs(5));
        let Ruling::Refuse(refusal) =
            FailMode::Closed.rule(Api::AnthropicMessages, Stage::MidStream, &error)
        else {
            panic!("closed refuses");
        };
        assert_eq!(refusal.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(refusal.stream_event().starts_with(b"event: error\n"));
        assert!(
            refusal.message.contains("did not answer within 5s"),
            "{}",
            refusal.message
        );
        assert!(matches!(
            FailMode::Open.rule(Api::OpenAiChat, Stage::BeforeResponse, &error),
            Ruling::Proceed
        ));
    }
}
