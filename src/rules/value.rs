//! Rule values: JSON's types plus Undefined (a missing field: false in a condition, left
//! out of an output), with the comparisons and conversions both dialects use.

use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Undefined,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Value>),
    /// Keys in the order they were set (a row keeps its SELECT order).
    Object(Vec<(String, Value)>),
}

impl Value {
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(a) => Value::Array(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect())
            }
        }
    }

    /// JSON, without what is Undefined (`None` if this is). Non-finite numbers are null.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        if self.is_undefined() {
            return None;
        }
        serde_json::to_value(self).ok()
    }

    pub fn is_undefined(&self) -> bool {
        matches!(self, Value::Undefined)
    }

    /// The value of key `k` of an object.
    pub fn get(&self, k: &str) -> Value {
        match self {
            Value::Object(m) => {
                m.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default()
            }
            _ => Value::Undefined,
        }
    }

    /// Sets `path` (dotted alias parts) in an object, making the objects on the way.
    pub fn set_path(&mut self, path: &[String], v: Value) {
        let Value::Object(m) = self else { return };
        let Some((first, rest)) = path.split_first() else { return };
        let slot = match m.iter().position(|(k, _)| k == first) {
            Some(i) => &mut m[i].1,
            None => {
                m.push((first.clone(), Value::Undefined));
                let last = m.len() - 1;
                &mut m[last].1
            }
        };
        if rest.is_empty() {
            *slot = v;
        } else {
            if !matches!(slot, Value::Object(_)) {
                *slot = Value::Object(Vec::new());
            }
            slot.set_path(rest, v);
        }
    }

    /// True only for true (and, as AWS has it, the string "true" in any case).
    pub fn truthy(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            Value::Str(s) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }

    /// A boolean operand: a boolean, or the string "true"/"false".
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Str(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Value::Str(s) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(x) => Some(*x),
            _ => None,
        }
    }

    /// A number, or a string that holds one (conversion for numeric functions).
    pub fn to_number(&self) -> Option<Value> {
        match self {
            Value::Int(_) | Value::Float(_) => Some(self.clone()),
            Value::Str(s) => {
                let t = s.trim();
                t.parse::<i64>()
                    .map(Value::Int)
                    .ok()
                    .or_else(|| t.parse::<f64>().ok().filter(|x| x.is_finite()).map(Value::Float))
            }
            _ => None,
        }
    }

    /// The text of a value: strings as they are, the rest as JSON.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Undefined => None,
            Value::Str(s) => Some(s.clone()),
            v => Some(v.to_json_text()),
        }
    }

    /// Equality (numbers across Int and Float); None when either side is Undefined.
    pub fn equals(&self, other: &Value) -> Option<bool> {
        match (self, other) {
            (Value::Undefined, _) | (_, Value::Undefined) => None,
            (a, b) => Some(match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            }),
        }
    }

    /// Order of numbers and of strings; None for anything else.
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            (a, b) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        }
    }
}

/// JSON in the row's own key order (Undefined left out), for payloads and API answers.
impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Value::Undefined | Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(x) if x.is_finite() => s.serialize_f64(*x),
            Value::Float(_) => s.serialize_unit(),
            Value::Str(t) => s.serialize_str(t),
            Value::Array(a) => {
                let mut seq = s.serialize_seq(None)?;
                for v in a.iter().filter(|v| !v.is_undefined()) {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Object(m) => {
                let mut map = s.serialize_map(None)?;
                for (k, v) in m.iter().filter(|(_, v)| !v.is_undefined()) {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl Value {
    /// JSON text in the row's key order; Undefined is `null` at the top.
    pub fn to_json_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trip_leaves_out_undefined() {
        let v = Value::from_json(&json!({"a": 1, "b": [1.5, "x", null], "c": {"d": true}}));
        assert_eq!(v.get("a"), Value::Int(1));
        assert_eq!(v.to_json(), Some(json!({"a": 1, "b": [1.5, "x", null], "c": {"d": true}})));
        let row = Value::Object(vec![("x".into(), Value::Undefined), ("y".into(), Value::Null)]);
        assert_eq!(row.to_json(), Some(json!({"y": null})));
        assert_eq!(Value::Float(f64::NAN).to_json(), Some(json!(null)));
    }

    #[test]
    fn json_text_keeps_the_row_order() {
        let row = Value::Object(vec![
            ("z".into(), Value::Int(1)),
            ("gone".into(), Value::Undefined),
            ("a".into(), Value::Array(vec![Value::Undefined, Value::Float(0.5)])),
        ]);
        assert_eq!(row.to_json_text(), r#"{"z":1,"a":[0.5]}"#);
    }

    #[test]
    fn dotted_paths_make_objects() {
        let mut row = Value::Object(Vec::new());
        row.set_path(&["a".into(), "b".into()], Value::Int(1));
        row.set_path(&["a".into(), "c".into()], Value::Int(2));
        row.set_path(&["d".into()], Value::Int(3));
        assert_eq!(row.to_json(), Some(json!({"a": {"b": 1, "c": 2}, "d": 3})));
    }

    #[test]
    fn comparisons() {
        assert_eq!(Value::Int(1).equals(&Value::Float(1.0)), Some(true));
        assert_eq!(Value::Int(1).equals(&Value::from("1")), Some(false));
        assert_eq!(Value::Undefined.equals(&Value::Null), None);
        assert_eq!(Value::Null.equals(&Value::Null), Some(true));
        assert_eq!(Value::from("a").compare(&Value::from("b")), Some(Ordering::Less));
        assert_eq!(Value::Int(2).compare(&Value::Float(1.5)), Some(Ordering::Greater));
        assert_eq!(Value::Int(2).compare(&Value::from("1")), None);
        assert_eq!(Value::from(" 42 ").to_number(), Some(Value::Int(42)));
        assert_eq!(Value::from("4.5").to_number(), Some(Value::Float(4.5)));
        assert_eq!(Value::from("nan").to_number(), None);
    }
}
