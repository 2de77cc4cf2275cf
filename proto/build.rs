//! Compiles `proto/luthien/**/*.proto` with protox (pure Rust; no system `protoc`).

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "luthien/common/v1/api.proto",
    "luthien/dataplane/v1/control_plane.proto",
    "luthien/policy/v1/policy_service.proto",
    "luthien/admin/v1/debug.proto",
    "luthien/admin/v1/policies.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("luthien_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .bytes(".luthien")
        .compile_fds(descriptors)?;
    Ok(())
}
