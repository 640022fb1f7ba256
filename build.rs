//! Compiles the gRPC API with protox, so that building stepgate needs no
//! `protoc` binary, and keeps the descriptor set for server reflection.

use std::path::PathBuf;

use protox::prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/stepgate/v1/decision.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("stepgate_descriptor.bin"), fds.encode_to_vec())?;
    // The strict codec answers a message that does not decode with
    // INVALID_ARGUMENT instead of tonic's INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::server::framing::StrictCodec")
        .compile_fds(fds)?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
