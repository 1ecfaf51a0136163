//! A fast, non-cryptographic hasher for the worker's own small maps on the
//! request path (endpoint address → pooled connections, in-flight counts,
//! EWMA; cluster name → round-robin position). The standard SipHash cost
//! ~1,100 instructions per proxied request there (six lookups; callgrind,
//! docs/benchmarks.md). Keys are addresses and names from the config or
//! discovery, never from clients, so hash flooding is not a concern; maps
//! keyed by client input keep SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a, 64 bit: a stable content hash without another dependency.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A `HashMap` with [`FxHasher`].
pub type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The multiply-rotate hash of rustc's `FxHasher` (word at a time).
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Spread the high bits down: hashbrown takes its bucket from the low
        // bits and its tag from the top seven.
        self.hash.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn addresses_and_names_spread_and_round_trip() {
        let mut m: FxHashMap<SocketAddr, usize> = FxHashMap::default();
        for port in 1..2000u16 {
            let a: SocketAddr = format!("10.0.{}.{}:{port}", port / 256, port % 256)
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)));
            m.insert(a, usize::from(port));
        }
        assert_eq!(m.len(), 1999);
        let a: SocketAddr = "10.0.3.232:1000".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(m.get(&a), Some(&1000));
        let mut n: FxHashMap<String, u8> = FxHashMap::default();
        n.insert("a".into(), 1);
        n.insert("ab".into(), 2);
        n.insert("a\0".into(), 3);
        assert_eq!((n["a"], n["ab"], n["a\0"]), (1, 2, 3));
    }
}
