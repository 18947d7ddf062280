//! `trenv template …`: make memory templates from running containers, list, inspect and
//! remove them (docs/templates.md). Every template belongs to a tenant: `create` gives it
//! the source container's (its namespace, narrowed by its CRI pod namespace and
//! `io.trenv.tenant`, as the shim does); `inspect` and `rm` act in the tenant given by
//! `-n NAMESPACE` or `--tenant TENANT` (default: namespace `default`); `list` shows every
//! tenant's unless one is given.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use trenv_criu::template::Policy;
use trenv_runtime::config::Config;
use trenv_runtime::container::Location;
use trenv_runtime::container::spec::load_spec;
use trenv_runtime::snapshot::CriuConfig;
use trenv_runtime::template::build::BuildRequest;
use trenv_runtime::template::tenant::DEFAULT_NAMESPACE;
use trenv_runtime::template::{MemPool, TemplateStore, Tenant};

#[derive(Args)]
pub struct TemplateArgs {
    /// trenv's config file (default: $TRENV_CONFIG or /etc/trenv/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: TemplateCommand,
}

/// Which tenant's templates.
#[derive(Args)]
struct TenantArg {
    /// The tenant that is a whole containerd namespace (default: "default").
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// The tenant in full, as `trenv template list` shows it:
    /// NAMESPACE[/K8S-NAMESPACE][/SUB] (NAMESPACE//SUB without a Kubernetes namespace).
    #[arg(long, conflicts_with = "namespace")]
    tenant: Option<Tenant>,
}

impl TenantArg {
    /// The tenant asked for, if any.
    fn given(&self) -> anyhow::Result<Option<Tenant>> {
        Ok(match (&self.tenant, &self.namespace) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(ns)) => Some(Tenant::namespace(ns)?),
            (None, None) => None,
        })
    }

    /// The tenant asked for, or namespace `default`.
    fn or_default(&self) -> anyhow::Result<Tenant> {
        match self.given()? {
            Some(t) => Ok(t),
            None => Ok(Tenant::namespace(DEFAULT_NAMESPACE)?),
        }
    }
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// Checkpoint a running trenv container (it keeps running) and publish its memory as a
    /// template in the configured pool, owned by the container's tenant.
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
        /// Copy `[heap]` at every restore instead of mapping it (it is mapped by default).
        #[arg(long)]
        no_heap: bool,
        /// Smallest VMA mapped from the template, in KiB (default: every VMA).
        #[arg(long, default_value_t = 4)]
        min_vma_kib: u64,
        /// Map nothing: restores copy every page, as plain CRIU does (for functions whose
        /// allocator relies on MADV_DONTNEED zeroing, and as the baseline of benchmarks).
        #[arg(long, conflicts_with_all = ["no_heap", "min_vma_kib"])]
        copy: bool,
    },
    /// One line per template, with its tenant (every tenant's unless one is given).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// A template's manifest (JSON).
    Inspect {
        name: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Remove a template and its pool file (running instances keep their memory); works
    /// on a damaged template too.
    Rm {
        name: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// A template of the layout before tenants (`trenv template list` names them).
        #[arg(long, conflicts_with_all = ["namespace", "tenant"])]
        legacy: bool,
    },
}

pub fn run(args: TemplateArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::load()?,
    };
    let store = TemplateStore::of_node(&config);
    match args.command {
        TemplateCommand::Create {
            name,
            from,
            namespace,
            bundle,
            no_heap,
            min_vma_kib,
            copy,
        } => {
            let bundle = match bundle {
                Some(b) => b,
                None => find_bundle(&namespace, &from)?,
            };
            let at = Location::new(&from, &bundle);
            // The container's own tenant, derived as the shim derives it.
            let spec = load_spec(&bundle.join("config.json"))?;
            let annotations = spec.annotations().clone().unwrap_or_default();
            let tenant =
                Tenant::of_container(&namespace, |k| annotations.get(k).map(String::as_str))?;
            let kind = config.pool_kind()?;
            let pool = MemPool::open(&config.pool.dir, kind)?;
            let criu = CriuConfig {
                binary: config.criu.binary.clone(),
                cache_dir: Some(PathBuf::from(trenv_runtime::paths::RUN_DIR)),
                ..Default::default()
            };
            let policy = Policy {
                min_vma: if copy { u64::MAX } else { min_vma_kib * 1024 },
                include_heap: !copy && !no_heap,
                file_pages: !copy,
            };
            let req = BuildRequest {
                name: &name,
                tenant: &tenant,
                limits: config.tenant_limits(),
                at: &at,
                pool: &pool,
                criu: &criu,
                policy: &policy,
            };
            let m = store
                .create(&req)
                .with_context(|| format!("creating template {name} from {from}"))?;
            println!(
                "template {} of tenant {}: {}, {} MiB mapped from {} ({}), {} MiB still \
                 copied",
                m.name,
                m.tenant,
                m.conversion.extent(),
                m.conversion.bytes_moved >> 20,
                m.pool.path.display(),
                m.pool.kind,
                m.conversion.bytes_copied >> 20
            );
        }
        TemplateCommand::List { json, tenant } => {
            let (all, broken) = store.list(tenant.given()?.as_ref())?;
            for e in &broken {
                eprintln!("warning: {e}");
            }
            if json {
                for m in &all {
                    println!("{}", serde_json::to_string(m)?);
                }
            } else {
                println!(
                    "{:<24} {:<24} {:>5} {:>10} {:>10} {:<8} FILE",
                    "NAME", "TENANT", "PROCS", "MAPPED", "COPIED", "POOL"
                );
                for m in &all {
                    println!(
                        "{:<24} {:<24} {:>5} {:>9}M {:>9}M {:<8} {}",
                        m.name,
                        m.tenant.to_string(),
                        m.conversion.process_count(),
                        m.conversion.bytes_moved >> 20,
                        m.conversion.bytes_copied >> 20,
                        m.pool.kind.to_string(),
                        m.pool.path.display()
                    );
                }
            }
        }
        TemplateCommand::Inspect { name, tenant } => {
            let m = store.get(&tenant.or_default()?, &name)?;
            // The manifest, and the memory backend a restore on this node will use.
            let mut v = serde_json::to_value(&m)?;
            let backend = trenv_runtime::template::kernel::current(config.pool.kernel_templates)?;
            let refused = m.conversion.needs_anonymous.is_some()
                && backend == trenv_runtime::template::kernel::Backend::PoolFile;
            let description = if refused {
                format!(
                    "{}; this template was made for the kernel backend and its restores are \
                     refused here",
                    backend.describe()
                )
            } else {
                backend.describe().to_string()
            };
            if let Some(o) = v.as_object_mut() {
                o.insert("memory_backend".into(), serde_json::to_value(backend)?);
                o.insert("memory_backend_description".into(), description.into());
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        TemplateCommand::Rm {
            name,
            tenant,
            legacy,
        } => {
            if legacy {
                store.remove_legacy(&name, &config.pool.dir)?;
                println!("removed template {name} (layout before tenants)");
            } else {
                let tenant = tenant.or_default()?;
                store.remove(&tenant, &name, &config.pool.dir)?;
                println!("removed template {name} of tenant {tenant}");
            }
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
