//! The node's rule engine: the compiled rule set (recompiled from the meta group when a
//! definition changes there, on any node), evaluated once on the node where a message
//! enters, with each output row handed to the rule's actions. Messages that match no
//! rule cost one trie walk ([`super::index::RuleIndex`]).
//!
//! Accounting, per rule: `homeport_rule_evaluations_total{rule,result}` with result
//! `passed` (rows out), `no_result` (WHERE false) or `failed` (an evaluation error): the
//! three add up to the messages the rule matched. `homeport_rule_actions_total{rule,
//! action,result}` counts each row's actions (`ok`, `failed`, `loop`: a republish chain
//! deeper than [`MAX_DEPTH`]).
//!
//! What a republish promises: the republished message is routed like a publish by the
//! broker, and a QoS 1/2 publisher's acknowledgement waits for the durable writes it
//! causes (they join the original message's [`Routed::acks`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::index::RuleIndex;
use super::store::{compile, Compiled, CompiledAction, RuleStore};
use super::{Input, Value};
use crate::broker::{Message, Routed, Router};

/// Most nested republishes (a rule's output feeding another rule).
pub const MAX_DEPTH: u8 = 8;

thread_local! {
    static DEPTH: Cell<u8> = const { Cell::new(0) };
}

/// The compiled, enabled rules and their index.
#[derive(Default)]
pub struct RuleSet {
    index: RuleIndex,
    rules: Vec<Loaded>,
}

/// A compiled rule with its counters resolved (no label lookup per message).
struct Loaded {
    c: Compiled,
    passed: IntCounter,
    no_result: IntCounter,
    failed: IntCounter,
    /// Per action: ok, failed, loop.
    actions: Vec<[IntCounter; 3]>,
}

impl RuleSet {
    fn new(rules: Vec<Compiled>, m: &RuleMetrics) -> RuleSet {
        let mut index = RuleIndex::default();
        for (i, c) in rules.iter().enumerate() {
            for f in c.rule.sources() {
                index.insert(f, i);
            }
        }
        let rules = rules
            .into_iter()
            .map(|c| {
                let name = c.def.name.as_str();
                let e = |r: &str| m.evaluations.with_label_values(&[name, r]);
                let actions = c
                    .actions
                    .iter()
                    .map(|a| {
                        ["ok", "failed", "loop"]
                            .map(|r| m.actions.with_label_values(&[name, a.kind(), r]))
                    })
                    .collect();
                Loaded {
                    passed: e("passed"),
                    no_result: e("no_result"),
                    failed: e("failed"),
                    actions,
                    c,
                }
            })
            .collect();
        RuleSet { index, rules }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

pub struct RuleMetrics {
    pub evaluations: IntCounterVec,
    pub actions: IntCounterVec,
    /// Stored definitions this node could not compile (another version's rules).
    pub invalid: IntGauge,
    pub loaded: IntGauge,
}

impl RuleMetrics {
    pub fn new(r: &Registry) -> RuleMetrics {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(v.clone())).expect("unique metric");
            v
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        RuleMetrics {
            evaluations: vec(
                "homeport_rule_evaluations_total",
                "Messages a rule matched, by result (passed, no_result, failed)",
                &["rule", "result"],
            ),
            actions: vec(
                "homeport_rule_actions_total",
                "Rule actions run for output rows, by result (ok, failed, loop)",
                &["rule", "action", "result"],
            ),
            invalid: gauge("homeport_rules_invalid", "Stored rules this node could not compile"),
            loaded: gauge("homeport_rules_loaded", "Enabled rules compiled on this node"),
        }
    }
}

pub struct RuleEngine {
    store: RuleStore,
    set: RwLock<Arc<RuleSet>>,
    /// The meta group's rules epoch the set was compiled at.
    compiled_at: AtomicU64,
    metrics: RuleMetrics,
    node: String,
    /// Where `get_thing_shadow` reads (set once at start-up).
    shadows: std::sync::OnceLock<Arc<dyn super::ShadowReader + Send + Sync>>,
}

impl RuleEngine {
    pub fn new(store: RuleStore, registry: &Registry, node: String) -> Arc<RuleEngine> {
        let e = Arc::new(RuleEngine {
            store,
            set: RwLock::new(Arc::new(RuleSet::default())),
            compiled_at: AtomicU64::new(u64::MAX),
            metrics: RuleMetrics::new(registry),
            node,
            shadows: std::sync::OnceLock::new(),
        });
        e.reload();
        e
    }

    /// Gives `get_thing_shadow` its reader.
    pub fn set_shadows(&self, r: Arc<dyn super::ShadowReader + Send + Sync>) {
        let _ = self.shadows.set(r);
    }

    fn shadow_reader(&self) -> Option<&dyn super::ShadowReader> {
        self.shadows.get().map(|r| &**r as &dyn super::ShadowReader)
    }

    pub fn store(&self) -> &RuleStore {
        &self.store
    }

    /// The rule set in use.
    pub fn current(&self) -> Arc<RuleSet> {
        self.set.read().clone()
    }

    /// Recompiles if the meta group's rules changed since the last compile.
    pub fn reload(&self) {
        let epoch = self.store.groups().rules_epoch();
        if self.compiled_at.swap(epoch, Ordering::AcqRel) == epoch {
            return;
        }
        let defs = match self.store.all() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(message = "rules not reloaded", error = %e);
                self.compiled_at.store(u64::MAX, Ordering::Release);
                return;
            }
        };
        let mut rules = Vec::new();
        let mut invalid = 0;
        for d in defs.iter().filter(|d| d.enabled) {
            match compile(d) {
                Ok(c) => rules.push(c),
                Err(e) => {
                    invalid += 1;
                    tracing::warn!(message = "stored rule does not compile here", rule = %d.name, error = %e);
                }
            }
        }
        self.metrics.invalid.set(invalid);
        self.metrics.loaded.set(rules.len() as i64);
        tracing::info!(message = "rules compiled", rules = rules.len(), epoch);
        *self.set.write() = Arc::new(RuleSet::new(rules, &self.metrics));
    }

    /// Watches the meta group's rules epoch (every 200 ms) until the node stops.
    pub fn spawn_reloader(self: &Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let e = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                match e.upgrade() {
                    Some(e) => e.reload(),
                    None => return,
                }
            }
        });
    }

    /// Evaluates the rules `msg` matches and runs their actions. Called by the router
    /// for every message entering at this node (not for messages forwarded to it).
    pub fn on_publish(&self, router: &Router, msg: &Arc<Message>, routed: &mut Routed) {
        let Some((set, hits)) = self.matching(&msg.topic) else { return };
        let now = crate::broker::now_ms() as i64;
        let mut input = Input::message(&msg.topic, &msg.payload);
        input.clientid = msg.origin.as_deref().unwrap_or("");
        input.qos = msg.qos as u8;
        input.retain = msg.retain;
        input.timestamp_ms = now;
        input.now_ms = now;
        input.node = &self.node;
        input.user_props = &msg.props.user_properties;
        let peerhost = msg.publisher.as_ref().map(|p| p.peer_ip.to_string());
        input.peerhost = peerhost.as_deref();
        input.username = msg.publisher.as_ref().and_then(|p| p.username.as_deref());
        input.shadows = self.shadow_reader();
        run_rules(&set, &hits, &input, router, routed);
    }

    /// The rule set and the rules whose sources match `topic`, each once (a rule with
    /// two matching filters runs once); None, without allocating, when none does.
    fn matching(&self, topic: &str) -> Option<(Arc<RuleSet>, Vec<usize>)> {
        let set = {
            let s = self.set.read();
            if s.index.is_empty() {
                return None;
            }
            s.clone()
        };
        let mut hits: Vec<usize> = Vec::new();
        set.index.for_each(topic, &mut |i| hits.push(i));
        if hits.is_empty() {
            return None;
        }
        hits.sort_unstable();
        hits.dedup();
        Some((set, hits))
    }

    /// Whether some rule reads `topic` (an event source): callers build an event's
    /// columns only then.
    pub fn wants(&self, topic: &str) -> bool {
        let s = self.set.read();
        let mut any = false;
        s.index.for_each(topic, &mut |_| any = true);
        any
    }

    /// A broker event (`$events/client_connected`, `client_disconnected`,
    /// `session_subscribed`, `session_unsubscribed`): rules whose source matches `topic`
    /// run with the event's own columns (which take precedence over the message columns
    /// of the same name, as `topic` of a subscription event is its filter). Callers
    /// build the columns only when [`RuleEngine::wants`] the event.
    pub fn on_event(
        &self,
        router: &Router,
        topic: &'static str,
        clientid: &str,
        who: &crate::broker::Publisher,
        extra: &[(&str, Value)],
    ) {
        let Some((set, hits)) = self.matching(topic) else { return };
        let now = crate::broker::now_ms() as i64;
        let peerhost = who.peer_ip.to_string();
        let mut input = Input::message(topic, b"");
        input.clientid = clientid;
        input.username = who.username.as_deref();
        input.peerhost = Some(&peerhost);
        input.timestamp_ms = now;
        input.now_ms = now;
        input.node = &self.node;
        input.extra = extra;
        input.shadows = self.shadow_reader();
        // Events are acknowledged to nobody: what their actions write is not waited for.
        run_rules(&set, &hits, &input, router, &mut Routed::default());
    }
}

/// Evaluates rules `hits` of `set` on `input` and runs their actions.
fn run_rules(
    set: &RuleSet,
    hits: &[usize],
    input: &Input<'_>,
    router: &Router,
    routed: &mut Routed,
) {
    let depth = DEPTH.with(Cell::get);
    for &i in hits {
        let l = &set.rules[i];
        let rows = match l.c.rule.eval(input) {
            Ok(rows) => rows,
            Err(e) => {
                l.failed.inc();
                tracing::debug!(message = "rule failed", rule = %l.c.def.name, error = %e);
                continue;
            }
        };
        if rows.is_empty() {
            l.no_result.inc();
            continue;
        }
        l.passed.inc();
        for row in &rows {
            for (a, counters) in l.c.actions.iter().zip(&l.actions) {
                if depth >= MAX_DEPTH {
                    counters[2].inc();
                    continue;
                }
                DEPTH.with(|d| d.set(depth + 1));
                let r = run(a, row, input, router, routed);
                DEPTH.with(|d| d.set(depth));
                match r {
                    Ok(()) => counters[0].inc(),
                    Err(e) => {
                        counters[1].inc();
                        tracing::debug!(message = "rule action failed", rule = %l.c.def.name, error = %e);
                    }
                }
            }
        }
    }
}

impl CompiledAction {
    fn kind(&self) -> &'static str {
        match self {
            CompiledAction::Republish { .. } => "republish",
        }
    }
}

fn run(
    a: &CompiledAction,
    row: &Value,
    input: &Input<'_>,
    router: &Router,
    routed: &mut Routed,
) -> Result<(), String> {
    match a {
        CompiledAction::Republish { topic, qos, retain, payload } => {
            let topic = topic.render(row, input).map_err(|e| e.to_string())?;
            crate::mqtt::topic::validate_name(&topic)
                .map_err(|_| format!("{topic:?} is not a valid topic name"))?;
            let payload = match payload {
                Some(t) => t.render(row, input).map_err(|e| e.to_string())?,
                None => row.to_json_text(),
            };
            let msg = Arc::new(Message {
                topic: Arc::from(topic.as_str()),
                payload: bytes::Bytes::from(payload),
                qos: *qos,
                retain: *retain,
                props: Default::default(),
                expires_at_ms: None,
                origin: None,
                publisher: None,
            });
            let mut out = router.publish(msg).map_err(|e| e.to_string())?;
            routed.acks.append(&mut out.acks);
            Ok(())
        }
    }
}

/// A rule's counters on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleCounts {
    /// Messages the rule's sources matched: passed + noResult + failed.
    pub matched: u64,
    pub passed: u64,
    pub no_result: u64,
    pub failed: u64,
    pub actions_ok: u64,
    pub actions_failed: u64,
}

impl RuleEngine {
    /// `rule`'s counters on this node.
    pub fn counts(&self, rule: &str) -> RuleCounts {
        let e = |r: &str| self.metrics.evaluations.with_label_values(&[rule, r]).get();
        let a = |r: &str| self.metrics.actions.with_label_values(&[rule, "republish", r]).get();
        let (passed, no_result, failed) = (e("passed"), e("no_result"), e("failed"));
        RuleCounts {
            matched: passed + no_result + failed,
            passed,
            no_result,
            failed,
            actions_ok: a("ok"),
            actions_failed: a("failed") + a("loop"),
        }
    }
}
