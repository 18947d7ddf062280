//! Templates made by the shim itself: a container annotated `io.trenv.template.create=NAME`
//! becomes template NAME once the function in it is ready — the same template
//! `trenv template create NAME --from CONTAINER` makes, without anyone watching for the
//! moment.
//!
//! Ready means: a file exists in the container. By default `/tmp/.lock`, the file
//! OpenFaaS's watchdogs create once the function is healthy; any other absolute path with
//! `io.trenv.template.ready-file`. `io.trenv.template.policy` chooses what is mapped: `map`
//! (default: large anonymous VMAs but not `[heap]`), `heap` (`[heap]` too) or `copy`
//! (nothing: a plain CRIU restore), as the CLI's `--heap`/`--copy`.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use trenv_criu::template::Policy;

use super::TemplateError;
use super::manifest::valid_name;

pub const CREATE_ANNOTATION: &str = "io.trenv.template.create";
pub const READY_FILE_ANNOTATION: &str = "io.trenv.template.ready-file";
pub const POLICY_ANNOTATION: &str = "io.trenv.template.policy";
/// The file OpenFaaS's classic and of-watchdog create when the function is ready.
pub const DEFAULT_READY_FILE: &str = "/tmp/.lock";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadyTemplateError {
    #[error("annotation {CREATE_ANNOTATION}: {0}")]
    Name(String),
    #[error(
        "annotation {READY_FILE_ANNOTATION}={0:?}: give an absolute path inside the container \
         without `..` (e.g. /tmp/.lock)"
    )]
    ReadyFile(String),
    #[error(
        "annotation {POLICY_ANNOTATION}={0:?}: expected map (default), heap (map [heap] too) \
         or copy (map nothing)"
    )]
    Policy(String),
    #[error(
        "annotations {READY_FILE_ANNOTATION} and {POLICY_ANNOTATION} need {CREATE_ANNOTATION}=NAME"
    )]
    Orphan,
}

/// What to make, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyTemplate {
    pub name: String,
    /// Absolute, inside the container.
    pub ready_file: PathBuf,
    pub min_vma: u64,
    pub include_heap: bool,
}

impl ReadyTemplate {
    /// From a container's annotations (`get` returns "" for a missing one); `None` when it
    /// asks for no template.
    pub fn from_annotations(
        get: impl Fn(&str) -> String,
    ) -> Result<Option<ReadyTemplate>, ReadyTemplateError> {
        let (name, file, policy) = (
            get(CREATE_ANNOTATION),
            get(READY_FILE_ANNOTATION),
            get(POLICY_ANNOTATION),
        );
        if name.is_empty() {
            return if file.is_empty() && policy.is_empty() {
                Ok(None)
            } else {
                Err(ReadyTemplateError::Orphan)
            };
        }
        if !valid_name(&name) {
            return Err(ReadyTemplateError::Name(
                TemplateError::BadName(name).to_string(),
            ));
        }
        let ready_file = if file.is_empty() {
            PathBuf::from(DEFAULT_READY_FILE)
        } else {
            let p = PathBuf::from(&file);
            let plain = p.is_absolute()
                && p.components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
                && p.components().count() > 1;
            if !plain {
                return Err(ReadyTemplateError::ReadyFile(file));
            }
            p
        };
        let default = Policy::default();
        let (min_vma, include_heap) = match policy.as_str() {
            "" | "map" => (default.min_vma, false),
            "heap" => (default.min_vma, true),
            "copy" => (u64::MAX, false),
            _ => return Err(ReadyTemplateError::Policy(policy)),
        };
        Ok(Some(ReadyTemplate {
            name,
            ready_file,
            min_vma,
            include_heap,
        }))
    }

    pub fn policy(&self) -> Policy {
        Policy {
            min_vma: self.min_vma,
            include_heap: self.include_heap,
        }
    }

    /// The ready file as the host sees it inside process `pid`'s root.
    pub fn ready_file_of(&self, pid: i32) -> PathBuf {
        let rel = self
            .ready_file
            .strip_prefix("/")
            .unwrap_or(Path::new(&self.ready_file));
        PathBuf::from(format!("/proc/{pid}/root")).join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<ReadyTemplate>, ReadyTemplateError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ReadyTemplate::from_annotations(|k| m.get(k).cloned().unwrap_or_default())
    }

    #[test]
    fn no_annotation_no_template() {
        assert_eq!(parse(&[]), Ok(None));
    }

    #[test]
    fn defaults_follow_the_openfaas_watchdog_and_the_cli() {
        let t = parse(&[(CREATE_ANNOTATION, "fn-a")]).unwrap().unwrap();
        assert_eq!(t.ready_file, PathBuf::from("/tmp/.lock"));
        assert_eq!(t.policy(), Policy::default());
        assert_eq!(
            t.ready_file_of(42),
            PathBuf::from("/proc/42/root/tmp/.lock")
        );
    }

    #[test]
    fn policies() {
        let with = |p| {
            parse(&[(CREATE_ANNOTATION, "f"), (POLICY_ANNOTATION, p)])
                .unwrap()
                .unwrap()
        };
        assert!(with("heap").include_heap);
        assert_eq!(with("copy").min_vma, u64::MAX);
        assert_eq!(with("map").policy(), Policy::default());
        assert_eq!(
            parse(&[(CREATE_ANNOTATION, "f"), (POLICY_ANNOTATION, "mapp")]),
            Err(ReadyTemplateError::Policy("mapp".into()))
        );
    }

    #[test]
    fn bad_values_are_refused_with_what_to_do() {
        for file in ["tmp/ready", "/tmp/../../etc/passwd", "/", "../x"] {
            let e = parse(&[(CREATE_ANNOTATION, "f"), (READY_FILE_ANNOTATION, file)]);
            assert_eq!(e, Err(ReadyTemplateError::ReadyFile(file.into())), "{file}");
        }
        let e = parse(&[(CREATE_ANNOTATION, "Bad Name")]).unwrap_err();
        assert!(e.to_string().contains("invalid template name"), "{e}");
        assert_eq!(
            parse(&[(READY_FILE_ANNOTATION, "/tmp/x")]),
            Err(ReadyTemplateError::Orphan)
        );
    }
}
