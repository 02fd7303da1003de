//! Homeport: a clustered IoT device broker and runtime.
//!
//! Map of the crate (see `docs/ARCHITECTURE.md` for how config becomes tasks and actors):
//! - [`mqtt`]: pure wire protocol, MQTT 3.1.1 and 5.0.
//! - [`broker`]: subscription trie, router, retained messages, session routing slots.
//! - [`session`]: pure session state machines and the persisted session record.
//! - [`device`]: device actors (one per client id) and their supervisor; sessions whose
//!   connection is on another node than their actor (`device::attached`).
//! - [`raft`]: openraft groups (meta and shards) on sled: durable device state, including
//!   persistent MQTT sessions, offline queues and retained messages.
//! - [`cluster`]: nodes replicating the groups over QUIC: transport, mutual TLS, fault
//!   injection, members, placement and membership changes; routes between nodes and
//!   forwarded publishes (`cluster::routes`, `cluster::forward`; persistent sessions also
//!   by their shard's routes, copies sent again in `cluster::forward::reroute`), failure
//!   detection (`cluster::liveness`), leaving before a stop (`Cluster::hand_off_all`).
//! - [`shadow`]: AWS IoT compatible device shadows: document rules, reserved topics.
//! - [`jobs`]: AWS IoT compatible jobs: execution state machine, reserved topics, rollout.
//! - [`registry`]: registered things (attributes, groups) and thing groups.
//! - [`rules`]: rule SQL (EMQX and AWS IoT dialects: lexer, parser, plans, evaluation,
//!   functions; pure), rule definitions in the meta group, and the node's rule engine on
//!   the publish path with its republish action. Sinks come next.
//! - [`auth`]: device identity (secrets, JWTs, X.509), policies, admin tokens, the audit
//!   log, fleet provisioning.
//! - [`store`]: the node's sled database, versioned postcard values, the node-local
//!   in-flight journal, group-commit flushing.
//! - [`transport`]: TCP, TLS and WebSocket listeners and the connection task.
//! - [`admin`]: the admin HTTP API (`/api/...`, cluster endpoints included), `/metrics`,
//!   `/healthz`, `/readyz`, the OpenAPI document.
//! - [`loadgen`]: the load generator behind `homeport bench`.
//! - [`telemetry`]: logging and Prometheus metrics.
//! - [`config`]: the typed, validated configuration tree.
//! - [`node`]: wires one node together; start and shutdown order.
//!
//! The binary (`src/main.rs`) adds `src/cli/`: `homeport ctl` (the admin API from the
//! command line, including `ctl cluster` and `ctl certs`) and `homeport bench`.

pub mod admin;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod device;
pub mod jobs;
pub mod loadgen;
pub mod mqtt;
pub mod node;
pub mod raft;
pub mod registry;
pub mod rules;
pub mod session;
pub mod shadow;
pub mod store;
pub mod telemetry;
pub mod transport;

/// jemalloc instead of the system allocator (feature `jemalloc`, on by default). A connect
/// storm allocates and frees many short-lived objects (transient device actors, handshake
/// buffers) between long-lived ones (connections); glibc's arenas keep those holes
/// resident, jemalloc returns them (figures in docs/benchmarks.md, "Allocator"). Declared
/// in the library so that the binary, the tests and the benches all run on it, and so
/// that `telemetry` can read its statistics.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
