//! Field-path validation errors and the name and value rules shared by all kinds.

use std::fmt;

/// One thing wrong with a manifest: where (`spec.sources[1].peer`) and why (`required`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// Everything wrong with a manifest, reported together so a person fixes it in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// A DNS label (RFC 1123) is at most 63 characters; Kubernetes uses it for namespaces.
pub const MAX_LABEL_LEN: usize = 63;
/// A DNS subdomain (RFC 1123) is at most 253 characters.
pub const MAX_SUBDOMAIN_LEN: usize = 253;
/// Longest attribute or label key we accept: a 253-character prefix, `/`, a 63-character name.
pub const MAX_KEY_LEN: usize = MAX_SUBDOMAIN_LEN + 1 + MAX_LABEL_LEN;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: lowercase letters, digits and '-', starting and ending alphanumeric.
pub fn check_dns_label(value: &str) -> Result<(), String> {
    check_label_chars(value, "a lowercase letter or digit")
}

/// RFC 1035 label: like [`check_dns_label`] but starting with a letter (Kubernetes Service names).
pub fn check_rfc1035_label(value: &str) -> Result<(), String> {
    check_label_chars(value, "a lowercase letter")?;
    if value.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("must start with a lowercase letter".into());
    }
    Ok(())
}

fn check_label_chars(value: &str, start: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("required".into());
    }
    if value.len() > MAX_LABEL_LEN {
        return Err(format!(
            "must be at most {MAX_LABEL_LEN} characters (got {})",
            value.len()
        ));
    }
    if let Some(c) = value.chars().find(|&c| !is_lower_alnum(c) && c != '-') {
        return Err(format!(
            "invalid character {c:?}: use lowercase letters, digits and '-' (a DNS label)"
        ));
    }
    if !value.starts_with(is_lower_alnum) {
        return Err(format!("must start with {start}"));
    }
    if !value.ends_with(is_lower_alnum) {
        return Err("must end with a lowercase letter or digit".into());
    }
    Ok(())
}

/// A Kubernetes DNS subdomain name (`IsDNS1123Subdomain`): dot-separated parts of lowercase
/// letters, digits and '-', each starting and ending alphanumeric, at most 253 characters in all.
/// As in Kubernetes, a part may be longer than a DNS label's 63 characters: most objects' names
/// are never looked up in DNS.
pub fn check_dns_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("required".into());
    }
    if value.len() > MAX_SUBDOMAIN_LEN {
        return Err(format!(
            "must be at most {MAX_SUBDOMAIN_LEN} characters (got {})",
            value.len()
        ));
    }
    for part in value.split('.') {
        if part.is_empty() {
            return Err("must not contain empty dot-separated parts".into());
        }
        if let Some(c) = part.chars().find(|&c| !is_lower_alnum(c) && c != '-') {
            return Err(format!(
                "invalid character {c:?}: use lowercase letters, digits, '-' and '.' (a DNS subdomain)"
            ));
        }
        if !part.starts_with(is_lower_alnum) || !part.ends_with(is_lower_alnum) {
            return Err(format!(
                "part {part:?} must start and end with a lowercase letter or digit"
            ));
        }
    }
    Ok(())
}

/// A DNS name as TLS and DNS need it: a DNS subdomain whose every part is a DNS label (at most 63
/// characters). A peer's name is its certificate's identity, so it is held to this.
pub fn check_dns_name(value: &str) -> Result<(), String> {
    check_dns_subdomain(value)?;
    for part in value.split('.') {
        check_dns_label(part).map_err(|e| format!("part {part:?} {e}"))?;
    }
    Ok(())
}

/// A host to dial: a DNS name or an IPv4/IPv6 literal.
pub fn check_host(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("required".into());
    }
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    if name.len() > MAX_SUBDOMAIN_LEN {
        return Err(format!("must be at most {MAX_SUBDOMAIN_LEN} characters"));
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= MAX_LABEL_LEN
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.split('.').all(ok_label) {
        Ok(())
    } else {
        Err(format!("{value:?} is neither a DNS name nor an IP address"))
    }
}

/// A label or attribute key: an optional DNS-subdomain prefix and `/`, then a name.
///
/// Attribute keys such as `client.clusterlink.net/labels.app.kubernetes.io/name` carry a
/// Kubernetes label key after the `labels.` part, so the name may itself contain a `/`.
pub fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("key must not be empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("key must be at most {MAX_KEY_LEN} characters"));
    }
    if let Some(c) = key
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err(format!("key {key:?} has invalid character {c:?}"));
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err(format!("key {key:?} must not start or end with '/'"));
    }
    Ok(())
}

/// A Kubernetes label value: at most 63 characters, alphanumeric at both ends, `-_.` inside.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_LABEL_LEN {
        return Err(format!(
            "value {value:?} must be at most {MAX_LABEL_LEN} characters"
        ));
    }
    if value.is_empty() {
        return Ok(());
    }
    if let Some(c) = value
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("value {value:?} has invalid character {c:?}"));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !value.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "value {value:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("server1").is_ok());
        assert!(check_dns_label("1server").is_ok());
        assert!(check_dns_label(&"a".repeat(63)).is_ok());
        assert!(
            check_dns_label(&"a".repeat(64))
                .unwrap_err()
                .contains("at most 63")
        );
        assert!(
            check_dns_label("Server")
                .unwrap_err()
                .contains("invalid character 'S'")
        );
        assert!(check_dns_label("-a").unwrap_err().contains("must start"));
        assert!(check_dns_label("a-").unwrap_err().contains("must end"));
        assert!(check_dns_label("a.b").unwrap_err().contains("'.'"));
        assert_eq!(check_dns_label("").unwrap_err(), "required");
    }

    #[test]
    fn rfc1035_labels_start_with_a_letter() {
        assert!(check_rfc1035_label("reviews").is_ok());
        assert!(
            check_rfc1035_label("9reviews")
                .unwrap_err()
                .contains("start with a lowercase letter")
        );
    }

    #[test]
    fn subdomains() {
        assert!(check_dns_subdomain("allow-all.team-a").is_ok());
        assert!(check_dns_subdomain("a..b").unwrap_err().contains("empty"));
        assert!(check_dns_subdomain(&"a".repeat(254)).is_err());
        // As Kubernetes: a part longer than a DNS label is a valid object name...
        assert!(check_dns_subdomain(&"a".repeat(74)).is_ok());
        assert!(check_dns_subdomain("cluster17.us-east").is_ok());
        assert!(
            check_dns_subdomain("a.-b")
                .unwrap_err()
                .contains("must start and end")
        );
        assert!(
            check_dns_subdomain("A.b")
                .unwrap_err()
                .contains("invalid character")
        );
        // ...but not a DNS name, which a peer's TLS identity is.
        assert!(check_dns_name("cluster17.us-east").is_ok());
        assert!(
            check_dns_name(&"a".repeat(64))
                .unwrap_err()
                .contains("at most 63")
        );
    }

    #[test]
    fn hosts() {
        for ok in [
            "10.0.0.1",
            "::1",
            "fe80::1",
            "gw.example.com",
            "localhost",
            "gw.example.com.",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "-gw", "gw..example", "http://x"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        assert!(check_label_key("client.clusterlink.net/labels.app.kubernetes.io/name").is_ok());
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("a b").is_err());
        assert!(check_label_key("/a").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_x-y").is_ok());
        assert!(check_label_value("-x").is_err());
        assert!(check_label_value(&"x".repeat(64)).is_err());
    }
}
