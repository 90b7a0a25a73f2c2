//! Backup location URLs: `file:///abs/path` and `azblob://<container>[/<prefix>]`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::{Error, Result};

/// Where a location's objects live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocationUrl {
    /// A local directory (the embedded default).
    File {
        /// Absolute path of the root directory.
        root: PathBuf,
    },
    /// An Azure Blob container, optionally under a name prefix.
    AzBlob {
        /// The container name.
        container: String,
        /// The prefix inside the container, without leading or trailing `/` (empty: none).
        prefix: String,
    },
}

impl LocationUrl {
    /// Parses a location URL, with an error that says what form is expected.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "location {s:?}: {why}; expected file:///absolute/path or azblob://<container>[/<prefix>]"
            ))
        };
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad(
                    "a file location needs an absolute path (three slashes: file:///…)",
                ));
            }
            let url = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
            let root = url.to_file_path().map_err(|()| bad("not a local file path"))?;
            return Ok(LocationUrl::File { root });
        }
        if let Some(rest) = s.strip_prefix("azblob://") {
            let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            validate_container(container).map_err(|why| bad(&why))?;
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty() {
                crate::ObjectPath::parse(prefix).map_err(|e| bad(&format!("prefix: {e}")))?;
            }
            return Ok(LocationUrl::AzBlob {
                container: container.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        Err(bad("unknown scheme"))
    }
}

/// Azure container names: 3–63 characters of lowercase letters, digits and single hyphens, starting
/// and ending with a letter or digit.
fn validate_container(name: &str) -> std::result::Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
        || name.contains("--")
    {
        return Err(format!(
            "container name {name:?} is not valid (3-63 lowercase letters, digits and single hyphens)"
        ));
    }
    Ok(())
}

impl FromStr for LocationUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for LocationUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocationUrl::File { root } => write!(f, "file://{}", root.display()),
            LocationUrl::AzBlob { container, prefix } if prefix.is_empty() => {
                write!(f, "azblob://{container}")
            }
            LocationUrl::AzBlob { container, prefix } => write!(f, "azblob://{container}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes() {
        assert_eq!(
            LocationUrl::parse("file:///var/backups/x").ok(),
            Some(LocationUrl::File {
                root: "/var/backups/x".into()
            })
        );
        assert_eq!(
            LocationUrl::parse("azblob://tenant-a/fleet/eu1/").ok(),
            Some(LocationUrl::AzBlob {
                container: "tenant-a".into(),
                prefix: "fleet/eu1".into()
            })
        );
        assert_eq!(
            LocationUrl::parse("azblob://abc")
                .map(|l| l.to_string())
                .ok()
                .as_deref(),
            Some("azblob://abc")
        );
    }

    #[test]
    fn rejects_with_the_expected_form() {
        for bad in [
            "file://relative/x",
            "s3://bucket",
            "azblob://UPPER",
            "azblob://a",
            "azblob://ok-name/a/../b",
            "/tmp/x",
        ] {
            let e = LocationUrl::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("expected file:///"), "{bad}: {e}");
        }
    }
}
