//! Per-client connection accounting: how many sessions each client address holds, so one
//! address cannot take every slot of `max_connections` (Postfix anvil's connection count).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct ClientConnections {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One session's claim on its client's count; released when dropped.
pub struct ClientSlot {
    ip: IpAddr,
    owner: Arc<ClientConnections>,
}

impl ClientConnections {
    /// Takes a slot for `ip` unless it already holds `max` (0 = no limit).
    pub fn try_enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            ip,
            owner: Arc::clone(self),
        })
    }

    pub fn held_by(&self, ip: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_released() {
        let c = Arc::new(ClientConnections::default());
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let first = c.try_enter(a, 2).expect("room");
        let _second = c.try_enter(a, 2).expect("room");
        assert!(c.try_enter(a, 2).is_none(), "third refused");
        assert!(
            c.try_enter(b, 2).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert!(
            c.try_enter(a, 2).is_some(),
            "a released slot can be taken again"
        );
        assert!(c.try_enter(a, 0).is_some(), "0 = no limit");
    }
}
