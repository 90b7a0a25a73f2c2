//! Validated object names.

use std::fmt;

use crate::{Error, Result};

/// The longest object name accepted, in bytes (Azure Blob's limit).
pub const MAX_PATH_LEN: usize = 1024;

/// A validated object name inside a location: `/`-separated segments, relative, normalised.
///
/// Every object store accepts exactly the same names, so a backup written to one backend can be
/// copied to another. Rules: 1 to [`MAX_PATH_LEN`] bytes of UTF-8; no leading or trailing `/`;
/// no empty, `.` or `..` segments; no control characters; no backslash.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectPath(String);

impl ObjectPath {
    /// Validates `s` as an object name.
    pub fn parse(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        validate(&s)?;
        Ok(Self(s))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A child of this path: `self/segment...` (`rest` may itself contain `/`).
    pub fn join(&self, rest: &str) -> Result<Self> {
        Self::parse(format!("{}/{}", self.0, rest))
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

fn validate(s: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("object name {s:?} {why}")));
    if s.is_empty() {
        return bad("is empty");
    }
    if s.len() > MAX_PATH_LEN {
        return bad(&format!("is longer than {MAX_PATH_LEN} bytes"));
    }
    if s.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    if s.contains('\\') {
        return bad("contains a backslash");
    }
    for seg in s.split('/') {
        match seg {
            "" => return bad("has an empty segment (leading, trailing or double '/')"),
            "." | ".." => return bad("has a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for ObjectPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for ObjectPath {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ObjectPath {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_nested_unicode_and_spaces() {
        for ok in ["a", "a/b/c", "with space/ü/日本", "x.y/.hidden/z"] {
            assert_eq!(
                ObjectPath::parse(ok).map(|p| p.to_string()).ok().as_deref(),
                Some(ok)
            );
        }
    }

    #[test]
    fn rejects_bad_names_with_a_reason() {
        for bad in ["", "/a", "a/", "a//b", "a/../b", ".", "a\u{0}b", "a\\b"] {
            let err = ObjectPath::parse(bad).expect_err(bad);
            assert!(matches!(err, Error::Invalid { .. }), "{bad}: {err}");
        }
        assert!(ObjectPath::parse("x".repeat(MAX_PATH_LEN + 1)).is_err());
        assert!(ObjectPath::parse("x".repeat(MAX_PATH_LEN)).is_ok());
    }

    #[test]
    fn join_and_file_name() {
        let p = ObjectPath::parse("a/b").and_then(|p| p.join("c/d"));
        let p = p.expect("valid");
        assert_eq!(p.as_str(), "a/b/c/d");
        assert_eq!(p.file_name(), "d");
    }
}
