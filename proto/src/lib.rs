//! Luthien's gRPC APIs, generated from `proto/luthien`, one module per package and audience:
//!
//! - [`common::v1`]: what the others share, the provider [`Api`](common::v1::Api) and the
//!   [`Header`](common::v1::Header);
//! - [`dataplane::v1`]: the internal data plane ⇄ control plane protocol. The data plane is
//!   the client of `ControlPlaneService`, the control plane its server;
//! - [`policy::v1`]: the public contract of remote policy servers (`PolicyService`), which
//!   only grows within `v1`;
//! - [`admin::v1`]: the operators' API served by the control plane (`DebugService`,
//!   `PoliciesService`).
//!
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

/// `luthien.common.v1`.
pub mod common {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("luthien.common.v1");
    }
}

/// `luthien.dataplane.v1`.
pub mod dataplane {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("luthien.dataplane.v1");
    }
}

/// `luthien.policy.v1`.
pub mod policy {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("luthien.policy.v1");
    }
}

/// `luthien.admin.v1`.
pub mod admin {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("luthien.admin.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Luthien proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/luthien_descriptor.bin"));
