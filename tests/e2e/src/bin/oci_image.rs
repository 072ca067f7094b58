//! `oci_image`: writes an OCI image-layout tar from local files, for
//! `ctr -n k8s.io images import` on a node that reaches no registry and has no
//! Docker (`tests/e2e/images/build.sh` drives it).
//!
//! ```text
//! oci_image --name docker.io/ferry/operator:dev --out target/images/operator.tar \
//!   --entrypoint /usr/local/bin/operator --user 65532:65532 \
//!   --add target/release/operator:/usr/local/bin/operator --with-shared-libs --expose 8080
//! ```

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use ferry_e2e::oci::{ImageConfig, Layer, OciError, build_archive, inspect_archive, parse_add};

#[derive(Parser)]
#[command(about = "Build an OCI image archive for `ctr images import`, without Docker")]
struct Args {
    /// Fully qualified image name (docker.io/ferry/operator:dev); repeat to
    /// give the same image more names.
    #[arg(long = "name", required = true)]
    names: Vec<String>,
    /// The archive to write.
    #[arg(long)]
    out: PathBuf,
    /// The entrypoint; repeat for its arguments.
    #[arg(long, required = true)]
    entrypoint: Vec<String>,
    /// USER, e.g. 65532:65532.
    #[arg(long)]
    user: Option<String>,
    /// SOURCE:/DESTINATION, a host file copied into the image (symlinks followed).
    #[arg(long = "add", value_parser = parse_add)]
    adds: Vec<(PathBuf, String)>,
    /// Also add the shared libraries (and dynamic loader) of every added ELF binary.
    #[arg(long)]
    with_shared_libs: bool,
    /// K=V, in the image's environment (PATH defaults to Docker's).
    #[arg(long)]
    env: Vec<String>,
    /// A port to expose: 8080 or 8080/udp.
    #[arg(long)]
    expose: Vec<String>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oci_image: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), OciError> {
    let mut layer = Layer::new();
    for (source, dest) in &args.adds {
        layer.add_host_file(source, dest)?;
    }
    if args.with_shared_libs {
        for (source, _) in &args.adds {
            layer.add_shared_libs(source)?;
        }
    }
    let config = ImageConfig {
        entrypoint: args.entrypoint,
        user: args.user,
        env: args.env,
        exposed_ports: args.expose,
    };
    let archive = build_archive(&args.names, &config, &layer)?;
    // Read it back the way an importer would, so a bad archive fails here and
    // not on the node.
    let inspection = inspect_archive(&archive)?;

    let io = |source| OciError::Io { path: args.out.clone(), source };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Written aside then renamed: an interrupted build leaves no half archive
    // that looks current.
    let partial = args.out.with_extension("tar.partial");
    std::fs::write(&partial, &archive).map_err(io)?;
    std::fs::rename(&partial, &args.out).map_err(io)?;
    for name in &inspection.names {
        println!("{name} {} {} bytes -> {}", inspection.manifest_digest, archive.len(), args.out.display());
    }
    Ok(())
}
