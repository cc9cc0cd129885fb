//! What the connection tells us about the client, computed once per connection.

use http::header::HeaderValue;

/// What the connection tells us about the client, computed once per connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    pub peer_ip: HeaderValue,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

impl ConnInfo {
    /// The header value for `ip`: the precomputed one when it is the peer itself.
    pub fn ip_value(&self, ip: std::net::IpAddr) -> HeaderValue {
        if ip == self.peer.ip().to_canonical() {
            return self.peer_ip.clone();
        }
        HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }

    pub fn new(peer: std::net::SocketAddr, tls: bool) -> Self {
        let ip = peer.ip().to_canonical();
        let peer_ip = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo { peer, peer_ip, tls }
    }
}
