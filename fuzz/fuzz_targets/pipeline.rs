//! The whole request pipeline, raw bytes in: a keygate on loopback in front of an upstream that
//! checks every request it receives. The input is sent on one connection (`KEY` in it is
//! replaced by a live key, so well-formed requests get through); whatever keygate forwards must
//! carry the identity of that key and never the key itself. Anything else aborts the process.
#![no_main]
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate::config::Config;
use keygate::key::{Environment, KeyType};
use keygate::manage::KeyTool;
use keygate::server::Server;
use keygate::store::NewRecord;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The identity headers keygate sets (prefix `x-auth-`, no signing key configured).
const IDENTITY: &[&str] = &["x-auth-key-id", "x-auth-owner", "x-auth-env", "x-auth-key-type", "x-auth-scopes"];

struct Rig {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    key: String,
}

/// An `Authorization` value in a scheme keygate reads (Bearer, Basic); any other scheme is the
/// client's business with the upstream and is forwarded whatever it holds.
fn read_by_keygate(v: &http::HeaderValue) -> bool {
    let scheme = v.as_bytes().split(|b| *b == b' ' || *b == b'\t').next().unwrap_or_default();
    scheme.eq_ignore_ascii_case(b"bearer") || scheme.eq_ignore_ascii_case(b"basic")
}

/// An upstream that aborts on any request without the key's identity, or with the key.
async fn upstream(listener: TcpListener, key_id: String, key: String) {
    loop {
        let Ok((s, _)) = listener.accept().await else { continue };
        let (key_id, key) = (key_id.clone(), key.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let h = req.headers();
                let has_key = |v: &http::HeaderValue| v.as_bytes().windows(key.len()).any(|w| w == key.as_bytes());
                // The key's identity, once; nothing else in the identity namespace (a client's
                // spoofed x-auth-* never passes); the carriers keygate reads are gone. (A key a
                // client puts in some other header, or in an Authorization of another scheme, is
                // that header's business: it is forwarded.)
                let ok = h.get("x-auth-key-id").and_then(|v| v.to_str().ok()) == Some(key_id.as_str())
                    && h.get_all("x-auth-key-id").iter().count() == 1
                    && h.keys().filter(|n| n.as_str().starts_with("x-auth-")).all(|n| IDENTITY.contains(&n.as_str()))
                    && h.get_all("x-auth-owner").iter().map(|v| v.as_bytes()).eq([&b"acct_fuzz"[..]])
                    && !h.contains_key("x-api-key")
                    && !h.get_all(http::header::AUTHORIZATION).iter().any(|v| has_key(v) && read_by_keygate(v));
                if !ok {
                    eprintln!("forwarded without its identity (or with the key): {:?}", req.headers());
                    std::process::abort();
                }
                async { Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok")))) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("keygate-fuzz-pipeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (addr, key) = rt.block_on(async {
            let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let toml = format!(
                "[upstream]\nurl = \"http://{}\"\nresponse_timeout = \"1s\"\n[store]\npath = {:?}\n\
                 [listen]\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\n\
",
                up.local_addr().unwrap(),
                dir.join("keys.json").display().to_string()
            );
            let config = Config::from_toml(&toml, Vec::new(), |_| None).unwrap();
            let server = Server::new(&config).unwrap();
            let tool = KeyTool::with_store(server.store(), &config).unwrap();
            let (key, rec) = tool
                .create(NewRecord::new("acct_fuzz", Environment::Live, KeyType::Secret), "fuzz")
                .await
                .unwrap();
            tokio::spawn(upstream(up, rec.id.clone(), key.key.clone()));
            let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = proxy.local_addr().unwrap();
            tokio::spawn(server.serve(proxy, ops, std::future::pending()));
            (addr, key.key.clone())
        });
        Rig { rt, addr, key }
    })
}

/// `KEY` replaced by the live key; a length byte of 3 just before it (an HPACK string) becomes
/// the key's length, so HTTP/2 seeds carry the key too.
fn with_key(data: &[u8], key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut rest = data;
    while let Some(i) = rest.windows(3).position(|w| w == b"KEY") {
        out.extend_from_slice(&rest[..i]);
        if let (Some(last), Ok(n)) = (out.last_mut(), u8::try_from(key.len())) {
            if *last == 3 && n < 127 {
                *last = n;
            }
        }
        out.extend_from_slice(key.as_bytes());
        rest = &rest[i + 3..];
    }
    out.extend_from_slice(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let rig = rig();
    let bytes = with_key(data, &rig.key);
    rig.rt.block_on(async {
        let Ok(mut s) = TcpStream::connect(rig.addr).await else { return };
        if s.write_all(&bytes).await.is_err() {
            return;
        }
        let _ = s.shutdown().await;
        let mut buf = [0u8; 16384];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
    });
});
