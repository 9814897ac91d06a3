//! `--shard I/N`: a deterministic split of a batch's jobs across N machines.

use crate::error::{Error, Result};

/// One share of a batch: jobs whose stable hash modulo `count` equals `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based share index (`SLURM_ARRAY_TASK_ID`, `JOB_COMPLETION_INDEX`).
    pub index: u64,
    /// Number of shares.
    pub count: u64,
}

impl Shard {
    /// The whole batch (one share).
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parse `I/N` with 0 ≤ I < N.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || {
            Error::msg(format!(
                "bad --shard {s:?}: expected I/N with 0 <= I < N, e.g. 0/4"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u64 = i.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether this share runs the job with this id.
    pub fn contains(&self, job_id: &str) -> bool {
        stable_hash(job_id) % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// FNV-1a 64-bit: stable across platforms, Rust versions and runs (unlike `DefaultHasher`).
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_reject() {
        assert_eq!(Shard::parse("1/4").unwrap(), Shard { index: 1, count: 4 });
        for bad in ["4/4", "1", "a/b", "0/0", "-1/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(stable_hash(""), 0xcbf29ce484222325);
        assert_eq!(stable_hash("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(stable_hash("foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn shares_partition_the_jobs() {
        let ids: Vec<String> = (0..200)
            .map(|i| format!("model{}__Q{}", i % 7, i))
            .collect();
        let n = 3;
        let mut seen = 0;
        for i in 0..n {
            let s = Shard { index: i, count: n };
            let mine = ids.iter().filter(|id| s.contains(id)).count();
            assert!(mine > 30, "share {i} got {mine} of 200");
            seen += mine;
        }
        assert_eq!(seen, ids.len());
    }
}
