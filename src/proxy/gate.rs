//! Connection admission: at most `max_connections` open in all and `max_connections_per_ip`
//! from one client address (peers in `trusted_proxies` are exempt: they carry many clients). A
//! connection over a cap is closed at once and counted; a [`Ticket`] holds the place of an
//! admitted one until it closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::net::IpSet;
pub use crate::telemetry::ConnectionCounters as GateCounters;

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Global,
    PerIp,
}

pub struct Gate {
    max_total: usize,
    max_per_ip: usize,
    exempt: IpSet,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize, foldhash::fast::RandomState>>,
    counters: Arc<GateCounters>,
}

impl Gate {
    pub fn new(
        max_total: usize,
        max_per_ip: usize,
        exempt: IpSet,
        counters: Arc<GateCounters>,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            max_total,
            max_per_ip,
            exempt,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::default()),
            counters,
        })
    }

    /// A place for a connection, counted against the global cap; [`Ticket::claim`] then
    /// counts it against its client's.
    pub fn enter(self: &Arc<Self>) -> Result<Ticket, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.counters.refused_global.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Global);
        }
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            gate: Arc::clone(self),
            ip: None,
        })
    }

    pub fn counters(&self) -> &GateCounters {
        &self.counters
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// An admitted connection's place; given back when dropped.
pub struct Ticket {
    gate: Arc<Gate>,
    ip: Option<IpAddr>,
}

impl Ticket {
    /// Counts the connection against `ip` (the socket peer, or the PROXY protocol's client);
    /// refused when that address has its cap already. Once per ticket.
    pub fn claim(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        if self.ip.is_some() || self.gate.exempt.contains(ip) {
            return Ok(());
        }
        let mut map = self.gate.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.gate.max_per_ip {
            if *n == 0 {
                map.remove(&ip);
            }
            self.gate
                .counters
                .refused_per_ip
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::PerIp);
        }
        *n += 1;
        self.ip = Some(ip);
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self.gate.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.gate.total.fetch_sub(1, Ordering::AcqRel);
        self.gate.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        let exempt = IpSet::new(&["10.0.0.0/8".parse().unwrap()]);
        let gate = Gate::new(5, 2, exempt, Arc::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let enter = |ip: IpAddr| {
            let mut t = gate.enter()?;
            t.claim(ip).map(|()| t)
        };
        let t1 = enter(a).unwrap();
        let _t2 = enter(a).unwrap();
        assert_eq!(enter(a).err(), Some(Refusal::PerIp));
        let _t3 = enter(b).unwrap();
        let _p = [enter(proxy).unwrap(), enter(proxy).unwrap()];
        assert_eq!(enter(b).err(), Some(Refusal::Global));
        drop(t1);
        let _t4 = enter(a).unwrap();
        assert_eq!(gate.counters().refused_per_ip.load(Ordering::Relaxed), 1);
        assert_eq!(gate.counters().refused_global.load(Ordering::Relaxed), 1);
        assert_eq!(gate.open(), 5);
    }
}
