//! Listeners: the accept loop (PROXY protocol header and TLS handshake under the header
//! timeout, then HTTP/1.1 or HTTP/2 through hyper-util's auto builder), shared by the proxy and
//! ops listeners, and graceful shutdown of the connections it opened.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::proxy_protocol;
use crate::telemetry::Metrics;

/// The HTTP/1.1 + HTTP/2 connection builder both listeners use.
pub fn http_builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        // Request heads over 64 KiB (or over 100 headers) are answered 431.
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    builder
}

/// TLS on a listener: the acceptor, the handshake time limit, where failures are counted.
pub type TlsAccept = (Arc<crate::tls::Listener>, Duration, Arc<Metrics>);

/// Accepts connections until `stop`, then waits for open ones to finish (the caller bounds the
/// wait). Accept errors such as EMFILE are logged and retried, never fatal.
///
/// With `proxy_protocol` set, each connection must first send a PROXY protocol header within
/// that time; its address then stands in for the socket peer.
#[allow(clippy::too_many_arguments)]
pub async fn accept_loop<F, S, B>(
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    proxy_protocol: Option<Duration>,
    tls: Option<TlsAccept>,
    make_service: F,
) where
    F: Fn(SocketAddr, bool) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let make_service = Arc::new(make_service);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Typically EMFILE: back off briefly instead of spinning or exiting.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (builder, watcher, make_service) = (builder.clone(), graceful.watcher(), Arc::clone(&make_service));
                let tls = tls.clone();
                tokio::spawn(async move {
                    let mut stream = stream;
                    let peer = match proxy_protocol {
                        None => peer,
                        Some(limit) => match tokio::time::timeout(limit, proxy_protocol::read_header(&mut stream)).await {
                            Ok(Ok(addr)) => addr.unwrap_or(peer),
                            Ok(Err(e)) => {
                                tracing::info!(error = %e, peer = %peer.ip(), "connection refused");
                                return;
                            }
                            Err(_) => {
                                tracing::info!(peer = %peer.ip(), "no PROXY protocol header in time; connection closed");
                                return;
                            }
                        },
                    };
                    let result = match tls {
                        None => {
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), make_service(peer, false));
                            watcher.watch(conn).await
                        }
                        Some((tls, limit, metrics)) => {
                            let stream = match tokio::time::timeout(limit, tls.acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    metrics.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(error = %e, client.ip = %peer.ip(), "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    metrics.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(client.ip = %peer.ip(), "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), make_service(peer, true));
                            watcher.watch(conn).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, client.ip = %peer.ip(), "connection closed with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
