//! The PROXY protocol (v1 text and v2 binary, as sent by HAProxy, AWS NLB, …): when enabled on
//! the listener, every connection must start with a header naming the real client, which then
//! stands in for the socket peer. A connection without a valid header is closed.
//!
//! The header is read without over-reading, so the HTTP bytes after it stay on the socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;
/// The largest v2 payload we accept (addresses plus modest TLVs).
const V2_MAX_PAYLOAD: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header")]
    Malformed,
    #[error("connection closed before the PROXY protocol header ended")]
    Truncated,
}

/// Reads the header. `Ok(Some(addr))`: the client's address; `Ok(None)`: a health check from
/// the proxy itself (v1 `UNKNOWN`, v2 `LOCAL`), use the socket peer.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut start = [0u8; 5];
    read_exact(io, &mut start).await?;
    if &start == b"PROXY" {
        let mut line = Vec::with_capacity(V1_MAX);
        line.extend_from_slice(&start);
        // Byte by byte: the header's end is only known when it is seen.
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(ProxyHeaderError::Malformed);
            }
            let mut b = [0u8; 1];
            read_exact(io, &mut b).await?;
            line.push(b[0]);
        }
        return parse_v1(&line[..line.len() - 2]);
    }
    if start != V2_SIGNATURE[..5] {
        return Err(ProxyHeaderError::Missing);
    }
    let mut rest = [0u8; 11];
    read_exact(io, &mut rest).await?;
    if rest[..7] != V2_SIGNATURE[5..] {
        return Err(ProxyHeaderError::Missing);
    }
    let (ver_cmd, family) = (rest[7], rest[8]);
    let len = usize::from(u16::from_be_bytes([rest[9], rest[10]]));
    if ver_cmd >> 4 != 2 || len > V2_MAX_PAYLOAD {
        return Err(ProxyHeaderError::Malformed);
    }
    let mut payload = vec![0u8; len];
    read_exact(io, &mut payload).await?;
    match ver_cmd & 0x0f {
        0 => Ok(None), // LOCAL
        1 => parse_v2_addresses(family, &payload),
        _ => Err(ProxyHeaderError::Malformed),
    }
}

async fn read_exact<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut [u8],
) -> Result<(), ProxyHeaderError> {
    io.read_exact(buf)
        .await
        .map(|_| ())
        .map_err(|_| ProxyHeaderError::Truncated)
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>`, `PROXY TCP6 …`, `PROXY UNKNOWN …`.
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let line = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some("PROXY"), Some(proto)) = (parts.next(), parts.next()) else {
        return Err(ProxyHeaderError::Malformed);
    };
    if proto == "UNKNOWN" {
        return Ok(None);
    }
    let (Some(src), Some(_dst), Some(sport), Some(_dport), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(ProxyHeaderError::Malformed);
    };
    let ip: IpAddr = match proto {
        "TCP4" => IpAddr::V4(src.parse().map_err(|_| ProxyHeaderError::Malformed)?),
        "TCP6" => IpAddr::V6(src.parse().map_err(|_| ProxyHeaderError::Malformed)?),
        _ => return Err(ProxyHeaderError::Malformed),
    };
    let port: u16 = sport.parse().map_err(|_| ProxyHeaderError::Malformed)?;
    Ok(Some(SocketAddr::new(ip, port)))
}

fn parse_v2_addresses(family: u8, p: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match family >> 4 {
        // AF_INET: src(4) dst(4) sport(2) dport(2)
        1 if p.len() >= 12 => {
            let ip = Ipv4Addr::new(p[0], p[1], p[2], p[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([p[8], p[9]]),
            )))
        }
        // AF_INET6: src(16) dst(16) sport(2) dport(2)
        2 if p.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&p[..16]);
            let ip = Ipv6Addr::from(octets);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes([p[32], p[33]]),
            )))
        }
        // AF_UNSPEC (or AF_UNIX): no usable address.
        0 | 3 => Ok(None),
        _ => Err(ProxyHeaderError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let r = read_header(&mut cursor).await;
        let pos = cursor.position() as usize;
        (r, bytes[pos..].to_vec())
    }

    #[tokio::test]
    async fn v1() {
        let (r, rest) =
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r, Ok(Some("203.0.113.7:51234".parse().unwrap())));
        assert_eq!(
            rest, b"GET / HTTP/1.1\r\n",
            "nothing after the header is consumed"
        );
        let (r, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n").await;
        assert_eq!(r, Ok(Some("[2001:db8::1]:1".parse().unwrap())));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").await.0, Ok(None));
        assert_eq!(
            parse(b"PROXY TCP4 nope 10.0.0.1 1 2\r\n").await.0,
            Err(ProxyHeaderError::Malformed)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n").await.0,
            Err(ProxyHeaderError::Missing)
        );
        assert_eq!(
            parse(&[&b"PROXY "[..], &[b'x'; 200][..]].concat()).await.0,
            Err(ProxyHeaderError::Malformed)
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4").await.0,
            Err(ProxyHeaderError::Truncated)
        );
    }

    #[tokio::test]
    async fn v2() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb,
        ]);
        h.extend_from_slice(b"GET /");
        let (r, rest) = parse(&h).await;
        assert_eq!(r, Ok(Some("198.51.100.9:8080".parse().unwrap())));
        assert_eq!(rest, b"GET /");
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).await.0, Ok(None));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge).await.0, Err(ProxyHeaderError::Malformed));
    }
}
