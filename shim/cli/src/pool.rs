//! `trenv pool …`: the node's idle pool of sandboxes (docs/sandboxes.md): list them (every
//! sandbox, idle or in use, with its tenant, state, last function and age), inspect one
//! (its record and namespaces), drain the idle ones (all, or one tenant's). Sandboxes in
//! use are never touched: they return to the pool, or go, when their containers are
//! deleted.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use trenv_runtime::config::Config;
use trenv_runtime::sandbox::network::Attachment;
use trenv_runtime::sandbox::record::now_ms;
use trenv_runtime::sandbox::{Kind, Pins, Record, State};

#[derive(Args)]
pub struct PoolArgs {
    /// trenv's config file (default: $TRENV_CONFIG or /etc/trenv/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: PoolCommand,
}

#[derive(Subcommand)]
enum PoolCommand {
    /// One line per sandbox.
    List {
        #[arg(long)]
        json: bool,
        /// Only this tenant's (as the TENANT column shows it).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// One sandbox's record and namespaces.
    Inspect {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Destroy the idle sandboxes (and any whose holder is gone).
    Drain {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: PoolArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::load()?,
    };
    let pool = config.sandboxes.pool();
    // What is past its keep-alive (or held by a process that is gone) goes first, as at
    // every use of the pool: a node where no shim runs any more sweeps nowhere else.
    if !matches!(args.command, PoolCommand::Drain { .. })
        && let Err(e) = pool.sweep()
    {
        eprintln!("warning: the pool was not swept: {e}");
    }
    match args.command {
        PoolCommand::List { json, tenant } => {
            let rs: Vec<Record> = pool
                .records()
                .into_iter()
                .filter(|r| tenant.as_ref().is_none_or(|t| *t == r.tenant))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rs)?);
            } else {
                print!("{}", table(&rs, now_ms()));
            }
        }
        PoolCommand::Inspect { id, json } => {
            let Some(r) = pool.records().into_iter().find(|r| r.id == id) else {
                bail!(
                    "no sandbox {id} in {} (`trenv pool list` shows them)",
                    pool.dir().display()
                );
            };
            let pins = Pins::at(&pool.dir().join(&r.id));
            let addresses = Attachment::of(pins.dir())
                .map(|a| a.addresses())
                .unwrap_or_default();
            let inodes = pins.inodes().ok();
            let namespaces: Vec<(String, String)> = Kind::ALL
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let ino = inodes.map_or("?".into(), |n| n[i].to_string());
                    (k.name().to_string(), format!("{}:[{ino}]", k.name()))
                })
                .collect();
            if json {
                let mut v = serde_json::to_value(&r)?;
                v["namespaces"] = serde_json::json!(
                    namespaces
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                        .collect::<serde_json::Map<_, _>>()
                );
                v["dir"] = pins.dir().display().to_string().into();
                v["addresses"] = serde_json::json!(addresses);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", table(std::slice::from_ref(&r), now_ms()));
                println!("dir: {}", pins.dir().display());
                if !addresses.is_empty() {
                    println!("addresses: {}", addresses.join(" "));
                }
                for (k, v) in namespaces {
                    println!("{k}: {v}");
                }
            }
        }
        PoolCommand::Drain { tenant, json } => {
            let gone = pool.drain(tenant.as_deref())?;
            let left = pool.records().len();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "destroyed": gone, "in_use": left })
                );
            } else {
                println!(
                    "destroyed {} idle sandbox(es); {left} in use left",
                    gone.len()
                );
            }
        }
    }
    Ok(())
}

/// The human table of `records` at `now_ms`.
fn table(records: &[Record], now_ms: u64) -> String {
    let mut out = format!(
        "{:<28} {:<24} {:<10} {:<24} {:<12} {:>5} {:>9} {:>8}\n",
        "SANDBOX", "TENANT", "STATE", "FUNCTION", "NETWORK", "USES", "IDLE", "MEMORY"
    );
    for r in records {
        let state = match &r.state {
            State::Idle => "idle".to_string(),
            State::Busy { .. } => "in use".to_string(),
            State::Purging { .. } => "purging".to_string(),
        };
        let idle = if r.is_idle() {
            format!("{}s", now_ms.saturating_sub(r.last_used_ms) / 1000)
        } else {
            "-".into()
        };
        // What it held when it was last purged (the pool's memory bound adds these up).
        let memory = match r.memory {
            Some(b) => format!("{}K", b.div_ceil(1024)),
            None => "-".into(),
        };
        out.push_str(&format!(
            "{:<28} {:<24} {:<10} {:<24} {:<12} {:>5} {:>9} {:>8}\n",
            r.id,
            r.tenant,
            state,
            r.function,
            r.network.as_deref().unwrap_or("-"),
            r.uses,
            idle,
            memory
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_state_tenant_function_and_idle_time() {
        let r = Record {
            id: "sb-1".into(),
            tenant: "default".into(),
            key: "k".into(),
            state: State::Idle,
            function: "fn-a".into(),
            network: Some("trenv-fn".into()),
            created_ms: 0,
            last_used_ms: 1_000,
            uses: 3,
            memory: Some(120 << 10),
            names: None,
        };
        let t = table(&[r], 61_000);
        let line = t.lines().nth(1).unwrap();
        for want in [
            "sb-1", "default", "idle", "fn-a", "trenv-fn", "3", "60s", "120K",
        ] {
            assert!(line.contains(want), "{want} in {line}");
        }
    }
}
