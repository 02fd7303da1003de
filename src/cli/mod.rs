//! The command line's own room: argument parsing and output, one file per command
//! group. `ctl` talks to a node's admin API (`ctl` things, groups, shadows, jobs;
//! `identity` credentials, policies, certificates, tokens, audit; `cluster` members,
//! groups, init, join, drain, remove, faults; `rules`); `bench` is the load generator's front.
//! Nothing here touches a node's internals: it speaks HTTP (or, for `ctl certs init`,
//! writes files).

pub mod bench;
pub mod cluster;
pub mod ctl;
pub mod identity;
pub mod rules;
