//! Real `redis-server` processes for tests: standalone, a 3-master cluster, master + sentinel.
//! Each runs on its own ephemeral port with no persistence and is killed on drop. A missing
//! binary is a loud failure, never a skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago (the kernel does not hand it out again right away).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port for a Cluster node: its bus listens 10,000 higher, so at most 55,535, with that
/// port free too.
fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// Sends one inline command and returns the raw reply, or None if the server is not answering.
pub fn raw_command(port: u16, cmd: &str) -> Option<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `cmd` after `AUTH <password>` and `SELECT <db>` on one connection: everything answered.
pub fn raw_command_in(port: u16, password: &str, db: u32, cmd: &str) -> String {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s.write_all(format!("AUTH {password}\r\nSELECT {db}\r\n{cmd}\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Until the server has nothing more to say.
    while let Ok(n @ 1..) = s.read(&mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_redis(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args([
        "--dir",
        dir.to_str().unwrap(),
        "--logfile",
        "",
        "--daemonize",
        "no",
    ])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start redis-server (is it installed? `apt-get install redis-server`): {e}")
    })
}

/// Waits for PING on `port`; false if the process exits first (e.g. the port was taken).
fn wait_ready(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if raw_command(port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// One standalone redis-server.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: &'static [&'static str],
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// With an append-only file fsynced on every write: a kill and restart keeps the data.
    pub fn start_persistent() -> Redis {
        Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    fn start_with(extra: &'static [&'static str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn_redis(port, dir.path(), extra);
            if wait_ready(port, &mut child) {
                return Redis {
                    port,
                    child: Some(child),
                    dir,
                    extra,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, like a crashed server or a lost node. Data is gone (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused process cannot die of SIGKILL until continued on some kernels' accounting;
            // continue it first so `wait` returns promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty unless started persistent).
    pub fn restart(&mut self) {
        self.kill();
        let mut child = spawn_redis(self.port, self.dir.path(), self.extra);
        assert!(
            wait_ready(self.port, &mut child),
            "redis-server did not restart on port {}",
            self.port
        );
        self.child = Some(child);
    }

    /// SIGSTOP / SIGCONT: a server that accepts nothing and answers nothing (a hang, or a
    /// network black hole), then recovers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("redis is not running")
            .id()
            .to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    pub fn cmd(&self, cmd: &str) -> String {
        raw_command(self.port, cmd).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three masters forming a Redis Cluster, all slots covered.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Three masters.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(0)
    }

    /// Three masters with `replicas` replicas each (`ports[..3]` are the masters).
    pub fn start_with(replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3 * (1 + replicas))
            .map(|_| free_cluster_port())
            .collect();
        let children: Vec<Child> = ports
            .iter()
            .map(|p| {
                let conf = format!("nodes-{p}.conf");
                spawn_redis(
                    *p,
                    dir.path(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        "2000",
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                )
            })
            .collect();
        let cluster = RedisCluster {
            ports,
            children,
            _dir: dir,
        };
        for p in &cluster.ports {
            wait_until("cluster node PING", Duration::from_secs(10), || {
                raw_command(*p, "PING").is_some_and(|r| r.starts_with("+PONG"))
            });
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every node must know every other node and agree the cluster is up before use.
        for p in &cluster.ports {
            wait_until("cluster state ok", Duration::from_secs(20), || {
                raw_command(*p, "CLUSTER INFO").is_some_and(|i| {
                    i.contains("cluster_state:ok")
                        && i.contains(&format!("cluster_known_nodes:{}", 3 * (1 + replicas)))
                })
            });
        }
        // Replicas in sync, so a failover can promote one with everything.
        for p in &cluster.ports {
            wait_until("replica sync", Duration::from_secs(30), || {
                raw_command(*p, "INFO replication").is_some_and(|i| {
                    i.contains("role:master") || i.contains("master_link_status:up")
                })
            });
        }
        cluster
    }

    /// The ports of the nodes that are masters now.
    pub fn masters(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|p| raw_command(*p, "ROLE").is_some_and(|r| r.contains("master")))
            .collect()
    }

    /// Keys a node holds (`DBSIZE`).
    pub fn dbsize(&self, port: u16) -> u64 {
        raw_command(port, "DBSIZE")
            .and_then(|r| r.trim().trim_start_matches(':').parse().ok())
            .unwrap_or(0)
    }

    /// Kills the node on `port` (SIGKILL: no goodbye to the cluster).
    pub fn kill(&mut self, port: u16) {
        if let Some(i) = self.ports.iter().position(|p| *p == port) {
            let _ = self.children[i].kill();
            let _ = self.children[i].wait();
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A master (optionally with one replica) and one sentinel watching it as `mymaster`.
pub struct RedisSentinel {
    pub master: Redis,
    pub replica: Option<Redis>,
    pub sentinel_port: u16,
    sentinel: Child,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        RedisSentinel::start_inner(false)
    }

    /// With a replica that has completed its first sync, so a failover can promote it.
    pub fn start_with_replica() -> RedisSentinel {
        RedisSentinel::start_inner(true)
    }

    fn start_inner(with_replica: bool) -> RedisSentinel {
        let master = Redis::start();
        // Without this the master waits 5 s before a replica's first (diskless) sync.
        assert!(
            master
                .cmd("CONFIG SET repl-diskless-sync-delay 0")
                .starts_with("+OK")
        );
        let replica = with_replica.then(|| {
            let r = Redis::start();
            assert!(
                r.cmd("CONFIG SET repl-diskless-sync-delay 0")
                    .starts_with("+OK")
            );
            assert!(
                r.cmd(&format!("REPLICAOF 127.0.0.1 {}", master.port))
                    .starts_with("+OK")
            );
            wait_until("replica sync", Duration::from_secs(20), || {
                r.cmd("INFO replication").contains("master_link_status:up")
            });
            r
        });
        let dir = tempfile::tempdir().unwrap();
        let sentinel_port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                dir.path().display(),
                master.port
            ),
        )
        .unwrap();
        let sentinel = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server --sentinel: {e}"));
        let s = RedisSentinel {
            master,
            replica,
            sentinel_port,
            sentinel,
            _dir: dir,
        };
        wait_until("sentinel knows the master", Duration::from_secs(10), || {
            raw_command(sentinel_port, "SENTINEL get-master-addr-by-name mymaster")
                .is_some_and(|r| r.contains(&s.master.port.to_string()))
        });
        s
    }

    /// Promotes the replica. Retries while the sentinel answers -NOGOODSLAVE (it has not heard
    /// from the replica itself yet), then waits until the sentinel reports the new master.
    pub fn failover(&self) -> u16 {
        let replica = self
            .replica
            .as_ref()
            .expect("started without a replica")
            .port;
        wait_until(
            "sentinel accepts the failover",
            Duration::from_secs(30),
            || {
                raw_command(self.sentinel_port, "SENTINEL FAILOVER mymaster")
                    .is_some_and(|r| r.starts_with("+OK"))
            },
        );
        // get-master-addr-by-name names the promoted replica as soon as the failover starts;
        // the failover is over when the master entry itself switched (+switch-master).
        wait_until("the failover to complete", Duration::from_secs(30), || {
            raw_command(self.sentinel_port, "SENTINEL MASTER mymaster").is_some_and(|r| {
                r.contains(&format!(
                    "\r\nport\r\n${}\r\n{replica}\r\n",
                    replica.to_string().len()
                )) && !r.contains("failover_in_progress")
            })
        });
        replica
    }

    pub fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel_port)
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
    }
}

/// Key names of a sharded store with the default shard count (tests look behind keygate).
pub mod names {
    use keygate::config::DEFAULT_SHARDS;
    use keygate::store::{AUDIT_STREAMS, shard_of_hash, shard_of_id};

    pub fn id(prefix: &str, id: &str) -> String {
        format!("{{{prefix}#{}}}:id:{id}", shard_of_id(id, DEFAULT_SHARDS))
    }

    pub fn rec(prefix: &str, hex: &str) -> String {
        let hash: keygate::key::LookupHash = hex.parse().unwrap();
        format!(
            "{{{prefix}#{}}}:rec:{hex}",
            shard_of_hash(&hash, DEFAULT_SHARDS)
        )
    }

    pub fn used(prefix: &str, id: &str) -> String {
        format!("{{{prefix}#{}}}:used", shard_of_id(id, DEFAULT_SHARDS))
    }

    pub fn audit_streams(prefix: &str) -> Vec<String> {
        (0..AUDIT_STREAMS)
            .map(|a| format!("{{{prefix}#{a}}}:audit"))
            .collect()
    }
}
