//! Runtime options containerd passes with Create (`CreateTaskRequest.options`).
//!
//! Accepted: runc's `containerd.runc.v1.Options` (what `ctr --runc-*` flags and CRI's
//! `[...runtimes.trenv.options]` with runc-style keys produce), of which trenv honours
//! `SystemdCgroup`, `ShimCgroup` (applied by `start`, see [`start_options`]), `IoUid`/`IoGid`
//! (the owner of the process's stdio pipes) and the CRIU fields (`CriuPath`, `CriuImagePath`,
//! `CriuWorkPath`); CRI's generic `runtimeoptions.v1.Options` (`ConfigPath`); and the older
//! `containerd.linux.runc.CreateOptions`, which containerd 1.7's client library sends to every
//! runtime not named `io.containerd.runc*` (`WithShimCgroup`, `WithUIDOwner`, …): its own
//! field numbers, mapped onto the same settings. Any other set field or type is refused: a
//! silently ignored option is a misconfiguration nobody sees.
//!
//! Checkpoint options likewise come as `containerd.runc.v1.CheckpointOptions` or, from 1.7's
//! client, `containerd.linux.runc.CheckpointOptions`, whose image and work paths have each
//! other's field numbers (8 and 9): decoded by name, not by alias.
//!
//! In alias mode ([`crate::alias`]: trenv installed as runc's shim) runc's other options
//! are accepted and listed in `ignored`, which Create writes to the log.

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
    /// The cgroup the shim server is put into (runc's `ShimCgroup`); `start` applies it.
    pub shim_cgroup: Option<String>,
    /// The owner (uid, gid) of the process's stdio pipes (runc's `IoUid`/`IoGid`), so that a
    /// process running as another user (or in a user namespace) can reopen them.
    pub io_owner: Option<(u32, u32)>,
    /// Alias mode only: the runc options that were set and that trenv knowingly ignores
    /// (see [`crate::alias`]), for the shim's log.
    pub ignored: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error(
        "unknown runtime options type {0:?}: trenv accepts containerd.runc.v1.Options \
         (SystemdCgroup, ShimCgroup, IoUid, IoGid, Criu*), containerd.linux.runc.CreateOptions \
         (the same, from containerd 1.7's client) and runtimeoptions.v1.Options (ConfigPath)"
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
         containerd.runc.v1.CheckpointOptions or containerd.linux.runc.CheckpointOptions"
    )]
    UnknownCheckpointType(String),
    #[error("runtime option {0} must be a user or group id (0 to 4294967295)")]
    BadId(&'static str),
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

/// `containerd.linux.runc.CreateOptions` (containerd 1.7's `runctypes`): other numbers.
const CREATE_FIELDS: &[(u32, &str)] = &[
    (1, "NoPivotRoot"),
    (2, "OpenTcp"),
    (3, "ExternalUnixSockets"),
    (4, "Terminal"),
    (5, "FileLocks"),
    (6, "EmptyNamespaces"),
    (7, "CgroupsMode"),
    (8, "NoNewKeyring"),
    (9, "ShimCgroup"),
    (10, "IoUid"),
    (11, "IoGid"),
    (12, "CriuWorkPath"),
    (13, "CriuImagePath"),
];

/// How one options type numbers its fields: the setting each number is, and every field's
/// name (for the refusal of one trenv does not support).
type Numbering = (fn(u32) -> Option<Setting>, &'static [(u32, &'static str)]);

/// The settings trenv honours, whichever options type names them.
#[derive(Clone, Copy)]
enum Setting {
    SystemdCgroup,
    CriuPath,
    CriuImagePath,
    CriuWorkPath,
    ShimCgroup,
    IoUid,
    IoGid,
}

fn runc_setting(number: u32) -> Option<Setting> {
    Some(match number {
        3 => Setting::ShimCgroup,
        4 => Setting::IoUid,
        5 => Setting::IoGid,
        8 => Setting::CriuPath,
        9 => Setting::SystemdCgroup,
        10 => Setting::CriuImagePath,
        11 => Setting::CriuWorkPath,
        _ => return None,
    })
}

fn create_options_setting(number: u32) -> Option<Setting> {
    Some(match number {
        9 => Setting::ShimCgroup,
        10 => Setting::IoUid,
        11 => Setting::IoGid,
        12 => Setting::CriuWorkPath,
        13 => Setting::CriuImagePath,
        _ => return None,
    })
}

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

/// Decodes Create's options for trenv named as itself: a runc-only option is refused.
#[cfg(test)]
pub fn parse(options: Option<&Any>) -> Result<RuntimeOptions, OptionsError> {
    parse_as(options, false)
}

/// Decodes Create's options; in alias mode (`runc_alias`, trenv installed as runc's shim)
/// the runc options trenv cannot honour are accepted and listed in `ignored`.
pub fn parse_as(options: Option<&Any>, runc_alias: bool) -> Result<RuntimeOptions, OptionsError> {
    let mut opts = RuntimeOptions::default();
    let Some(any) = options else {
        return Ok(opts);
    };
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(opts);
    }
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let (setting, names): Numbering = match type_name {
        "containerd.runc.v1.Options" => (runc_setting, RUNC_FIELDS),
        "containerd.linux.runc.CreateOptions" => (create_options_setting, CREATE_FIELDS),
        "runtimeoptions.v1.Options" => return config_path_options(&any.value),
        other => return Err(OptionsError::UnknownType(other.to_string())),
    };
    let (mut uid, mut gid) = (None, None);
    for (number, value) in fields(&any.value)? {
        if !value.is_set() {
            continue;
        }
        let text = || match &value {
            FieldValue::Bytes(b) => Some(String::from_utf8_lossy(b).to_string()),
            _ => None,
        };
        let int = || match &value {
            FieldValue::Int(v) => u32::try_from(*v).ok(),
            _ => None,
        };
        match setting(number) {
            Some(Setting::SystemdCgroup) => opts.systemd_cgroup = true,
            Some(Setting::CriuPath) => opts.criu_path = text(),
            Some(Setting::CriuImagePath) => opts.criu_image_path = text(),
            Some(Setting::CriuWorkPath) => opts.criu_work_path = text(),
            Some(Setting::ShimCgroup) => opts.shim_cgroup = text(),
            Some(Setting::IoUid) => uid = Some(int().ok_or(OptionsError::BadId("IoUid"))?),
            Some(Setting::IoGid) => gid = Some(int().ok_or(OptionsError::BadId("IoGid"))?),
            None => {
                let name = names
                    .iter()
                    .find(|(num, _)| *num == number)
                    .map_or("(unknown field)", |(_, name)| name);
                if !runc_alias {
                    return Err(OptionsError::Unsupported(name));
                }
                opts.ignored.push(name);
            }
        }
    }
    if uid.is_some() || gid.is_some() {
        opts.io_owner = Some((uid.unwrap_or(0), gid.unwrap_or(0)));
    }
    Ok(opts)
}

/// CRI's generic `runtimeoptions.v1.Options`: a trenv config file (`ConfigPath`).
fn config_path_options(value: &[u8]) -> Result<RuntimeOptions, OptionsError> {
    let mut opts = RuntimeOptions::default();
    for (number, value) in fields(value)? {
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
    Ok(opts)
}

/// The options containerd writes on `start`'s stdin (a protobuf `Any`, the same as the
/// Create request's): only what `start` itself applies, `ShimCgroup`, is taken. Options
/// that fail to decode are left for Create to refuse with its message.
pub fn start_options(stdin: &[u8]) -> RuntimeOptions {
    if stdin.is_empty() {
        return RuntimeOptions::default();
    }
    Any::parse_from_bytes(stdin)
        .ok()
        .and_then(|any| parse_as(Some(&any), crate::alias::active()).ok())
        .unwrap_or_default()
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
    let malformed =
        |e: containerd_shim::protos::protobuf::Error| OptionsError::Malformed(e.to_string());
    match any.type_url.rsplit('/').next().unwrap_or_default() {
        "containerd.runc.v1.CheckpointOptions" => {
            CheckpointOptions::parse_from_bytes(&any.value).map_err(malformed)
        }
        // 1.7's runctypes: the same message but for work_path = 8 and image_path = 9.
        "containerd.linux.runc.CheckpointOptions" => {
            let mut o = CheckpointOptions::parse_from_bytes(&any.value).map_err(malformed)?;
            std::mem::swap(&mut o.image_path, &mut o.work_path);
            Ok(o)
        }
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
    fn runc_options_are_accepted_and_listed_in_alias_mode() {
        // Root "/r", BinaryName "runc", SystemdCgroup true
        let a = any(
            "containerd.runc.v1.Options",
            vec![
                7 << 3 | 2,
                2,
                b'/',
                b'r',
                6 << 3 | 2,
                4,
                b'r',
                b'u',
                b'n',
                b'c',
                9 << 3,
                1,
            ],
        );
        assert_eq!(parse(Some(&a)), Err(OptionsError::Unsupported("Root")));
        let o = parse_as(Some(&a), true).unwrap();
        assert!(o.systemd_cgroup);
        assert_eq!(o.ignored, vec!["Root", "BinaryName"]);
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
    fn shim_cgroup_and_io_owner_are_honoured() {
        // ShimCgroup 3 "/s", IoUid 4 = 1000, IoGid 5 = 1001
        let a = any(
            "containerd.runc.v1.Options",
            vec![
                3 << 3 | 2,
                2,
                b'/',
                b's',
                4 << 3,
                0xe8,
                0x07,
                5 << 3,
                0xe9,
                0x07,
            ],
        );
        let o = parse(Some(&a)).unwrap();
        assert_eq!(o.shim_cgroup.as_deref(), Some("/s"));
        assert_eq!(o.io_owner, Some((1000, 1001)));
    }

    #[test]
    fn containerd_1_7_create_options_have_their_own_numbers() {
        // ShimCgroup 9 "/s", IoUid 10 = 1000, IoGid 11 = 1001, CriuImagePath 13 "/i"
        let a = any(
            "type.googleapis.com/containerd.linux.runc.CreateOptions",
            vec![
                9 << 3 | 2,
                2,
                b'/',
                b's',
                10 << 3,
                0xe8,
                0x07,
                11 << 3,
                0xe9,
                0x07,
                13 << 3 | 2,
                2,
                b'/',
                b'i',
            ],
        );
        let o = parse(Some(&a)).unwrap();
        assert_eq!(o.shim_cgroup.as_deref(), Some("/s"));
        assert_eq!(o.io_owner, Some((1000, 1001)));
        assert_eq!(o.criu_image_path.as_deref(), Some("/i"));
        assert!(!o.systemd_cgroup, "9 is ShimCgroup here, not SystemdCgroup");
        // NoNewKeyring is 8 there (CriuPath in runc's type): refused by its name.
        let keyring = any("containerd.linux.runc.CreateOptions", vec![8 << 3, 1]);
        assert_eq!(
            parse(Some(&keyring)),
            Err(OptionsError::Unsupported("NoNewKeyring"))
        );
    }

    #[test]
    fn containerd_1_7_checkpoint_options_swap_image_and_work_paths() {
        // runctypes: work_path 8 "/w", image_path 9 "/i"
        let a = any(
            "containerd.linux.runc.CheckpointOptions",
            vec![
                1 << 3,
                1,
                8 << 3 | 2,
                2,
                b'/',
                b'w',
                9 << 3 | 2,
                2,
                b'/',
                b'i',
            ],
        );
        let o = checkpoint(Some(&a)).unwrap();
        assert!(o.exit);
        assert_eq!(o.image_path, "/i");
        assert_eq!(o.work_path, "/w");
    }

    #[test]
    fn start_reads_the_shim_cgroup_and_ignores_what_it_cannot_decode() {
        let a = any(
            "containerd.runc.v1.Options",
            vec![3 << 3 | 2, 2, b'/', b's'],
        );
        let o = start_options(&a.write_to_bytes().unwrap());
        assert_eq!(o.shim_cgroup.as_deref(), Some("/s"));
        assert_eq!(start_options(&[]), RuntimeOptions::default());
        assert_eq!(start_options(&[0xff, 0xff]), RuntimeOptions::default());
    }

    #[test]
    fn unknown_type_is_refused() {
        let a = any("example.com/Other", vec![]);
        assert!(matches!(parse(Some(&a)), Err(OptionsError::UnknownType(_))));
    }
}
