//! FaaS price models as data: what an invocation would have cost on AWS Lambda, Google
//! Cloud Functions, Cloud Run functions, Azure Functions or Cloudflare Workers, and how much
//! of that is paid for time and memory that were billed but not used.
//!
//! The models are TOML ([`PriceBook::builtin`] embeds `config/pricing.toml`, which documents
//! the format and the units); [`PriceBook::load`] adds a user's file whose models override
//! the built-in ones by name, key by key, or add new ones.
//!
//! For one invocation ([`Usage`]) and one model, [`PriceModel::bill`] gives a [`Bill`]:
//!
//! ```text
//! M = ceil(peak / 2^20) MB used;  P = billed memory (tier);  T = billed time
//! cost     = T·P/1024·price_GBs + T·cpu_units·price_cpu + T·price_ms + price_request
//! net cost = the same with the exact time and M (no rounding, no minimum, same tiers)
//! overhead = cost − net cost;  wasted ms = T − exact time;  wasted MB = P − M
//! ```
//!
//! A "GB" is 1024 MB of 2^20 bytes throughout (AWS, Google and Azure all bill GiB-s).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::Invocation;

/// The built-in models.
const BUILTIN: &str = include_str!("../../../config/pricing.toml");
const BUILTIN_ORIGIN: &str = "the built-in price models (config/pricing.toml)";

const MIB: u64 = 1 << 20;
/// MB per GB in GB-s (see the module documentation).
const MB_PER_GB: f64 = 1024.0;

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("cannot read the price file {path}: {source}; check the path of the price models file")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the price file {origin} is not valid TOML: {message}; fix the syntax (config/pricing.toml shows the format)"
    )]
    Syntax { origin: String, message: String },
    #[error("the price file {origin} {problem} (config/pricing.toml shows the format)")]
    Layout { origin: String, problem: String },
    #[error(
        "price model {model:?} in {origin}: {message}; the keys and their types are listed at the top of config/pricing.toml"
    )]
    Model {
        origin: String,
        model: String,
        message: String,
    },
    #[error("price model {model:?} in {origin}: {problem}")]
    Invalid {
        origin: String,
        model: String,
        problem: String,
    },
    #[error("unknown price model {name:?}; the price models are: {known}")]
    Unknown { name: String, known: String },
}

/// What an invocation used, as far as prices are concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Wall time, microseconds.
    pub duration_us: u64,
    /// CPU time, user + system, microseconds.
    pub cpu_us: u64,
    /// Exact memory peak, bytes.
    pub memory_peak_bytes: u64,
    /// Memory limit of the container, bytes; 0 = unlimited.
    pub memory_limit_bytes: u64,
}

impl From<&Invocation> for Usage {
    fn from(inv: &Invocation) -> Usage {
        Usage {
            duration_us: inv.duration_us,
            cpu_us: inv.cpu_user_us.saturating_add(inv.cpu_system_us),
            memory_peak_bytes: inv.memory_peak_bytes,
            memory_limit_bytes: inv.memory_limit_bytes,
        }
    }
}

impl Usage {
    /// The memory used, in whole MB: ceil(peak / 2^20).
    pub fn used_memory_mb(&self) -> u64 {
        self.memory_peak_bytes.div_ceil(MIB)
    }
}

/// Which time a model bills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BilledTime {
    /// Wall time of the invocation.
    #[default]
    Duration,
    /// CPU time (user + system), as Cloudflare Workers bill.
    Cpu,
}

/// How a model finds the billed memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MemoryModel {
    /// A configured size: the container's memory limit (or, without one, the peak) rounded
    /// up to `min_mb + k·step_mb` and clamped to `[min_mb, max_mb]`.
    Allocated {
        min_mb: u64,
        max_mb: u64,
        step_mb: u64,
    },
    /// A configured size from a list: the smallest that holds the limit (or the peak), the
    /// largest when none does.
    Sizes { sizes_mb: Vec<u64> },
    /// The observed peak rounded up to a multiple of `step_mb`, at least `min_mb`, at most
    /// `max_mb`.
    Observed {
        step_mb: u64,
        #[serde(default)]
        min_mb: u64,
        #[serde(default)]
        max_mb: Option<u64>,
    },
    /// Memory is not billed.
    Unbilled,
}

/// The price per GB-s for the GB-s of a month from `from_gb_s` on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GbSecondTier {
    pub from_gb_s: f64,
    pub usd: f64,
}

/// CPU that comes with a memory size, billed per unit-second of billed time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuPricing {
    /// "GHz" (GCF gen1) or "vCPU" (Cloud Run functions); informational.
    pub unit: String,
    pub usd_per_unit_s: f64,
    /// Ascending by `up_to_mb`; the first that holds the billed memory applies (the last
    /// when none does).
    pub tiers: Vec<CpuTier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTier {
    pub up_to_mb: u64,
    pub units: f64,
}

/// One price model (a `[[model]]` table of config/pricing.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceModel {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub billed_time: BilledTime,
    /// Billed time is rounded up to a multiple of this.
    pub granularity_ms: u64,
    /// And is at least this.
    #[serde(default)]
    pub minimum_ms: u64,
    pub request_usd_per_million: f64,
    pub memory: MemoryModel,
    /// Volume tiers of the GB-s price, ascending, the first from 0; empty = free.
    #[serde(default)]
    pub gb_s_tiers: Vec<GbSecondTier>,
    #[serde(default)]
    pub cpu: Option<CpuPricing>,
    /// Price per million ms of billed time.
    #[serde(default)]
    pub usd_per_million_ms: f64,
}

/// What one invocation costs under one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bill {
    pub model: String,
    /// Billed time (CPU time for models with `billed_time = "cpu"`), ms.
    pub billed_ms: u64,
    /// The exact time the billed time was rounded from, ms.
    pub exact_ms: f64,
    /// Billed memory, MB (0 when memory is not billed).
    pub billed_memory_mb: u64,
    /// ceil(peak / 2^20).
    pub used_memory_mb: u64,
    /// Billed GB-s (billed time × billed memory), for accumulating a month's volume.
    pub billed_gb_s: f64,
    /// The GB-s price of the volume tier used.
    pub gb_s_usd: f64,
    /// CPU units (GHz or vCPU) the billed memory comes with.
    pub cpu_units: f64,
    /// Memory-time, CPU and CPU-time charges.
    pub compute_usd: f64,
    pub request_usd: f64,
    /// compute + request.
    pub cost_usd: f64,
    /// The cost of a million such invocations.
    pub cost_per_million_usd: f64,
    /// The cost with the exact time and the used memory, no rounding or minimum.
    pub net_cost_usd: f64,
    /// cost − net cost.
    pub overhead_usd: f64,
    /// billed − exact time, ms.
    pub wasted_ms: f64,
    /// billed − used memory, MB (negative when the model's largest size is smaller than
    /// the peak; 0 when memory is not billed).
    pub wasted_mb: i64,
    /// overhead / cost · 100 (0 for a free invocation).
    pub waste_percent: f64,
}

impl PriceModel {
    /// The bill at the start of a month's volume (the first GB-s tier).
    pub fn bill(&self, usage: &Usage) -> Bill {
        self.bill_at_volume(usage, 0.0)
    }

    /// The bill with the GB-s price of the tier in force after `gb_s_so_far` GB-s this month
    /// (an invocation is priced wholly at that tier, also when it crosses into the next).
    pub fn bill_at_volume(&self, usage: &Usage, gb_s_so_far: f64) -> Bill {
        let billed_ms = self.billed_ms(usage);
        let exact_ms = self.exact_ms(usage);
        let billed_memory_mb = self.billed_memory_mb(usage);
        let used_memory_mb = usage.used_memory_mb();
        let net_memory_mb = match self.memory {
            MemoryModel::Unbilled => 0,
            _ => used_memory_mb,
        };
        let gb_s_usd = self.gb_s_price_at(gb_s_so_far);
        let cpu_units = self.cpu_units(billed_memory_mb);
        let cpu_usd = self.cpu.as_ref().map_or(0.0, |c| c.usd_per_unit_s);
        let ms_usd = self.usd_per_million_ms / 1e6;

        let compute = |ms: f64, mb: u64| {
            let s = ms / 1000.0;
            s * mb as f64 / MB_PER_GB * gb_s_usd + s * cpu_units * cpu_usd + ms * ms_usd
        };
        let request_usd = self.request_usd_per_million / 1e6;
        let compute_usd = compute(billed_ms as f64, billed_memory_mb);
        let cost_usd = compute_usd + request_usd;
        let net_cost_usd = compute(exact_ms, net_memory_mb) + request_usd;
        let overhead_usd = cost_usd - net_cost_usd;
        Bill {
            model: self.name.clone(),
            billed_ms,
            exact_ms,
            billed_memory_mb,
            used_memory_mb,
            billed_gb_s: billed_ms as f64 / 1000.0 * billed_memory_mb as f64 / MB_PER_GB,
            gb_s_usd,
            cpu_units,
            compute_usd,
            request_usd,
            cost_usd,
            cost_per_million_usd: cost_usd * 1e6,
            net_cost_usd,
            overhead_usd,
            wasted_ms: billed_ms as f64 - exact_ms,
            wasted_mb: billed_memory_mb as i64 - net_memory_mb as i64,
            waste_percent: if cost_usd > 0.0 {
                overhead_usd / cost_usd * 100.0
            } else {
                0.0
            },
        }
    }

    /// The exact time the model bills, ms.
    pub fn exact_ms(&self, usage: &Usage) -> f64 {
        self.time_us(usage) as f64 / 1000.0
    }

    /// The billed time: rounded up to the granularity, at least the minimum, ms.
    pub fn billed_ms(&self, usage: &Usage) -> u64 {
        let g = self.granularity_ms.max(1);
        let rounded = self.time_us(usage).div_ceil(g.saturating_mul(1000)) * g;
        rounded.max(self.minimum_ms)
    }

    fn time_us(&self, usage: &Usage) -> u64 {
        match self.billed_time {
            BilledTime::Duration => usage.duration_us,
            BilledTime::Cpu => usage.cpu_us,
        }
    }

    /// The billed memory, MB: allocated models take the container's limit (the peak when
    /// unlimited), observed models the peak; 0 when memory is not billed.
    pub fn billed_memory_mb(&self, usage: &Usage) -> u64 {
        let used = usage.used_memory_mb();
        let configured = if usage.memory_limit_bytes > 0 {
            usage.memory_limit_bytes.div_ceil(MIB)
        } else {
            used
        };
        match &self.memory {
            MemoryModel::Allocated {
                min_mb,
                max_mb,
                step_mb,
            } => {
                let steps = configured
                    .saturating_sub(*min_mb)
                    .div_ceil((*step_mb).max(1));
                min_mb
                    .saturating_add(steps.saturating_mul(*step_mb))
                    .min(*max_mb)
            }
            MemoryModel::Sizes { sizes_mb } => sizes_mb
                .iter()
                .copied()
                .find(|&s| s >= configured)
                .or_else(|| sizes_mb.last().copied())
                .unwrap_or(0),
            MemoryModel::Observed {
                step_mb,
                min_mb,
                max_mb,
            } => {
                let step = (*step_mb).max(1);
                (used.div_ceil(step) * step)
                    .max(*min_mb)
                    .min(max_mb.unwrap_or(u64::MAX))
            }
            MemoryModel::Unbilled => 0,
        }
    }

    /// The CPU units (GHz, vCPU) that come with `memory_mb`; 0 without CPU pricing.
    pub fn cpu_units(&self, memory_mb: u64) -> f64 {
        let Some(cpu) = &self.cpu else { return 0.0 };
        cpu.tiers
            .iter()
            .find(|t| t.up_to_mb >= memory_mb)
            .or(cpu.tiers.last())
            .map_or(0.0, |t| t.units)
    }

    /// The GB-s price in force after `gb_s_so_far` GB-s this month: the tier with the
    /// largest `from_gb_s` ≤ `gb_s_so_far` (at exactly 6 B GB-s, AWS's second tier).
    pub fn gb_s_price_at(&self, gb_s_so_far: f64) -> f64 {
        self.gb_s_tiers
            .iter()
            .rev()
            .find(|t| t.from_gb_s <= gb_s_so_far)
            .or(self.gb_s_tiers.first())
            .map_or(0.0, |t| t.usd)
    }

    /// The memory-time charge of `total_gb_s` GB-s in a month, each tier's share at its
    /// price (7 B GB-s on aws-lambda-x86 = 6 B at the first price + 1 B at the second).
    pub fn monthly_gb_s_cost(&self, total_gb_s: f64) -> f64 {
        let mut cost = 0.0;
        for (i, tier) in self.gb_s_tiers.iter().enumerate() {
            let end = self
                .gb_s_tiers
                .get(i + 1)
                .map_or(f64::INFINITY, |t| t.from_gb_s);
            if total_gb_s > tier.from_gb_s {
                cost += (total_gb_s.min(end) - tier.from_gb_s) * tier.usd;
            }
        }
        cost
    }

    /// Checks what serde cannot: ranges, orderings and prices.
    fn validate(&self) -> Result<(), InvalidModel> {
        let price = |what: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(InvalidModel(format!(
                    "{what} is {v}; prices must be finite and not negative"
                )))
            }
        };
        if self.name.trim().is_empty() {
            return Err(InvalidModel(
                "the name is empty; give the model a name".into(),
            ));
        }
        if self.granularity_ms == 0 {
            return Err(InvalidModel(
                "granularity_ms is 0; set it to the billing increment in ms (1 for per-ms billing)"
                    .into(),
            ));
        }
        price("request_usd_per_million", self.request_usd_per_million)?;
        price("usd_per_million_ms", self.usd_per_million_ms)?;
        match &self.memory {
            MemoryModel::Allocated {
                min_mb,
                max_mb,
                step_mb,
            } => {
                if *step_mb == 0 || *min_mb == 0 || min_mb > max_mb {
                    return Err(InvalidModel(format!(
                        "memory has min_mb = {min_mb}, max_mb = {max_mb}, step_mb = {step_mb}; \
                         use 0 < min_mb <= max_mb and step_mb >= 1"
                    )));
                }
            }
            MemoryModel::Sizes { sizes_mb } => {
                if sizes_mb.is_empty()
                    || sizes_mb[0] == 0
                    || sizes_mb.windows(2).any(|w| w[0] >= w[1])
                {
                    return Err(InvalidModel(format!(
                        "memory.sizes_mb is {sizes_mb:?}; list the sizes in MB, ascending, at least one"
                    )));
                }
            }
            MemoryModel::Observed {
                step_mb,
                min_mb,
                max_mb,
            } => {
                if *step_mb == 0 || max_mb.is_some_and(|m| m < *min_mb) {
                    return Err(InvalidModel(format!(
                        "memory has step_mb = {step_mb}, min_mb = {min_mb}, max_mb = {max_mb:?}; \
                         use step_mb >= 1 and min_mb <= max_mb"
                    )));
                }
            }
            MemoryModel::Unbilled => {
                if !self.gb_s_tiers.is_empty() {
                    return Err(InvalidModel(
                        "memory is unbilled but gb_s_tiers prices memory-time; \
                         remove gb_s_tiers or give memory a kind that bills it"
                            .into(),
                    ));
                }
            }
        }
        for t in &self.gb_s_tiers {
            price("a gb_s_tiers price", t.usd)?;
        }
        let starts: Vec<f64> = self.gb_s_tiers.iter().map(|t| t.from_gb_s).collect();
        if starts.first().is_some_and(|&s| s != 0.0) || starts.windows(2).any(|w| w[0] >= w[1]) {
            return Err(InvalidModel(format!(
                "gb_s_tiers start at {starts:?} GB-s; the first tier must start at 0 and the \
                 others in ascending order"
            )));
        }
        if let Some(cpu) = &self.cpu {
            price("cpu.usd_per_unit_s", cpu.usd_per_unit_s)?;
            if cpu.tiers.is_empty() || cpu.tiers.windows(2).any(|w| w[0].up_to_mb >= w[1].up_to_mb)
            {
                return Err(InvalidModel(
                    "cpu.tiers must list at least one { up_to_mb, units }, ascending by \
                     up_to_mb"
                        .into(),
                ));
            }
            if let Some(t) = cpu
                .tiers
                .iter()
                .find(|t| !t.units.is_finite() || t.units < 0.0)
            {
                return Err(InvalidModel(format!(
                    "cpu.tiers gives {} units for up to {} MB; units must be finite and not negative",
                    t.units, t.up_to_mb
                )));
            }
        }
        Ok(())
    }
}

/// Why a model that deserialized is still unusable (a range, an ordering or a price), with
/// what to change; [`PricingError::Invalid`] adds the model and the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidModel(String);

/// All price models: the built-in ones, overridden or extended by a user's file.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceBook {
    models: Vec<PriceModel>,
}

/// A `[[model]]` table before deserialization, with the file it (last) came from.
struct RawModel {
    name: String,
    table: toml::Table,
    origin: String,
}

impl PriceBook {
    /// The built-in models of config/pricing.toml.
    pub fn builtin() -> PriceBook {
        let raw = raw_models(BUILTIN, BUILTIN_ORIGIN).and_then(|raw| {
            build(
                raw.into_iter()
                    .map(|(name, table)| (name, table, BUILTIN_ORIGIN)),
            )
        });
        // config/pricing.toml is embedded and checked by the unit tests.
        PriceBook {
            models: raw
                .unwrap_or_else(|e| panic!("the built-in config/pricing.toml is valid: {e}")),
        }
    }

    /// The built-in models, overridden or extended by the models of the TOML file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<PriceBook, PricingError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PricingError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PriceBook::with_overrides(&text, &path.display().to_string())
    }

    /// The built-in models, overridden or extended by the models in `text` (TOML, the
    /// format of config/pricing.toml); `origin` names the text in errors. A model whose
    /// name is built in is merged into it key by key (tables merge, other values and
    /// arrays replace; a table with a different `kind` replaces); other models are added.
    pub fn with_overrides(text: &str, origin: &str) -> Result<PriceBook, PricingError> {
        let mut raw: Vec<RawModel> = raw_models(BUILTIN, BUILTIN_ORIGIN)?
            .into_iter()
            .map(|(name, table)| RawModel {
                name,
                table,
                origin: BUILTIN_ORIGIN.to_string(),
            })
            .collect();
        for (name, table) in raw_models(text, origin)? {
            match raw.iter_mut().find(|r| r.name == name) {
                Some(r) => {
                    merge(&mut r.table, table);
                    r.origin = origin.to_string();
                }
                None => raw.push(RawModel {
                    name,
                    table,
                    origin: origin.to_string(),
                }),
            }
        }
        Ok(PriceBook {
            models: build(
                raw.iter()
                    .map(|r| (r.name.clone(), r.table.clone(), r.origin.as_str())),
            )?,
        })
    }

    /// All models, built-in ones first, in file order.
    pub fn models(&self) -> &[PriceModel] {
        &self.models
    }

    pub fn get(&self, name: &str) -> Option<&PriceModel> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The model called `name`, or an error listing the models there are.
    pub fn model(&self, name: &str) -> Result<&PriceModel, PricingError> {
        self.get(name).ok_or_else(|| PricingError::Unknown {
            name: name.to_string(),
            known: self
                .models
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// One invocation's bill under every model (first GB-s tier).
    pub fn bills(&self, usage: &Usage) -> Vec<Bill> {
        self.models.iter().map(|m| m.bill(usage)).collect()
    }
}

/// The `[[model]]` tables of a price file, by name.
fn raw_models(text: &str, origin: &str) -> Result<Vec<(String, toml::Table)>, PricingError> {
    let layout = |problem: String| PricingError::Layout {
        origin: origin.to_string(),
        problem,
    };
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| PricingError::Syntax {
        origin: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let models = match doc.remove("model") {
        None => Vec::new(),
        Some(toml::Value::Array(models)) => models,
        Some(_) => {
            return Err(layout(
                "has a `model` key that is not an array of tables; write each price model as a [[model]] table".into(),
            ));
        }
    };
    if let Some(key) = doc.keys().next() {
        return Err(layout(format!(
            "has the top-level key `{key}`; only [[model]] tables may appear at the top level"
        )));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(models.len());
    for (i, model) in models.into_iter().enumerate() {
        let toml::Value::Table(table) = model else {
            return Err(layout(format!(
                "has a `model` entry #{} that is not a table; write each price model as a [[model]] table",
                i + 1
            )));
        };
        let name = match table.get("name") {
            Some(toml::Value::String(name)) => name.clone(),
            Some(_) => {
                return Err(layout(format!(
                    "has a [[model]] #{} whose name is not a string; write name = \"...\"",
                    i + 1
                )));
            }
            None => {
                return Err(layout(format!(
                    "has a [[model]] #{} without a name; add name = \"...\"",
                    i + 1
                )));
            }
        };
        if !seen.insert(name.clone()) {
            return Err(layout(format!(
                "defines the model {name:?} twice; keep one [[model]] table per name"
            )));
        }
        out.push((name, table));
    }
    Ok(out)
}

/// Deserializes and validates the models.
fn build<'a>(
    raw: impl IntoIterator<Item = (String, toml::Table, &'a str)>,
) -> Result<Vec<PriceModel>, PricingError> {
    raw.into_iter()
        .map(|(name, table, origin)| {
            let model: PriceModel =
                toml::Value::Table(table.clone())
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        let message = e.message().trim_end();
                        PricingError::Model {
                            origin: origin.to_string(),
                            model: name.clone(),
                            message: match culprit(&table) {
                                Some(key) => format!("key `{key}`: {message}"),
                                None => message.to_string(),
                            },
                        }
                    })?;
            model.validate().map_err(|problem| PricingError::Invalid {
                origin: origin.to_string(),
                model: name,
                problem: problem.to_string(),
            })?;
            Ok(model)
        })
        .collect()
}

/// The top-level key of a model table that does not deserialize, found by putting each
/// key into a valid model (deserializing a `toml::Value` does not report the key).
fn culprit(table: &toml::Table) -> Option<String> {
    let (_, template) = raw_models(BUILTIN, BUILTIN_ORIGIN)
        .ok()?
        .into_iter()
        .next()?;
    table
        .iter()
        .find(|(key, value)| {
            let mut probe = template.clone();
            probe.insert((*key).clone(), (*value).clone());
            toml::Value::Table(probe).try_into::<PriceModel>().is_err()
        })
        .map(|(key, _)| key.clone())
}

/// Merges `over` into `base`: tables recursively, other values replace. A table whose
/// `kind` differs from the base's replaces it whole (another kind has other keys).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o))
                if o.get("kind").is_none_or(|k| b.get("kind") == Some(k)) =>
            {
                merge(b, o)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative tolerance 1e-9 (absolute near 0).
    #[track_caller]
    fn close(actual: f64, expected: f64) {
        let tol = 1e-9 * expected.abs().max(1e-12);
        assert!(
            (actual - expected).abs() <= tol,
            "{actual:e} is not {expected:e} (±{tol:e})"
        );
    }

    fn usage(duration_ms: f64, peak_mib: u64, limit_mib: u64) -> Usage {
        Usage {
            duration_us: (duration_ms * 1000.0).round() as u64,
            cpu_us: 0,
            memory_peak_bytes: peak_mib * MIB,
            memory_limit_bytes: limit_mib * MIB,
        }
    }

    fn model(name: &str) -> PriceModel {
        PriceBook::builtin().model(name).unwrap().clone()
    }

    #[test]
    fn builtin_models_parse_and_validate() {
        let book = PriceBook::builtin();
        let names: Vec<_> = book.models().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "aws-lambda-x86",
                "aws-lambda-arm",
                "aws-lambda-2019",
                "gcf-gen1",
                "cloud-run-functions",
                "azure-consumption",
                "cloudflare-workers"
            ]
        );
        assert_eq!(book.bills(&usage(10.0, 10, 0)).len(), 7);
        let err = book.model("aws").unwrap_err().to_string();
        assert!(
            err.contains("\"aws\"") && err.contains("aws-lambda-x86, aws-lambda-arm"),
            "{err}"
        );
    }

    #[test]
    fn aws_x86_rounds_up_to_1_ms() {
        // 101.2 ms, limit 512 MiB, peak 100 MiB.
        let b = model("aws-lambda-x86").bill(&usage(101.2, 100, 512));
        assert_eq!(
            (b.billed_ms, b.billed_memory_mb, b.used_memory_mb),
            (102, 512, 100)
        );
        // 0.102 s · 512/1024 GB = 0.051 GB-s; · 0.0000166667 = 8.500017e-7; + 0.20/1e6
        close(b.billed_gb_s, 0.051);
        close(b.compute_usd, 8.500017e-7);
        close(b.request_usd, 2e-7);
        close(b.cost_usd, 1.0500017e-6);
        close(b.cost_per_million_usd, 1.0500017);
        // net: 0.1012 s · 100/1024 GB = 0.0098828125 GB-s; · 0.0000166667 + 2e-7
        close(b.net_cost_usd, 3.6471387109375e-7);
        close(b.overhead_usd, 1.0500017e-6 - 3.6471387109375e-7);
        close(b.wasted_ms, 0.8);
        assert_eq!(b.wasted_mb, 412);
        close(
            b.waste_percent,
            (1.0500017e-6 - 3.6471387109375e-7) / 1.0500017e-6 * 100.0,
        );
        // 1 ms granularity, 1 ms minimum: 0.3 ms → 1 ms; 100.0 ms stays 100 ms.
        assert_eq!(model("aws-lambda-x86").billed_ms(&usage(0.3, 1, 0)), 1);
        assert_eq!(model("aws-lambda-x86").billed_ms(&usage(100.0, 1, 0)), 100);
    }

    #[test]
    fn aws_arm_one_gb_second() {
        // 1000 ms · 1024 MB = 1 GB-s · 0.0000133334 + 0.20/1e6 = 1.35334e-5
        let b = model("aws-lambda-arm").bill(&usage(1000.0, 1024, 1024));
        close(b.cost_usd, 1.35334e-5);
        close(b.net_cost_usd, 1.35334e-5);
        close(b.overhead_usd, 0.0);
        assert_eq!(b.wasted_mb, 0);
    }

    #[test]
    fn aws_2019_rounds_to_100_ms_and_64_mb_steps() {
        // limit 150 MiB → 128 + ceil(22/64)·64 = 192 MB; 101 ms → 200 ms.
        let b = model("aws-lambda-2019").bill(&usage(101.0, 130, 150));
        assert_eq!((b.billed_ms, b.billed_memory_mb), (200, 192));
        // 0.2 s · 192/1024 = 0.0375 GB-s · 0.00001667 = 6.25125e-7; + 2e-7
        close(b.cost_usd, 8.25125e-7);
        // net: 0.101 s · 130/1024 = 0.012822265625 GB-s · 0.00001667 + 2e-7
        close(b.net_cost_usd, 4.1374716796875e-7);
        close(b.wasted_ms, 99.0);
        assert_eq!(b.wasted_mb, 62);
        // a limit on a step stays: 192 MiB → 192 MB; 193 MiB → 256 MB.
        let m = model("aws-lambda-2019");
        assert_eq!(m.billed_memory_mb(&usage(1.0, 1, 192)), 192);
        assert_eq!(m.billed_memory_mb(&usage(1.0, 1, 193)), 256);
        // 0.5 ms → 100 ms; exactly 100 ms stays.
        assert_eq!(m.billed_ms(&usage(0.5, 1, 0)), 100);
        assert_eq!(m.billed_ms(&usage(100.0, 1, 0)), 100);
    }

    #[test]
    fn gcf_gen1_rounds_to_100_ms_and_bills_ghz_seconds() {
        // 250 ms → 300 ms; limit 256 MiB → the 256 MB tier with 400 MHz.
        let b = model("gcf-gen1").bill(&usage(250.0, 200, 256));
        assert_eq!((b.billed_ms, b.billed_memory_mb), (300, 256));
        close(b.cpu_units, 0.4);
        // 0.3 s · 0.25 GB = 0.075 GB-s · 0.0000025 = 1.875e-7
        // 0.3 s · 0.4 GHz = 0.12 GHz-s · 0.00001  = 1.2e-6;  + 0.40/1e6 = 1.7875e-6
        close(b.cost_usd, 1.7875e-6);
        // net: 0.25 s · 200/1024 GB · 0.0000025 = 1.220703125e-7
        //      0.25 s · 0.4 GHz · 0.00001 = 1e-6;  + 4e-7 = 1.5220703125e-6
        close(b.net_cost_usd, 1.5220703125e-6);
        // 300 MiB is no tier: the next, 512 MB with 800 MHz.
        let m = model("gcf-gen1");
        assert_eq!(m.billed_memory_mb(&usage(1.0, 1, 300)), 512);
        close(m.cpu_units(512), 0.8);
    }

    #[test]
    fn cloud_run_functions_bill_vcpu_seconds() {
        // 1.05 s → 1.1 s; limit 1 GiB → 1024 MiB with 0.583 vCPU.
        let b = model("cloud-run-functions").bill(&usage(1050.0, 700, 1024));
        assert_eq!((b.billed_ms, b.billed_memory_mb), (1100, 1024));
        // 1.1 GiB-s · 0.0000025 = 2.75e-6; 1.1 s · 0.583 = 0.6413 vCPU-s · 0.000024
        // = 1.53912e-5; + 0.40/1e6 → 1.85412e-5
        close(b.cost_usd, 1.85412e-5);
        // net: 1.05 · 700/1024 · 0.0000025 + 1.05 · 0.583 · 0.000024 + 4e-7
        close(b.net_cost_usd, 1.688603359375e-5);
        // No limit: the smallest size holding a 600 MiB peak is 1 GiB.
        let m = model("cloud-run-functions");
        assert_eq!(m.billed_memory_mb(&usage(1.0, 600, 0)), 1024);
        close(m.cpu_units(128), 0.083);
        close(m.cpu_units(32768), 8.0);
    }

    #[test]
    fn azure_has_a_100_ms_minimum_and_rounds_observed_memory_to_128_mb() {
        // 30 ms → 100 ms minimum; peak 200 MiB → 256 MB (the limit is ignored).
        let b = model("azure-consumption").bill(&usage(30.0, 200, 1536));
        assert_eq!((b.billed_ms, b.billed_memory_mb), (100, 256));
        // 0.1 s · 0.25 GB = 0.025 GB-s · 0.000016 = 4e-7; + 2e-7 = 6e-7
        close(b.cost_usd, 6e-7);
        // net: 0.03 s · 200/1024 GB = 0.005859375 GB-s · 0.000016 = 9.375e-8; + 2e-7
        close(b.net_cost_usd, 2.9375e-7);
        close(b.overhead_usd, 3.0625e-7);
        // 3.0625e-7 / 6e-7 · 100
        close(b.waste_percent, 51.041666666666664);
        close(b.wasted_ms, 70.0);
        assert_eq!(b.wasted_mb, 56);
        let m = model("azure-consumption");
        // Above the minimum, 1 ms granularity: 150.3 ms → 151 ms.
        assert_eq!(m.billed_ms(&usage(150.3, 1, 0)), 151);
        // 128 MiB → 128 MB; one byte more → 129 MB used → 256 MB; an idle 0 → 128 MB.
        let mut u = usage(1.0, 128, 0);
        assert_eq!(m.billed_memory_mb(&u), 128);
        u.memory_peak_bytes += 1;
        assert_eq!(m.billed_memory_mb(&u), 256);
        assert_eq!(m.billed_memory_mb(&usage(1.0, 0, 0)), 128);
    }

    #[test]
    fn cloudflare_bills_cpu_ms_not_memory() {
        // 500 ms wall, 12.3 ms CPU → 13 CPU-ms · 0.02/1e6 = 2.6e-7; + 0.30/1e6 = 5.6e-7
        let u = Usage {
            duration_us: 500_000,
            cpu_us: 12_300,
            memory_peak_bytes: 50 * MIB,
            memory_limit_bytes: 128 * MIB,
        };
        let b = model("cloudflare-workers").bill(&u);
        assert_eq!(
            (b.billed_ms, b.billed_memory_mb, b.used_memory_mb),
            (13, 0, 50)
        );
        close(b.exact_ms, 12.3);
        close(b.cost_usd, 5.6e-7);
        // net: 12.3 · 0.02/1e6 = 2.46e-7; + 3e-7
        close(b.net_cost_usd, 5.46e-7);
        close(b.wasted_ms, 0.7);
        assert_eq!(b.wasted_mb, 0);
        close(b.billed_gb_s, 0.0);
    }

    #[test]
    fn volume_tiers_at_and_across_6_and_15_billion_gb_s() {
        let m = model("aws-lambda-x86");
        close(m.gb_s_price_at(0.0), 0.0000166667);
        close(m.gb_s_price_at(5_999_999_999.0), 0.0000166667);
        close(m.gb_s_price_at(6e9), 0.000015);
        close(m.gb_s_price_at(14_999_999_999.0), 0.000015);
        close(m.gb_s_price_at(15e9), 0.0000133334);
        close(m.gb_s_price_at(1e12), 0.0000133334);
        let arm = model("aws-lambda-arm");
        close(arm.gb_s_price_at(6e9), 0.0000120001);
        close(arm.gb_s_price_at(15e9), 0.0000106667);

        // 1 GB-s at 6 B so far: 0.000015 + 2e-7; net is priced at the same tier.
        let u = usage(1000.0, 1024, 1024);
        let b = m.bill_at_volume(&u, 6e9);
        close(b.gb_s_usd, 0.000015);
        close(b.cost_usd, 1.52e-5);
        close(b.net_cost_usd, 1.52e-5);
        close(m.bill_at_volume(&u, 15e9).cost_usd, 1.35334e-5);
        close(m.bill(&u).cost_usd, 1.68667e-5);

        // Monthly: 6e9 · 0.0000166667 = 100,000.2
        close(m.monthly_gb_s_cost(6e9), 100_000.2);
        // + 1e9 · 0.000015 = 15,000 → 115,000.2
        close(m.monthly_gb_s_cost(7e9), 115_000.2);
        // 6e9 · p1 + 9e9 · 0.000015 = 100,000.2 + 135,000
        close(m.monthly_gb_s_cost(15e9), 235_000.2);
        // + 5e9 · 0.0000133334 = 66,667
        close(m.monthly_gb_s_cost(20e9), 301_667.2);
        close(m.monthly_gb_s_cost(0.0), 0.0);
        // One tier only: 1e9 · 0.00001667
        close(model("aws-lambda-2019").monthly_gb_s_cost(1e9), 16_670.0);
    }

    #[test]
    fn memory_is_clamped_to_the_model_range() {
        let x86 = model("aws-lambda-x86");
        // below the minimum: 64 MiB → 128 MB
        assert_eq!(x86.billed_memory_mb(&usage(1.0, 10, 64)), 128);
        // above the maximum: 20 GiB → 10,240 MB
        assert_eq!(x86.billed_memory_mb(&usage(1.0, 10, 20 * 1024)), 10240);
        // no limit: the peak, 200.5 MiB → 201 MB
        let u = Usage {
            memory_peak_bytes: 200 * MIB + MIB / 2,
            ..usage(1.0, 0, 0)
        };
        assert_eq!(x86.billed_memory_mb(&u), 201);
        // a 12 GiB peak without a limit → 10,240 MB billed, 12,288 used: −2,048 MB waste
        let b = x86.bill(&usage(1.0, 12 * 1024, 0));
        assert_eq!((b.billed_memory_mb, b.wasted_mb), (10240, -2048));
        // 2019: 4 GiB → 3008 MB; GCF gen1: 16 GiB → 8192 MB; Azure: 2 GiB peak → 1536 MB
        assert_eq!(
            model("aws-lambda-2019").billed_memory_mb(&usage(1.0, 1, 4096)),
            3008
        );
        assert_eq!(
            model("gcf-gen1").billed_memory_mb(&usage(1.0, 1, 16384)),
            8192
        );
        assert_eq!(
            model("azure-consumption").billed_memory_mb(&usage(1.0, 2048, 0)),
            1536
        );
    }

    #[test]
    fn usage_from_an_invocation_adds_user_and_system_cpu() {
        let inv = Invocation {
            format: crate::record::FORMAT,
            identity: Default::default(),
            pid: 1,
            started_at_us: 0,
            ended_at_us: 2,
            duration_us: 101_200,
            cpu_user_us: 30_000,
            cpu_system_us: 5_000,
            memory_peak_bytes: 100 * MIB,
            memory_sampled_max_bytes: 90 * MIB,
            memory_limit_bytes: 512 * MIB,
            oom_kills: 0,
            exit_status: 0,
            cgroup_version: 2,
            sample_interval_us: 10_000,
            samples: 10,
            series: String::new(),
        };
        let u = Usage::from(&inv);
        assert_eq!(
            u,
            Usage {
                duration_us: 101_200,
                cpu_us: 35_000,
                memory_peak_bytes: 100 * MIB,
                memory_limit_bytes: 512 * MIB,
            }
        );
    }

    #[test]
    fn a_user_file_overrides_one_price_and_adds_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.toml");
        std::fs::write(
            &path,
            r#"
[[model]]
name = "aws-lambda-x86"
request_usd_per_million = 0.25

[[model]]
name = "gcf-gen1"
[model.cpu]
usd_per_unit_s = 0.000012

[[model]]
name = "my-faas"
granularity_ms = 10
request_usd_per_million = 0
memory = { kind = "observed", step_mb = 64 }
gb_s_tiers = [{ from_gb_s = 0, usd = 0.00001 }]
"#,
        )
        .unwrap();
        let book = PriceBook::load(&path).unwrap();
        let builtin = PriceBook::builtin();
        assert_eq!(book.models().len(), builtin.models().len() + 1);

        let x86 = book.model("aws-lambda-x86").unwrap();
        close(x86.request_usd_per_million, 0.25);
        // everything else is the built-in model's
        let mut expected = builtin.model("aws-lambda-x86").unwrap().clone();
        expected.request_usd_per_million = 0.25;
        assert_eq!(*x86, expected);
        // 1 GB-s · 0.0000166667 + 0.25/1e6
        close(x86.bill(&usage(1000.0, 1024, 1024)).cost_usd, 1.69167e-5);

        // a nested table merges: the unit and tiers stay
        let gcf = book.model("gcf-gen1").unwrap();
        let cpu = gcf.cpu.as_ref().unwrap();
        close(cpu.usd_per_unit_s, 0.000012);
        assert_eq!(cpu.unit, "GHz");
        assert_eq!(cpu.tiers.len(), 7);

        assert_eq!(
            book.model("aws-lambda-arm").unwrap(),
            builtin.model("aws-lambda-arm").unwrap()
        );

        // the new model: 25 ms → 30 ms, 100 MiB → 128 MB: 0.03 · 0.125 · 0.00001 = 3.75e-8
        let mine = book.model("my-faas").unwrap().bill(&usage(25.0, 100, 0));
        assert_eq!((mine.billed_ms, mine.billed_memory_mb), (30, 128));
        close(mine.cost_usd, 3.75e-8);
    }

    #[test]
    fn a_memory_table_of_another_kind_replaces_the_built_in_one() {
        let book = PriceBook::with_overrides(
            "[[model]]\nname = \"aws-lambda-x86\"\nmemory = { kind = \"sizes\", sizes_mb = [128, 1024] }\n",
            "test",
        )
        .unwrap();
        let m = book.model("aws-lambda-x86").unwrap();
        assert_eq!(
            m.memory,
            MemoryModel::Sizes {
                sizes_mb: vec![128, 1024]
            }
        );
        assert_eq!(m.billed_memory_mb(&usage(1.0, 1, 300)), 1024);
    }

    #[test]
    fn malformed_overrides_give_clear_errors() {
        let err = |text: &str| {
            PriceBook::with_overrides(text, "prices.toml")
                .unwrap_err()
                .to_string()
        };
        // TOML syntax: the file, the position and what to do.
        let e = err("[[model]]\nname = \"aws-lambda-x86\"\nrequest_usd_per_million = \n");
        assert!(
            e.contains("prices.toml is not valid TOML") && e.contains("line 3"),
            "{e}"
        );
        assert!(e.contains("fix the syntax"), "{e}");
        // a wrong type: the model and the key
        let e = err("[[model]]\nname = \"aws-lambda-x86\"\ngranularity_ms = \"fast\"\n");
        assert!(
            e.contains("\"aws-lambda-x86\" in prices.toml")
                && e.contains("key `granularity_ms`: invalid type: string \"fast\", expected u64"),
            "{e}"
        );
        // a misspelt key
        let e = err("[[model]]\nname = \"aws-lambda-x86\"\nrequest_usd_per_milion = 0.3\n");
        assert!(e.contains("request_usd_per_milion"), "{e}");
        // a value out of range, with the fix
        let e = err("[[model]]\nname = \"aws-lambda-x86\"\ngranularity_ms = 0\n");
        assert!(e.contains("granularity_ms is 0; set it"), "{e}");
        let e = err("[[model]]\nname = \"aws-lambda-x86\"\nrequest_usd_per_million = -1.0\n");
        assert!(e.contains("not negative"), "{e}");
        let e = err(
            "[[model]]\nname = \"aws-lambda-x86\"\ngb_s_tiers = [{ from_gb_s = 5, usd = 0.1 }]\n",
        );
        assert!(e.contains("the first tier must start at 0"), "{e}");
        // a new model that lacks keys
        let e = err("[[model]]\nname = \"new\"\ngranularity_ms = 1\n");
        assert!(e.contains("\"new\"") && e.contains("missing field"), "{e}");
        // layout
        let e = err("[model]\nname = \"x\"\n");
        assert!(e.contains("not an array of tables"), "{e}");
        let e = err("[[models]]\nname = \"x\"\n");
        assert!(e.contains("top-level key `models`"), "{e}");
        let e = err("[[model]]\ngranularity_ms = 1\n");
        assert!(e.contains("without a name"), "{e}");
        let e = err("[[model]]\nname = \"a\"\n[[model]]\nname = \"a\"\n");
        assert!(e.contains("twice"), "{e}");
        // a missing file
        let e = PriceBook::load("/nonexistent/prices.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read the price file /nonexistent/prices.toml"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_override_file_is_the_built_in_book() {
        assert_eq!(
            PriceBook::with_overrides("", "empty").unwrap(),
            PriceBook::builtin()
        );
    }
}
