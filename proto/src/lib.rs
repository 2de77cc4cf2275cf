//! Luthien's gRPC protocol, generated from `proto/luthien/v1`.
//!
//! The data plane is the client of [`v1::control_plane_client::ControlPlaneClient`];
//! the control plane implements [`v1::control_plane_server::ControlPlane`] and
//! [`v1::debug_server::Debug`].
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

/// `luthien.v1`: the data plane ⇄ control plane protocol and the debug API.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("luthien.v1");
}

/// Encoded `FileDescriptorSet` of every Luthien proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/luthien_descriptor.bin"));
