//! CRIU versions and the one trenv needs.

use std::fmt;

use crate::rpc::Criu_version;

/// A CRIU release: major.minor.sublevel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CriuVersion {
    pub major: u32,
    pub minor: u32,
    pub sublevel: u32,
}

/// The oldest CRIU trenv works with: 4.1 is the first release that dumps processes on
/// kernels with a `[vvar_vclock]` mapping (6.x), which every machine here has.
pub const MIN_VERSION: CriuVersion = CriuVersion {
    major: 4,
    minor: 1,
    sublevel: 0,
};

impl CriuVersion {
    pub(crate) fn from_rpc(v: &Criu_version) -> CriuVersion {
        CriuVersion {
            major: v.major_number() as u32,
            minor: v.minor_number() as u32,
            sublevel: v.sublevel() as u32,
        }
    }
}

impl fmt::Display for CriuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.sublevel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_component_wise() {
        let v = |major, minor, sublevel| CriuVersion {
            major,
            minor,
            sublevel,
        };
        assert!(v(4, 1, 1) >= MIN_VERSION);
        assert!(v(4, 1, 0) >= MIN_VERSION);
        assert!(v(3, 17, 1) < MIN_VERSION);
        assert!(v(4, 0, 99) < MIN_VERSION);
        assert!(v(5, 0, 0) > MIN_VERSION);
        assert_eq!(v(4, 1, 1).to_string(), "4.1.1");
    }

    #[test]
    fn rpc_versions_convert() {
        let mut r = Criu_version::new();
        r.set_major_number(3);
        r.set_minor_number(17);
        let v = CriuVersion::from_rpc(&r);
        assert_eq!(v.to_string(), "3.17.0");
    }
}
