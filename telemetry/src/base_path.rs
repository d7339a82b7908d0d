//! `CHAT_BASE_PATH`: the prefix of every REST route and of the WebSocket path.
//!
//! Invariant: a [`BasePath`] is either empty or `/` followed by the operator's segments, with no
//! trailing slash and no surrounding whitespace, however it was written (`prod`, `/prod/`,
//! ` /prod `). A router nests at it as it is, and adds the trailing-slash form itself.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

/// A normalised route prefix: `""` or `/prod`. Read by clap straight from `CHAT_BASE_PATH`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BasePath(String);

impl BasePath {
    /// `"/prod/"` → `"/prod"`, `"prod"` → `"/prod"`, `"/"` → `""`.
    pub fn new(raw: &str) -> Self {
        let trimmed = raw.trim().trim_matches('/');
        if trimmed.is_empty() {
            Self(String::new())
        } else {
            Self(format!("/{trimmed}"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when routes sit at the root.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for BasePath {
    type Err = Infallible;
    fn from_str(raw: &str) -> Result<Self, Infallible> {
        Ok(Self::new(raw))
    }
}

impl fmt::Display for BasePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for BasePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_prefix_is_one_path() {
        for raw in ["", "/", "//", "  ", " / "] {
            assert_eq!(BasePath::new(raw).as_str(), "", "{raw:?}");
            assert!(BasePath::new(raw).is_empty());
        }
        for raw in ["prod", "/prod", "/prod/", "prod/", " /prod/ ", "//prod//"] {
            assert_eq!(BasePath::new(raw).as_str(), "/prod", "{raw:?}");
        }
        assert_eq!(BasePath::new("/a/b/").as_str(), "/a/b");
        assert_eq!("/prod/".parse::<BasePath>().unwrap().to_string(), "/prod");
        assert_eq!(BasePath::default(), BasePath::new(""));
    }

    #[test]
    fn clap_reads_it_normalised() {
        use clap::Parser;
        #[derive(Parser)]
        struct Args {
            #[arg(long, default_value = "")]
            base_path: BasePath,
        }
        let args = Args::parse_from(["x", "--base-path", "prod/"]);
        assert_eq!(args.base_path.as_str(), "/prod");
        assert!(Args::parse_from(["x"]).base_path.is_empty());
    }
}
