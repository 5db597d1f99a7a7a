//! Upstream connections kept for reuse, across client connections: a new client connection to a
//! host the proxy already talks to costs no upstream handshake. HTTP/1.1 connections serve one
//! exchange at a time and wait idle here between them; an HTTP/2 connection is shared.

use super::{Connection, Sender, Target};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Idle HTTP/1.1 connections kept per target: enough for a busy client pool, few enough that
/// a burst does not leave hundreds of sockets open upstream.
const MAX_IDLE_PER_TARGET: usize = 64;
/// How long an idle connection is kept; servers commonly close idle keep-alive connections
/// after 60-75 s, so reusing older ones would mostly hit closed sockets.
const IDLE_TTL: Duration = Duration::from_secs(50);
/// Targets remembered at most, so a proxy that sees many hosts keeps bounded state.
const MAX_TARGETS: usize = 4096;

#[derive(Default)]
struct Entry {
    idle: Vec<(Instant, Connection)>,
    shared: Option<Connection>,
}

#[derive(Default)]
pub struct Pool {
    targets: Mutex<HashMap<Target, Entry>>,
}

impl Pool {
    /// A connection to `target` speaking HTTP/2 (`h2`) or HTTP/1.1 that can take a request
    /// now, if one is kept. The protocol is the caller's: a request goes upstream in the
    /// protocol its client spoke (gRPC needs HTTP/2; an HTTP/1.1 `Upgrade` needs HTTP/1.1).
    pub fn take(&self, target: &Target, h2: bool) -> Option<Connection> {
        let mut map = self.targets.lock().ok()?;
        let entry = map.get_mut(target)?;
        if h2 {
            let c = entry.shared.as_mut()?;
            if c.sender.is_closed() {
                entry.shared = None;
                return None;
            }
            return c.share();
        }
        let now = Instant::now();
        entry
            .idle
            .retain(|(since, c)| !c.sender.is_closed() && now.duration_since(*since) < IDLE_TTL);
        let ready = entry.idle.iter().rposition(|(_, c)| match &c.sender {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(..) => false,
        })?;
        Some(entry.idle.swap_remove(ready).1)
    }

    /// The protocol the server chose (`None` inside: no ALPN) for a kept connection to
    /// `target` that was opened with the same `offer`, so an intercepted client offering the
    /// same can be answered without an upstream handshake, and gets what the server would pick.
    pub fn alpn(&self, target: &Target, offer: &[Vec<u8>]) -> Option<Option<Vec<u8>>> {
        let map = self.targets.lock().ok()?;
        let entry = map.get(target)?;
        let usable = |c: &&Connection| !c.sender.is_closed() && c.offered == offer;
        if let Some(c) = entry.shared.as_ref().filter(usable) {
            return Some(c.alpn.clone());
        }
        entry
            .idle
            .iter()
            .map(|(_, c)| c)
            .find(usable)
            .map(|c| c.alpn.clone())
    }

    /// Keeps a connection after an exchange (HTTP/1.1), or when it is opened (HTTP/2).
    pub fn put(&self, target: Target, mut c: Connection) {
        if c.sender.is_closed() {
            return;
        }
        c.timings = None;
        let Ok(mut map) = self.targets.lock() else {
            return;
        };
        if map.len() >= MAX_TARGETS && !map.contains_key(&target) {
            // Forget the targets with nothing usable first; if all are busy, skip keeping this.
            map.retain(|_, e| {
                e.shared.as_ref().is_some_and(|c| !c.sender.is_closed())
                    || e.idle.iter().any(|(_, c)| !c.sender.is_closed())
            });
            if map.len() >= MAX_TARGETS {
                return;
            }
        }
        let entry = map.entry(target).or_default();
        match c.sender {
            Sender::H2(..) => entry.shared = Some(c),
            Sender::H1(_) => {
                if entry.idle.len() < MAX_IDLE_PER_TARGET {
                    entry.idle.push((Instant::now(), c));
                }
            }
        }
    }
}
