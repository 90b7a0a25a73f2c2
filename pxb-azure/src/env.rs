//! Reading settings from the environment (through an injected lookup, so tests need no process
//! environment).

/// `lookup(name)`, trimmed-empty values counted as unset.
pub(crate) fn non_empty(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    lookup(name).filter(|v| !v.trim().is_empty())
}
