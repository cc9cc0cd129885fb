//! The serving path: listeners and TLS accept ([`listener`]), the request path top to bottom
//! ([`service`]), forwarding with its header surgery ([`forward`], [`headers`]) over keygate's
//! own HTTP/1.1 pool or hyper-util's clients ([`upstream`]), CONNECT and upgrades beside the
//! main path ([`upgrade`], [`tunnel`]), and the ops endpoints ([`ops`]). Built and started by
//! the composition root, `crate::server`.

mod authz;
mod body;
mod conn;
mod context;
mod forward;
mod gate;
pub mod grpc;
/// Public for the fuzz targets; not a stable interface.
#[doc(hidden)]
pub mod h1;
pub mod headers;
mod listener;
mod ops;
mod pool;
pub mod proxy_protocol;
mod screen;
mod service;
mod stamp;
mod tunnel;
mod upgrade;
mod upstream;

pub use body::Inbound;
pub use conn::ConnInfo;
pub use forward::Forwarder;
pub use gate::{Gate, GateCounters};
pub use listener::{FastPath, Listening, Timing, TlsAccept, accept_loop, http_builder};
pub use ops::{Ops, probe};
pub use service::{App, ProxyBody};
pub use stamp::Stamp;
pub use tunnel::Limits as TunnelLimits;
pub use upgrade::Edge;
