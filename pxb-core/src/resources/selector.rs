//! Label selectors, as `kubectl -l` and the API server's `labelSelector` parameter take them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::object::{ApiResource, ResourceObject};
use crate::{Error, Result};

/// A parsed label selector: a comma-separated conjunction of requirements.
///
/// Supported forms (the API server's string syntax):
/// - equality: `key=value`, `key==value`, `key!=value` (`!=` also matches objects without `key`);
/// - existence: `key`, `!key`;
/// - sets: `key in (a,b)`, `key notin (a,b)` (`notin` also matches objects without `key`).
///
/// The empty selector matches every object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelSelector {
    /// Parses a selector string ([`Error::Invalid`] saying what is wrong if it does not parse).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: String| Error::invalid(format!("label selector {s:?}: {why}"));
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for term in split_top_level(s).map_err(bad)? {
            let term = term.trim();
            if term.is_empty() {
                return Err(bad("empty requirement (two commas in a row?)".into()));
            }
            requirements.push(parse_term(term).map_err(bad)?);
        }
        Ok(Self { requirements })
    }

    /// Whether the selector has no requirement (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `object`'s labels satisfy every requirement.
    pub fn matches(&self, object: &ResourceObject) -> bool {
        self.matches_with(|key| object.label(key))
    }

    /// Whether labels looked up with `label` satisfy every requirement.
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        })
    }
}

impl FromStr for LabelSelector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical string form, which [`LabelSelector::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
            }
        }
        Ok(())
    }
}

/// Splits at commas outside parentheses.
fn split_top_level(s: &str) -> std::result::Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' if depth > 0 => return Err("nested parentheses".into()),
            '(' => depth += 1,
            ')' if depth == 0 => return Err("unbalanced ')'".into()),
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_term(term: &str) -> std::result::Result<Requirement, String> {
    if let Some(open) = term.find('(') {
        let Some(values) = term[open + 1..].strip_suffix(')') else {
            return Err(format!("{term:?}: text after ')'"));
        };
        let mut head = term[..open].split_whitespace();
        let (Some(key), Some(op), None) = (head.next(), head.next(), head.next()) else {
            return Err(format!(
                "{term:?}: expected `key in (values)` or `key notin (values)`"
            ));
        };
        let key = check_key(key)?;
        let values = values
            .split(',')
            .map(|v| check_value(v.trim()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        return match op {
            "in" => Ok(Requirement::In(key, values)),
            "notin" => Ok(Requirement::NotIn(key, values)),
            _ => Err(format!(
                "{term:?}: unknown operator {op:?} (expected in or notin)"
            )),
        };
    }
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(check_key(key.trim())?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(
            check_key(k.trim())?,
            check_value(v.trim())?,
        ));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(check_key(k.trim())?, check_value(v.trim())?));
    }
    Ok(Requirement::Exists(check_key(term)?))
}

/// A label key: `[prefix/]name`, characters of DNS names and label names.
fn check_key(key: &str) -> std::result::Result<String, String> {
    let ok = !key.is_empty()
        && key.len() <= 317
        && key.matches('/').count() <= 1
        && !key.starts_with('/')
        && !key.ends_with('/')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_owned())
    } else {
        Err(format!("{key:?} is not a valid label key"))
    }
}

/// A label value: at most 63 characters of `[A-Za-z0-9-_.]`, possibly empty.
fn check_value(value: &str) -> std::result::Result<String, String> {
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
}

/// Which objects a backup takes.
///
/// Like Velero's `--include-namespaces`, `--selector`, `--include-resources` and
/// `--exclude-resources`. The label selector and kinds select namespaced objects; the
/// cluster-scoped objects those depend on (their Namespaces, the PersistentVolumes bound to their
/// claims, StorageClasses, CustomResourceDefinitions) are recorded whatever their labels, unless
/// their kind is excluded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSelector {
    /// Namespaces to back up; empty means every namespace of the cluster.
    pub namespaces: Vec<String>,
    /// An equality- or set-based label selector as `kubectl -l` takes it (`a=b,c!=d,e,!f`,
    /// `g in (x,y)`, `h notin (z)`); `None` selects every object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Kinds to back up (see [`ApiResource::matches_name`]); empty means every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_kinds: Vec<String>,
    /// Kinds never to back up; wins over `include_kinds`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_kinds: Vec<String>,
}

impl ResourceSelector {
    /// Every object of `namespaces`.
    pub fn namespaces<I, S>(namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            namespaces: namespaces.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// The same selector with a label selector.
    pub fn with_label_selector(mut self, selector: impl Into<String>) -> Self {
        self.label_selector = Some(selector.into());
        self
    }

    /// The same selector restricted to `kinds`.
    pub fn with_include_kinds<I, S>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.include_kinds = kinds.into_iter().map(Into::into).collect();
        self
    }

    /// The same selector excluding `kinds`.
    pub fn with_exclude_kinds<I, S>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exclude_kinds = kinds.into_iter().map(Into::into).collect();
        self
    }

    /// The parsed label selector ([`Error::Invalid`] if it does not parse).
    pub fn parsed_label_selector(&self) -> Result<Option<LabelSelector>> {
        match self.label_selector.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(s) => LabelSelector::parse(s).map(Some),
        }
    }

    /// Whether objects of `resource` are selected by the include and exclude lists.
    pub fn selects_resource(&self, resource: &ApiResource) -> bool {
        let included =
            self.include_kinds.is_empty() || self.include_kinds.iter().any(|k| resource.matches_name(k));
        included && !self.excludes_resource(resource)
    }

    /// Whether `resource` is named in the exclude list.
    pub fn excludes_resource(&self, resource: &ApiResource) -> bool {
        self.exclude_kinds.iter().any(|k| resource.matches_name(k))
    }
}
