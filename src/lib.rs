//! keygate: a reverse proxy that gives any HTTP API a payment-grade API-key system.
//!
//! # Layout
//!
//! A request travels through the modules in this order (`proxy::service` is the one place that
//! reads top to bottom like the request path in `design.md`):
//!
//! - [`proxy`] accepts connections (HTTP/1.1 and h2c), owns the hyper service, the pooled upstream
//!   client, all header surgery, the ops listener (`/healthz`, `/readyz`, `/metrics`) and graceful
//!   shutdown.
//! - [`auth`] extracts the credential from the configured carriers and verifies it: positive
//!   cache, negative cache, store lookup by hash, Argon2id once per cache fill; then the key checks
//!   (revoked, expired, environment).
//! - [`key`] is the key format (generate, parse, checksum, display prefix) and the hashing
//!   (lookup hash, Argon2id PHC strings).
//! - [`store`] holds [`store::KeyRecord`], the [`store::KeyStore`] trait and its backends.
//! - [`error`] is the single mapping from a rejection to status, code, headers and JSON body.
//! - [`config`] turns `sidecar.toml` (plus `KEYGATE__…` env overrides) into validated, typed
//!   settings, reporting every problem at once.
//! - [`cli`] implements the `keys …` commands; [`dev`] the zero-config `keygate dev` trial;
//!   [`telemetry`] logging and the counters behind `/metrics`.
//!
//! `main.rs` only parses the command line and calls into these modules.

// Tests may unwrap: a panic there is a failed test, not a crashed proxy.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod dev;
pub mod error;
pub mod key;
pub mod manage;
pub mod net;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tls;
