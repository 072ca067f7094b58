//! Compiles the .proto files with `protox` (pure Rust, no system `protoc`), writes the
//! file descriptor set for server reflection, and generates prost + tonic code from it.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] =
    &["ferry/inventory/v1/inventory.proto", "ferry/order/v1/order.proto", "ferry/events/v1/events.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("ferry_descriptor.bin"), fds.encode_to_vec())?;
    // One set per service, so each server's reflection lists only the service it serves.
    for (proto, file) in [(PROTOS[0], "inventory_descriptor.bin"), (PROTOS[1], "order_descriptor.bin")] {
        fs::write(out.join(file), protox::compile([proto], ["proto"])?.encode_to_vec())?;
    }
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
