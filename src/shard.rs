//! Sharding: which sites this replica probes. Each site goes to one of `count` replicas by
//! rendezvous (highest-random-weight) hashing of its key, so changing the count moves only
//! the sites that must move (about 1/(count+1) of them when one replica is added).

use std::fmt;

/// Why a shard could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// `--shard.count` of 0.
    #[error("shard count must be at least 1")]
    ZeroCount,
    /// An index outside `0..count`.
    #[error("shard index {index} is not below the shard count {count}")]
    IndexOutOfRange {
        /// The index given or derived.
        index: u32,
        /// The count.
        count: u32,
    },
    /// Several shards but no index, and none could be read off the pod or host name.
    #[error("--shard.count is {count} but no --shard.index was given, and the host name {name:?} does not end in -<index> (as StatefulSet pods do)")]
    NoIndex {
        /// The count.
        count: u32,
        /// The name the index was looked for in.
        name: String,
    },
}

/// This replica's place among the replicas that share the sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Self::ALL
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The only replica: owns every site.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`.
    pub fn new(index: u32, count: u32) -> Result<Self, ShardError> {
        if count == 0 {
            return Err(ShardError::ZeroCount);
        }
        if index >= count {
            return Err(ShardError::IndexOutOfRange { index, count });
        }
        Ok(Self { index, count })
    }

    /// From the flags: an explicit index, or one read off `name` (a StatefulSet pod is named
    /// `<set>-<ordinal>`), needed only when there is more than one shard.
    pub fn from_flags(index: Option<u32>, count: u32, name: &str) -> Result<Self, ShardError> {
        match index {
            Some(i) => Self::new(i, count),
            None if count <= 1 => Self::new(0, count),
            None => match index_from_name(name) {
                Some(i) => Self::new(i, count),
                None => Err(ShardError::NoIndex {
                    count,
                    name: name.to_string(),
                }),
            },
        }
    }

    /// This shard's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The number of shards.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether this shard probes the site with `key`.
    pub fn owns(&self, key: &str) -> bool {
        self.count <= 1 || owner(key, self.count) == self.index
    }
}

/// The shard that owns `key` among `count`: the one whose weight for the key is highest.
pub fn owner(key: &str, count: u32) -> u32 {
    let h = fnv1a(key.as_bytes());
    (0..count.max(1))
        .max_by_key(|&i| mix(h ^ mix(u64::from(i) + 1)))
        .unwrap_or(0)
}

/// The ordinal at the end of a StatefulSet pod name: `sitewatch-3` -> 3.
pub fn index_from_name(name: &str) -> Option<u32> {
    let (_, ordinal) = name.trim().rsplit_once('-')?;
    ordinal.parse().ok()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finalizer: every input bit affects every output bit, so weights of one key
/// for different shards are independent enough for an even spread.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("tenant-{}/site-{i}", i % 7))
            .collect()
    }

    #[test]
    fn every_site_has_exactly_one_owner() {
        let keys = keys(5_000);
        for count in 1..=16 {
            let shards: Vec<Shard> = (0..count).map(|i| Shard::new(i, count).unwrap()).collect();
            for k in &keys {
                let owners = shards.iter().filter(|s| s.owns(k)).count();
                assert_eq!(owners, 1, "{k} with {count} shards");
            }
        }
    }

    #[test]
    fn sites_spread_evenly() {
        let keys = keys(20_000);
        for count in [2u32, 3, 5, 8, 13] {
            let mut per = vec![0usize; count as usize];
            for k in &keys {
                per[owner(k, count) as usize] += 1;
            }
            let fair = keys.len() as f64 / f64::from(count);
            for (i, n) in per.iter().enumerate() {
                let off = (*n as f64 - fair).abs() / fair;
                assert!(
                    off < 0.08,
                    "shard {i} of {count} has {n}, fair is {fair:.0}"
                );
            }
        }
    }

    #[test]
    fn adding_a_shard_moves_about_one_in_n_plus_one_and_only_to_the_new_shard() {
        let keys = keys(20_000);
        for count in 1u32..=12 {
            let mut moved = 0;
            for k in &keys {
                let (before, after) = (owner(k, count), owner(k, count + 1));
                if before != after {
                    assert_eq!(after, count, "{k} moved between old shards");
                    moved += 1;
                }
            }
            let expected = keys.len() as f64 / f64::from(count + 1);
            let off = (moved as f64 - expected).abs() / expected;
            assert!(
                off < 0.1,
                "{count}->{}: moved {moved}, expected about {expected:.0}",
                count + 1
            );
        }
    }

    #[test]
    fn index_comes_from_the_flag_or_the_pod_name() {
        assert_eq!(index_from_name("sitewatch-3"), Some(3));
        assert_eq!(index_from_name("my-sitewatch-12"), Some(12));
        assert_eq!(index_from_name("sitewatch"), None);
        assert_eq!(index_from_name("sitewatch-abc"), None);
        assert_eq!(
            Shard::from_flags(None, 4, "sitewatch-2").unwrap(),
            Shard::new(2, 4).unwrap()
        );
        assert_eq!(
            Shard::from_flags(Some(1), 4, "sitewatch-2").unwrap(),
            Shard::new(1, 4).unwrap()
        );
        assert_eq!(Shard::from_flags(None, 1, "laptop").unwrap(), Shard::ALL);
        assert_eq!(
            Shard::from_flags(None, 4, "sitewatch-7"),
            Err(ShardError::IndexOutOfRange { index: 7, count: 4 })
        );
        assert!(matches!(
            Shard::from_flags(None, 3, "laptop"),
            Err(ShardError::NoIndex { .. })
        ));
        assert_eq!(Shard::new(0, 0), Err(ShardError::ZeroCount));
    }

    #[test]
    fn owners_are_stable_across_versions() {
        // Pinned: changing the hash would move every site of every sharded deployment at
        // upgrade time. Change these only on purpose, and say so in the changelog.
        let got: Vec<u32> = ["shop-home", "acme/api", "a", ""]
            .iter()
            .map(|k| owner(k, 5))
            .collect();
        assert_eq!(got, PINNED);
    }

    const PINNED: [u32; 4] = [3, 4, 2, 3];
}
