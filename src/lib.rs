//! keygate: a reverse proxy that gives any HTTP API a payment-grade API-key system.
//!
//! # Layout
//!
//! A request travels through the modules in this order; `proxy::service` reads top to bottom
//! like the request path in `design.md` (admit → authenticate → authorize → forward → finish):
//!
//! - [`proxy`] accepts connections (HTTP/1.1, h2c, TLS with ALPN), runs the request path, owns
//!   the forwarder and its header surgery (`proxy::headers`), keygate's HTTP/1.1 upstream pool,
//!   CONNECT and upgrades (beside the main path) and the ops endpoints.
//! - [`policy`] admits a request (client address behind trusted proxies, path normalisation,
//!   route, global IP lists, per-IP floor and failed-auth throttle) and, once the key is known,
//!   applies the route's rules — environment, key type, the key's IP allowlist, scope, rate
//!   limits — to make the only [`policy::Permit`] the forwarder accepts. Rate limiters live in
//!   `policy::ratelimit` (in-process and Redis).
//! - [`auth`] extracts the credential from the route's carriers and verifies it: positive
//!   cache, negative cache, store lookup by hash, Argon2id once per cache fill (single-flight),
//!   then the record-only checks (revoked, expired). Its [`auth::Identity`] is the proof of
//!   authentication later stages take.
//! - [`key`] is the key format (generate, parse, checksum, display prefix) and the hashing
//!   (lookup hash, Argon2id PHC strings); [`net`] the address sets.
//! - [`store`] holds [`store::KeyRecord`], the [`store::KeyStore`] trait and its backends
//!   (`file`, `redis`); a change is applied to this process's cache before the write returns.
//! - [`error`] is the single mapping from a rejection to status, code, headers and JSON body,
//!   and (`error::api`) the key-management APIs' error vocabulary.
//! - [`audit`] is the hash-chained audit trail: events, per-minute usage and failure
//!   aggregates, sinks (file, Redis), usage counters.
//!
//! Around the request path:
//!
//! - [`server`] is the composition root: it builds all of the above from the typed
//!   configuration, serves the proxy, ops and admin listeners, reloads and shuts down.
//! - [`config`] turns `sidecar.toml` (plus `KEYGATE__…` env overrides) into validated, typed
//!   settings, one file per section, reporting every problem at once; it depends on nothing
//!   but value types, and every other module takes its settings from it.
//! - [`manage`] is key management shared by the CLI (`keygate keys …`), the admin API and
//!   `keygate dev`; [`admin`] the operator API over it; [`dev`] the zero-config trial;
//!   [`telemetry`] logging and the metrics behind `/metrics`; [`tls`] certificates; [`time`]
//!   timestamps.
//!
//! `main.rs` only parses the command line and calls into these modules. `.ci/structure.py`
//! keeps the module graph free of cycles and files under 600 lines.

// Tests may unwrap: a panic there is a failed test, not a crashed proxy.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod dev;
pub mod error;
pub mod fields;
pub mod key;
pub mod manage;
pub mod net;
pub mod policy;
pub mod proxy;
pub mod self_service;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tls;
