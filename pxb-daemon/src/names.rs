//! The one place that decides the object names and label values pxb writes to clusters.
//!
//! A Kubernetes API server refuses a label value longer than 63 characters or outside
//! `(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?`, and an object name that is not a DNS-1123
//! subdomain (at most 253 lower-case letters, digits, `-` and `.`, each dot-separated part
//! starting and ending alphanumeric) or, for some kinds, a DNS-1123 label (at most 63, no dots).
//! Ids pxb mirrors (org ids, record ids, location names) are not bound by those rules everywhere,
//! so every value goes through these functions:
//!
//! - a value that is already valid is returned unchanged (what existing clusters hold stays the
//!   same);
//! - any other value becomes a *safe form*: a readable prefix made of its allowed characters,
//!   `-`, and the first [`HASH_LEN`] hex digits of the SHA-256 of the whole value. The function is
//!   deterministic, so the server finds its objects again by computing the same form; where the
//!   original must be read back, it is kept in an annotation ([`ORIGINAL_UID`]), which has no
//!   63-character limit.
//!
//! Every result is valid for any input (long, empty, Unicode, `/`, control characters).

/// Annotation holding the original (unhashed) id whose [`label_value`] is in the `pxb.io/uid`
/// label.
pub const ORIGINAL_UID: &str = "pxb.io/uid";
/// Annotation holding the original org id whose [`label_value`] is in the `pxb.io/org` label.
pub const ORIGINAL_ORG: &str = "pxb.io/org";

/// Hex digits of SHA-256 in a safe form (80 bits).
pub const HASH_LEN: usize = 20;
/// Longest label value.
pub const MAX_LABEL_VALUE: usize = 63;
/// Longest DNS-1123 subdomain (most object names).
pub const MAX_SUBDOMAIN: usize = 253;
/// Longest DNS-1123 label.
pub const MAX_DNS_LABEL: usize = 63;

fn hash(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    let mut out = String::with_capacity(HASH_LEN);
    for b in d.as_ref() {
        out.push_str(&format!("{b:02x}"));
        if out.len() >= HASH_LEN {
            break;
        }
    }
    out.truncate(HASH_LEN);
    out
}

/// `prefix-hash`, or `hash` when nothing of `s` survives `keep`: the prefix is made of `s`'s
/// characters mapped by `keep` (`None` becomes `-`), cut to leave room for the hash, and
/// starting with an alphanumeric character. The result is at most `max` long.
fn safe_form(s: &str, max: usize, keep: impl Fn(char) -> Option<char>) -> String {
    let room = max - HASH_LEN - 1;
    let mapped: String = s.chars().map(|c| keep(c).unwrap_or('-')).take(room).collect();
    let prefix = mapped.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    if prefix.is_empty() {
        hash(s)
    } else {
        format!("{prefix}-{}", hash(s))
    }
}

/// Whether `s` is a valid label value.
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= MAX_LABEL_VALUE
        && (b.is_empty()
            || (b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))))
}

/// `s` as a label value: unchanged when valid, else its deterministic safe form.
pub fn label_value(s: &str) -> String {
    if is_label_value(s) {
        return s.to_owned();
    }
    safe_form(s, MAX_LABEL_VALUE, |c| {
        (c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).then_some(c)
    })
}

/// Whether `s` is a DNS-1123 label (at most 63 lower-case letters, digits and `-`, starting and
/// ending alphanumeric).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_DNS_LABEL
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Whether `s` is a DNS-1123 subdomain (at most 253; DNS labels joined by `.`).
pub fn is_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SUBDOMAIN
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn lower_alnum_or_dash(c: char) -> Option<char> {
    let c = c.to_ascii_lowercase();
    (c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-').then_some(c)
}

/// `s` as an object name (DNS-1123 subdomain): unchanged when valid, else its deterministic safe
/// form (lower-case, no dots, at most 253).
pub fn object_name(s: &str) -> String {
    if is_subdomain(s) {
        return s.to_owned();
    }
    safe_form(s, MAX_SUBDOMAIN, lower_alnum_or_dash)
}

/// `s` as a name of a kind that needs a DNS-1123 label (at most 63, no dots): unchanged when
/// valid, else its deterministic safe form.
pub fn dns_label(s: &str) -> String {
    if is_dns_label(s) {
        return s.to_owned();
    }
    safe_form(s, MAX_DNS_LABEL, lower_alnum_or_dash)
}

/// Longest name of an Entra federated identity credential.
pub const MAX_FEDERATED_CREDENTIAL: usize = 120;

/// Whether `s` is a valid name of a federated identity credential: 3 to 120 letters, digits,
/// `-` and `_`, starting with a letter or digit (Azure's `^[a-zA-Z0-9][a-zA-Z0-9-_]{2,119}$`).
pub fn is_federated_credential_name(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=MAX_FEDERATED_CREDENTIAL).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
}

/// `s` (a cluster name) as the name of a federated identity credential: unchanged when valid,
/// else its deterministic safe form.
pub fn federated_credential_name(s: &str) -> String {
    if is_federated_credential_name(s) {
        return s.to_owned();
    }
    safe_form(s, MAX_FEDERATED_CREDENTIAL, |c| {
        (c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).then_some(c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile inputs: long, empty, Unicode, separators, control characters, edge characters.
    fn hostile() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            "-",
            ".",
            "_",
            "a",
            "A",
            "-a-",
            ".a.",
            "a/b",
            "org/with/slashes",
            "a..b",
            "a.-b",
            "UPPER-case",
            "ünïcödé-ßtraße",
            "日本語",
            "😀😀😀",
            "tab\there",
            "nul\0byte",
            "new\nline",
            " spaced out ",
            "pxb.io/uid",
            "-------------------------------------------------------------------------------",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [62, 63, 64, 65, 100, 252, 253, 254, 300, 5000] {
            v.push("a".repeat(n));
            v.push("é".repeat(n));
            v.push(format!("{}-", "b".repeat(n)));
            v.push(format!("-{}", "9".repeat(n)));
            v.push("x.".repeat(n));
        }
        // A reproducible pseudo-random sample over a hostile alphabet.
        let alphabet: Vec<char> = "aZ09-_./ :é日😀\0\u{7f}A.".chars().collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 300) as usize;
            let s: String = (0..len)
                .map(|i| {
                    let x = seed.wrapping_mul(i as u64 + 1).rotate_left(i as u32 % 64);
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            v.push(s);
        }
        v
    }

    #[test]
    fn every_result_is_valid_for_any_input() {
        for s in hostile() {
            let l = label_value(&s);
            assert!(is_label_value(&l), "label_value({s:?}) = {l:?}");
            let n = object_name(&s);
            assert!(is_subdomain(&n), "object_name({s:?}) = {n:?}");
            let d = dns_label(&s);
            assert!(is_dns_label(&d), "dns_label({s:?}) = {d:?}");
            assert!(is_subdomain(&d), "a DNS label is a subdomain: {d:?}");
            let f = federated_credential_name(&s);
            assert!(
                is_federated_credential_name(&f),
                "federated_credential_name({s:?}) = {f:?}"
            );
        }
    }

    #[test]
    fn results_are_deterministic_and_valid_values_are_unchanged() {
        for s in hostile() {
            assert_eq!(label_value(&s), label_value(&s));
            assert_eq!(object_name(&s), object_name(&s));
            assert_eq!(dns_label(&s), dns_label(&s));
            assert_eq!(federated_credential_name(&s), federated_credential_name(&s));
            if is_federated_credential_name(&s) {
                assert_eq!(federated_credential_name(&s), s);
            }
            if is_label_value(&s) {
                assert_eq!(label_value(&s), s);
            }
            if is_subdomain(&s) {
                assert_eq!(object_name(&s), s);
            }
        }
        for ok in ["acme", "shoot-00001-20260101000000-abcd", "a.b-c", "x"] {
            assert_eq!(label_value(ok), ok);
            assert_eq!(object_name(ok), ok);
        }
        assert_eq!(label_value(""), "", "an empty label value is valid");
    }

    #[test]
    fn distinct_invalid_inputs_get_distinct_forms() {
        let inputs = hostile();
        let mut seen = std::collections::BTreeMap::new();
        for s in inputs.iter().filter(|s| !is_label_value(s)) {
            if let Some(prev) = seen.insert(label_value(s), s.clone()) {
                assert_eq!(&prev, s, "two inputs share a label value");
            }
        }
        // Long ids that differ only at their end stay apart.
        let a = format!("{}-1", "r".repeat(80));
        let b = format!("{}-2", "r".repeat(80));
        assert_ne!(label_value(&a), label_value(&b));
        assert_ne!(dns_label(&a), dns_label(&b));
        // Case matters for ids: names that lower-case alike still differ.
        assert_ne!(object_name("Backup"), object_name("backup"));
        assert_ne!(object_name("Backup"), object_name("BACKUP"));
    }

    #[test]
    fn safe_forms_keep_a_readable_prefix() {
        let id = format!("shoot-{}-20260101000000-abcd", "long".repeat(20));
        let l = label_value(&id);
        assert_eq!(l.len(), MAX_LABEL_VALUE);
        assert!(l.starts_with("shoot-longlong"), "{l}");
        assert_eq!(object_name("Org/Team"), format!("org-team-{}", hash("Org/Team")));
        assert_eq!(label_value("/"), hash("/"));
        assert_eq!(dns_label("a.b"), format!("a-b-{}", hash("a.b")));
    }
}
