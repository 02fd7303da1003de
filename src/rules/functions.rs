//! Rule functions (string, math, conversion, regex, hashes, encodings, JSON, arrays and
//! maps, time, ids, and the message and shadow accessors) and the message columns. Each
//! function takes evaluated arguments; Undefined in gives Undefined out, and a value a
//! function cannot take is an error (Undefined in the AWS dialect, a failed rule in EMQX's).

use base64::Engine as _;

use super::value::Value;
use super::{Dialect, Input};

/// What a function sees besides its arguments.
pub struct Cx<'i, 'a> {
    pub dialect: Dialect,
    pub input: &'i Input<'a>,
}

pub type Func = fn(&[Value], &Cx<'_, '_>) -> Result<Value, String>;

/// EMQX's message columns, in the order `SELECT *` lists them.
pub const COLUMNS: &[&str] = &[
    "id",
    "clientid",
    "username",
    "payload",
    "topic",
    "qos",
    "flags",
    "pub_props",
    "peerhost",
    "timestamp",
    "node",
];

impl Cx<'_, '_> {
    /// A message column, or one of the event's own.
    pub fn column(&self, name: &str) -> Value {
        let i = self.input;
        let text = |s: &str| Value::Str(s.to_string());
        if let Some((_, v)) = i.extra.iter().find(|(k, _)| *k == name) {
            return v.clone();
        }
        match name {
            "id" if !i.id.is_empty() => text(i.id),
            "clientid" => text(i.clientid),
            "username" => i.username.map(text).unwrap_or(Value::Null),
            "payload" => Value::Str(String::from_utf8_lossy(i.payload).into_owned()),
            "topic" => text(i.topic),
            "qos" => Value::Int(i.qos as i64),
            "retain" => Value::Bool(i.retain),
            "flags" => Value::Object(vec![("retain".into(), Value::Bool(i.retain))]),
            "pub_props" => {
                let mut props = Value::Object(Vec::new());
                if !i.user_props.is_empty() {
                    let up = i.user_props.iter().map(|(k, v)| (k.clone(), text(v))).collect();
                    props.set_path(&["User-Property".into()], Value::Object(up));
                }
                props
            }
            "peerhost" => i.peerhost.map(text).unwrap_or_default(),
            "timestamp" => Value::Int(i.timestamp_ms),
            "node" if !i.node.is_empty() => text(i.node),
            _ => Value::Undefined,
        }
    }
}

macro_rules! funcs {
    ($($name:literal $min:literal $max:expr => $f:expr;)*) => {
        const TABLE: &[(&str, usize, usize, Func)] = &[$(($name, $min, $max, $f),)*];
    };
}

const MANY: usize = usize::MAX;

funcs! {
    // Strings.
    "lower" 1 1 => |a, _| str_map(a, |s| s.to_lowercase());
    "upper" 1 1 => |a, _| str_map(a, |s| s.to_uppercase());
    "trim" 1 1 => |a, _| str_map(a, |s| s.trim().to_string());
    "ltrim" 1 1 => |a, _| str_map(a, |s| s.trim_start().to_string());
    "rtrim" 1 1 => |a, _| str_map(a, |s| s.trim_end().to_string());
    "reverse" 1 1 => |a, _| str_map(a, |s| s.chars().rev().collect());
    "strlen" 1 1 => |a, _| undef_or(a, |a| Ok(Value::Int(text(&a[0])?.chars().count() as i64)));
    "concat" 1 MANY => |a, _| {
        if a.iter().any(Value::is_undefined) { return Ok(Value::Undefined) }
        let mut out = String::new();
        for v in a { out.push_str(&v.to_text().unwrap_or_default()); }
        Ok(Value::Str(out))
    };
    "substr" 2 3 => substr;
    "substring" 2 3 => substr;
    "replace" 3 3 => |a, _| undef_or(a, |a| Ok(Value::Str(text(&a[0])?.replace(text(&a[1])?, text(&a[2])?))));
    "split" 2 2 => |a, _| undef_or(a, |a| {
        let (s, sep) = (text(&a[0])?, text(&a[1])?);
        if sep.is_empty() { return Err("an empty separator".into()) }
        Ok(Value::Array(s.split(sep).filter(|p| !p.is_empty()).map(Value::from).collect()))
    });
    "startswith" 2 2 => |a, _| undef_or(a, |a| Ok(Value::Bool(text(&a[0])?.starts_with(text(&a[1])?))));
    "endswith" 2 2 => |a, _| undef_or(a, |a| Ok(Value::Bool(text(&a[0])?.ends_with(text(&a[1])?))));
    "regex_match" 2 2 => |a, _| undef_or(a, |a| Ok(Value::Bool(regex(&a[1])?.is_match(text(&a[0])?))));
    "regexp_matches" 2 2 => |a, _| undef_or(a, |a| Ok(Value::Bool(regex(&a[1])?.is_match(text(&a[0])?))));
    "regex_replace" 3 3 => regex_replace;
    "regexp_replace" 3 3 => regex_replace;
    "regex_extract" 2 2 => |a, _| undef_or(a, |a| {
        let re = regex(&a[1])?;
        Ok(match re.captures(text(&a[0])?) {
            Some(c) if c.len() > 1 => Value::Array(c.iter().skip(1).map(|m| m.map(|m| Value::from(m.as_str())).unwrap_or(Value::Null)).collect()),
            Some(c) => Value::Array(vec![Value::from(c.get(0).map_or("", |m| m.as_str()))]),
            None => Value::Array(Vec::new()),
        })
    });
    "regexp_substr" 2 2 => |a, _| undef_or(a, |a| {
        Ok(regex(&a[1])?.find(text(&a[0])?).map(|m| Value::from(m.as_str())).unwrap_or_default())
    });
    // Math.
    "abs" 1 1 => |a, _| num_map(a, i64::checked_abs, f64::abs);
    "ceil" 1 1 => |a, _| num_round(a, f64::ceil);
    "floor" 1 1 => |a, _| num_round(a, f64::floor);
    "round" 1 1 => |a, _| num_round(a, f64::round);
    "sqrt" 1 1 => |a, _| float_map(a, f64::sqrt);
    "exp" 1 1 => |a, _| float_map(a, f64::exp);
    "ln" 1 1 => |a, _| float_map(a, f64::ln);
    "log" 1 1 => |a, cx| float_map(a, if cx.dialect == Dialect::Aws { f64::log10 } else { f64::ln });
    "log10" 1 1 => |a, _| float_map(a, f64::log10);
    "log2" 1 1 => |a, _| float_map(a, f64::log2);
    "sin" 1 1 => |a, _| float_map(a, f64::sin);
    "cos" 1 1 => |a, _| float_map(a, f64::cos);
    "tan" 1 1 => |a, _| float_map(a, f64::tan);
    "power" 2 2 => |a, _| undef_or(a, |a| finite(number(&a[0])?.powf(number(&a[1])?)));
    "mod" 2 2 => |a, _| undef_or(a, |a| match (int(&a[0])?, int(&a[1])?) {
        (_, 0) => Err("division by zero".into()),
        (x, y) => Ok(Value::Int(x.rem_euclid(y))),
    });
    "div" 2 2 => |a, _| undef_or(a, |a| match (int(&a[0])?, int(&a[1])?) {
        (_, 0) => Err("division by zero".into()),
        (x, y) => x.checked_div(y).map(Value::Int).ok_or_else(|| "overflow".into()),
    });
    // Conversion.
    "int" 1 1 => |a, _| undef_or(a, |a| to_int(&a[0]));
    "float" 1 1 => |a, _| undef_or(a, |a| to_float(&a[0]));
    "str" 1 1 => |a, _| Ok(a[0].to_text().map(Value::Str).unwrap_or_default());
    "bool" 1 1 => |a, _| undef_or(a, |a| to_bool(&a[0]));
    "cast" 2 2 => |a, _| undef_or(a, |a| match text(&a[1])?.to_ascii_lowercase().as_str() {
        "int" => to_int(&a[0]),
        "decimal" | "float" => to_float(&a[0]),
        "string" | "str" => Ok(a[0].to_text().map(Value::Str).unwrap_or_default()),
        "boolean" | "bool" => to_bool(&a[0]),
        t => Err(format!("no type {t}")),
    });
    "coalesce" 1 MANY => |a, _| Ok(a.iter().find(|v| !matches!(v, Value::Undefined | Value::Null)).cloned().unwrap_or(Value::Null));
    "is_null" 1 1 => |a, _| Ok(Value::Bool(matches!(a[0], Value::Null | Value::Undefined)));
    "is_not_null" 1 1 => |a, _| Ok(Value::Bool(!matches!(a[0], Value::Null | Value::Undefined)));
    "isundefined" 1 1 => |a, _| Ok(Value::Bool(a[0].is_undefined()));
    "isnull" 1 1 => |a, _| Ok(Value::Bool(a[0] == Value::Null));
    "typeof" 1 1 => |a, _| Ok(Value::from(match &a[0] {
        Value::Undefined => "Undefined", Value::Null => "Null", Value::Bool(_) => "Bool",
        Value::Int(_) => "Int", Value::Float(_) => "Decimal", Value::Str(_) => "String",
        Value::Array(_) => "Array", Value::Object(_) => "Object",
    }));
    // Hashes and encodings.
    "md5" 1 1 => |a, _| undef_or(a, |a| Ok(Value::Str(hex(&md5_digest(bytes(&a[0])?.as_bytes())))));
    "sha1" 1 1 => |a, _| digest(a, &ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    "sha256" 1 1 => |a, _| digest(a, &ring::digest::SHA256);
    "base64_encode" 1 1 => |a, _| undef_or(a, |a| Ok(Value::Str(base64::engine::general_purpose::STANDARD.encode(bytes(&a[0])?))));
    "base64_decode" 1 1 => |a, _| undef_or(a, |a| {
        let raw = base64::engine::general_purpose::STANDARD.decode(text(&a[0])?).map_err(|e| e.to_string())?;
        String::from_utf8(raw).map(Value::Str).map_err(|_| "not UTF-8 text".into())
    });
    "hex_encode" 1 1 => |a, _| undef_or(a, |a| Ok(Value::Str(hex(bytes(&a[0])?.as_bytes()))));
    "hex_decode" 1 1 => |a, _| undef_or(a, |a| {
        let s = text(&a[0])?;
        if s.len() % 2 != 0 { return Err("odd length".into()) }
        let raw = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("x"), 16)).collect::<Result<Vec<u8>, _>>().map_err(|e| e.to_string())?;
        String::from_utf8(raw).map(Value::Str).map_err(|_| "not UTF-8 text".into())
    });
    "json_encode" 1 1 => |a, _| Ok(if a[0].is_undefined() { Value::Undefined } else { Value::Str(a[0].to_json_text()) });
    "json_decode" 1 1 => |a, _| undef_or(a, |a| {
        serde_json::from_str::<serde_json::Value>(text(&a[0])?).map(|j| Value::from_json(&j)).map_err(|e| e.to_string())
    });
    // Arrays and maps.
    "nth" 2 2 => |a, _| undef_or(a, |a| Ok(match &a[1] {
        Value::Array(v) => super::eval::position(v.len(), int(&a[0])?, Dialect::Emqx).map(|p| v[p].clone()).unwrap_or_default(),
        _ => return Err("not an array".into()),
    }));
    "get" 2 2 => |a, _| undef_or(a, |a| Ok(match (&a[0], &a[1]) {
        (Value::Array(v), Value::Int(i)) => super::eval::position(v.len(), *i, Dialect::Aws).map(|p| v[p].clone()).unwrap_or_default(),
        (o @ Value::Object(_), Value::Str(k)) => o.get(k),
        _ => return Err("get takes an array and an index, or an object and a key".into()),
    }));
    "first" 1 1 => |a, _| undef_or(a, |a| array(&a[0]).map(|v| v.first().cloned().unwrap_or_default()));
    "last" 1 1 => |a, _| undef_or(a, |a| array(&a[0]).map(|v| v.last().cloned().unwrap_or_default()));
    "length" 1 1 => |a, _| undef_or(a, |a| Ok(Value::Int(match &a[0] {
        Value::Array(v) => v.len(), Value::Object(m) => m.len(), Value::Str(s) => s.chars().count(),
        _ => return Err("no length".into()),
    } as i64)));
    "contains" 2 2 => |a, _| undef_or(a, |a| Ok(Value::Bool(match (&a[0], &a[1]) {
        (x, Value::Array(v)) => v.iter().any(|e| e.equals(x) == Some(true)),
        (Value::Str(s), Value::Str(sub)) => s.contains(sub.as_str()),
        _ => return Err("contains takes an item and an array".into()),
    })));
    "map_get" 2 3 => |a, _| {
        if a[0].is_undefined() || a[1].is_undefined() { return Ok(Value::Undefined) }
        let v = a[1].get(text(&a[0])?);
        Ok(if v.is_undefined() { a.get(2).cloned().unwrap_or_default() } else { v })
    };
    "map_keys" 1 1 => |a, _| undef_or(a, |a| match &a[0] {
        Value::Object(m) => Ok(Value::Array(m.iter().map(|(k, _)| Value::from(k.as_str())).collect())),
        _ => Err("not an object".into()),
    });
    "map_values" 1 1 => |a, _| undef_or(a, |a| match &a[0] {
        Value::Object(m) => Ok(Value::Array(m.iter().map(|(_, v)| v.clone()).collect())),
        _ => Err("not an object".into()),
    });
    // Time and ids.
    "timestamp" 0 0 => |_, cx| Ok(Value::Int(cx.input.timestamp_ms));
    "now_timestamp" 0 1 => |a, cx| Ok(Value::Int(in_unit(cx.input.now_ms, a.first())?));
    "now_rfc3339" 0 1 => |a, cx| Ok(Value::Str(rfc3339(cx.input.now_ms, unit(a.first())?)));
    "unix_ts_to_rfc3339" 1 2 => |a, _| undef_or(a, |a| {
        let u = unit(a.get(1))?;
        let ts = int(&a[0])?;
        let ms = match u {
            Unit::S => ts.checked_mul(1000).ok_or("out of range")?,
            Unit::Ms => ts,
            Unit::Us => ts.div_euclid(1000),
            Unit::Ns => ts.div_euclid(1_000_000),
        };
        Ok(Value::Str(rfc3339(ms, u)))
    });
    "rfc3339_to_unix_ts" 1 2 => |a, _| undef_or(a, |a| {
        let ms = parse_rfc3339(text(&a[0])?).ok_or("not an RFC 3339 time")?;
        Ok(Value::Int(in_unit(ms, a.get(1))?))
    });
    "uuid_v4" 0 0 => |_, _| Ok(Value::Str(uuid_v4()));
    "newuuid" 0 0 => |_, _| Ok(Value::Str(uuid_v4()));
    // The message and the device.
    "topic" 0 1 => |a, cx| {
        let t = cx.input.topic;
        match a.first() {
            None => Ok(Value::from(t)),
            Some(n) => {
                let n = int(n)?;
                Ok(if n >= 1 { t.split('/').nth(n as usize - 1).map(Value::from).unwrap_or_default() } else { Value::Undefined })
            }
        }
    };
    "clientid" 0 0 => |_, cx| Ok(Value::from(cx.input.clientid));
    "principal" 0 0 => |_, cx| Ok(cx.input.username.map(Value::from).unwrap_or_else(|| Value::from(cx.input.clientid)));
    "get_thing_shadow" 1 2 => |a, cx| undef_or(a, |a| {
        let thing = text(&a[0])?;
        let name = a.get(1).map(text).transpose()?;
        let Some(r) = cx.input.shadows else { return Ok(Value::Undefined) };
        Ok(r.shadow(thing, name).map(|j| Value::from_json(&j)).unwrap_or_default())
    });
}

/// A function by its lowercase name.
pub fn lookup(name: &str) -> Option<(&'static str, Func)> {
    TABLE.iter().find(|(n, ..)| *n == name).map(|(n, _, _, f)| (*n, *f))
}

/// How many arguments a function takes (`usize::MAX`: any number).
pub fn arity(name: &str) -> Option<(usize, usize)> {
    TABLE.iter().find(|(n, ..)| *n == name).map(|(_, a, b, _)| (*a, *b))
}

/// Every function's name (for `rules functions` and documentation).
pub fn names() -> impl Iterator<Item = &'static str> {
    TABLE.iter().map(|(n, ..)| *n)
}

fn undef_or(
    a: &[Value],
    f: impl FnOnce(&[Value]) -> Result<Value, String>,
) -> Result<Value, String> {
    if a.iter().any(Value::is_undefined) {
        Ok(Value::Undefined)
    } else {
        f(a)
    }
}

fn text(v: &Value) -> Result<&str, String> {
    match v {
        Value::Str(s) => Ok(s),
        other => Err(format!("expected a string, got {}", kind(other))),
    }
}

/// A string as is, anything else as its JSON text.
fn bytes(v: &Value) -> Result<String, String> {
    v.to_text().ok_or_else(|| "undefined".into())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Undefined => "undefined",
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Int(_) | Value::Float(_) => "a number",
        Value::Str(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn number(v: &Value) -> Result<f64, String> {
    v.to_number()
        .and_then(|n| n.as_f64())
        .ok_or_else(|| format!("expected a number, got {}", kind(v)))
}

fn int(v: &Value) -> Result<i64, String> {
    match v.to_number() {
        Some(Value::Int(i)) => Ok(i),
        Some(Value::Float(x)) if x.fract() == 0.0 && x.abs() < 9.0e15 => Ok(x as i64),
        _ => Err(format!("expected an integer, got {}", kind(v))),
    }
}

fn array(v: &Value) -> Result<&[Value], String> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(format!("expected an array, got {}", kind(other))),
    }
}

fn finite(x: f64) -> Result<Value, String> {
    if x.is_finite() {
        Ok(Value::Float(x))
    } else {
        Err("the result is not a finite number".into())
    }
}

fn str_map(a: &[Value], f: impl FnOnce(&str) -> String) -> Result<Value, String> {
    undef_or(a, |a| Ok(Value::Str(f(text(&a[0])?))))
}

fn float_map(a: &[Value], f: fn(f64) -> f64) -> Result<Value, String> {
    undef_or(a, |a| finite(f(number(&a[0])?)))
}

fn num_map(a: &[Value], i: fn(i64) -> Option<i64>, f: fn(f64) -> f64) -> Result<Value, String> {
    undef_or(a, |a| match a[0].to_number() {
        Some(Value::Int(x)) => i(x).map(Value::Int).ok_or_else(|| "overflow".into()),
        Some(Value::Float(x)) => finite(f(x)),
        _ => Err(format!("expected a number, got {}", kind(&a[0]))),
    })
}

/// Rounding to an integer (a decimal too large for one stays a decimal).
fn num_round(a: &[Value], f: fn(f64) -> f64) -> Result<Value, String> {
    undef_or(a, |a| match a[0].to_number() {
        Some(Value::Int(x)) => Ok(Value::Int(x)),
        Some(Value::Float(x)) => {
            let r = f(x);
            Ok(if r.abs() < 9.0e18 { Value::Int(r as i64) } else { Value::Float(r) })
        }
        _ => Err(format!("expected a number, got {}", kind(&a[0]))),
    })
}

fn to_int(v: &Value) -> Result<Value, String> {
    match v {
        Value::Bool(b) => Ok(Value::Int(*b as i64)),
        Value::Float(x) if x.is_finite() && x.abs() < 9.0e18 => Ok(Value::Int(x.trunc() as i64)),
        v => match v.to_number() {
            Some(Value::Int(i)) => Ok(Value::Int(i)),
            Some(Value::Float(x)) if x.abs() < 9.0e18 => Ok(Value::Int(x.trunc() as i64)),
            _ => Err(format!("cannot make an integer of {}", kind(v))),
        },
    }
}

fn to_float(v: &Value) -> Result<Value, String> {
    match v {
        Value::Bool(b) => Ok(Value::Float(*b as i64 as f64)),
        v => v
            .to_number()
            .and_then(|n| n.as_f64())
            .map(Value::Float)
            .ok_or_else(|| format!("cannot make a number of {}", kind(v))),
    }
}

fn to_bool(v: &Value) -> Result<Value, String> {
    match v {
        Value::Int(i) => Ok(Value::Bool(*i != 0)),
        Value::Float(x) => Ok(Value::Bool(*x != 0.0)),
        v => v
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| format!("cannot make a boolean of {}", kind(v))),
    }
}

/// EMQX's `substr(s, start[, len])` (0-based start and a length) and AWS's
/// `substring(s, start[, end])` (0-based, end exclusive), by characters.
fn substr(a: &[Value], cx: &Cx<'_, '_>) -> Result<Value, String> {
    undef_or(a, |a| {
        let chars: Vec<char> = text(&a[0])?.chars().collect();
        let n = chars.len() as i64;
        let start = int(&a[1])?.clamp(0, n);
        let end = match a.get(2) {
            None => n,
            Some(v) if cx.dialect == Dialect::Aws => int(v)?.clamp(start, n),
            Some(v) => start.saturating_add(int(v)?.max(0)).min(n),
        };
        Ok(Value::Str(chars[start as usize..end as usize].iter().collect()))
    })
}

/// Compiled patterns are kept per thread: a rule's pattern is almost always a literal.
fn regex(v: &Value) -> Result<regex::Regex, String> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static CACHE: RefCell<HashMap<String, regex::Regex>> = RefCell::new(HashMap::new());
    }
    let pat = text(v)?;
    CACHE.with(|c| {
        if let Some(re) = c.borrow().get(pat) {
            return Ok(re.clone());
        }
        let re = regex::RegexBuilder::new(pat)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("bad pattern: {e}"))?;
        let mut c = c.borrow_mut();
        if c.len() >= 256 {
            c.clear();
        }
        c.insert(pat.to_string(), re.clone());
        Ok(re)
    })
}

fn regex_replace(a: &[Value], _: &Cx<'_, '_>) -> Result<Value, String> {
    undef_or(a, |a| {
        let re = regex(&a[1])?;
        Ok(Value::Str(re.replace_all(text(&a[0])?, text(&a[2])?).into_owned()))
    })
}

fn digest(a: &[Value], alg: &'static ring::digest::Algorithm) -> Result<Value, String> {
    undef_or(a, |a| {
        Ok(Value::Str(hex(ring::digest::digest(alg, bytes(&a[0])?.as_bytes()).as_ref())))
    })
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

fn md5_digest(data: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(data).into()
}

fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A time unit argument: `second`, `millisecond` (default), `microsecond`, `nanosecond`.
#[derive(Clone, Copy)]
enum Unit {
    S,
    Ms,
    Us,
    Ns,
}

fn unit(v: Option<&Value>) -> Result<Unit, String> {
    Ok(match v.map(text).transpose()? {
        None | Some("millisecond") => Unit::Ms,
        Some("second") => Unit::S,
        Some("microsecond") => Unit::Us,
        Some("nanosecond") => Unit::Ns,
        Some(u) => return Err(format!("no time unit {u}")),
    })
}

fn in_unit(ms: i64, v: Option<&Value>) -> Result<i64, String> {
    Ok(match unit(v)? {
        Unit::S => ms.div_euclid(1000),
        Unit::Ms => ms,
        Unit::Us => ms.saturating_mul(1000),
        Unit::Ns => ms.saturating_mul(1_000_000),
    })
}

/// Days since 1970-01-01 as (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `ms` as an RFC 3339 UTC time, with fractions for sub-second units.
fn rfc3339(ms: i64, u: Unit) -> String {
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let base = format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    match u {
        Unit::S => format!("{base}Z"),
        _ => format!("{base}.{frac:03}Z"),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff][Z|+HH:MM]` as ms since the epoch.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[4] != b'-'
        || b[7] != b'-'
        || b[13] != b':'
        || b[16] != b':'
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut ms = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = s.get(start..i)?;
        if digits.is_empty() {
            return None;
        }
        ms = format!("{:0<3}", &digits[..digits.len().min(3)]).parse::<i64>().ok()?;
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        o if o.len() == 6 && o.is_ascii() && matches!(&o[..1], "+" | "-") && &o[3..4] == ":" => {
            let mins = o[1..3].parse::<i64>().ok()? * 60 + o[4..6].parse::<i64>().ok()?;
            if &o[..1] == "-" {
                -mins
            } else {
                mins
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset * 60;
    Some(secs * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips() {
        assert_eq!(rfc3339(0, Unit::S), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123, Unit::Ms), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(-1, Unit::Ms), "1969-12-31T23:59:59.999Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(parse_rfc3339("2023-11-15T00:13:20+02:00"), Some(1_700_000_000_000));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z").map(|ms| rfc3339(ms, Unit::S)),
            Some("2024-02-29T00:00:00Z".into())
        );
        assert_eq!(parse_rfc3339("2023-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        for days in [-800_000, -1, 0, 59, 11_016, 20_000, 2_000_000] {
            let (y, m, d) = civil(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn digests_and_ids() {
        assert_eq!(
            md5_digest(b"abc").iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            hex(ring::digest::digest(&ring::digest::SHA256, b"abc").as_ref()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid_v4());
    }

    #[test]
    fn every_function_has_a_unique_name() {
        let mut names: Vec<_> = names().collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len());
    }
}
