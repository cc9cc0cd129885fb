//! TLS on the listener and to the upstream, with certificates made in the test (rcgen).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Keygate, Upstream, bearer};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// A CA and certificates it signs.
struct Ca {
    cert: Certificate,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A certificate for `names` (server) or a client certificate; returns (cert PEM, key PEM, DER).
    fn issue(&self, names: &[&str], client: bool) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        roots
    }
}

use rustls::pki_types::pem::PemObject;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    // Replace atomically, as a Secret update does.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p.display().to_string()
}

struct Seen {
    status: u16,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
    peer_cert: Vec<u8>,
    body: Bytes,
}

/// One GET over TLS to `addr`, with SNI `name`, ALPN `alpn`, and optionally a client cert.
async fn tls_get(
    addr: std::net::SocketAddr,
    name: &str,
    ca: &Ca,
    client: Option<(&str, &str)>,
    alpn: &[&[u8]],
    key: &str,
) -> Result<Seen, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(ca.roots());
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, k)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let alpn_got = session.alpn_protocol().map(<[u8]>::to_vec);
    let version = session.protocol_version();
    let peer_cert = session.peer_certificates().unwrap()[0].to_vec();
    let req = Request::get(format!("https://{name}/v1/things"))
        .header("authorization", bearer(key))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if alpn_got.as_deref() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut()
            .insert("host", http::HeaderValue::from_str(name).unwrap());
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Seen {
        status,
        alpn: alpn_got,
        version,
        peer_cert,
        body,
    })
}

fn tls_section(default: (&str, &str), sni: Option<(&str, &str, &str)>, extra: &str) -> String {
    let mut s = format!(
        "[listen.tls]\ncert_file = {:?}\nkey_file = {:?}\nreload_interval = \"100ms\"\n{extra}",
        default.0, default.1
    );
    if let Some((name, cert, key)) = sni {
        s.push_str(&format!(
            "[[listen.tls.sni]]\nnames = [{name:?}]\ncert_file = {cert:?}\nkey_file = {key:?}\n"
        ));
    }
    s
}

#[tokio::test]
async fn tls13_with_alpn_h2_and_sni() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (c1, k1, der1) = ca.issue(&["default.test"], false);
    let (c2, k2, der2) = ca.issue(&["api.example.com"], false);
    let d = (
        write(dir.path(), "d.crt", &c1),
        write(dir.path(), "d.key", &k1),
    );
    let s = (
        write(dir.path(), "s.crt", &c2),
        write(dir.path(), "s.key", &k2),
    );
    let up = Upstream::start().await;
    let kg = Keygate::start(
        &up.url(),
        &tls_section((&d.0, &d.1), Some(("api.example.com", &s.0, &s.1)), ""),
    )
    .await;
    let (key, _) = kg.live_key().await;

    let seen = tls_get(
        kg.addr,
        "api.example.com",
        &ca,
        None,
        &[b"h2", b"http/1.1"],
        &key,
    )
    .await
    .unwrap();
    assert_eq!(seen.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen.peer_cert, der2, "the SNI certificate");
    assert_eq!(seen.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "upstream leg stays HTTP/1.1 by default"
    );

    let seen = tls_get(kg.addr, "other.test", &ca, None, &[b"http/1.1"], &key).await;
    // The default certificate does not name other.test: the client refuses it.
    assert!(seen.is_err());
    let seen = tls_get(kg.addr, "default.test", &ca, None, &[b"http/1.1"], &key)
        .await
        .unwrap();
    assert_eq!(seen.peer_cert, der1, "the default certificate");
    assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(seen.status, 200);

    // Plain HTTP on the TLS port is not served.
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        common::client().request(Request::get(kg.url("/x")).body(common::empty()).unwrap()),
    )
    .await
    .unwrap();
    assert!(r.is_err());
    assert_eventually!(
        kg.metrics
            .tls_handshake_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        Duration::from_secs(2),
        "handshake errors are counted"
    );
}

#[tokio::test]
async fn certificates_reload_from_disk_and_bad_files_are_ignored() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (c1, k1, der1) = ca.issue(&["localhost"], false);
    let d = (
        write(dir.path(), "d.crt", &c1),
        write(dir.path(), "d.key", &k1),
    );
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), &tls_section((&d.0, &d.1), None, "")).await;
    let (key, _) = kg.live_key().await;
    let first = tls_get(kg.addr, "localhost", &ca, None, &[b"http/1.1"], &key)
        .await
        .unwrap();
    assert_eq!(first.peer_cert, der1);

    // A rotated certificate is picked up without a restart.
    let (c2, k2, der2) = ca.issue(&["localhost"], false);
    write(dir.path(), "d.key", &k2);
    write(dir.path(), "d.crt", &c2);
    assert_eventually!(
        tls_get(kg.addr, "localhost", &ca, None, &[b"http/1.1"], &key)
            .await
            .is_ok_and(|s| s.peer_cert == der2),
        Duration::from_secs(5),
        "the new certificate was not served"
    );

    // A broken file is logged and the last good certificate stays.
    write(dir.path(), "d.crt", "not a certificate");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let seen = tls_get(kg.addr, "localhost", &ca, None, &[b"http/1.1"], &key)
        .await
        .unwrap();
    assert_eq!(seen.peer_cert, der2);
    assert_eq!(seen.status, 200);
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (c1, k1, _) = ca.issue(&["localhost"], false);
    let d = (
        write(dir.path(), "d.crt", &c1),
        write(dir.path(), "d.key", &k1),
    );
    let ca_file = write(dir.path(), "ca.crt", &ca.pem);
    let up = Upstream::start().await;
    let kg = Keygate::start(
        &up.url(),
        &tls_section(
            (&d.0, &d.1),
            None,
            &format!("client_ca_file = {ca_file:?}\n"),
        ),
    )
    .await;
    let (key, _) = kg.live_key().await;

    assert!(
        tls_get(kg.addr, "localhost", &ca, None, &[b"http/1.1"], &key)
            .await
            .is_err(),
        "no client certificate"
    );
    let stranger = Ca::new();
    let (sc, sk, _) = stranger.issue(&["client"], true);
    assert!(
        tls_get(
            kg.addr,
            "localhost",
            &ca,
            Some((&sc, &sk)),
            &[b"http/1.1"],
            &key
        )
        .await
        .is_err(),
        "a certificate from another CA"
    );
    let (cc, ck, _) = ca.issue(&["client"], true);
    let seen = tls_get(
        kg.addr,
        "localhost",
        &ca,
        Some((&cc, &ck)),
        &[b"http/1.1"],
        &key,
    )
    .await
    .unwrap();
    assert_eq!(seen.status, 200);
}

#[tokio::test]
async fn check_config_reports_unloadable_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.crt", "garbage");
    let text = format!(
        "[upstream]\nurl = \"https://127.0.0.1:1\"\nca_file = {bad:?}\n[listen.tls]\ncert_file = {bad:?}\nkey_file = \"/nonexistent.key\"\n"
    );
    let err = keygate::config::Config::from_toml(&text, Vec::new(), |_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen.tls"), "{err}");
    assert!(err.contains("upstream:"), "{err}");
}

/// keygate → an HTTPS upstream that trusts only its own CA and requires a client certificate
/// from it, over HTTP/1.1 and HTTP/2; without the client certificate the upstream refuses (502).
#[tokio::test]
async fn upstream_over_tls() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (c, k, _) = ca.issue(&["localhost"], false);
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_client_cert_verifier(
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(ca.roots()),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap(),
    )
    .with_single_cert(
        CertificateDer::pem_slice_iter(c.as_bytes())
            .map(Result::unwrap)
            .collect(),
        PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
    )
    .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let body = format!(
                            "{{\"tls_upstream\":true,\"version\":\"{:?}\"}}",
                            req.version()
                        );
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(body)),
                        ))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let ca_file = write(dir.path(), "ca.crt", &ca.pem);
    let (cc, ck, _) = ca.issue(&["keygate"], true);
    let client = format!(
        "client_cert_file = {:?}\nclient_key_file = {:?}\n",
        write(dir.path(), "client.crt", &cc),
        write(dir.path(), "client.key", &ck)
    );
    for (http2, version) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        let kg = Keygate::start_with_upstream(
            &format!("https://localhost:{port}"),
            &format!("ca_file = {ca_file:?}\nhttp2 = {http2}\n{client}"),
            "",
        )
        .await;
        let (key, _) = kg.live_key().await;
        let r = common::get(&kg.url("/v1/x"), &[("authorization", &bearer(&key))]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["tls_upstream"], true);
        assert_eq!(r.json()["version"], version);
    }
    let kg = Keygate::start_with_upstream(
        &format!("https://localhost:{port}"),
        &format!("ca_file = {ca_file:?}\n"),
        "",
    )
    .await;
    let (key, _) = kg.live_key().await;
    let r = common::get(&kg.url("/v1/x"), &[("authorization", &bearer(&key))]).await;
    assert_eq!(r.code(), "upstream_unavailable", "no client certificate");
}
