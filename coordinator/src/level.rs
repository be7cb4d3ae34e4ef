//! What a read asks for: its `ReadLevel` (parsed from `?consistency=`) and the other bounds of
//! a `ReadRequest`. Pure.

use std::fmt;
use std::str::FromStr;

/// Read levels from strongest to weakest; `coordinator/DESIGN.md` gives each one's guarantee and cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadLevel {
    Strong,
    #[default]
    Linearizable,
    Lease,
    Leader,
    Stale,
}

impl ReadLevel {
    /// Every level, strongest first.
    pub const ALL: [ReadLevel; 5] = [
        ReadLevel::Strong,
        ReadLevel::Linearizable,
        ReadLevel::Lease,
        ReadLevel::Leader,
        ReadLevel::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReadLevel::Strong => "strong",
            ReadLevel::Linearizable => "linearizable",
            ReadLevel::Lease => "lease",
            ReadLevel::Leader => "leader",
            ReadLevel::Stale => "stale",
        }
    }
}

impl fmt::Display for ReadLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReadLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "strong" => ReadLevel::Strong,
            "linearizable" => ReadLevel::Linearizable,
            "lease" => ReadLevel::Lease,
            "leader" => ReadLevel::Leader,
            "stale" => ReadLevel::Stale,
            other => {
                return Err(format!(
                    "unknown consistency level {other:?}; use strong, linearizable, lease, leader or stale"
                ))
            }
        })
    }
}

/// The parameters of a read that decide when it may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    pub level: ReadLevel,
    pub min_index: Option<u64>,
    pub max_staleness_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_is_listed_once_and_its_name_parses_back() {
        for level in ReadLevel::ALL {
            assert_eq!(level.as_str().parse::<ReadLevel>(), Ok(level));
        }
        let names: std::collections::BTreeSet<_> = ReadLevel::ALL.map(ReadLevel::as_str).into();
        assert_eq!(names.len(), ReadLevel::ALL.len());
    }

    #[test]
    fn parses_every_level_and_rejects_others() {
        for level in [
            ReadLevel::Strong,
            ReadLevel::Linearizable,
            ReadLevel::Lease,
            ReadLevel::Leader,
            ReadLevel::Stale,
        ] {
            assert_eq!(level.as_str().parse::<ReadLevel>(), Ok(level));
        }
        assert!("eventual".parse::<ReadLevel>().is_err());
        assert!("".parse::<ReadLevel>().is_err());
        assert_eq!(ReadLevel::default(), ReadLevel::Linearizable);
    }
}
