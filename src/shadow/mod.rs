//! Device shadows (AWS IoT compatible): the document model ([`document`]), the reserved
//! topics ([`topics`]) and [`Shadows`], which a device actor uses to serve its shadow
//! requests: reads from its shard's applied state, writes through its shard's Raft group,
//! and returns the replies to publish.
//!
//! Owns: shadow semantics and the reply payloads. Must not touch: sockets or routing (the
//! device actor publishes the replies), nor Raft internals (it proposes commands).
//!
//! The device actor of a thing is the only writer of its shadows, so its cached copy is
//! current; every write still names the version it replaces, and a conflict (another
//! writer after a leadership change) drops the cache and is answered with 409.

pub mod document;
pub mod topics;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

pub use document::{Limits, Rejection, Shadow};
pub use topics::{Op, RequestTopic};

use crate::config::ShadowConfig;
use crate::raft::{machine, Command, Groups, Response, StoredShadow};
use crate::telemetry::Metrics;

/// A deleted shadow created again within this time continues from its old version.
const TOMBSTONE_KEEP_MS: u64 = 48 * 3600 * 1000;

/// One reply to publish: topic and JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub topic: String,
    pub payload: Value,
    /// `accepted` or `rejected` answers the requester; `delta` and `documents` only go to
    /// subscribers.
    pub to_requester: bool,
}

/// A shadow as the device actor caches it.
#[derive(Debug, Clone)]
pub struct Cached {
    shadow: Shadow,
    /// Whether the shadow exists (not absent, not deleted).
    exists: bool,
    /// The version of the stored record (a tombstone included), for compare-and-set.
    stored: Option<u64>,
}

/// A device actor's shadows: name (`""` for the classic one) to cached copy.
pub type ShadowCache = HashMap<String, Cached>;

/// The node's shadow service.
pub struct Shadows {
    groups: Arc<Groups>,
    cfg: ShadowConfig,
    metrics: Arc<Metrics>,
}

/// The `rejected` reply to a request refused because the thing has too many waiting
/// (429, as AWS IoT answers more than its in-flight limit).
pub fn throttled(topic: &RequestTopic, payload: &[u8], now_ms: u64) -> Reply {
    let token = document::parse_token(payload).ok().flatten();
    let r = Rejection::new(429, "Too many requests").with_token(token);
    Reply { topic: topic.reply("rejected"), payload: r.payload(now_s(now_ms)), to_requester: true }
}

fn now_s(now_ms: u64) -> u64 {
    now_ms / 1000
}

impl Shadows {
    pub fn new(groups: Arc<Groups>, cfg: ShadowConfig, metrics: Arc<Metrics>) -> Self {
        Shadows { groups, cfg, metrics }
    }

    fn limits(&self) -> Limits {
        Limits { max_document_bytes: self.cfg.max_document_bytes }
    }

    /// Loads a shadow into the cache from the thing's shard.
    fn load<'a>(
        &self,
        cache: &'a mut ShadowCache,
        thing: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<&'a mut Cached, Rejection> {
        if !cache.contains_key(name) {
            let tree = self.groups.data(self.groups.shard_of(thing)).ok_or_else(internal)?;
            let stored = machine::read_shadow(tree, thing, name).map_err(|e| {
                tracing::error!(message = "shadow read failed", error = %e);
                internal()
            })?;
            let cached = match stored {
                None => Cached { shadow: Shadow::empty(0), exists: false, stored: None },
                Some(s) => match &s.doc {
                    Some(text) => Cached {
                        shadow: Shadow::from_stored(s.version, text).map_err(|e| {
                            tracing::error!(message = "stored shadow does not parse", error = %e);
                            internal()
                        })?,
                        exists: true,
                        stored: Some(s.version),
                    },
                    None => {
                        let recent = now_ms.saturating_sub(s.updated_ms) < TOMBSTONE_KEEP_MS;
                        let from = if recent { s.version } else { 0 };
                        Cached {
                            shadow: Shadow::empty(from),
                            exists: false,
                            stored: Some(s.version),
                        }
                    }
                },
            };
            cache.insert(name.to_string(), cached);
        }
        cache.get_mut(name).ok_or_else(internal)
    }

    /// The shadow document of `thing` (`name`: a named shadow) as this node's replica of
    /// its shard holds it, in the shape of a GET answer; None if it does not exist, or
    /// this node holds no replica of the shard.
    pub fn read_local(&self, thing: &str, name: &str) -> Option<Value> {
        let tree = self.groups.data(self.groups.shard_of(thing))?;
        let stored = machine::read_shadow(tree, thing, name).ok()??;
        let shadow = Shadow::from_stored(stored.version, stored.doc.as_deref()?).ok()?;
        Some(shadow.get_response(now_s(crate::broker::now_ms()), None))
    }

    /// Named shadows of `thing` that exist now.
    fn named_count(&self, thing: &str) -> usize {
        let Some(tree) = self.groups.data(self.groups.shard_of(thing)) else { return 0 };
        // The classic shadow's key ends with the NUL after the thing; named ones extend it.
        let classic = machine::shadow_key(thing, "");
        tree.scan_prefix(&classic)
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                **k != *classic
                    && crate::store::decode::<StoredShadow>(v).is_ok_and(|s| s.doc.is_some())
            })
            .count()
    }

    /// Serves one request for `thing` (whose device actor calls this) and returns the
    /// replies to publish. `listening` tells whether a topic has subscribers: the
    /// `documents` message is only built for them.
    pub async fn handle(
        &self,
        cache: &mut ShadowCache,
        topic: &RequestTopic,
        payload: &[u8],
        now_ms: u64,
        listening: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Reply> {
        let now = now_s(now_ms);
        let res = match topic.op {
            Op::Get => self.get(cache, topic, payload, now_ms),
            Op::Update => self.update(cache, topic, payload, now_ms, listening).await,
            Op::Delete => self.delete(cache, topic, payload, now_ms).await,
        };
        let op = topic.op.as_str();
        match res {
            Ok(replies) => {
                self.metrics.shadow_requests.with_label_values(&[op, "accepted"]).inc();
                replies
            }
            Err(r) => {
                let code = r.code.to_string();
                self.metrics.shadow_requests.with_label_values(&[op, &code]).inc();
                vec![Reply {
                    topic: topic.reply("rejected"),
                    payload: r.payload(now),
                    to_requester: true,
                }]
            }
        }
    }

    fn get(
        &self,
        cache: &mut ShadowCache,
        t: &RequestTopic,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Vec<Reply>, Rejection> {
        let token = document::parse_token(payload)?;
        let c = self
            .load(cache, &t.thing, &t.shadow, now_ms)
            .map_err(|r| r.with_token(token.clone()))?;
        if !c.exists {
            return Err(Rejection::not_found(&t.thing, &t.shadow).with_token(token));
        }
        let payload = c.shadow.get_response(now_s(now_ms), token.as_deref());
        Ok(vec![Reply { topic: t.reply("accepted"), payload, to_requester: true }])
    }

    async fn update(
        &self,
        cache: &mut ShadowCache,
        t: &RequestTopic,
        payload: &[u8],
        now_ms: u64,
        listening: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<Reply>, Rejection> {
        let req = document::parse_update(payload, self.limits())?;
        let with = |r: Rejection| r.with_token(req.client_token.clone());
        let (exists, stored) = {
            let c = self.load(cache, &t.thing, &t.shadow, now_ms).map_err(with)?;
            (c.exists, c.stored)
        };
        if !exists
            && !t.shadow.is_empty()
            && self.named_count(&t.thing) >= self.cfg.max_named_shadows
        {
            return Err(with(Rejection::new(
                400,
                format!(
                    "Too many named shadows: a thing may have at most {}",
                    self.cfg.max_named_shadows
                ),
            )));
        }
        let c = self.load(cache, &t.thing, &t.shadow, now_ms).map_err(with)?;
        let documents = t.reply("documents");
        let updated =
            c.shadow.update(exists, &req, now_s(now_ms), self.limits(), listening(&documents))?;
        let value = StoredShadow {
            version: updated.shadow.version,
            updated_ms: now_ms,
            doc: Some(updated.stored),
        };
        self.write(cache, t, stored, value).await.map_err(with)?;
        cache.insert(
            t.shadow.clone(),
            Cached { stored: Some(updated.shadow.version), shadow: updated.shadow, exists: true },
        );
        let mut replies = vec![Reply {
            topic: t.reply("accepted"),
            payload: updated.accepted,
            to_requester: true,
        }];
        if let Some(d) = updated.delta {
            replies.push(Reply { topic: t.reply("delta"), payload: d, to_requester: false });
        }
        if let Some(d) = updated.documents {
            replies.push(Reply { topic: documents, payload: d, to_requester: false });
        }
        Ok(replies)
    }

    async fn delete(
        &self,
        cache: &mut ShadowCache,
        t: &RequestTopic,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Vec<Reply>, Rejection> {
        let token = document::parse_token(payload)?;
        let with = |r: Rejection| r.with_token(token.clone());
        let c = self.load(cache, &t.thing, &t.shadow, now_ms).map_err(with)?;
        if !c.exists {
            return Err(with(Rejection::not_found(&t.thing, &t.shadow)));
        }
        let (version, stored) = (c.shadow.version, c.stored);
        let value = StoredShadow { version, updated_ms: now_ms, doc: None };
        self.write(cache, t, stored, value).await.map_err(with)?;
        cache.insert(
            t.shadow.clone(),
            Cached { shadow: Shadow::empty(version), exists: false, stored: Some(version) },
        );
        let mut payload = serde_json::json!({"version": version, "timestamp": now_s(now_ms)});
        if let Some(tok) = token {
            payload["clientToken"] = Value::String(tok);
        }
        Ok(vec![Reply { topic: t.reply("accepted"), payload, to_requester: true }])
    }

    /// Proposes the new stored value through the thing's shard.
    async fn write(
        &self,
        cache: &mut ShadowCache,
        t: &RequestTopic,
        expect: Option<u64>,
        value: StoredShadow,
    ) -> Result<(), Rejection> {
        let cmd =
            Command::PutShadow { thing: t.thing.clone(), name: t.shadow.clone(), expect, value };
        match self.groups.write_local(self.groups.shard_of(&t.thing), cmd).await {
            Ok(Response::Applied) => Ok(()),
            Ok(_) => {
                // Someone else wrote it: read it again next time.
                cache.remove(&t.shadow);
                Err(Rejection::new(409, "Version conflict"))
            }
            Err(e) => {
                tracing::error!(message = "shadow write failed", thing = %t.thing, error = %e);
                cache.remove(&t.shadow);
                Err(Rejection::new(503, "Service unavailable: the shadow could not be stored"))
            }
        }
    }
}

fn internal() -> Rejection {
    Rejection::new(500, "Internal service failure")
}

/// `get_thing_shadow(thing[, name])` in rules: the local replica's document (a read that
/// may trail the shard's leader by the replication delay; no Raft round trip on the
/// publish path).
impl crate::rules::ShadowReader for Shadows {
    fn shadow(&self, thing: &str, name: Option<&str>) -> Option<Value> {
        self.read_local(thing, name.unwrap_or(""))
    }
}
