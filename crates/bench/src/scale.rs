//! The cost of scale inside one gateway, from the criterion benchmarks that `scripts/bench` runs
//! first: one policy decision as policies grow (`crates/dataplane/benches/policy.rs`, which
//! writes `policy.json`) and one configuration write as the store grows
//! (`crates/gateway/benches/writes.rs`, which writes `writes.json`). Read back here for the
//! table, the targets and the JSON.

use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

use crate::report::Target;

/// What the two benchmarks wrote, as they wrote it; `None` for a file not there.
pub struct Scale {
    pub policy: Option<Value>,
    pub writes: Option<Value>,
}

impl Scale {
    /// Reads `policy.json` and `writes.json` from `dir`. A missing file is not an error (the
    /// benchmark was not run); an unreadable one is.
    pub fn read(dir: &Path) -> anyhow::Result<Scale> {
        let read = |name: &str| -> anyhow::Result<Option<Value>> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    Ok(Some(serde_json::from_str(&text).with_context(|| {
                        format!("{} is not JSON", path.display())
                    })?))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
        };
        Ok(Scale {
            policy: read("policy.json")?,
            writes: read("writes.json")?,
        })
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({ "policy_decision": self.policy, "config_write": self.writes })
    }

    /// One table per benchmark found.
    pub fn table(&self) -> String {
        let policy = (
            "| policy decision | policies | p50, µs | p99, µs |",
            "policies",
        );
        let writes = (
            "| configuration write | objects stored | p50, ms | mean, ms |",
            "objects",
        );
        let mut tables = Vec::new();
        if let Some(figures) = self.policy.as_ref().and_then(Value::as_object) {
            tables.push(table_of(figures, policy, ["p50_us", "p99_us"]));
        }
        if let Some(figures) = self.writes.as_ref().and_then(Value::as_object) {
            tables.push(table_of(figures, writes, ["p50_ms", "mean_ms"]));
        }
        tables.join("\n")
    }

    /// The goals: a decision among 1,000 policies within 5 µs at p99 (the slower shape),
    /// and one PUT with 100,000 objects stored, a data plane following, within 1.5 × its cost with
    /// 100 (means).
    pub fn targets(&self) -> Vec<Target> {
        let decision = self
            .policy
            .as_ref()
            .and_then(Value::as_object)
            .and_then(|shapes| {
                shapes
                    .values()
                    .filter_map(|sizes| at(sizes, "policies", 1_000, "p99_us"))
                    .reduce(f64::max)
            });
        let writes = self.writes.as_ref().map(|w| &w["one_put_with_data_plane"]);
        let growth = writes.and_then(|sizes| {
            Some(at(sizes, "objects", 100_000, "mean_ms")? / at(sizes, "objects", 100, "mean_ms")?)
        });
        vec![
            Target::at_most(
                "policy decision, 1,000 policies, p99 µs <= 5",
                decision,
                5.0,
            ),
            Target::at_most(
                "one PUT (data plane following), 100,000 stored ÷ 100 stored <= 1.5",
                growth,
                1.5,
            ),
        ]
    }
}

/// A markdown table of a benchmark's figures: one row per case and size, named by `size_key`,
/// with the two `columns`.
fn table_of(
    figures: &serde_json::Map<String, Value>,
    (header, size_key): (&str, &str),
    columns: [&str; 2],
) -> String {
    let mut out = format!("{header}\n|---|---|---|---|\n");
    for (case, sizes) in figures {
        for size in sizes.as_array().into_iter().flatten() {
            out.push_str(&format!(
                "| {case} | {} | {:.2} | {:.2} |\n",
                size[size_key],
                number(&size[columns[0]]),
                number(&size[columns[1]]),
            ));
        }
    }
    out
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// In a list of sizes, the `field` of the one whose `key` is `n`.
fn at(sizes: &Value, key: &str, n: u64, field: &str) -> Option<f64> {
    sizes
        .as_array()?
        .iter()
        .find(|s| s[key].as_u64() == Some(n))?[field]
        .as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_from_what_the_benchmarks_wrote() {
        let scale = Scale {
            policy: Some(serde_json::json!({
                "ManyExports": [{"policies": 1000, "p50_us": 0.3, "p99_us": 0.4}],
                "OneExport": [{"policies": 1000, "p50_us": 0.3, "p99_us": 6.0}],
            })),
            writes: Some(serde_json::json!({
                "one_put_with_data_plane": [
                    {"objects": 100, "p50_ms": 0.4, "mean_ms": 0.5},
                    {"objects": 100000, "p50_ms": 0.5, "mean_ms": 0.6},
                ],
            })),
        };
        let targets = scale.targets();
        assert_eq!(targets[0].measured, Some(6.0));
        assert_eq!(targets[0].met, Some(false));
        assert!((targets[1].measured.unwrap() - 1.2).abs() < 1e-9);
        assert_eq!(targets[1].met, Some(true));
        let table = scale.table();
        assert!(
            table.contains("| OneExport | 1000 | 0.30 | 6.00 |\n"),
            "{table}"
        );
        assert!(
            table.contains("|\n\n| configuration write | objects stored | p50, ms | mean, ms |\n"),
            "{table}"
        );
        assert!(
            table.contains("| one_put_with_data_plane | 100000 | 0.50 | 0.60 |\n"),
            "{table}"
        );
        let none = Scale {
            policy: None,
            writes: None,
        };
        assert!(none.targets().iter().all(|t| t.met.is_none()));
    }
}
