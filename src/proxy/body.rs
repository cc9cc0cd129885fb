//! Request bodies: as the client sends them (streamed, or — when a key's restriction must read
//! a JSON field first — buffered), and on their way upstream: streamed, never buffered beyond
//! that, capped at the configured size.

use bytes::Bytes;
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;

/// The client's body: streamed, or read whole before authorization.
pub type ClientBody = Either<Incoming, Full<Bytes>>;

/// The body sent upstream.
pub type UpstreamBody = Either<Limited<Incoming>, Full<Bytes>>;

/// The client's body on its way upstream, a streamed one capped at `limit` bytes.
pub fn upstream_body(body: ClientBody, limit: usize) -> UpstreamBody {
    match body {
        Either::Left(incoming) => Either::Left(Limited::new(incoming, limit)),
        Either::Right(full) => Either::Right(full),
    }
}
