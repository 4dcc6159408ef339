//! Redis Cluster's key space: 16384 hash slots, a key's slot (CRC16/XMODEM of the key, or of its hash
//! tag, modulo 16384), and the map from slot to the shard that owns it in one snapshot.

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// A slot no shard owns in the snapshot (not yet assigned, or its owner not found).
const UNOWNED: u16 = u16::MAX;

/// The slot of `key`, as Redis Cluster computes it: if the key holds a `{...}` with at least one byte
/// between the first `{` and the next `}`, only those bytes are hashed (a hash tag: keys that share one
/// share a slot).
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16(hashed) % SLOTS as u16
}

/// The bytes between the first `{` and the first `}` after it, if there are any.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = key.get(open + 1..)?;
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// CRC16 with the XMODEM parameters (polynomial 0x1021, initial 0), the one Redis Cluster uses.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Which shard (by position in the snapshot's shard list) owns each slot, and which slots are being moved
/// between shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap(Box<[u16]>, Vec<u16>);

impl Default for SlotMap {
    fn default() -> SlotMap {
        SlotMap(vec![UNOWNED; SLOTS].into_boxed_slice(), Vec::new())
    }
}

impl SlotMap {
    /// Notes that `slot` is being moved to or from another shard (`MIGRATING` on its owner, `IMPORTING`
    /// on the target).
    pub fn set_moving(&mut self, slot: u16) {
        if !self.1.contains(&slot) {
            self.1.push(slot);
        }
    }

    /// True if `slot` is being moved: its keys may be on either side, and only the primaries know which
    /// (a replica of the owner answers nil for a key already moved, where its primary redirects).
    pub fn is_moving(&self, slot: u16) -> bool {
        self.1.contains(&slot)
    }

    /// Gives the slots `from..=to` (clamped to the slot space) to the shard at position `shard`.
    pub fn assign(&mut self, from: u16, to: u16, shard: usize) {
        let Ok(shard) = u16::try_from(shard) else {
            return;
        };
        let end = usize::from(to).min(SLOTS - 1);
        for s in usize::from(from)..=end {
            if let Some(slot) = self.0.get_mut(s) {
                *slot = shard;
            }
        }
    }

    /// The position of the shard that owns `slot`, if one does.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.0.get(usize::from(slot)) {
            Some(&UNOWNED) | None => None,
            Some(&s) => Some(usize::from(s)),
        }
    }

    /// Slots no shard owns.
    pub fn unowned(&self) -> usize {
        self.0.iter().filter(|&&s| s == UNOWNED).count()
    }

    /// The slot ranges, `(from, to)` inclusive, that the shard at `shard` owns, in order.
    pub fn ranges(&self, shard: usize) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for (s, &owner) in self.0.iter().enumerate() {
            if usize::from(owner) != shard || owner == UNOWNED {
                continue;
            }
            let s = s as u16;
            match out.last_mut() {
                Some((_, to)) if *to + 1 == s => *to = s,
                _ => out.push((s, s)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_ones_redis_cluster_computes() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"key"), 12539);
        assert_eq!(key_slot(b""), 0);
        // The CRC16/XMODEM check value of "123456789" is 0x31c3, below 16384.
        assert_eq!(key_slot(b"123456789"), 0x31c3);
    }

    #[test]
    fn a_hash_tag_hashes_only_what_is_between_the_first_braces() {
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        // An empty tag is no tag: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(key_slot(b"{}"), crc16(b"{}") % 16384);
        // No closing brace: the whole key.
        assert_eq!(key_slot(b"foo{bar"), crc16(b"foo{bar") % 16384);
        assert_eq!(key_slot(b"{{bar}}"), key_slot(b"{bar"));
    }

    #[test]
    fn a_slot_map_gives_each_slot_its_owner_and_reports_the_gaps() {
        let mut m = SlotMap::default();
        assert_eq!(m.unowned(), SLOTS);
        m.assign(0, 5460, 0);
        m.assign(5461, 10922, 1);
        m.assign(10923, 16383, 2);
        assert_eq!(m.unowned(), 0);
        assert_eq!(m.owner(0), Some(0));
        assert_eq!(m.owner(5461), Some(1));
        assert_eq!(m.owner(16383), Some(2));
        assert_eq!(m.owner(16384), None);
        m.assign(100, 100, 2);
        assert_eq!(m.ranges(0), [(0, 99), (101, 5460)]);
        assert_eq!(m.ranges(2), [(100, 100), (10923, 16383)]);
    }
}
