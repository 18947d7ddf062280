//! `trenv trace IMAGE [ARGS]`: run a function through containerd on trenv and report what
//! it used and what it would cost (the research tool's one-shot mode), optionally many
//! times and at several memory sizes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use trenv_meter::hull::Hull;
use trenv_meter::pricing::PriceBook;
use trenv_meter::recommend::{Objective, recommend};
use trenv_meter::record::{self, Invocation, read_records};

use crate::meter::{bills_table, meter_dir, recommend_table, show};

#[derive(Args)]
pub struct TraceArgs {
    /// The image to run (already in containerd).
    image: String,
    /// Command and arguments (default: the image's entrypoint).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
    /// How many times to run it (per memory limit).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Memory limits to sweep, in MB (e.g. 128,256,512); none: unlimited.
    #[arg(long, value_delimiter = ',')]
    limits: Vec<u64>,
    /// Function name for the records (default: the image name).
    #[arg(long)]
    function: Option<String>,
    /// containerd runtime to use.
    #[arg(long, default_value = "io.containerd.trenv.v1")]
    runtime: String,
    /// containerd namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Meter directory the shim writes to (default: $TRENV_METER_DIR or /var/lib/trenv/meter).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Price file overriding the built-in models.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Also write the runs' memory hull (for io.trenv.meter.hull) to this file.
    #[arg(long)]
    hull: Option<PathBuf>,
}

fn ctr() -> String {
    std::env::var("CTR").unwrap_or_else(|_| "ctr".to_string())
}

/// Waits for the shim's record of `id`.
fn record_of(dir: &std::path::Path, id: &str) -> anyhow::Result<Invocation> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some(r) = record::latest(&read_records(dir)?, id, "") {
            return Ok(r.clone());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "no metering record for {id} in {}: is the shim metering into another directory \
         (TRENV_METER_DIR of containerd), or metering off (TRENV_METER=off)?",
        dir.display()
    )
}

pub fn run(a: TraceArgs) -> anyhow::Result<()> {
    let dir = meter_dir(a.dir.clone());
    let book = match &a.prices {
        Some(p) => PriceBook::load(p)?,
        None => PriceBook::builtin(),
    };
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let function = a.function.clone().unwrap_or_else(|| a.image.clone());
    let limits: Vec<u64> = if a.limits.is_empty() {
        vec![0]
    } else {
        a.limits.clone()
    };
    let total = (limits.len() * a.runs) as u64;
    let bar = (total > 1).then(|| {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} runs [{bar:30}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let mut recs: Vec<Invocation> = Vec::new();
    let mut last_output = String::new();
    for &mb in &limits {
        for i in 0..a.runs {
            let id = format!("trace-{}-{}-{i}", std::process::id(), mb);
            if let Some(b) = &bar {
                b.set_message(if mb == 0 {
                    "unlimited".into()
                } else {
                    format!("{mb} MB")
                });
            }
            let mut cmd = Command::new(ctr());
            cmd.args([
                "--namespace",
                &a.namespace,
                "run",
                "--rm",
                "--runtime",
                &a.runtime,
            ]);
            if mb > 0 {
                cmd.args(["--memory-limit", &(mb << 20).to_string()]);
            }
            cmd.args(["--annotation", &format!("io.trenv.function={function}")])
                .arg(&a.image)
                .arg(&id)
                .args(&a.args)
                .stdin(Stdio::null());
            let out = cmd
                .output()
                .with_context(|| format!("running {} (set CTR to containerd's ctr)", ctr()))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            // ctr's own errors (the run never started) carry its "ctr: " prefix.
            if let Some(err) = stderr.lines().find(|l| l.starts_with("ctr: ")) {
                bail!("{}: {err}", a.image);
            }
            last_output = format!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
            recs.push(record_of(&dir, &id)?);
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut out = std::io::stdout().lock();
    if recs.len() == 1 {
        if !last_output.is_empty() {
            writeln!(out, "--- output ---\n{}--------------", last_output)?;
        }
        show(&mut out, &dir, &recs[0])?;
        bills_table(&mut out, &book, &recs[0])?;
    } else {
        writeln!(out, "{} runs of {function}", recs.len())?;
        crate::meter::list_table(&mut out, &recs)?;
        if limits.len() > 1 {
            writeln!(out)?;
            let refs: Vec<&Invocation> = recs.iter().collect();
            recommend_table(&mut out, &recommend(&refs, &book, Objective::Cost, 0.5)?)?;
        }
    }
    if let Some(path) = &a.hull {
        let hull = Hull::from_records(&dir, &recs, 100, 2)?;
        std::fs::write(path, serde_json::to_string_pretty(&hull)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(
            out,
            "hull of {} runs written to {}",
            hull.runs,
            path.display()
        )?;
    }
    Ok(())
}
