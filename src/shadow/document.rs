//! The shadow document and its rules, as AWS IoT documents them. Pure: no I/O, no clock
//! (callers pass `now`, in seconds since the Unix epoch, as AWS's timestamps are).
//!
//! A document is `{"state": {"desired": {...}, "reported": {...}}, "metadata": {...}}`
//! plus a version. Updates deep-merge into it: `null` deletes a key (and its metadata),
//! arrays replace whole, every written leaf gets `{"timestamp": now}` in `metadata` (an
//! array gets one such entry per element). The delta is the desired keys whose values
//! differ from reported; reported-only keys are never in it.

use serde_json::{json, Map, Value};

/// Builds a JSON object from owned parts (no `to_value` round trip, unlike `json!` with
/// maps inside).
fn object<const N: usize>(parts: [(&str, Value); N]) -> Value {
    Value::Object(parts.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// The limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest stored document (state and metadata, as JSON), in bytes.
    pub max_document_bytes: usize,
}

/// Deepest nesting of objects inside `desired` or `reported`.
pub const MAX_DEPTH: usize = 6;
/// Longest `clientToken`, in bytes.
pub const MAX_CLIENT_TOKEN: usize = 64;

/// A rejected request: AWS's code and message, and the request's client token if it had
/// one that could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: u16,
    pub message: String,
    pub client_token: Option<String>,
}

impl Rejection {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into(), client_token: None }
    }

    fn bad(message: impl Into<String>) -> Self {
        Rejection::new(400, message)
    }

    pub fn not_found(thing: &str, shadow: &str) -> Self {
        let name = if shadow.is_empty() { thing } else { shadow };
        Rejection::new(404, format!("No shadow exists with name: '{name}'"))
    }

    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.client_token = token;
        self
    }

    /// The `/rejected` payload.
    pub fn payload(&self, now: u64) -> Value {
        let mut v = json!({"code": self.code, "message": self.message, "timestamp": now});
        if let Some(t) = &self.client_token {
            v["clientToken"] = Value::String(t.clone());
        }
        v
    }
}

/// A shadow as held in memory: document and version.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    pub version: u64,
    /// `{"desired": {...}, "reported": {...}}`, either part absent when unset.
    pub state: Map<String, Value>,
    /// Mirrors `state` with `{"timestamp": t}` leaves.
    pub metadata: Map<String, Value>,
}

/// A parsed, validated update request.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    /// `desired` and/or `reported`, each an object or `null` (delete the section).
    pub state: Map<String, Value>,
    pub version: Option<u64>,
    pub client_token: Option<String>,
}

/// What an accepted update produced: the new shadow and the replies to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    pub shadow: Shadow,
    /// The new shadow's stored form ([`Shadow::to_stored`]).
    pub stored: String,
    pub accepted: Value,
    /// For `/update/delta`, when the update set desired keys that differ from reported.
    pub delta: Option<Value>,
    /// For `/update/documents`, when someone listens.
    pub documents: Option<Value>,
}

fn token_of(v: &Value) -> Result<Option<String>, Rejection> {
    match v.get("clientToken") {
        None => Ok(None),
        Some(Value::String(t)) if t.len() <= MAX_CLIENT_TOKEN => Ok(Some(t.clone())),
        Some(Value::String(_)) => {
            Err(Rejection::bad(format!("clientToken must be at most {MAX_CLIENT_TOKEN} bytes")))
        }
        Some(_) => Err(Rejection::bad("clientToken must be a string")),
    }
}

fn parse_object(payload: &[u8]) -> Result<Map<String, Value>, Rejection> {
    if std::str::from_utf8(payload).is_err() {
        return Err(Rejection::new(
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        ));
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Rejection::bad("Payload must be a JSON object")),
        Err(_) => Err(Rejection::bad("Invalid JSON")),
    }
}

/// Reads the client token of a get or delete request (an empty payload is allowed).
pub fn parse_token(payload: &[u8]) -> Result<Option<String>, Rejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let m = parse_object(payload)?;
    token_of(&Value::Object(m))
}

/// Nesting depth of objects (and arrays) under a value: a scalar is 0, `{"a": 1}` is 1.
fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parses and validates an update request.
pub fn parse_update(payload: &[u8], limits: Limits) -> Result<UpdateRequest, Rejection> {
    if payload.len() > limits.max_document_bytes {
        return Err(Rejection::new(413, "The payload exceeds the maximum size allowed"));
    }
    let doc = parse_object(payload)?;
    let doc = Value::Object(doc);
    let client_token = token_of(&doc)?;
    let reject = |r: Rejection| r.with_token(client_token.clone());
    let version = match doc.get("version") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| reject(Rejection::bad("Invalid version")))?),
    };
    let state = match doc.get("state") {
        None => return Err(reject(Rejection::bad("Missing required node: state"))),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(reject(Rejection::bad("State node must be an object"))),
    };
    if state.is_empty() {
        return Err(reject(Rejection::bad("State node must have desired or reported")));
    }
    for (k, v) in &state {
        let section = match k.as_str() {
            "desired" => "Desired",
            "reported" => "Reported",
            other => {
                return Err(reject(Rejection::bad(format!(
                    "State contains an invalid node: '{other}'"
                ))))
            }
        };
        if !v.is_object() && !v.is_null() {
            return Err(reject(Rejection::bad(format!("{section} node must be an object"))));
        }
        if depth(v) > MAX_DEPTH {
            return Err(reject(Rejection::bad(format!(
                "JSON contains too many levels of nesting; maximum is {MAX_DEPTH}"
            ))));
        }
    }
    Ok(UpdateRequest { state, version, client_token })
}

/// Metadata for a newly written value: `{"timestamp": now}` at every leaf.
fn stamp(v: &Value, now: u64) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), stamp(v, now)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| stamp(v, now)).collect()),
        _ => json!({ "timestamp": now }),
    }
}

/// Merges `patch` into `target` (and its metadata `meta`): `null` removes, objects merge,
/// anything else replaces.
fn merge(
    target: &mut Map<String, Value>,
    meta: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    now: u64,
) {
    for (k, pv) in patch {
        match pv {
            Value::Null => {
                target.remove(k);
                meta.remove(k);
            }
            Value::Object(pm) => {
                let t = target.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !t.is_object() {
                    *t = Value::Object(Map::new());
                }
                let m = meta.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !m.is_object() {
                    *m = Value::Object(Map::new());
                }
                if let (Value::Object(t), Value::Object(m)) = (t, m) {
                    merge(t, m, pm, now);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
                meta.insert(k.clone(), stamp(other, now));
            }
        }
    }
}

/// Desired keys whose values differ from reported (recursively for objects).
pub fn delta(
    desired: &Map<String, Value>,
    reported: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, dv) in desired {
        match (dv, reported.and_then(|r| r.get(k))) {
            (Value::Object(dm), Some(Value::Object(rm))) => {
                let d = delta(dm, Some(rm));
                if !d.is_empty() {
                    out.insert(k.clone(), Value::Object(d));
                }
            }
            (dv, Some(rv)) if dv == rv => {}
            (dv, _) => {
                out.insert(k.clone(), dv.clone());
            }
        }
    }
    out
}

/// The metadata entries of `meta` for the keys in `keys` (recursively).
fn metadata_for(keys: &Map<String, Value>, meta: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in keys {
        match (v, meta.get(k)) {
            (Value::Object(km), Some(Value::Object(mm))) => {
                out.insert(k.clone(), Value::Object(metadata_for(km, mm)));
            }
            (_, Some(m)) => {
                out.insert(k.clone(), m.clone());
            }
            (_, None) => {}
        }
    }
    out
}

fn section<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Map<String, Value>> {
    m.get(k).and_then(Value::as_object)
}

impl Shadow {
    /// An empty shadow following `version` (0 for a new one, the tombstone's version for
    /// one deleted recently).
    pub fn empty(version: u64) -> Self {
        Shadow { version, state: Map::new(), metadata: Map::new() }
    }

    /// The stored form: `{"state": ..., "metadata": ...}` as JSON text, written from
    /// borrowed maps (every update measures it against the size limit).
    pub fn to_stored(&self) -> String {
        #[derive(serde::Serialize)]
        struct Stored<'a> {
            state: &'a Map<String, Value>,
            metadata: &'a Map<String, Value>,
        }
        let stored = Stored { state: &self.state, metadata: &self.metadata };
        // Maps of JSON values with string keys always serialize.
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// Reads the stored form back.
    pub fn from_stored(version: u64, text: &str) -> Result<Self, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Stored {
            #[serde(default)]
            state: Option<Value>,
            #[serde(default)]
            metadata: Option<Value>,
        }
        let v: Stored = serde_json::from_str(text)?;
        let obj = |v: Option<Value>| match v {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        Ok(Shadow { version, state: obj(v.state), metadata: obj(v.metadata) })
    }

    /// The full delta between desired and reported.
    pub fn delta(&self) -> Map<String, Value> {
        match section(&self.state, "desired") {
            Some(d) => delta(d, section(&self.state, "reported")),
            None => Map::new(),
        }
    }

    /// The `/get/accepted` payload.
    pub fn get_response(&self, now: u64, client_token: Option<&str>) -> Value {
        let mut state = self.state.clone();
        let d = self.delta();
        if !d.is_empty() {
            state.insert("delta".into(), Value::Object(d));
        }
        let mut v = object([
            ("state", Value::Object(state)),
            ("metadata", Value::Object(self.metadata.clone())),
            ("version", self.version.into()),
            ("timestamp", now.into()),
        ]);
        if let Some(t) = client_token {
            v["clientToken"] = Value::String(t.into());
        }
        v
    }

    /// One side of `/update/documents`.
    fn document(&self) -> Value {
        object([
            ("state", Value::Object(self.state.clone())),
            ("metadata", Value::Object(self.metadata.clone())),
            ("version", self.version.into()),
        ])
    }

    /// Applies an update to this shadow (`existed`: whether it exists now, for the
    /// `documents` message, which is built only if `wants_documents`). Fails with 409 on
    /// a version mismatch and 413 when the result is too large.
    pub fn update(
        &self,
        existed: bool,
        req: &UpdateRequest,
        now: u64,
        limits: Limits,
        wants_documents: bool,
    ) -> Result<Updated, Rejection> {
        let reject = |r: Rejection| r.with_token(req.client_token.clone());
        if let Some(v) = req.version {
            if v != self.version {
                return Err(reject(Rejection::new(409, "Version conflict")));
            }
        }
        let mut next = self.clone();
        next.version = self.version + 1;
        let mut accepted_meta = Map::new();
        for (name, patch) in &req.state {
            match patch {
                Value::Object(p) => {
                    let mut state = section(&next.state, name).cloned().unwrap_or_default();
                    let mut meta = section(&next.metadata, name).cloned().unwrap_or_default();
                    merge(&mut state, &mut meta, p, now);
                    next.state.insert(name.clone(), Value::Object(state));
                    next.metadata.insert(name.clone(), Value::Object(meta));
                    accepted_meta.insert(name.clone(), stamp_all(p, now));
                }
                _ => {
                    next.state.remove(name);
                    next.metadata.remove(name);
                    accepted_meta.insert(name.clone(), json!({ "timestamp": now }));
                }
            }
        }
        let stored = next.to_stored();
        if stored.len() > limits.max_document_bytes {
            return Err(reject(Rejection::new(
                413,
                "The payload exceeds the maximum size allowed",
            )));
        }
        let token = |mut v: Value| {
            if let Some(t) = &req.client_token {
                v["clientToken"] = Value::String(t.clone());
            }
            v
        };
        let accepted = token(object([
            ("state", Value::Object(req.state.clone())),
            ("metadata", Value::Object(accepted_meta)),
            ("version", next.version.into()),
            ("timestamp", now.into()),
        ]));
        // Delta: the desired keys this update set that now differ from reported.
        let delta = match (req.state.get("desired"), section(&next.state, "desired")) {
            (Some(Value::Object(asked)), Some(desired)) => {
                let full = delta(desired, section(&next.state, "reported"));
                let d: Map<String, Value> =
                    full.into_iter().filter(|(k, _)| asked.contains_key(k)).collect();
                (!d.is_empty()).then(|| {
                    let meta = section(&next.metadata, "desired").cloned().unwrap_or_default();
                    let metadata = metadata_for(&d, &meta);
                    token(object([
                        ("version", next.version.into()),
                        ("timestamp", now.into()),
                        ("state", Value::Object(d)),
                        ("metadata", Value::Object(metadata)),
                    ]))
                })
            }
            _ => None,
        };
        let documents = wants_documents.then(|| {
            let mut documents = object([("current", next.document()), ("timestamp", now.into())]);
            if existed {
                documents["previous"] = self.document();
            }
            token(documents)
        });
        Ok(Updated { stored, shadow: next, accepted, delta, documents })
    }
}

/// Metadata for every key of a request section, deletions included (AWS stamps them too).
fn stamp_all(patch: &Map<String, Value>, now: u64) -> Value {
    Value::Object(
        patch
            .iter()
            .map(|(k, v)| {
                let m = match v {
                    Value::Object(o) => stamp_all(o, now),
                    Value::Null => json!({ "timestamp": now }),
                    other => stamp(other, now),
                };
                (k.clone(), m)
            })
            .collect(),
    )
}
