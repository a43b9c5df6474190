//! Risk profiles: weights for programs and keywords, and a threshold at or above which a
//! request needs approval.

use std::collections::BTreeMap;

use toml_edit::TableLike;

use crate::{doc::Ctx, Problem};

/// A parsed risk profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RiskProfile {
    pub threshold: u32,
    pub programs: BTreeMap<String, u32>,
    pub keywords: BTreeMap<String, u32>,
    /// Keys of a tool call's JSON payload (anywhere in it) and their weights.
    pub payload_keys: BTreeMap<String, u32>,
}

impl RiskProfile {
    /// The score of a request running `programs` with `text` (its whole command line or
    /// target), and what contributed.
    pub fn score(&self, programs: &[String], text: &str) -> (u32, Vec<String>) {
        let mut score = 0;
        let mut why = Vec::new();
        for p in programs {
            if let Some(w) = self.programs.get(p) {
                score += w;
                why.push(format!("runs {p} (+{w})"));
            }
        }
        for (k, w) in &self.keywords {
            if text.contains(k.as_str()) {
                score += w;
                why.push(format!("contains `{k}` (+{w})"));
            }
        }
        (score, why)
    }
}

fn weights(c: &mut Ctx<'_>, t: &dyn TableLike, key: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Some(item) = t.get(key) else { return out };
    let Some(table) = item.as_table_like() else {
        c.add(item.span(), key, "expected a table of NAME = WEIGHT");
        return out;
    };
    for (name, v) in table.iter() {
        match v.as_integer() {
            Some(w) if (0..=1000).contains(&w) => {
                out.insert(name.to_string(), w as u32);
            }
            _ => c.add(
                v.span(),
                &format!("{key}.{name}"),
                "expected a weight from 0 to 1000",
            ),
        }
    }
    out
}

impl RiskProfile {
    /// The score the keys of a tool call's JSON `payload` add (each key counted once), and
    /// what contributed.
    pub fn score_payload(&self, payload: &serde_json::Value) -> (u32, Vec<String>) {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack = vec![payload];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, inner) in m {
                        if self.payload_keys.contains_key(k) {
                            seen.insert(k.clone());
                        }
                        stack.push(inner);
                    }
                }
                serde_json::Value::Array(a) => stack.extend(a.iter()),
                _ => {}
            }
        }
        let score = seen.iter().map(|k| self.payload_keys[k]).sum();
        (
            score,
            seen.iter()
                .map(|k| format!("payload has `{k}` (+{})", self.payload_keys[k]))
                .collect(),
        )
    }
}

/// Parses a risk profile; `Err` holds every problem.
pub fn parse_risk(text: &str, file: &str) -> Result<RiskProfile, Vec<Problem>> {
    let (mut c, doc) = crate::doc::open(
        text,
        file,
        &["threshold", "programs", "keywords", "payload_keys"],
    )?;
    let root = doc.as_table() as &dyn TableLike;
    let threshold = match root.get("threshold").map(|i| (i.as_integer(), i.span())) {
        Some((Some(t), _)) if t >= 1 => t as u32,
        Some((_, span)) => {
            c.add(span, "threshold", "expected an integer of at least 1");
            0
        }
        None => {
            c.add(None, "threshold", "missing");
            0
        }
    };
    let programs = weights(&mut c, root, "programs");
    let keywords = weights(&mut c, root, "keywords");
    let payload_keys = weights(&mut c, root, "payload_keys");
    if c.problems.is_empty() {
        Ok(RiskProfile {
            threshold,
            programs,
            keywords,
            payload_keys,
        })
    } else {
        Err(c.problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_profile_scores() {
        let r = parse_risk(crate::RISK, "risk/default.toml").expect("valid");
        let (s, why) = r.score(&["sh".into(), "rm".into()], "sh -c rm -rf /tmp/x");
        assert_eq!(s, 11);
        assert_eq!(why, vec!["runs rm (+6)", "contains `-rf` (+5)"]);
        assert!(s >= r.threshold);
        assert_eq!(r.score(&["cat".into()], "cat /usr/share/doc").0, 0);
        let (p, why) = r.score_payload(&serde_json::json!({ "path": "/x", "opts": [{ "recursive": true }], "command": "ls", "n": { "command": 1 } }));
        assert_eq!(p, 9, "{why:?}");
        assert_eq!(
            why,
            vec!["payload has `command` (+5)", "payload has `recursive` (+4)"]
        );
        let bad: Vec<String> = parse_risk(
            "threshold = 0\nextra = 1\n[programs]\nrm = \"x\"\n",
            "r.toml",
        )
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            bad,
            vec![
                "r.toml:2: extra: unknown key; expected one of: threshold, programs, keywords, payload_keys",
                "r.toml:1: threshold: expected an integer of at least 1",
                "r.toml:4: programs.rm: expected a weight from 0 to 1000",
            ]
        );
    }
}
