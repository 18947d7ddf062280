//! `trenv container image ID`: the image of a container as containerd records it. A client
//! other than CRI (faasd, nerdctl, ctr) never puts it into the spec a runtime reads; the
//! shim runs this once per such container, after Start and off its path, for the
//! container's metering records (shim/src/image_of.rs).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use containerd_client::services::v1::GetContainerRequest;
use containerd_client::{Client, tonic};

/// containerd's socket when neither `--address` nor `CONTAINERD_ADDRESS` says otherwise.
const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";

#[derive(Args)]
pub struct ContainerArgs {
    #[command(subcommand)]
    command: ContainerCommand,
}

#[derive(Subcommand)]
enum ContainerCommand {
    /// The image reference containerd records for container ID.
    Image {
        id: String,
        /// The container's containerd namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// containerd's socket (default: $CONTAINERD_ADDRESS, else
        /// /run/containerd/containerd.sock).
        #[arg(long)]
        address: Option<PathBuf>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

pub fn run(args: ContainerArgs) -> anyhow::Result<()> {
    match args.command {
        ContainerCommand::Image {
            id,
            namespace,
            address,
            timeout_ms,
        } => {
            let address = address
                .or_else(|| std::env::var_os("CONTAINERD_ADDRESS").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ADDRESS));
            let image = image_of(&address, &namespace, &id, Duration::from_millis(timeout_ms))?;
            println!("{image}");
            Ok(())
        }
    }
}

/// Containers.Get of `id` in `namespace` from the containerd at `address`: its image.
fn image_of(
    address: &std::path::Path,
    namespace: &str,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("creating a tokio runtime")?;
    rt.block_on(async {
        let client = tokio::time::timeout(timeout, Client::from_path(address))
            .await
            .map_err(|_| {
                anyhow!(
                    "connecting to containerd on {} timed out",
                    address.display()
                )
            })?
            .with_context(|| format!("connecting to containerd on {}", address.display()))?;
        let mut req = tonic::Request::new(GetContainerRequest { id: id.to_string() });
        req.set_timeout(timeout);
        req.metadata_mut().insert(
            "containerd-namespace",
            namespace
                .parse()
                .map_err(|_| anyhow!("namespace {namespace:?} is not a valid header value"))?,
        );
        let container = client
            .containers()
            .get(req)
            .await
            .map_err(|s| anyhow!("container {id} in namespace {namespace}: {}", s.message()))?
            .into_inner()
            .container
            .ok_or_else(|| anyhow!("containerd has no record of container {id}"))?;
        Ok(container.image)
    })
}
