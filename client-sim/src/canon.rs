//! Canonical JSON (object keys sorted, no whitespace) and the first difference between two
//! JSON values, for the simulator's verdict.

use std::fmt::Write as _;

use serde_json::Value;

/// The canonical text of `v`: keys sorted at every level, numbers and strings as serde_json
/// writes them.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canon(v, &mut out);
    out
}

fn write_canon(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canon(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canon(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The first place where `a` and `b` differ, as `path: a-side vs b-side` (values cut to 120
/// characters), or `None` when they are equal as canonical JSON.
pub fn first_difference(a: &Value, b: &Value) -> Option<String> {
    diff_at(a, b, "$")
}

fn short(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => {
            let s = canonical(v);
            if s.len() > 120 {
                let cut = (0..=120).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                format!("{}…", &s[..cut])
            } else {
                s
            }
        }
    }
}

fn diff_at(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = diff_at(u, v, &p) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some(format!("{p}: {} vs {}", short(u), short(v))),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let mut p = String::from(path);
                let _ = write!(p, "[{i}]"); // writing to a String cannot fail
                match (x.get(i), y.get(i)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = diff_at(u, v, &p) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some(format!("{p}: {} vs {}", short(u), short(v))),
                }
            }
            None
        }
        (x, y) => (canonical(x) != canonical(y)).then(|| format!("{path}: {} vs {}", short(Some(x)), short(Some(y)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_and_diff_finds_first() {
        assert_eq!(canonical(&json!({"b":1,"a":[{"d":2,"c":3}]})), r#"{"a":[{"c":3,"d":2}],"b":1}"#);
        let a = json!({"tracks":[{"id":"t1","clips":[{"id":"c1","start":1}]}],"tempo":120});
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b), None);
        b["tracks"][0]["clips"][0]["start"] = json!(2);
        assert_eq!(first_difference(&a, &b).unwrap(), "$.tracks[0].clips[0].start: 1 vs 2");
        b["tempo"] = json!(128);
        assert_eq!(first_difference(&a, &b).unwrap(), "$.tempo: 120 vs 128");
        let c = json!({"tracks":[]});
        assert!(first_difference(&a, &c).unwrap().starts_with("$.tempo: 120 vs (absent)"));
    }
}
