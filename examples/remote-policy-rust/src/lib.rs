//! An example Luthien remote policy server: removes tool calls that touch paths outside an
//! allowed directory (see [`guard`] for what it decides, [`paths`] for how paths are found).
//!
//! The policy is written against `luthien-policy`'s [`Policy`](luthien_policy::Policy) trait,
//! like the built-in ones, and served over `luthien.policy.v1.PolicyService` by
//! [`PolicyServer`], which turns each phase of the protocol into the matching hook. Start it
//! in-process with [`serve`], or run the `remote-policy-example` binary.

pub mod guard;
pub mod paths;

use std::future::Future;
use std::sync::Arc;

use luthien_policy::server::PolicyServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::guard::Guard;

/// Serves the policy on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    guard: Guard,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let server = PolicyServer::new(Arc::new(guard));
    tonic::transport::Server::builder()
        .add_service(server.into_service())
        // TCP_NODELAY on every connection: a result written in two pieces would otherwise
        // wait for Luthien's delayed ACK (~40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
