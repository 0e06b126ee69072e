//! Policy attribute keys (README, "What policies see"). Selectors in access policies match these.

/// Name of a peer: the client's peer on the source side, the exporting peer on the destination.
pub const PEER_NAME: &str = "peer.clusterlink.net/name";
/// Prefix of a peer's labels: `peer.clusterlink.net/labels.<key>`.
pub const PEER_LABELS_PREFIX: &str = "peer.clusterlink.net/labels.";
/// Namespace of the connecting client workload.
pub const CLIENT_NAMESPACE: &str = "client.clusterlink.net/namespace";
/// Service account of the connecting client workload.
pub const CLIENT_SERVICE_ACCOUNT: &str = "client.clusterlink.net/service-account";
/// Prefix of the client workload's labels.
pub const CLIENT_LABELS_PREFIX: &str = "client.clusterlink.net/labels.";
/// Name of the exported service.
pub const EXPORT_NAME: &str = "export.clusterlink.net/name";
/// Namespace of the exported service.
pub const EXPORT_NAMESPACE: &str = "export.clusterlink.net/namespace";
/// Prefix of the export's labels.
pub const EXPORT_LABELS_PREFIX: &str = "export.clusterlink.net/labels.";

/// Attribute key to value: what a policy selector is matched against for one side of a
/// connection.
pub type Attributes = std::collections::BTreeMap<String, String>;

/// Whether `key` is an attribute of the client workload (`client.clusterlink.net/...`): the
/// only kind a peer may send, and the kind whose absence means the client is unknown.
pub fn is_client_attribute(key: &str) -> bool {
    key == CLIENT_NAMESPACE
        || key == CLIENT_SERVICE_ACCOUNT
        || key.starts_with(CLIENT_LABELS_PREFIX)
}

/// Which side of a policy a selector describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorSide {
    /// `from`: the client and its peer.
    From,
    /// `to`: the export and its peer.
    To,
}

/// Why a selector key can never match on `side`, or `None` if attributes there may carry it.
/// A typo (`export.clusterlink.net/nmae`) or a key of the other side matches nothing: the
/// policy is accepted but silently never applies, so tools point it out.
pub fn selector_key_problem(key: &str, side: SelectorSide) -> Option<String> {
    let is_peer = key == PEER_NAME || key.starts_with(PEER_LABELS_PREFIX);
    let is_export =
        key == EXPORT_NAME || key == EXPORT_NAMESPACE || key.starts_with(EXPORT_LABELS_PREFIX);
    let (fits, other, known): (bool, bool, &[&str]) = match side {
        SelectorSide::From => (
            is_peer || is_client_attribute(key),
            is_export,
            &[
                CLIENT_NAMESPACE,
                CLIENT_SERVICE_ACCOUNT,
                CLIENT_LABELS_PREFIX,
                PEER_NAME,
                PEER_LABELS_PREFIX,
            ],
        ),
        SelectorSide::To => (
            is_peer || is_export,
            is_client_attribute(key),
            &[
                EXPORT_NAME,
                EXPORT_NAMESPACE,
                EXPORT_LABELS_PREFIX,
                PEER_NAME,
                PEER_LABELS_PREFIX,
            ],
        ),
    };
    let (this, that) = match side {
        SelectorSide::From => ("from", "to"),
        SelectorSide::To => ("to", "from"),
    };
    if fits {
        None
    } else if other {
        Some(format!(
            "{key:?} describes the other end of a connection: it belongs in `{that}`, and never matches in `{this}`"
        ))
    } else {
        let closest = known
            .iter()
            .map(|k| (edit_distance(key, k), *k))
            .min()
            .filter(|(d, _)| *d <= 3)
            .map(|(_, k)| format!("did you mean {k:?}? "))
            .unwrap_or_default();
        Some(format!(
            "{key:?} is no attribute key, so it never matches: {closest}`{this}` keys are {}",
            known
                .iter()
                .map(|k| if k.ends_with('.') {
                    format!("{k}<key>")
                } else {
                    k.to_string()
                })
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Levenshtein distance, for suggestions among a handful of short keys.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_and_misplaced_keys_are_named() {
        assert_eq!(selector_key_problem(EXPORT_NAME, SelectorSide::To), None);
        assert_eq!(
            selector_key_problem("client.clusterlink.net/labels.app", SelectorSide::From),
            None
        );
        assert_eq!(selector_key_problem(PEER_NAME, SelectorSide::From), None);
        let typo = selector_key_problem("export.clusterlink.net/nmae", SelectorSide::To).unwrap();
        assert!(
            typo.contains("did you mean \"export.clusterlink.net/name\""),
            "{typo}"
        );
        let misplaced = selector_key_problem(EXPORT_NAME, SelectorSide::From).unwrap();
        assert!(misplaced.contains("belongs in `to`"), "{misplaced}");
        let foreign = selector_key_problem("app", SelectorSide::From).unwrap();
        assert!(foreign.contains("no attribute key"), "{foreign}");
    }
}
