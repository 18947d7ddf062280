//! The node's function rules (`[[functions]]` in trenv's config): which containers are which
//! function, and what trenv does for them, for clients that cannot set `io.trenv.*`
//! annotations (faasd passes a function's settings as container labels, which never reach
//! a runtime).
//!
//! A rule matches a container by its containerd namespace (exact) and its id (a glob: faasd
//! names a function's container after the function). The first rule that matches applies;
//! annotations the container does set win over it. A rule names the function (default: the
//! container id) for metering records and sandboxes, and with `template = "auto"` makes
//! templating transparent: the first start of a function is cold and becomes its template
//! once ready; every later start restores from it.
//!
//! An automatic template's name is the function's plus a digest of everything a restore
//! must find unchanged ([`auto_template_name`]): the image's layers (the rootfs's overlay
//! lower directories) and the spec fields a restore refuses to differ. A redeployed
//! function (a new image, other environment or arguments) so gets a template of its own
//! instead of a refused restore. A rootfs whose layers trenv cannot identify gets none:
//! restoring an old image's memory into a new image would run the old code.

use std::path::PathBuf;

use oci_spec::runtime::Spec;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::container::rootfs::Mount;
use crate::snapshot::honour::SpecRecord;
use crate::template::manifest::security_digest;
use crate::template::ready::{DEFAULT_READY_FILE, plain_ready_file, policy_named};
use crate::template::warmup::{Warmup, WarmupError};

/// One `[[functions]]` rule, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionRule {
    /// The containerd namespace (exact; unset: any), e.g. faasd's "openfaas-fn".
    pub namespace: Option<String>,
    /// The container id, a glob (`*` any run of characters, `?` one); default `*`.
    #[serde(default = "any")]
    pub container: String,
    /// The function's name; unset: the container id.
    pub function: Option<String>,
    /// `"auto"`: make the function's template when it is ready, restore from it after;
    /// `"off"` (default): start cold.
    #[serde(default)]
    pub template: AutoTemplate,
    /// The file whose existence in the container says the function is ready (default
    /// /tmp/.lock, as OpenFaaS's watchdogs write it).
    pub ready_file: Option<String>,
    /// What the template maps: "map" (default), "no-heap" or "copy".
    pub policy: Option<String>,
    /// A request the function serves before its template is taken, `[METHOD ]URL` on the
    /// container's own loopback (template/warmup.rs), its body, and how many times.
    pub warmup: Option<String>,
    pub warmup_body: Option<String>,
    pub warmup_requests: Option<u32>,
}

fn any() -> String {
    "*".into()
}

/// Whether a rule templates its functions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoTemplate {
    #[default]
    Off,
    Auto,
}

impl FunctionRule {
    /// Why the rule cannot be used, if it cannot.
    pub fn invalid(&self) -> Option<String> {
        if self.container.is_empty() {
            return Some("a [[functions]] rule's container pattern is empty (use \"*\")".into());
        }
        if self.function.as_deref() == Some("") {
            return Some(
                "a [[functions]] rule's function is empty (leave it out to name \
                         functions after their containers)"
                    .into(),
            );
        }
        if let Some(f) = &self.ready_file
            && plain_ready_file(f).is_none()
        {
            return Some(format!(
                "[[functions]] ready_file {f:?}: give an absolute path inside the container \
                 without `..` (e.g. /tmp/.lock)"
            ));
        }
        if let Some(p) = &self.policy
            && policy_named(p).is_none()
        {
            return Some(format!(
                "[[functions]] policy {p:?}: expected map, no-heap or copy"
            ));
        }
        if let Err(e) = self.try_warmup() {
            return Some(format!("[[functions]] warmup: {e}"));
        }
        None
    }

    fn try_warmup(&self) -> Result<Option<Warmup>, WarmupError> {
        Warmup::parse(
            self.warmup.as_deref().unwrap_or(""),
            self.warmup_body.as_deref().unwrap_or(""),
            &self
                .warmup_requests
                .map(|n| n.to_string())
                .unwrap_or_default(),
        )
    }

    /// The warm-up of the rule's templates (none for a rule that [`Self::invalid`] refuses).
    pub fn warmup(&self) -> Option<Warmup> {
        self.try_warmup().ok().flatten()
    }

    /// Whether the rule applies to container `id` of containerd namespace `namespace`.
    pub fn matches(&self, namespace: &str, id: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace) && glob(&self.container, id)
    }

    /// The function container `id` runs.
    pub fn function_of(&self, id: &str) -> String {
        self.function.clone().unwrap_or_else(|| id.to_string())
    }

    /// The ready file of the rule's templates.
    pub fn ready_file(&self) -> PathBuf {
        self.ready_file
            .as_deref()
            .and_then(plain_ready_file)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_READY_FILE))
    }

    /// The mapping policy of the rule's templates.
    pub fn policy(&self) -> trenv_criu::template::Policy {
        self.policy
            .as_deref()
            .and_then(policy_named)
            .unwrap_or_default()
    }
}

/// The first of `rules` that applies to container `id` of namespace `namespace`.
pub fn rule_for<'a>(
    rules: &'a [FunctionRule],
    namespace: &str,
    id: &str,
) -> Option<&'a FunctionRule> {
    rules.iter().find(|r| r.matches(namespace, id))
}

/// Whether `text` matches `pattern` (`*`: any run of characters, `?`: one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with one backtrack point: the last `*` seen.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// What identifies the image a container's rootfs comes from: the lower directories of its
/// overlay (containerd's snapshots of the image's layers). `None` when it has none (a rootfs
/// prepared by the client, a bind, another filesystem): its image cannot be told apart.
pub fn rootfs_identity(rootfs: &[Mount]) -> Option<String> {
    let lowers: Vec<&str> = rootfs
        .iter()
        .map(|m| {
            (m.kind == "overlay")
                .then(|| m.options.iter().find_map(|o| o.strip_prefix("lowerdir=")))
                .flatten()
        })
        .collect::<Option<_>>()?;
    (!lowers.is_empty()).then(|| lowers.join("|"))
}

/// The name of the automatic template of `function` for a container with `spec` on a rootfs
/// of identity `rootfs` (see [`rootfs_identity`]), made with the rule's ready file and
/// policy (and warm-up): the function's name (made a valid template name) and 12 hex digits of a digest
/// of everything else. Variables of `env_may_differ` are left out (they may differ between
/// a template and its restores).
pub fn auto_template_name(
    function: &str,
    spec: &Spec,
    rootfs: &str,
    env_may_differ: &[String],
    rule: &FunctionRule,
) -> String {
    let mut record = SpecRecord::of(spec);
    record.env.retain(|k, _| !env_may_differ.contains(k));
    let policy = rule.policy();
    let mut identity = serde_json::json!({
        "rootfs": rootfs,
        "spec": record,
        "security": security_digest(spec),
        "ready_file": rule.ready_file(),
        "policy": [policy.min_vma, u64::from(policy.include_heap)],
    });
    // Only with one, so that the names of rules without a warm-up stay what they were.
    if let Some(w) = rule.warmup() {
        identity["warmup"] = serde_json::json!(w);
    }
    let digest = format!("{:x}", Sha256::digest(identity.to_string().as_bytes()));
    format!("{}-{}", template_base(function), &digest[..12])
}

/// `function` as the start of a template name: lower case, characters a name cannot have
/// replaced by `-`, starting with a letter or digit, at most 50 characters.
fn template_base(function: &str) -> String {
    let mut base: String = function
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    if !base.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        base.insert(0, 'f');
        base.truncate(50);
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::manifest::valid_name;

    fn rule(text: &str) -> FunctionRule {
        toml::from_str(text).unwrap()
    }

    fn overlay(lower: &str) -> Mount {
        Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("lowerdir={lower}"),
                "upperdir=/s/9/fs".into(),
                "workdir=/s/9/work".into(),
            ],
        }
    }

    fn spec_with_env(env: &[&str]) -> Spec {
        let mut spec = Spec::default();
        let mut p = spec.process().clone().unwrap_or_default();
        p.set_env(Some(env.iter().map(|s| s.to_string()).collect()));
        p.set_args(Some(vec!["fwatchdog".into()]));
        spec.set_process(Some(p));
        spec
    }

    #[test]
    fn globs() {
        for (p, t, m) in [
            ("*", "", true),
            ("*", "figlet", true),
            ("fig*", "figlet", true),
            ("*let", "figlet", true),
            ("f?g*t", "figlet", true),
            ("*g*e*", "figlet", true),
            ("figlet", "figlet", true),
            ("figlet", "figlets", false),
            ("fig?", "figlet", false),
            ("*x*", "figlet", false),
            ("", "figlet", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ] {
            assert_eq!(glob(p, t), m, "{p:?} on {t:?}");
        }
    }

    #[test]
    fn the_first_matching_rule_applies_and_namespaces_are_exact() {
        let rules = vec![
            rule("namespace = \"openfaas-fn\"\ncontainer = \"nodeinfo*\"\nfunction = \"ni\""),
            rule("namespace = \"openfaas-fn\"\ntemplate = \"auto\""),
            rule("container = \"job-*\""),
        ];
        let r = rule_for(&rules, "openfaas-fn", "nodeinfo-2").unwrap();
        assert_eq!(r.function_of("nodeinfo-2"), "ni");
        let r = rule_for(&rules, "openfaas-fn", "figlet").unwrap();
        assert_eq!(
            (r.function_of("figlet").as_str(), r.template),
            ("figlet", AutoTemplate::Auto)
        );
        assert!(rule_for(&rules, "openfaas-fn-2", "figlet").is_none());
        assert!(rule_for(&rules, "default", "job-1").is_some());
        assert!(rule_for(&rules, "default", "figlet").is_none());
        assert_eq!(rules[2].template, AutoTemplate::Off);
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (text, says) in [
            ("container = \"\"", "container pattern is empty"),
            ("function = \"\"", "function is empty"),
            ("ready_file = \"tmp/x\"", "absolute path"),
            ("ready_file = \"/tmp/../etc/x\"", "absolute path"),
            ("policy = \"huge\"", "expected map, no-heap or copy"),
            ("warmup = \"http://10.0.0.1/\"", "container's own loopback"),
            ("warmup_requests = 3", "needs the warm-up request itself"),
            (
                "warmup = \"http://127.0.0.1/\"\nwarmup_requests = 0",
                "from 1 to",
            ),
        ] {
            let why = rule(text).invalid().unwrap_or_default();
            assert!(why.contains(says), "{text}: {why}");
        }
        assert!(toml::from_str::<FunctionRule>("template = \"always\"").is_err());
        assert!(toml::from_str::<FunctionRule>("image = \"x\"").is_err());
        assert_eq!(rule("").invalid(), None);
    }

    #[test]
    fn only_overlay_layers_identify_a_rootfs() {
        assert_eq!(
            rootfs_identity(&[overlay("/s/2/fs:/s/1/fs")]).as_deref(),
            Some("/s/2/fs:/s/1/fs")
        );
        let bind = Mount {
            kind: "bind".into(),
            source: "/s/3/fs".into(),
            options: vec!["rbind".into()],
        };
        assert_eq!(rootfs_identity(&[bind]), None);
        assert_eq!(rootfs_identity(&[]), None);
        let mut no_lower = overlay("x");
        no_lower.options.retain(|o| !o.starts_with("lowerdir="));
        assert_eq!(rootfs_identity(&[no_lower]), None);
    }

    #[test]
    fn a_template_name_changes_with_the_image_and_the_spec_but_not_with_what_may_differ() {
        let r = rule("");
        let may = vec!["HOSTNAME".to_string()];
        let spec = spec_with_env(&["A=1", "HOSTNAME=x"]);
        let name = auto_template_name("figlet", &spec, "/s/2/fs", &may, &r);
        assert!(name.starts_with("figlet-") && valid_name(&name), "{name}");
        let same = spec_with_env(&["A=1", "HOSTNAME=y"]);
        assert_eq!(
            auto_template_name("figlet", &same, "/s/2/fs", &may, &r),
            name
        );
        let other_env = spec_with_env(&["A=2", "HOSTNAME=x"]);
        assert_ne!(
            auto_template_name("figlet", &other_env, "/s/2/fs", &may, &r),
            name
        );
        assert_ne!(
            auto_template_name("figlet", &spec, "/s/7/fs", &may, &r),
            name
        );
        let copy = rule("policy = \"copy\"");
        assert_ne!(
            auto_template_name("figlet", &spec, "/s/2/fs", &may, &copy),
            name
        );
        let primed = rule("warmup = \"POST http://127.0.0.1:8080/\"\nwarmup_body = \"{}\"");
        assert_eq!(primed.warmup().map(|w| w.requests), Some(1));
        assert_ne!(
            auto_template_name("figlet", &spec, "/s/2/fs", &may, &primed),
            name
        );
    }

    #[test]
    fn any_function_name_gives_a_valid_template_name() {
        let spec = spec_with_env(&[]);
        for f in ["Fig Let", "_x", "-", "", &"a".repeat(80), "é"] {
            let name = auto_template_name(f, &spec, "/l", &[], &rule(""));
            assert!(valid_name(&name), "{f:?} gave {name:?}");
        }
    }
}
