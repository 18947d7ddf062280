//! `containerd-shim-trenv-v1 -info`: the shim's `RuntimeInfo` (containerd's
//! `api/types/introspection.proto`), which containerd 2.x's introspection service answers
//! for `PluginInfo` of the runtime (`ctr plugins inspect-runtime`, CRI's runtime handler
//! features). containerd writes the runtime's options on stdin (a protobuf `Any`, possibly
//! empty) and reads the protobuf answer from stdout: name, version, the options back as
//! understood, and the OCI features document as runc's shim sends it (an `Any` of JSON
//! under the runtime spec's type URL).

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedOutputStream, Message};

use crate::options::{self, OptionsError};

/// The type URL containerd's typeurl registry gives the runtime spec's `features.Features`.
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// The encoded `RuntimeInfo` for the options containerd wrote on stdin.
pub fn runtime_info(name: &str, stdin: &[u8]) -> Result<Vec<u8>, InfoError> {
    let options = if stdin.is_empty() {
        None
    } else {
        let any = Any::parse_from_bytes(stdin).map_err(|e| InfoError::Encoding(e.to_string()))?;
        options::parse_as(Some(&any), crate::alias::active())?;
        Some(any)
    };
    let features = Any {
        type_url: FEATURES_TYPE_URL.to_string(),
        value: serde_json::to_vec(&trenv_runtime::container::features::features())
            .map_err(|e| InfoError::Encoding(e.to_string()))?,
        ..Default::default()
    };
    let enc = |e: containerd_shim::protos::protobuf::Error| InfoError::Encoding(e.to_string());
    let mut version = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut version);
        os.write_string(1, env!("CARGO_PKG_VERSION")).map_err(enc)?;
        os.flush().map_err(enc)?;
    }
    let mut out = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut out);
        os.write_string(1, name).map_err(enc)?;
        os.write_bytes(2, &version).map_err(enc)?;
        if let Some(any) = options {
            os.write_bytes(3, &any.write_to_bytes().map_err(enc)?)
                .map_err(enc)?;
        }
        os.write_bytes(4, &features.write_to_bytes().map_err(enc)?)
            .map_err(enc)?;
        os.flush().map_err(enc)?;
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("reading the runtime options on stdin: {0}")]
    Options(#[from] OptionsError),
    #[error("encoding the runtime info: {0}")]
    Encoding(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::CodedInputStream;

    /// The fields of one encoded message: (number, bytes) for length-delimited ones.
    fn fields(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut is = CodedInputStream::from_bytes(bytes);
        let mut out = Vec::new();
        while let Some(tag) = is.read_raw_tag_or_eof().unwrap() {
            assert_eq!(tag & 7, 2, "only length-delimited fields");
            out.push((tag >> 3, is.read_bytes().unwrap()));
        }
        out
    }

    #[test]
    fn the_info_names_the_runtime_and_carries_the_features() {
        let info = runtime_info("io.containerd.trenv.v1", &[]).unwrap();
        let f = fields(&info);
        assert_eq!(f[0], (1, b"io.containerd.trenv.v1".to_vec()));
        let features = f.iter().find(|(n, _)| *n == 4).expect("features");
        let any = Any::parse_from_bytes(&features.1).unwrap();
        assert_eq!(any.type_url, FEATURES_TYPE_URL);
        let doc: serde_json::Value = serde_json::from_slice(&any.value).unwrap();
        assert!(
            doc["mountOptions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == "rro")
        );
        assert!(
            !f.iter().any(|(n, _)| *n == 3),
            "no options asked, none answered"
        );
    }

    #[test]
    fn options_are_answered_back_and_bad_ones_refused() {
        let good = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![9 << 3, 1],
            ..Default::default()
        };
        let info = runtime_info("x", &good.write_to_bytes().unwrap()).unwrap();
        assert!(fields(&info).iter().any(|(n, _)| *n == 3));
        let bad = Any {
            type_url: "example.com/Other".into(),
            ..Default::default()
        };
        assert!(runtime_info("x", &bad.write_to_bytes().unwrap()).is_err());
    }
}
