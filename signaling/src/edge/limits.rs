//! Connection caps counted at accept, before a byte is read: node-wide and per TCP peer address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections`: the node is full (answered 503).
    Node,
    /// `--max-connections-per-ip`: this peer address holds too many (answered 429).
    PerIp,
}

/// Live TCP connections, node-wide and per peer IP.
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnLimits {
    /// Caps of `max_total` connections on the node and `max_per_ip` from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnLimits { max_total, max_per_ip, total: AtomicUsize::new(0), per_ip: Mutex::new(HashMap::new()) })
    }

    /// Takes a slot for a connection from `ip`, or says which cap is reached. `exempt_per_ip` is for trusted
    /// proxies: every client behind one shares its address, so only the node-wide cap applies to it.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, exempt_per_ip: bool) -> Result<ConnSlot, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Node);
        }
        let counted = if exempt_per_ip {
            None
        } else {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *n += 1;
            Some(ip)
        };
        Ok(ConnSlot { limits: self.clone(), ip: counted })
    }

    /// Connections open now.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// One connection's slot, given back when the connection (or the WebSocket it was upgraded to) is dropped.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: Option<IpAddr>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    // Keeps the map as small as the set of addresses connected now.
                    per_ip.remove(&ip);
                }
            }
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_refuse_and_slots_come_back() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = limits.acquire(a, false).unwrap();
        let _a2 = limits.acquire(a, false).unwrap();
        assert_eq!(limits.acquire(a, false).unwrap_err(), Refusal::PerIp);
        let _b1 = limits.acquire(b, false).unwrap();
        assert_eq!(limits.acquire(b, false).unwrap_err(), Refusal::Node);
        assert_eq!(limits.total(), 3);
        drop(a1);
        let _a3 = limits.acquire(a, false).unwrap();
        assert_eq!(limits.total(), 3);
    }

    #[test]
    fn a_trusted_proxy_is_only_held_to_the_node_cap() {
        let limits = ConnLimits::new(4, 1);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..4).map(|_| limits.acquire(proxy, true).unwrap()).collect();
        assert_eq!(limits.acquire(proxy, true).unwrap_err(), Refusal::Node);
        drop(slots);
        assert_eq!(limits.total(), 0);
        assert!(limits.per_ip.lock().unwrap().is_empty());
    }
}
