//! TLS on the listener (rustls with the ring provider, TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`) and towards an `https://` upstream.
//!
//! Listener certificates are chosen by SNI from [`TlsConfig::sni`], falling back to the default
//! pair. A task polls the files and swaps in new certificates when they change on disk
//! (cert-manager or a Kubernetes Secret update), without touching open connections; a new file
//! that does not load is logged and the previous certificates are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

/// A certificate chain and its key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A certificate served for the listed server names (`api.example.com`, `*.example.com`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniCert {
    pub names: Vec<String>,
    pub files: CertFiles,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// Served when the client sends no SNI or an unknown name.
    pub default: CertFiles,
    pub sni: Vec<SniCert>,
    /// Require client certificates signed by these CAs (mTLS).
    pub client_ca_file: Option<PathBuf>,
    pub reload_interval: Duration,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PEM certificates from `path`.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable private key ({e})", path.display()))
}

fn load_pair(files: &CertFiles) -> Result<Arc<CertifiedKey>, String> {
    let certs = read_certs(&files.cert_file)?;
    let key = read_key(&files.key_file)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", files.key_file.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "{} and {}: {e}",
            files.cert_file.display(),
            files.key_file.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// The certificates in force.
struct Certs {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` → keyed by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Certs {
    fn load(cfg: &TlsConfig) -> Result<Certs, String> {
        let mut certs = Certs {
            default: load_pair(&cfg.default)?,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for sni in &cfg.sni {
            let ck = load_pair(&sni.files)?;
            for name in &sni.names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) => certs.wildcard.insert(parent.to_owned(), Arc::clone(&ck)),
                    None => certs.exact.insert(name, Arc::clone(&ck)),
                };
            }
        }
        Ok(certs)
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        if let Some(ck) = self.exact.get(&name) {
            return Arc::clone(ck);
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(ck) = self.wildcard.get(parent)
        {
            return Arc::clone(ck);
        }
        Arc::clone(&self.default)
    }
}

/// Picks the certificate by SNI from whatever was loaded last.
pub struct Resolver {
    current: RwLock<Arc<Certs>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()));
        Some(certs.pick(hello.server_name()))
    }
}

/// The listener side: a rustls acceptor whose certificates follow the files.
pub struct Listener {
    pub acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<Resolver>,
    config: TlsConfig,
}

impl Listener {
    pub fn new(cfg: &TlsConfig) -> Result<Listener, String> {
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(Certs::load(cfg)?)),
        });
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let builder = match &cfg.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server =
            builder.with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Listener {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            resolver,
            config: cfg.clone(),
        })
    }

    /// Reloads the certificates whenever one of their files changes.
    pub fn spawn_reloader(&self) -> tokio::task::JoinHandle<()> {
        let resolver = Arc::clone(&self.resolver);
        let cfg = self.config.clone();
        tokio::spawn(async move {
            let mut files: Vec<PathBuf> =
                vec![cfg.default.cert_file.clone(), cfg.default.key_file.clone()];
            for s in &cfg.sni {
                files.push(s.files.cert_file.clone());
                files.push(s.files.key_file.clone());
            }
            let stamp = |files: &[PathBuf]| -> Vec<Option<(SystemTime, u64)>> {
                files
                    .iter()
                    .map(|f| {
                        std::fs::metadata(f)
                            .ok()
                            .and_then(|m| Some((m.modified().ok()?, m.len())))
                    })
                    .collect()
            };
            let mut last = stamp(&files);
            let mut tick = tokio::time::interval(cfg.reload_interval);
            loop {
                tick.tick().await;
                let now = stamp(&files);
                if now == last {
                    continue;
                }
                last = now;
                let loaded = {
                    let cfg = cfg.clone();
                    tokio::task::spawn_blocking(move || Certs::load(&cfg)).await
                };
                match loaded {
                    Ok(Ok(certs)) => {
                        *resolver.current.write().unwrap_or_else(|e| e.into_inner()) =
                            Arc::new(certs);
                        tracing::info!("TLS certificates reloaded");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "new TLS certificate files do not load; keeping the previous ones")
                    }
                    Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
                }
            }
        })
    }
}

/// TLS settings towards an `https://` upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Trust these CAs instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Present this client certificate (mTLS to the upstream).
    pub client: Option<CertFiles>,
}

/// The rustls client config for the upstream (the connector sets ALPN).
pub fn upstream_client_config(cfg: &UpstreamTls) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(ca) => {
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set upstream.ca_file".into());
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match &cfg.client {
        None => builder.with_no_client_auth(),
        Some(files) => builder
            .with_client_auth_cert(read_certs(&files.cert_file)?, read_key(&files.key_file)?)
            .map_err(|e| format!("{}: {e}", files.cert_file.display()))?,
    };
    Ok(config)
}
