//! `trenv template …`: make memory templates from running containers, list, inspect and
//! remove them (docs/templates.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use trenv_criu::template::Policy;
use trenv_runtime::config::Config;
use trenv_runtime::container::Location;
use trenv_runtime::snapshot::CriuConfig;
use trenv_runtime::template::build::BuildRequest;
use trenv_runtime::template::{MemPool, TemplateStore};

#[derive(Args)]
pub struct TemplateArgs {
    /// trenv's config file (default: $TRENV_CONFIG or /etc/trenv/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: TemplateCommand,
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// Checkpoint a running trenv container (it keeps running) and publish its memory as a
    /// template in the configured pool.
    Create {
        name: String,
        /// The container (its task must be running on trenv).
        #[arg(long)]
        from: String,
        /// Its containerd namespace.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// Its bundle directory, if trenv cannot find it from the running shims.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Map `[heap]` from the template too (only for runtimes that never rely on
        /// MADV_DONTNEED zeroing brk memory).
        #[arg(long)]
        heap: bool,
        /// Smallest VMA mapped from the template, in KiB.
        #[arg(long, default_value_t = 1024)]
        min_vma_kib: u64,
        /// Map nothing: restores copy every page, as plain CRIU does (for functions whose
        /// allocator relies on MADV_DONTNEED zeroing, and as the baseline of benchmarks).
        #[arg(long, conflicts_with = "heap")]
        copy: bool,
    },
    /// One line per template.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A template's manifest (JSON).
    Inspect { name: String },
    /// Remove a template (running instances keep their memory).
    Rm { name: String },
}

pub fn run(args: TemplateArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::load()?,
    };
    let store = TemplateStore::new(&config.templates.dir);
    match args.command {
        TemplateCommand::Create {
            name,
            from,
            namespace,
            bundle,
            heap,
            min_vma_kib,
            copy,
        } => {
            let bundle = match bundle {
                Some(b) => b,
                None => find_bundle(&namespace, &from)?,
            };
            let at = Location::new(&from, &bundle);
            let kind = config.pool_kind()?;
            let pool = MemPool::open(&config.pool.dir, kind)?;
            let criu = CriuConfig {
                binary: config.criu.binary.clone(),
                cache_dir: Some(PathBuf::from("/run/trenv")),
            };
            let policy = Policy {
                min_vma: if copy { u64::MAX } else { min_vma_kib * 1024 },
                include_heap: heap,
            };
            let req = BuildRequest {
                name: &name,
                at: &at,
                pool: &pool,
                criu: &criu,
                policy: &policy,
            };
            let m = store
                .create(&req)
                .with_context(|| format!("creating template {name} from {from}"))?;
            println!(
                "template {}: {} VMAs, {} MiB mapped from {} ({}), {} MiB still copied",
                m.name,
                m.conversion.vmas.len(),
                m.conversion.bytes_moved >> 20,
                m.pool.path.display(),
                m.pool.kind,
                m.conversion.bytes_copied >> 20
            );
        }
        TemplateCommand::List { json } => {
            let (all, broken) = store.list()?;
            for e in &broken {
                eprintln!("warning: {e}");
            }
            if json {
                for m in &all {
                    println!("{}", serde_json::to_string(m)?);
                }
            } else {
                println!(
                    "{:<24} {:>10} {:>10} {:<8} FILE",
                    "NAME", "MAPPED", "COPIED", "POOL"
                );
                for m in &all {
                    println!(
                        "{:<24} {:>9}M {:>9}M {:<8} {}",
                        m.name,
                        m.conversion.bytes_moved >> 20,
                        m.conversion.bytes_copied >> 20,
                        m.pool.kind.to_string(),
                        m.pool.path.display()
                    );
                }
            }
        }
        TemplateCommand::Inspect { name } => {
            println!("{}", serde_json::to_string_pretty(&store.get(&name)?)?);
        }
        TemplateCommand::Rm { name } => {
            store.remove(&name)?;
            println!("removed template {name}");
        }
    }
    Ok(())
}

/// The bundle of container `id` in `namespace`: a trenv shim serving that namespace runs
/// in the bundle of its first container; the others are its siblings.
fn find_bundle(namespace: &str, id: &str) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.ends_with("containerd-shim-trenv-v1"));
        let ns = args
            .windows(2)
            .find(|w| w[0] == "-namespace")
            .map(|w| w[1].as_str());
        if !is_shim || ns != Some(namespace) {
            continue;
        }
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        let Some(parent) = cwd.parent() else { continue };
        let candidate = parent.join(id);
        if is_trenv_bundle(&candidate, id) && !found.contains(&candidate) {
            found.push(candidate);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "no running trenv container {id} in namespace {namespace}: start it with \
             `ctr run --runtime io.containerd.trenv.v1 …` (or give --bundle)"
        ),
        _ => bail!(
            "container {id} of namespace {namespace} exists under several containerd \
             instances ({}); choose one with --bundle",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn is_trenv_bundle(dir: &Path, id: &str) -> bool {
    dir.join(".trenv").join(id).join("state.json").exists()
}
