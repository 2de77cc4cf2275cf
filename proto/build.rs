//! Compiles `luthien/v1/*.proto` with protox (pure Rust; no system `protoc`).

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "luthien/v1/control_plane.proto",
    "luthien/v1/debug.proto",
    "luthien/v1/policies.proto",
    "luthien/v1/policy_service.proto",
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
        .bytes(".luthien.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
