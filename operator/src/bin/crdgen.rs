//! Writes the MicroService CRD as YAML to stdout, or to the path given as the only argument.
//!
//! `cargo run -p ferry-operator --bin crdgen > crds/microservice.yaml`

use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match ferry_operator_core::crd::crd_yaml() {
        Ok(yaml) => yaml,
        Err(err) => {
            eprintln!("crdgen: cannot serialise the CRD: {err}");
            return ExitCode::FAILURE;
        }
    };
    match std::env::args().nth(1) {
        Some(path) => {
            if let Err(err) = std::fs::write(&path, yaml) {
                eprintln!("crdgen: cannot write {path}: {err}");
                return ExitCode::FAILURE;
            }
        }
        None => print!("{yaml}"),
    }
    ExitCode::SUCCESS
}
