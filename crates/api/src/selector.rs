//! Kubernetes label selectors (`matchLabels`, `matchExpressions`) over policy attributes.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::validation::{FieldErrors, check_label_key, check_label_value};

/// A Kubernetes label selector. All of `matchLabels` and `matchExpressions` must hold; an empty
/// selector (`{}`) matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Something that can be asked for an attribute's value by key.
pub trait AttributeLookup {
    fn attribute(&self, key: &str) -> Option<&str>;
}

impl AttributeLookup for BTreeMap<String, String> {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl AttributeLookup for HashMap<String, String> {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl LabelSelector {
    /// Selects everything.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    pub fn matches(&self, attrs: &impl AttributeLookup) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| attrs.attribute(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| r.matches(attrs))
    }

    pub fn validate(&self, path: &str, errors: &mut FieldErrors) {
        for (k, v) in &self.match_labels {
            if let Err(e) = check_label_key(k).and_then(|()| check_label_value(v)) {
                errors.push(format!("{path}.matchLabels[{k}]"), e);
            }
        }
        for (i, r) in self.match_expressions.iter().enumerate() {
            r.validate(&format!("{path}.matchExpressions[{i}]"), errors);
        }
    }
}

impl LabelSelectorRequirement {
    pub fn matches(&self, attrs: &impl AttributeLookup) -> bool {
        let value = attrs.attribute(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            // As in Kubernetes, NotIn matches when the key is absent.
            SelectorOperator::NotIn => value.is_none_or(|v| self.values.iter().all(|x| x != v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }

    fn validate(&self, path: &str, errors: &mut FieldErrors) {
        if let Err(e) = check_label_key(&self.key) {
            errors.push(format!("{path}.key"), e);
        }
        match self.operator {
            SelectorOperator::In | SelectorOperator::NotIn => {
                if self.values.is_empty() {
                    errors.push(
                        format!("{path}.values"),
                        format!("must not be empty when operator is {:?}", self.operator),
                    );
                }
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
                if !self.values.is_empty() {
                    errors.push(
                        format!("{path}.values"),
                        format!("must be empty when operator is {:?}", self.operator),
                    );
                }
            }
        }
        for (i, v) in self.values.iter().enumerate() {
            if let Err(e) = check_label_value(v) {
                errors.push(format!("{path}.values[{i}]"), e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn operators() {
        let a = attrs(&[("app", "web"), ("tier", "front")]);
        use SelectorOperator::*;
        assert!(req("app", In, &["web", "db"]).matches(&a));
        assert!(!req("app", In, &["db"]).matches(&a));
        assert!(!req("missing", In, &["web"]).matches(&a));
        assert!(req("app", NotIn, &["db"]).matches(&a));
        assert!(!req("app", NotIn, &["web"]).matches(&a));
        assert!(req("missing", NotIn, &["web"]).matches(&a));
        assert!(req("tier", Exists, &[]).matches(&a));
        assert!(!req("missing", Exists, &[]).matches(&a));
        assert!(req("missing", DoesNotExist, &[]).matches(&a));
        assert!(!req("tier", DoesNotExist, &[]).matches(&a));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = LabelSelector {
            match_labels: attrs(&[("app", "web")]),
            match_expressions: vec![req("tier", SelectorOperator::In, &["front"])],
        };
        assert!(s.matches(&attrs(&[("app", "web"), ("tier", "front")])));
        assert!(!s.matches(&attrs(&[("app", "web"), ("tier", "back")])));
        assert!(!s.matches(&attrs(&[("tier", "front")])));
    }

    #[test]
    fn validation_names_the_field() {
        let s = LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![
                req("app", SelectorOperator::In, &[]),
                req("app", SelectorOperator::Exists, &["x"]),
                req("bad key", SelectorOperator::Exists, &[]),
            ],
        };
        let mut errors = FieldErrors::default();
        s.validate("spec.from[0].workloadSelector", &mut errors);
        let text = errors.to_string();
        assert!(text.contains("spec.from[0].workloadSelector.matchExpressions[0].values: must not be empty when operator is In"), "{text}");
        assert!(
            text.contains("matchExpressions[1].values: must be empty when operator is Exists"),
            "{text}"
        );
        assert!(text.contains("matchExpressions[2].key"), "{text}");
    }

    fn arb_attrs() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map("[a-c]", "[x-z]", 0..4)
    }

    fn arb_req() -> impl Strategy<Value = LabelSelectorRequirement> {
        (
            "[a-c]",
            prop_oneof![
                Just(SelectorOperator::In),
                Just(SelectorOperator::NotIn),
                Just(SelectorOperator::Exists),
                Just(SelectorOperator::DoesNotExist)
            ],
            prop::collection::vec("[x-z]", 1..3),
        )
            .prop_map(|(key, operator, values)| LabelSelectorRequirement {
                key,
                values: match operator {
                    SelectorOperator::In | SelectorOperator::NotIn => values,
                    _ => vec![],
                },
                operator,
            })
    }

    proptest! {
        #[test]
        fn empty_selector_matches_everything(a in arb_attrs()) {
            prop_assert!(LabelSelector::everything().matches(&a));
        }

        #[test]
        fn in_and_notin_are_complements_when_key_present(a in arb_attrs(), r in arb_req()) {
            let flipped = LabelSelectorRequirement {
                operator: match r.operator {
                    SelectorOperator::In => SelectorOperator::NotIn,
                    SelectorOperator::NotIn => SelectorOperator::In,
                    SelectorOperator::Exists => SelectorOperator::DoesNotExist,
                    SelectorOperator::DoesNotExist => SelectorOperator::Exists,
                },
                ..r.clone()
            };
            // Absent keys are the one case where In and NotIn do not complement each other.
            if a.contains_key(&r.key) || matches!(r.operator, SelectorOperator::Exists | SelectorOperator::DoesNotExist) {
                prop_assert_ne!(r.matches(&a), flipped.matches(&a));
            }
        }

        #[test]
        fn match_labels_equal_single_value_in(a in arb_attrs(), k in "[a-c]", v in "[x-z]") {
            let by_labels = LabelSelector { match_labels: attrs(&[(&k, &v)]), ..Default::default() };
            let by_expr = LabelSelector {
                match_expressions: vec![req(&k, SelectorOperator::In, &[&v])],
                ..Default::default()
            };
            prop_assert_eq!(by_labels.matches(&a), by_expr.matches(&a));
        }

        #[test]
        fn adding_a_requirement_never_widens(a in arb_attrs(), rs in prop::collection::vec(arb_req(), 0..4), extra in arb_req()) {
            let narrow = LabelSelector { match_expressions: rs.iter().cloned().chain([extra]).collect(), ..Default::default() };
            let wide = LabelSelector { match_expressions: rs, ..Default::default() };
            prop_assert!(!narrow.matches(&a) || wide.matches(&a));
        }
    }
}
