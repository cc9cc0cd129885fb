//! The HTTP/1.1 fast path against hyper: the same raw requests — a hand-written corpus of
//! plain, unusual and malicious heads and bodies, and seeded mutations of it — go to keygate
//! with its own HTTP/1.1 path (`listen.http1 = "fast"`, the default) and to keygate serving
//! through hyper alone (`"hyper"`). Each must answer the same statuses and error codes, with
//! the same response headers and bodies, and forward exactly the same requests upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that writes down every request it is sent, as text.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| record(req, Arc::clone(&log)));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder { addr, seen }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn record(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<String>>>,
) -> Result<Response<UpBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).into_owned(),
        Err(e) => format!("<body failed: {e}>"),
    };
    let mut text = format!("{} {} {:?}\n", parts.method, parts.uri, parts.version);
    for (name, value) in &parts.headers {
        if name == "x-request-id" {
            continue; // random unless the client sent one
        }
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push_str(&body);
    log.lock().unwrap().push(text);
    let path = parts.uri.path();
    let resp = if path.ends_with("/stream") {
        // No length: sent chunked.
        let chunks = ["one ", "two ", "three"]
            .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from_static(c.as_bytes()))));
        Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
    } else if path.ends_with("/fields") {
        // What a response's fields go through: duplicates around another name, names keygate
        // stamps itself, hop-by-hop fields and one `Connection` lists.
        let mut r = Response::new(Full::new(Bytes::from_static(b"fields")).boxed());
        for (name, value) in [
            ("set-cookie", "a=1"),
            ("x-between", "1"),
            ("set-cookie", "b=2"),
            ("x-ratelimit-limit", "5"),
            ("x-request-id", "upstream-id"),
            ("ratelimit-policy", "upstream"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-t"),
        ] {
            r.headers_mut()
                .append(name, http::HeaderValue::from_static(value));
        }
        r
    } else if path.ends_with("/nothing") {
        let mut r = Response::new(Full::new(Bytes::new()).boxed());
        *r.status_mut() = http::StatusCode::NO_CONTENT;
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")).boxed());
        r.headers_mut()
            .insert("x-upstream", http::HeaderValue::from_static("1"));
        r
    };
    Ok(resp)
}

/// One side of the comparison: keygate (fast or hyper) in front of its own recorder.
struct Side {
    kg: Keygate,
    up: Recorder,
    key: String,
    key_id: String,
}

impl Side {
    async fn start(http1: &str) -> Side {
        let up = Recorder::start().await;
        let kg = Keygate::start(
            &format!("http://{}", up.addr),
            &format!(
                "[listen]\nhttp1 = \"{http1}\"\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"1s\"\n\
                 max_header_bytes = \"8KiB\"\n\
                 [rate_limits]\nkey = {{ limit = 1000000, window = \"1m\" }}\n\
                 failed_auth = {{ limit = 1000000, window = \"1m\" }}\n"
            ),
        )
        .await;
        let (key, key_id) = kg.live_key().await;
        Side {
            kg,
            up,
            key,
            key_id,
        }
    }

    /// Sends `raw` (with `{KEY}` filled in) on a new connection and reads until it closes or
    /// goes quiet: what the client saw and what the upstream was sent, both normalised. (No
    /// half-close: hyper drops a connection whose client half-closed, response and all.)
    async fn exchange(&self, raw: &[u8]) -> (Vec<String>, Vec<String>) {
        let raw = replace(raw, b"{KEY}", self.key.as_bytes());
        let mut s = TcpStream::connect(self.kg.addr).await.unwrap();
        let _ = s.write_all(&raw).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match tokio::time::timeout(Duration::from_millis(150), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
        // The upstream may still be finishing the last request it was sent.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let up = self.up.addr.to_string();
        let norm = |t: String| {
            t.replace(&self.key, "{KEY}")
                .replace(&self.key_id, "{KID}")
                .replace(&up, "{UP}")
        };
        let responses = responses(&got).into_iter().map(norm).collect();
        let forwarded = self.up.take().into_iter().map(norm).collect();
        (responses, forwarded)
    }
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// The responses in a byte stream, each as its status line, its headers sorted (without the
/// per-request `date` and `x-request-id`) and its decoded body.
fn responses(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(len)) = resp.parse(bytes) else {
            out.push(format!("<unparsed> {}", String::from_utf8_lossy(bytes)));
            break;
        };
        let mut text = format!("{} {:?}\n", resp.code.unwrap_or(0), resp.reason);
        let mut headers: Vec<String> = resp
            .headers
            .iter()
            .filter(|h| !h.name.eq_ignore_ascii_case("date"))
            .filter(|h| !h.name.eq_ignore_ascii_case("x-request-id"))
            .map(|h| {
                let name = h.name.to_ascii_lowercase();
                // Clock- and count-dependent values: the names must match, not the figures.
                if name.ends_with("-reset") || name.ends_with("-remaining") {
                    return format!("{name}: {{..}}");
                }
                format!("{name}: {}", String::from_utf8_lossy(h.value))
            })
            .collect();
        headers.sort();
        let find = |n: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(n))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let code = resp.code.unwrap_or(0);
        let length = find("content-length").and_then(|v| v.parse::<usize>().ok());
        let chunked = find("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        text.push_str(&headers.join("\n"));
        bytes = &bytes[len..];
        let no_body = code == 204 || code == 304 || (100..200).contains(&code);
        let body = if no_body {
            Vec::new()
        } else if chunked {
            let (body, used) = dechunk(bytes);
            bytes = &bytes[used..];
            body
        } else if let Some(n) = length {
            let n = n.min(bytes.len());
            let body = bytes[..n].to_vec();
            bytes = &bytes[n..];
            body
        } else {
            let body = bytes.to_vec();
            bytes = &[];
            body
        };
        // Error bodies carry the request id: compare the code.
        let body = String::from_utf8_lossy(&body).into_owned();
        let body = match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(mut v) => {
                if let Some(o) = v.get_mut("error").and_then(|e| e.as_object_mut()) {
                    o.remove("request_id");
                }
                if let Some(o) = v.as_object_mut() {
                    o.remove("request_id");
                }
                v.to_string()
            }
            Err(_) => body,
        };
        text.push_str(&format!("\n\n{body}"));
        out.push(text);
    }
    out
}

fn dechunk(mut b: &[u8]) -> (Vec<u8>, usize) {
    let start = b.len();
    let mut body = Vec::new();
    loop {
        let Some(line_end) = b.windows(2).position(|w| w == b"\r\n") else {
            return (body, start - b.len());
        };
        let size = std::str::from_utf8(&b[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        b = &b[line_end + 2..];
        if size == 0 {
            let end = b
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(b.len(), |p| p + 2);
            b = &b[end..];
            return (body, start - b.len());
        }
        let n = size.min(b.len());
        body.extend_from_slice(&b[..n]);
        b = &b[(n + 2).min(b.len())..];
    }
}

/// Requests whose answer does not depend on timing; `{KEY}` is a valid key.
fn corpus() -> Vec<Vec<u8>> {
    let auth = "Authorization: Bearer {KEY}\r\n";
    let mut c: Vec<String> = vec![
        format!("GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("GET /v1/items?a=1&b=%20 HTTP/1.1\r\nHost: api\r\n{auth}User-Agent: t\r\n\r\n"),
        format!("GET /v1/stream HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("GET /v1/nothing HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("GET /v1/fields HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("HEAD /v1/fields HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("HEAD /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("OPTIONS /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("DELETE /v1/items/1 HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("GET /v1/items HTTP/1.1\r\nHost: api\r\nX-Api-Key: {{KEY}}\r\n\r\n"),
        format!("GET /v1/items HTTP/1.1\r\nhOsT: api\r\nauthorization: bearer {{KEY}}\r\n\r\n"),
        format!("GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Connection: close\r\n\r\n"),
        format!("GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Connection: keep-alive\r\n\r\n"),
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}X-Auth-Owner: evil\r\nX-Auth-Key-Id: k\r\n\r\n"
        ),
        format!("GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}X_Auth_Owner: evil\r\n\r\n"),
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Connection: X-Drop\r\nX-Drop: 1\r\nX-Keep: 2\r\n\r\n"
        ),
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}X-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\n\r\n"
        ),
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}X-Dup: 1\r\nX-Dup: 2\r\nX-Empty:\r\n\r\n"
        ),
        format!("GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}X-Request-Id: client-id-1\r\n\r\n"),
        format!("GET /v1/a/../items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("GET /v1//items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("GET /v1/%2e%2e/admin HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("GET /v1/items%00 HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("GET /v1/items HTTP/1.1\nHost: api\n{}\n", auth.trim_end()),
        // Bodies.
        format!("POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Content-Length: 5\r\n\r\nhello"),
        format!("POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Content-Length: 0\r\n\r\n"),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Transfer-Encoding: chunked\r\n\r\n5\r\nhello"
        ),
        format!("POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Content-Length: 10\r\n\r\nshort"),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Content-Length: 99999999999\r\n\r\nx"
        ),
        format!("POST /v1/items HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello"),
        // Pipelined.
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\nGET /v1/stream HTTP/1.1\r\nHost: api\r\n{auth}\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Content-Length: 3\r\n\r\nabcGET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\nContent-Length: 44\r\n\r\nGET /v1/items HTTP/1.1\r\nHost: api\r\n\r\nGET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"
        ),
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\nGET /v1/items HTTP/1.0\r\nHost: api\r\n{auth}\r\n"
        ),
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\nGET http://api/v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"
        ),
        // Authentication failures.
        "GET /v1/items HTTP/1.1\r\nHost: api\r\n\r\n".into(),
        "GET /v1/items HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer sk_live_nope\r\n\r\n".into(),
        "GET /v1/items HTTP/1.1\r\nHost: api\r\nAuthorization: Basic Zm9vOmJhcg==\r\n\r\n".into(),
        format!("GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}X-Api-Key: other\r\n\r\n"),
        format!("GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}{auth}\r\n"),
        // Screening and smuggling: most of these go to hyper, and must answer as it does.
        format!("GET /v1/items HTTP/1.1\r\n{auth}\r\n"),
        format!("GET /v1/items HTTP/1.1\r\nHost: a\r\nHost: b\r\n{auth}\r\n"),
        format!("GET /v1/items HTTP/1.0\r\n{auth}\r\n"),
        format!("GET http://api/v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("GET http://evil/v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("OPTIONS * HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("CONNECT api:443 HTTP/1.1\r\nHost: api:443\r\n{auth}\r\n"),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
        ),
        format!("POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Content-Length: +5\r\n\r\nhello"),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Transfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello"
        ),
        format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"
        ),
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ),
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        ),
        format!("GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}X-Folded: a\r\n b\r\n\r\n"),
        format!("GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}Bad Header: 1\r\n\r\n"),
        format!("GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}X-Nul: a\0b\r\n\r\n"),
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}X-Big: {}\r\n\r\n",
            "a".repeat(9000)
        ),
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}{}\r\n",
            "X-M: 1\r\n".repeat(120)
        ),
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}X-HTTP-Method-Override: DELETE\r\n\r\n"
        ),
        format!("GET /v1/items\tHTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("GET  /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("G@T /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("get /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        format!("GET /v1/items HTTP/1.2\r\nHost: api\r\n{auth}\r\n"),
        format!("GET /v1/items HTTP/2.0\r\nHost: api\r\n{auth}\r\n"),
        format!("\r\nGET /v1/items HTTP/1.1\r\nHost: api\r\n{auth}\r\n"),
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(),
        "GET /v1/items HTTP/1.1\r\nHost: api\r\n".into(),
        "\u{1}\u{2}garbage".into(),
    ];
    c.push(format!(
        "GET /v1/{} HTTP/1.1\r\nHost: api\r\n{auth}\r\n",
        "é"
    ));
    c.into_iter().map(String::into_bytes).collect()
}

/// A small deterministic generator (xorshift), so a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A mutation of `seed`: bytes flipped, dropped, doubled or replaced by a framing byte.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    const SPECIAL: &[u8] = b"\r\n :;,\t\0/%.0Ff-_";
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        if m.is_empty() {
            break;
        }
        let i = rng.below(m.len());
        match rng.below(4) {
            0 => m[i] = SPECIAL[rng.below(SPECIAL.len())],
            1 => {
                m.remove(i);
            }
            2 => m.insert(i, m[i]),
            _ => m[i] ^= 1 << rng.below(8),
        }
    }
    m
}

async fn compare(fast: &Side, hyper: &Side, case: &[u8], label: &str) {
    let (fast_resp, fast_fwd) = fast.exchange(case).await;
    let (hyper_resp, hyper_fwd) = hyper.exchange(case).await;
    let shown = String::from_utf8_lossy(case);
    assert_eq!(
        fast_resp, hyper_resp,
        "{label}: responses differ for {shown:?}"
    );
    assert_eq!(
        fast_fwd, hyper_fwd,
        "{label}: forwarded requests differ for {shown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_answers_and_forwards_as_hyper_does() {
    let fast = Side::start("fast").await;
    let hyper = Side::start("hyper").await;
    let cases = corpus();
    let mut forwarded = 0;
    for (i, case) in cases.iter().enumerate() {
        compare(&fast, &hyper, case, &format!("corpus #{i}")).await;
        forwarded += usize::from(case.starts_with(b"GET /v1/items HTTP/1.1\r\nHost"));
    }
    // The corpus reaches the upstream (this is not a comparison of two refusals).
    let (resp, fwd) = fast.exchange(&cases[0]).await;
    assert_eq!(fwd.len(), 1, "{resp:?}");
    assert!(resp[0].starts_with("200 "), "{resp:?}");
    assert!(forwarded > 10);
    // Seeded mutations of the corpus.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for n in 0..150 {
        let seed = &cases[rng.below(cases.len())];
        let case = mutate(seed, &mut rng);
        compare(&fast, &hyper, &case, &format!("mutation #{n}")).await;
    }
}

/// A body larger than one read, sent slowly in pieces, arrives whole on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_sent_in_pieces_arrive_whole() {
    let fast = Side::start("fast").await;
    let hyper = Side::start("hyper").await;
    let body = "x".repeat(100_000);
    for side in [&fast, &hyper] {
        let mut s = TcpStream::connect(side.kg.addr).await.unwrap();
        let head = format!(
            "POST /v1/items HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n",
            side.key
        );
        s.write_all(head.as_bytes()).await.unwrap();
        for piece in body.as_bytes().chunks(30_000) {
            s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(piece).await.unwrap();
            s.write_all(b"\r\n").await.unwrap();
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
        let text = read_all(&mut s, Duration::from_millis(500)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let seen = side.up.take();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].ends_with(&body), "the body did not arrive whole");
    }
}

/// A client that stops reading a large response is cut off once it has taken nothing for the
/// idle timeout: it cannot hold a connection (and an upstream one) forever. (Through hyper the
/// listener's idle close and its grace bound it the same way, a few seconds later.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off() {
    let up = Upstream::start().await;
    {
        let http1 = "fast";
        let kg = Keygate::start(
            &up.url(),
            &format!("[listen]\nhttp1 = \"{http1}\"\nidle_timeout = \"1s\"\n"),
        )
        .await;
        let (key, _) = kg.live_key().await;
        let mut s = TcpStream::connect(kg.addr).await.unwrap();
        let total: u64 = 200 << 20;
        let req = format!(
            "GET /download/{total} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {key}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // What the socket buffers held, then the end: never the whole download.
        let mut got = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => got += n as u64,
                Err(_) => break false,
            }
        };
        assert!(ended, "{http1}: the stalled connection is still open");
        assert!(got < total / 2, "{http1}: {got} bytes were read");
    }
}

/// An upstream that goes quiet mid-body does not hold the client's connection: once nothing
/// has come for the idle timeout, the response ends as failed and the connection closes (the
/// client sees a body short of its length, never a complete-looking one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_stalled_mid_body_closes_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let kg = Keygate::start(&format!("http://{up}"), "[listen]\nidle_timeout = \"1s\"\n").await;
    let (key, _) = kg.live_key().await;
    let mut s = TcpStream::connect(kg.addr).await.unwrap();
    let req = format!("GET /v1/x HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {key}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&got);
    assert!(ended, "still open after {:?}: {text}", started.elapsed());
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("0123456789"), "{text}");
}

/// The upstream's response fields reach the client as it sent them, on both paths, less the
/// hop-by-hop ones and the one its `Connection` lists; keygate's request id and rate-limit
/// figures replace the upstream's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_fields_pass_as_sent_less_hop_by_hop() {
    for http1 in ["fast", "hyper"] {
        let side = Side::start(http1).await;
        let req = format!(
            "GET /v1/fields HTTP/1.1\r\nHost: api\r\nX-Api-Key: {}\r\nX-Request-Id: client-id\r\n\r\n",
            side.key
        );
        let text = common::raw(side.kg.addr, req.as_bytes(), Duration::from_millis(300)).await;
        let lower = text.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 200"), "{http1}: {text}");
        let count = |line: &str| lower.matches(&format!("\r\n{line}")).count();
        assert_eq!(count("set-cookie: a=1\r\n"), 1, "{http1}: {text}");
        assert_eq!(count("set-cookie: b=2\r\n"), 1, "{http1}: {text}");
        assert_eq!(count("x-between: 1\r\n"), 1, "{http1}: {text}");
        assert_eq!(count("x-request-id:"), 1, "{http1}: {text}");
        assert_eq!(count("x-request-id: client-id\r\n"), 1, "{http1}: {text}");
        assert_eq!(count("x-ratelimit-limit:"), 1, "{http1}: {text}");
        assert_eq!(count("x-ratelimit-limit: 5\r\n"), 0, "{http1}: {text}");
        for gone in ["x-secret:", "keep-alive:", "proxy-connection:", "trailer:"] {
            assert_eq!(count(gone), 0, "{http1}: {gone} {text}");
        }
        assert!(lower.ends_with("\r\n\r\nfields"), "{http1}: {text}");
    }
}
