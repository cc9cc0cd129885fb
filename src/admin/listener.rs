//! The admin listener: TCP (loopback by default) or a unix socket created 0600, HTTP/1.1
//! only, with a header timeout; never the proxied port.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use super::Admin;
use crate::config::AdminAddress;

/// A bound admin listener.
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl AdminListener {
    /// Binds `address`. A stale unix socket file from an earlier run is replaced.
    pub async fn bind(address: &AdminAddress) -> std::io::Result<AdminListener> {
        match address {
            AdminAddress::Tcp(a) => {
                if !a.ip().is_loopback() {
                    tracing::warn!(address = %a, "the admin API listens beyond loopback: keep it off public networks");
                }
                Ok(AdminListener::Tcp(TcpListener::bind(a).await?))
            }
            AdminAddress::Unix(p) => {
                use std::os::unix::fs::FileTypeExt;
                // Replace a stale socket from an earlier run, never any other kind of file.
                if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(p)?;
                }
                let l = UnixListener::bind(p)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
                Ok(AdminListener::Unix(l, p.clone()))
            }
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            AdminListener::Tcp(l) => l.local_addr().ok(),
            AdminListener::Unix(..) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            AdminListener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            AdminListener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

/// Serves the admin API until `stop` resolves.
pub async fn serve(listener: AdminListener, admin: Arc<Admin>, stop: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only: the admin API needs nothing more, and this keeps the header timeout.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let mut stop = std::pin::pin!(stop);
    loop {
        let conn: Box<dyn IoStream> = tokio::select! {
            _ = &mut stop => break,
            accepted = accept(&listener) => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = Arc::clone(&admin);
        let service = service_fn(move |req| Arc::clone(&admin).handle(req));
        let fut = graceful.watch(builder.serve_connection(TokioIo::new(conn), service));
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(error = %e, "admin connection closed with an error");
            }
        });
    }
    if let AdminListener::Unix(_, p) = &listener {
        let _ = std::fs::remove_file(p);
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

trait IoStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> IoStream for T {}

async fn accept(listener: &AdminListener) -> std::io::Result<Box<dyn IoStream>> {
    Ok(match listener {
        AdminListener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            Box::new(s)
        }
        AdminListener::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            Box::new(s)
        }
    })
}
