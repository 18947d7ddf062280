//! Runtime options containerd passes with Create (`CreateTaskRequest.options`).
//!
//! Accepted: runc's `containerd.runc.v1.Options` (what `ctr --runc-*` flags and CRI's
//! `[...runtimes.trenv.options]` with runc-style keys produce), of which trenv honours
//! `SystemdCgroup` and the CRIU fields (`CriuPath`, `CriuImagePath`, `CriuWorkPath`), and CRI's generic `runtimeoptions.v1.Options` (`ConfigPath`). Any other
//! set field or type is refused: a silently ignored option is a misconfiguration nobody sees.

use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, rt::WireType};
use containerd_shim::protos::shim::oci::CheckpointOptions;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    pub systemd_cgroup: bool,
    pub config_path: Option<String>,
    /// The CRIU binary to use (runc's `CriuPath`).
    pub criu_path: Option<String>,
    /// Restore: the checkpoint is in this directory (`WithRestoreImagePath`).
    pub criu_image_path: Option<String>,
    /// Restore: CRIU's work directory (`WithRestoreWorkPath`).
    pub criu_work_path: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error(
        "unknown runtime options type {0:?}: trenv accepts containerd.runc.v1.Options \
         (SystemdCgroup) and runtimeoptions.v1.Options (ConfigPath)"
    )]
    UnknownType(String),
    #[error(
        "runtime option {0} is not supported by trenv (it is a runc option); remove it from \
         the runtime's options in the containerd config or the ctr command line"
    )]
    Unsupported(&'static str),
    #[error(
        "malformed runtime options ({0}); check the runtime's options in the containerd config"
    )]
    Malformed(String),
    #[error(
        "unknown checkpoint options type {0:?}: trenv accepts \
         containerd.runc.v1.CheckpointOptions"
    )]
    UnknownCheckpointType(String),
    #[error("the trenv config file {path} given as ConfigPath cannot be read: {reason}")]
    ConfigPath { path: String, reason: String },
}

const RUNC_FIELDS: &[(u32, &str)] = &[
    (1, "NoPivotRoot"),
    (2, "NoNewKeyring"),
    (3, "ShimCgroup"),
    (4, "IoUid"),
    (5, "IoGid"),
    (6, "BinaryName"),
    (7, "Root"),
    (8, "CriuPath"),
    (9, "SystemdCgroup"),
    (10, "CriuImagePath"),
    (11, "CriuWorkPath"),
    (12, "TaskApiAddress"),
    (13, "TaskApiVersion"),
];

/// A decoded protobuf field: its number and whether it holds a non-default value.
fn fields(bytes: &[u8]) -> Result<Vec<(u32, FieldValue)>, OptionsError> {
    let mut out = Vec::new();
    let mut is = CodedInputStream::from_bytes(bytes);
    let m = |e: containerd_shim::protos::protobuf::Error| OptionsError::Malformed(e.to_string());
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(m)? {
        let number = tag >> 3;
        let value = match WireType::new(tag & 7) {
            Some(WireType::Varint) => FieldValue::Int(is.read_uint64().map_err(m)?),
            Some(WireType::LengthDelimited) => FieldValue::Bytes(is.read_bytes().map_err(m)?),
            Some(wt) => {
                is.skip_field(wt).map_err(m)?;
                FieldValue::Other
            }
            None => {
                return Err(OptionsError::Malformed(format!(
                    "bad wire type in tag {tag}"
                )));
            }
        };
        out.push((number, value));
    }
    Ok(out)
}

#[derive(Debug)]
enum FieldValue {
    Int(u64),
    Bytes(Vec<u8>),
    Other,
}

impl FieldValue {
    fn is_set(&self) -> bool {
        match self {
            FieldValue::Int(v) => *v != 0,
            FieldValue::Bytes(b) => !b.is_empty(),
            FieldValue::Other => true,
        }
    }
}

pub fn parse(options: Option<&Any>) -> Result<RuntimeOptions, OptionsError> {
    let mut opts = RuntimeOptions::default();
    let Some(any) = options else {
        return Ok(opts);
    };
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(opts);
    }
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    match type_name {
        "containerd.runc.v1.Options" => {
            for (number, value) in fields(&any.value)? {
                if !value.is_set() {
                    continue;
                }
                let text = || match &value {
                    FieldValue::Bytes(b) => Some(String::from_utf8_lossy(b).to_string()),
                    _ => None,
                };
                match number {
                    9 => opts.systemd_cgroup = true,
                    8 => opts.criu_path = text(),
                    10 => opts.criu_image_path = text(),
                    11 => opts.criu_work_path = text(),
                    n => {
                        let name = RUNC_FIELDS
                            .iter()
                            .find(|(num, _)| *num == n)
                            .map_or("(unknown field)", |(_, name)| name);
                        return Err(OptionsError::Unsupported(name));
                    }
                }
            }
        }
        "runtimeoptions.v1.Options" => {
            for (number, value) in fields(&any.value)? {
                if let (2, FieldValue::Bytes(b)) = (number, &value)
                    && !b.is_empty()
                {
                    let path = String::from_utf8_lossy(b).to_string();
                    std::fs::metadata(&path).map_err(|e| OptionsError::ConfigPath {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                    opts.config_path = Some(path);
                }
            }
        }
        other => return Err(OptionsError::UnknownType(other.to_string())),
    }
    Ok(opts)
}

/// Decodes the options of a Checkpoint request: `containerd.runc.v1.CheckpointOptions`
/// (what containerd's daemon requires and `ctr task checkpoint` sends), or none (defaults:
/// leave the container running).
pub fn checkpoint(options: Option<&Any>) -> Result<CheckpointOptions, OptionsError> {
    let Some(any) = options else {
        return Ok(CheckpointOptions::new());
    };
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(CheckpointOptions::new());
    }
    match any.type_url.rsplit('/').next().unwrap_or_default() {
        "containerd.runc.v1.CheckpointOptions" => CheckpointOptions::parse_from_bytes(&any.value)
            .map_err(|e| OptionsError::Malformed(e.to_string())),
        other => Err(OptionsError::UnknownCheckpointType(other.to_string())),
    }
}

/// What the runtime layer needs of containerd's checkpoint options.
pub fn criu_checkpoint_options(
    o: &CheckpointOptions,
) -> trenv_runtime::snapshot::CheckpointOptions {
    trenv_runtime::snapshot::CheckpointOptions {
        exit: o.exit,
        open_tcp: o.open_tcp,
        external_unix_sockets: o.external_unix_sockets,
        terminal: o.terminal,
        file_locks: o.file_locks,
        empty_namespaces: o.empty_namespaces.clone(),
        cgroups_mode: o.cgroups_mode.clone(),
        for_template: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.to_string();
        a.value = value;
        a
    }

    #[test]
    fn no_options_are_defaults() {
        assert_eq!(parse(None).unwrap(), RuntimeOptions::default());
    }

    #[test]
    fn systemd_cgroup_is_honoured() {
        // field 9, varint 1
        let a = any("containerd.runc.v1.Options", vec![9 << 3, 1]);
        assert!(parse(Some(&a)).unwrap().systemd_cgroup);
    }

    #[test]
    fn runc_binary_name_is_refused() {
        // field 6, length-delimited "runc"
        let a = any(
            "containerd.runc.v1.Options",
            vec![6 << 3 | 2, 4, b'r', b'u', b'n', b'c'],
        );
        assert_eq!(
            parse(Some(&a)),
            Err(OptionsError::Unsupported("BinaryName"))
        );
    }

    #[test]
    fn criu_paths_are_honoured() {
        // field 8 "/c", field 10 "/i", field 11 "/w"
        let a = any(
            "containerd.runc.v1.Options",
            vec![
                8 << 3 | 2,
                2,
                b'/',
                b'c',
                10 << 3 | 2,
                2,
                b'/',
                b'i',
                11 << 3 | 2,
                2,
                b'/',
                b'w',
            ],
        );
        let o = parse(Some(&a)).unwrap();
        assert_eq!(o.criu_path.as_deref(), Some("/c"));
        assert_eq!(o.criu_image_path.as_deref(), Some("/i"));
        assert_eq!(o.criu_work_path.as_deref(), Some("/w"));
    }

    #[test]
    fn default_valued_fields_are_accepted() {
        let a = any("containerd.runc.v1.Options", vec![1 << 3, 0]);
        assert_eq!(parse(Some(&a)).unwrap(), RuntimeOptions::default());
    }

    #[test]
    fn checkpoint_options_are_decoded() {
        let mut o = CheckpointOptions::new();
        o.exit = true;
        o.image_path = "/tmp/x".into();
        let a = any(
            "type.googleapis.com/containerd.runc.v1.CheckpointOptions",
            o.write_to_bytes().unwrap(),
        );
        let got = checkpoint(Some(&a)).unwrap();
        assert!(got.exit);
        assert_eq!(got.image_path, "/tmp/x");
        assert!(!checkpoint(None).unwrap().exit);
        let bad = any("containerd.runc.v1.Options", vec![]);
        assert!(matches!(
            checkpoint(Some(&bad)),
            Err(OptionsError::UnknownCheckpointType(_))
        ));
    }

    #[test]
    fn unknown_type_is_refused() {
        let a = any("example.com/Other", vec![]);
        assert!(matches!(parse(Some(&a)), Err(OptionsError::UnknownType(_))));
    }
}
