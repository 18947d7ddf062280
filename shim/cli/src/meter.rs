//! `trenv meter …`: list, show, summarise and export metering records.
//!
//! Presentation only: selecting, summarising, pricing, hulls and recommendations are
//! `trenv_meter`'s; this module parses the arguments and prints tables, JSON and exports.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use trenv_meter::hull::Hull;
use trenv_meter::pricing::{PriceBook, Usage};
use trenv_meter::recommend::{self, Recommendation};
use trenv_meter::record::{self, Invocation, Selection, read_records, read_series};
use trenv_meter::summary::{SummaryRow, summarise};

#[derive(Args)]
pub struct MeterArgs {
    /// The meter directory (default: $TRENV_METER_DIR or /var/lib/trenv/meter).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// A price file overriding or adding to the built-in models (format: config/pricing.toml).
    #[arg(long, global = true)]
    prices: Option<PathBuf>,
    #[command(subcommand)]
    command: MeterCommand,
}

#[derive(Subcommand)]
enum MeterCommand {
    /// One line per invocation, oldest first.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Print JSON Lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one invocation (the latest matching one).
    Show {
        /// Container id (an exec with --exec).
        container: String,
        #[arg(long, default_value = "")]
        exec: String,
        #[arg(long)]
        json: bool,
    },
    /// Per function: count, duration and peak percentiles.
    Summary {
        #[command(flatten)]
        filter: Filter,
        #[arg(long)]
        json: bool,
    },
    /// Max and upscaling memory hulls over the runs of a function, as JSON (the file
    /// `io.trenv.meter.hull=<path>` takes for live autotuning).
    Hull {
        #[command(flatten)]
        filter: Filter,
        /// Bin width in milliseconds.
        #[arg(long, default_value_t = 100)]
        bin_ms: u64,
        /// How many bins earlier the upscaling hull rises.
        #[arg(long, default_value_t = 2)]
        lookahead: usize,
        /// Write the hull here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The memory size to allocate, per price model, from runs at several memory limits.
    Recommend {
        #[command(flatten)]
        filter: Filter,
        /// What to minimise.
        #[arg(long, value_enum, default_value_t = Objective::Cost)]
        objective: Objective,
        /// With --objective balance: the weight of cost against time (0..1).
        #[arg(long, default_value_t = 0.5)]
        weight: f64,
        #[arg(long)]
        json: bool,
    },
    /// Draws one invocation's memory over time, with its limit, exact peak and
    /// optionally a hull, as SVG or PNG (by the file extension).
    Plot {
        /// Container id (an exec with --exec).
        container: String,
        #[arg(long, default_value = "")]
        exec: String,
        /// The image file to write (.svg or .png).
        #[arg(long)]
        out: PathBuf,
        /// A hull file (`trenv meter hull`) to draw as well.
        #[arg(long)]
        hull: Option<PathBuf>,
    },
    /// All matching records as CSV or OpenMetrics text.
    Export {
        #[command(flatten)]
        filter: Filter,
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
    },
}

/// `--objective`: [`recommend::Objective`] as a command-line value.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Objective {
    /// The lowest median cost.
    Cost,
    /// The lowest median duration.
    Time,
    /// A weighted balance of normalised median cost and duration.
    Balance,
}

impl From<Objective> for recommend::Objective {
    fn from(o: Objective) -> recommend::Objective {
        match o {
            Objective::Cost => recommend::Objective::Cost,
            Objective::Time => recommend::Objective::Time,
            Objective::Balance => recommend::Objective::Balance,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Csv,
    Openmetrics,
}

#[derive(Args, Clone, Default)]
struct Filter {
    /// Only this function (annotation io.trenv.function).
    #[arg(long)]
    function: Option<String>,
    /// Only this container.
    #[arg(long)]
    container: Option<String>,
    /// Only this containerd namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Only the last N records.
    #[arg(long)]
    last: Option<usize>,
}

impl Filter {
    fn apply(self, recs: Vec<Invocation>) -> Vec<Invocation> {
        Selection {
            function: self.function,
            container: self.container,
            namespace: self.namespace,
            last: self.last,
        }
        .apply(recs)
    }
}

/// `--dir`, else $TRENV_METER_DIR, else the shim's default meter directory.
pub fn meter_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(record::dir_from_env)
}

fn load(dir: &Path) -> anyhow::Result<Vec<Invocation>> {
    if !dir.exists() {
        bail!(
            "no meter directory at {}: no invocation has been recorded there (set --dir or \
             TRENV_METER_DIR)",
            dir.display()
        );
    }
    read_records(dir).with_context(|| format!("reading records in {}", dir.display()))
}

pub fn run(args: MeterArgs) -> anyhow::Result<()> {
    let dir = meter_dir(args.dir);
    let book = match &args.prices {
        Some(p) => PriceBook::load(p)?,
        None => PriceBook::builtin(),
    };
    let recs = load(&dir)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        MeterCommand::List { filter, json } => {
            let recs = filter.apply(recs);
            if json {
                for r in &recs {
                    writeln!(out, "{}", serde_json::to_string(r)?)?;
                }
            } else {
                list_table(&mut out, &recs)?;
            }
        }
        MeterCommand::Show {
            container,
            exec,
            json,
        } => {
            let r = find(&recs, &container, &exec, &dir)?;
            if json {
                let bills = book.bills(&Usage::from(r));
                let v = serde_json::json!({"record": r, "bills": bills});
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                show(&mut out, &dir, r)?;
                bills_table(&mut out, &book, r)?;
            }
        }
        MeterCommand::Summary { filter, json } => {
            let rows = summarise(&filter.apply(recs), &book);
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                summary_table(&mut out, &rows)?;
            }
        }
        MeterCommand::Hull {
            filter,
            bin_ms,
            lookahead,
            out: path,
        } => {
            let recs = filter.apply(recs);
            let hull = Hull::from_records(&dir, &recs, bin_ms, lookahead)?;
            let text = serde_json::to_string_pretty(&hull)?;
            match path {
                Some(p) => {
                    std::fs::write(&p, text + "\n")
                        .with_context(|| format!("writing {}", p.display()))?;
                    writeln!(
                        out,
                        "hull of {} runs, {} bins of {} ms, written to {}",
                        hull.runs,
                        hull.max_hull_bytes.len(),
                        hull.bin_ms,
                        p.display()
                    )?;
                }
                None => writeln!(out, "{text}")?,
            }
        }
        MeterCommand::Recommend {
            filter,
            objective,
            weight,
            json,
        } => {
            let recs = filter.apply(recs);
            let recs: Vec<&Invocation> = recs.iter().collect();
            let rows = recommend::recommend(&recs, &book, objective.into(), weight)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                recommend_table(&mut out, &rows)?;
            }
        }
        MeterCommand::Plot {
            container,
            exec,
            out: path,
            hull,
        } => {
            let r = find(&recs, &container, &exec, &dir)?;
            let hull = hull.map(|h| Hull::load(&h)).transpose()?;
            let mut title = container.clone();
            if !exec.is_empty() {
                title.push_str(&format!(" exec {exec}"));
            }
            if !r.identity.function.is_empty() {
                title.push_str(&format!(" ({})", r.identity.function));
            }
            crate::plot::plot(
                &path,
                &title,
                &read_series(&dir, r),
                r.memory_limit_bytes,
                r.memory_peak_bytes,
                hull.as_ref(),
            )?;
            writeln!(out, "wrote {}", path.display())?;
        }
        MeterCommand::Export { filter, format } => {
            let recs = filter.apply(recs);
            match format {
                ExportFormat::Csv => export_csv(&mut out, &recs)?,
                ExportFormat::Openmetrics => export_openmetrics(&mut out, &recs)?,
            }
        }
    }
    Ok(())
}

/// The latest record of a container (or one of its execs).
fn find<'a>(
    recs: &'a [Invocation],
    container: &str,
    exec: &str,
    dir: &Path,
) -> anyhow::Result<&'a Invocation> {
    record::latest(recs, container, exec).with_context(|| {
        format!(
            "no record for container {container}{} in {}; `trenv meter list` shows what \
                 is recorded",
            if exec.is_empty() {
                String::new()
            } else {
                format!(" exec {exec}")
            },
            dir.display()
        )
    })
}

/// RFC 3339 UTC with milliseconds from µs since the epoch.
fn timestamp(us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub fn list_table(out: &mut impl Write, recs: &[Invocation]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<24} {:<28} {:<10} {:<14} {:>10} {:>10} {:>9} {:>5} {:>4}",
        "STARTED", "CONTAINER", "EXEC", "FUNCTION", "DURATION", "PEAK", "CPU", "EXIT", "OOM"
    )?;
    for r in recs {
        writeln!(
            out,
            "{:<24} {:<28} {:<10} {:<14} {:>8.1}ms {:>7.1}MiB {:>7.1}ms {:>5} {:>4}",
            timestamp(r.started_at_us),
            r.identity.container_id,
            r.identity.exec_id,
            r.identity.function,
            ms(r.duration_us),
            mib(r.memory_peak_bytes),
            ms(r.cpu_user_us + r.cpu_system_us),
            r.exit_status,
            r.oom_kills
        )?;
    }
    Ok(())
}

pub fn show(out: &mut impl Write, dir: &Path, r: &Invocation) -> anyhow::Result<()> {
    let id = &r.identity;
    writeln!(out, "container   {} ({})", id.container_id, id.namespace)?;
    if !id.exec_id.is_empty() {
        writeln!(out, "exec        {}", id.exec_id)?;
    }
    for (k, v) in [
        ("function", &id.function),
        ("image", &id.image),
        ("sandbox", &id.sandbox_id),
    ] {
        if !v.is_empty() {
            writeln!(out, "{k:<11} {v}")?;
        }
    }
    writeln!(out, "pid         {}", r.pid)?;
    writeln!(out, "started     {}", timestamp(r.started_at_us))?;
    writeln!(out, "ended       {}", timestamp(r.ended_at_us))?;
    writeln!(out, "duration    {:.3} ms (monotonic)", ms(r.duration_us))?;
    writeln!(
        out,
        "cpu         {:.3} ms user, {:.3} ms system",
        ms(r.cpu_user_us),
        ms(r.cpu_system_us)
    )?;
    writeln!(
        out,
        "memory      peak {:.2} MiB (exact, cgroup v{}), sampled max {:.2} MiB, limit {}",
        mib(r.memory_peak_bytes),
        r.cgroup_version,
        mib(r.memory_sampled_max_bytes),
        if r.memory_limit_bytes == 0 {
            "none".to_string()
        } else {
            format!("{:.0} MiB", mib(r.memory_limit_bytes))
        }
    )?;
    writeln!(
        out,
        "exit        {} (OOM kills: {})",
        r.exit_status, r.oom_kills
    )?;
    if r.series.is_empty() {
        writeln!(out, "series      none")?;
    } else {
        writeln!(
            out,
            "series      {} samples every {:.1} ms: {}",
            r.samples,
            ms(r.sample_interval_us),
            dir.join(&r.series).display()
        )?;
        if record::series_missing(dir, r) {
            writeln!(
                out,
                "            missing: not written (see the shim's log; e.g. a full disk)"
            )?;
        } else if let Ok(text) = std::fs::read_to_string(dir.join(&r.series)) {
            let values: Vec<u64> = text
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(',')?.1.parse().ok())
                .collect();
            writeln!(out, "            {}", sparkline(&values, 60))?;
        }
    }
    Ok(())
}

/// A one-line plot of a series, `width` characters wide.
fn sparkline(values: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let Some(&max) = values.iter().max() else {
        return String::new();
    };
    let max = max.max(1);
    let chunk = values.len().div_ceil(width).max(1);
    values
        .chunks(chunk)
        .map(|c| {
            let v = c.iter().copied().max().unwrap_or(0);
            BARS[((v as f64 / max as f64) * 7.0).round() as usize]
        })
        .collect()
}

fn summary_table(out: &mut impl Write, rows: &[SummaryRow]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<20} {:>6} {:>28} {:>28} {:>5} {:>6}",
        "FUNCTION", "COUNT", "DURATION ms p50/p90/p99", "PEAK MiB p50/p90/p99", "OOM", "FAILED"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<20} {:>6} {:>28} {:>28} {:>5} {:>6}",
            r.function,
            r.count,
            format!(
                "{:.1}/{:.1}/{:.1}",
                r.duration_ms_p50, r.duration_ms_p90, r.duration_ms_p99
            ),
            format!(
                "{:.1}/{:.1}/{:.1}",
                r.peak_mib_p50, r.peak_mib_p90, r.peak_mib_p99
            ),
            r.oom_kills,
            r.failures
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<20} {:<22} {:>16} {:>16} {:>7}",
        "FUNCTION", "PRICE MODEL", "$ PER MILLION", "NET $/MILLION", "WASTE"
    )?;
    for r in rows {
        for c in &r.costs {
            writeln!(
                out,
                "{:<20} {:<22} {:>16.4} {:>16.4} {:>6.1}%",
                r.function,
                c.model,
                c.cost_per_million_usd,
                c.net_cost_per_million_usd,
                c.waste_percent
            )?;
        }
    }
    Ok(())
}

pub fn recommend_table(out: &mut impl Write, rows: &[Recommendation]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<22} {:>10} {:>12} {:>16}   candidates (MB: median ms, $/M, failed/runs)",
        "PRICE MODEL", "MEMORY", "MEDIAN ms", "$ PER MILLION"
    )?;
    for r in rows {
        let cands: Vec<String> = r
            .candidates
            .iter()
            .map(|c| format!("{}: {:.1} ms, {:.4}, {}/{}", c.0, c.1, c.2 * 1e6, c.4, c.3))
            .collect();
        writeln!(
            out,
            "{:<22} {:>8}MB {:>12.1} {:>16.4}   {}",
            r.model,
            r.memory_limit_mb,
            r.median_duration_ms,
            r.cost_per_million_usd,
            cands.join("; ")
        )?;
    }
    Ok(())
}

pub fn bills_table(out: &mut impl Write, book: &PriceBook, r: &Invocation) -> anyhow::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{:<22} {:>9} {:>9} {:>14} {:>14} {:>14} {:>9} {:>8} {:>7}",
        "PRICE MODEL",
        "BILLED",
        "MEMORY",
        "COST $",
        "PER MILLION $",
        "NET $",
        "WASTE ms",
        "WASTE MB",
        "WASTE"
    )?;
    for b in book.bills(&Usage::from(r)) {
        writeln!(
            out,
            "{:<22} {:>7}ms {:>7}MB {:>14.10} {:>14.4} {:>14.10} {:>9.1} {:>8} {:>6.1}%",
            b.model,
            b.billed_ms,
            b.billed_memory_mb,
            b.cost_usd,
            b.cost_per_million_usd,
            b.net_cost_usd,
            b.wasted_ms,
            b.wasted_mb,
            b.waste_percent
        )?;
    }
    Ok(())
}

fn export_csv(out: &mut impl Write, recs: &[Invocation]) -> anyhow::Result<()> {
    writeln!(
        out,
        "started_at_us,ended_at_us,namespace,container_id,exec_id,function,duration_us,cpu_user_us,cpu_system_us,memory_peak_bytes,memory_limit_bytes,oom_kills,exit_status"
    )?;
    for r in recs {
        let i = &r.identity;
        writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.started_at_us,
            r.ended_at_us,
            csv_field(&i.namespace),
            csv_field(&i.container_id),
            csv_field(&i.exec_id),
            csv_field(&i.function),
            r.duration_us,
            r.cpu_user_us,
            r.cpu_system_us,
            r.memory_peak_bytes,
            r.memory_limit_bytes,
            r.oom_kills,
            r.exit_status
        )?;
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// An exported metric: name, type, help text and how to read it from a record.
type Metric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Invocation) -> f64,
);

/// OpenMetrics text: one sample per invocation and metric, labelled by identity.
fn export_openmetrics(out: &mut impl Write, recs: &[Invocation]) -> anyhow::Result<()> {
    let metrics: [Metric; 4] = [
        (
            "trenv_invocation_duration_seconds",
            "gauge",
            "Invocation duration (monotonic)",
            |r| r.duration_us as f64 / 1e6,
        ),
        (
            "trenv_invocation_cpu_seconds",
            "gauge",
            "CPU time (user + system)",
            |r| (r.cpu_user_us + r.cpu_system_us) as f64 / 1e6,
        ),
        (
            "trenv_invocation_memory_peak_bytes",
            "gauge",
            "Exact memory peak",
            |r| r.memory_peak_bytes as f64,
        ),
        (
            "trenv_invocation_exit_status",
            "gauge",
            "Exit status",
            |r| r.exit_status as f64,
        ),
    ];
    for (name, kind, help, value) in metrics {
        writeln!(out, "# TYPE {name} {kind}")?;
        writeln!(out, "# HELP {name} {help}.")?;
        for r in recs {
            let i = &r.identity;
            writeln!(
                out,
                "{name}{{namespace=\"{}\",container=\"{}\",exec=\"{}\",function=\"{}\"}} {} {}",
                label(&i.namespace),
                label(&i.container_id),
                label(&i.exec_id),
                label(&i.function),
                value(r),
                r.ended_at_us as f64 / 1e6
            )?;
        }
    }
    writeln!(out, "# EOF")?;
    Ok(())
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_700_000_000_123_456), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn sparkline_scales_to_the_maximum() {
        assert_eq!(sparkline(&[0, 50, 100], 3), "▁▅█");
        assert_eq!(sparkline(&[], 3), "");
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
