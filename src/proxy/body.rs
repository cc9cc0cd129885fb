//! The request body on its way upstream: streamed, never buffered, capped at the configured size.

use http_body_util::Limited;
use hyper::body::Incoming;

pub type UpstreamBody = Limited<Incoming>;
