//! `ReadLevel`: the consistency a read asks for, parsed from `?consistency=`. Pure.

use std::fmt;
use std::str::FromStr;

/// Read levels from strongest to weakest; `api/DESIGN.md` gives each one's guarantee and cost.
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

#[cfg(test)]
mod tests {
    use super::*;

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
