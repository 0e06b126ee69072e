//! The reference ClusterLink's policy decision cases (its `connectivitypdp` tests and test data),
//! restated as data in `data/policy-decisions.yaml`, each asserted twice: through the engine the
//! gateways run, and through `clusterlink policy test`, which must print the same decision.

mod support;

use std::collections::BTreeMap;

use clusterlink_api::Object;
use clusterlink_api::attributes::Attributes;
use clusterlink_dataplane::policy::{Decider, PolicyDecision, PolicyEngine, Tier};
use serde::Deserialize;
use support::{CLUSTERLINK, stderr, stdout};

const CASES: &str = include_str!("data/policy-decisions.yaml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    suite: String,
    policies: Vec<serde_json::Value>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    case: String,
    namespace: String,
    from: BTreeMap<String, String>,
    to: BTreeMap<String, String>,
    expect: Expect,
    decided_by: String,
}

#[derive(Deserialize, PartialEq, Debug, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

fn suites() -> Vec<Suite> {
    serde_yaml_ng::Deserializer::from_str(CASES)
        .map(|doc| Suite::deserialize(doc).expect("a suite"))
        .collect()
}

fn policies(suite: &Suite) -> Vec<Object> {
    suite
        .policies
        .iter()
        .map(|p| {
            let object = clusterlink_api::manifest::object_from_value(p.clone())
                .unwrap_or_else(|e| panic!("suite {}: {e}", suite.suite));
            object
                .validate()
                .unwrap_or_else(|e| panic!("suite {}: {e}", suite.suite));
            object
        })
        .collect()
}

/// The decider as the case file names it.
fn decided_by(decision: &PolicyDecision) -> String {
    match &decision.decided_by {
        Decider::Policy {
            tier: Tier::Privileged,
            name,
            ..
        } => format!("PrivilegedAccessPolicy {name}"),
        Decider::Policy {
            tier: Tier::Namespaced,
            namespace,
            name,
        } => format!("AccessPolicy {namespace}/{name}"),
        Decider::ClientAttributesUnknown { .. } => "client attributes unknown".into(),
        Decider::DefaultDeny => "default deny".into(),
    }
}

#[test]
fn the_engine_decides_every_reference_case_as_the_reference_does() {
    let suites = suites();
    let cases: usize = suites.iter().map(|s| s.cases.len()).sum();
    assert!(cases >= 100, "only {cases} cases");
    let mut wrong = Vec::new();
    for suite in &suites {
        let engine = PolicyEngine::compile(&policies(suite));
        for case in &suite.cases {
            let from: Attributes = case.from.clone();
            let decision = engine.decide(&case.namespace, &from, &case.to);
            let got = (decision.allowed, decided_by(&decision));
            let want = (case.expect == Expect::Allow, case.decided_by.clone());
            if got != want {
                wrong.push(format!(
                    "{} / {}: expected {want:?}, decided {got:?}",
                    suite.suite, case.case
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {cases} cases:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn policy_test_prints_the_engines_decision_for_every_case() {
    let dir = tempfile::tempdir().unwrap();
    for suite in suites() {
        let file = dir.path().join(format!("{}.yaml", suite.suite));
        let documents: Vec<String> = suite
            .policies
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .collect();
        std::fs::write(&file, documents.join("\n---\n")).unwrap();
        let engine = PolicyEngine::compile(&policies(&suite));
        for case in &suite.cases {
            let mut args = vec![
                "policy".to_string(),
                "test".into(),
                "-f".into(),
                file.display().to_string(),
                "--namespace".into(),
                case.namespace.clone(),
            ];
            for (flag, attributes) in [("--from", &case.from), ("--to", &case.to)] {
                for (k, v) in attributes {
                    args.extend([flag.to_string(), format!("{k}={v}")]);
                }
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = support::run(CLUSTERLINK, &args, dir.path());
            let decision = engine.decide(&case.namespace, &case.from, &case.to);
            let egress = format!("egress  (namespace {}): {decision}", case.namespace);
            assert!(
                stdout(&out).lines().next() == Some(egress.as_str()),
                "{} / {}: expected {egress:?} first in:\n{}{}",
                suite.suite,
                case.case,
                stdout(&out),
                stderr(&out)
            );
            // Exit status 0 only when both sides allow.
            let ingress_allows = stdout(&out).contains("\ningress (namespace ")
                && !stdout(&out).lines().nth(1).unwrap_or("").contains("denied");
            assert_eq!(
                out.status.code(),
                Some(if decision.allowed && ingress_allows {
                    0
                } else {
                    1
                }),
                "{} / {}:\n{}",
                suite.suite,
                case.case,
                stdout(&out)
            );
        }
    }
}

#[test]
fn policy_test_explains_bad_input_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("p.yaml");
    std::fs::write(&policies, clusterlink_testbed::manifests::ALLOW_ALL).unwrap();
    let p = policies.to_str().unwrap();
    for (args, says) in [
        (
            vec!["--from", "client.clusterlink.net/nmae=x"],
            "valid keys: client.clusterlink.net/namespace",
        ),
        (
            vec!["--from", "export.clusterlink.net/name=x"],
            "not an attribute of a source",
        ),
        (
            vec!["--to", "peer.clusterlink.net/name"],
            "expected KEY=VALUE",
        ),
    ] {
        let mut all = vec!["policy", "test", "-f", p];
        all.extend(args);
        let out = support::run(CLUSTERLINK, &all, dir.path());
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    std::fs::write(
        &policies,
        "apiVersion: clusterlink.net/v1alpha1\nkind: AccessPolicy\nmetadata: {name: x}\nspec: {action: den, from: [], to: []}\n",
    )
    .unwrap();
    let out = support::run(CLUSTERLINK, &["policy", "test", "-f", p], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("action"), "{}", stderr(&out));

    // A known client allowed on both sides exits 0 and says so.
    std::fs::write(&policies, clusterlink_testbed::manifests::ALLOW_ALL).unwrap();
    let out = support::run(
        CLUSTERLINK,
        &[
            "policy",
            "test",
            "-f",
            p,
            "--from",
            "client.clusterlink.net/namespace=web",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).ends_with("result: allow\n"),
        "{}",
        stdout(&out)
    );
}
