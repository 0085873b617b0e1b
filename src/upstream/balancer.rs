//! Target selection: smooth weighted round robin, weighted random, least connections and
//! consistent hashing (ketama, nginx-compatible placement). A [`Pool`] is immutable; DNS
//! changes build a new one.

use super::target::TargetState;
use crate::upstream::config::Balance;
use pingora_ketama::{Bucket, Continuum};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Longest precomputed round-robin sequence; weights are scaled down to fit.
const MAX_SEQUENCE: u64 = 1 << 16;

pub struct Pool {
    pub targets: Vec<Arc<TargetState>>,
    /// Smooth weighted round-robin order (indices into `targets`).
    sequence: Vec<u32>,
    cursor: AtomicUsize,
    /// Cumulative weights for weighted random.
    cumulative: Vec<u64>,
    ring: Option<Continuum>,
    /// Some target is a backup one.
    pub has_backup: bool,
}

impl Pool {
    pub fn new(targets: Vec<Arc<TargetState>>, balance: Balance) -> Pool {
        let weights: Vec<u64> = targets.iter().map(|t| u64::from(t.weight.max(1))).collect();
        let sequence = smooth_sequence(&weights);
        let mut acc = 0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        let ring = (balance == Balance::ConsistentHash).then(|| {
            let buckets: Vec<Bucket> = targets
                .iter()
                .map(|t| Bucket::new(t.addr, t.weight.max(1)))
                .collect();
            Continuum::new(&buckets)
        });
        // Start each pool at a random place so that many gateways do not move in lockstep.
        let start = if sequence.is_empty() {
            0
        } else {
            rand::random_range(0..sequence.len())
        };
        Pool {
            has_backup: targets.iter().any(|t| t.backup),
            targets,
            sequence,
            cursor: AtomicUsize::new(start),
            cumulative,
            ring,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Next target in smooth weighted order that `ok` accepts.
    pub fn round_robin(&self, ok: &dyn Fn(&TargetState) -> bool) -> Option<&Arc<TargetState>> {
        let n = self.sequence.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Relaxed);
        (0..n)
            .map(|i| &self.targets[self.sequence[(start + i) % n] as usize])
            .find(|t| ok(t))
    }

    /// A target drawn with probability proportional to its weight among those `ok` accepts.
    pub fn random(&self, ok: &dyn Fn(&TargetState) -> bool) -> Option<&Arc<TargetState>> {
        let total = *self.cumulative.last()?;
        let r = rand::random_range(0..total);
        let first = self.cumulative.partition_point(|&c| c <= r);
        let n = self.targets.len();
        (0..n)
            .map(|i| &self.targets[(first + i) % n])
            .find(|t| ok(t))
    }

    /// The accepted target with the fewest in-flight requests per unit of weight; ties are
    /// broken from a random starting point so that idle targets share the load.
    pub fn least_conn(&self, ok: &dyn Fn(&TargetState) -> bool) -> Option<&Arc<TargetState>> {
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        let start = rand::random_range(0..n);
        let mut best: Option<(&Arc<TargetState>, u64, u64)> = None;
        for i in 0..n {
            let t = &self.targets[(start + i) % n];
            if !ok(t) {
                continue;
            }
            let (load, w) = (t.inflight() as u64 + 1, u64::from(t.weight.max(1)));
            // load/w < best_load/best_w  <=>  load*best_w < best_load*w
            if best.is_none_or(|(_, bl, bw)| load * bw < bl * w) {
                best = Some((t, load, w));
            }
        }
        best.map(|(t, _, _)| t)
    }

    /// The target owning `key` on the ketama ring, or the next accepted one clockwise.
    pub fn hashed(
        &self,
        key: &[u8],
        ok: &dyn Fn(&TargetState) -> bool,
    ) -> Option<&Arc<TargetState>> {
        let ring = self.ring.as_ref()?;
        for addr in ring.node_iter(key).take(self.targets.len() * 160 + 1) {
            if let Some(t) = self.by_addr(addr) {
                if ok(t) {
                    return Some(t);
                }
            }
        }
        None
    }

    fn by_addr(&self, addr: &SocketAddr) -> Option<&Arc<TargetState>> {
        self.targets.iter().find(|t| t.addr == *addr)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round robin, unrolled once: {a:5, b:1, c:1} gives a a b a c a a,
/// never a burst of one target's whole weight.
fn smooth_sequence(weights: &[u64]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|x| x / g).collect();
    let mut total: u64 = w.iter().sum();
    if total > MAX_SEQUENCE {
        let scale = total.div_ceil(MAX_SEQUENCE);
        w.iter_mut().for_each(|x| *x = (*x / scale).max(1));
        total = w.iter().sum();
    }
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        seq.push(best as u32);
    }
    seq
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32], b: Balance) -> Pool {
        let targets = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(TargetState::new(
                    format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    None,
                    *w,
                ))
            })
            .collect();
        Pool::new(targets, b)
    }

    #[test]
    fn smooth_sequence_interleaves() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[2, 2]), vec![0, 1]);
        assert!(smooth_sequence(&[100_000, 1]).len() <= 65_536 + 1);
    }

    #[test]
    fn round_robin_follows_weights_and_skips() {
        let p = pool(&[1, 2], Balance::RoundRobin);
        let mut counts = [0; 2];
        for _ in 0..300 {
            let t = p.round_robin(&|_| true).unwrap();
            counts[(t.addr.port() - 1000) as usize] += 1;
        }
        assert_eq!(counts, [100, 200]);
        let t = p.round_robin(&|t| t.addr.port() == 1000).unwrap();
        assert_eq!(t.addr.port(), 1000);
        assert!(p.round_robin(&|_| false).is_none());
    }

    #[test]
    fn random_is_weighted() {
        let p = pool(&[1, 3], Balance::Random);
        let mut c = [0; 2];
        for _ in 0..4000 {
            c[(p.random(&|_| true).unwrap().addr.port() - 1000) as usize] += 1;
        }
        assert!((800..1200).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn least_conn_prefers_idle() {
        let p = pool(&[1, 1, 1], Balance::LeastConn);
        let _g1 = p.targets[0].begin();
        let _g2 = p.targets[1].begin();
        assert_eq!(p.least_conn(&|_| true).unwrap().addr.port(), 1002);
    }

    #[test]
    fn hashing_is_stable_and_moves_few_keys() {
        let p = pool(&[1, 1, 1, 1], Balance::ConsistentHash);
        let owners = |ok: &dyn Fn(&TargetState) -> bool| -> Vec<u16> {
            (0..1000)
                .map(|k| {
                    p.hashed(format!("k{k}").as_bytes(), ok)
                        .unwrap()
                        .addr
                        .port()
                })
                .collect()
        };
        let before = owners(&|_| true);
        assert_eq!(before, owners(&|_| true));
        let after = owners(&|t| t.addr.port() != 1003);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let owned_by_removed = before.iter().filter(|&&p| p == 1003).count();
        assert_eq!(
            moved, owned_by_removed,
            "only the removed target's keys move"
        );
    }
}
