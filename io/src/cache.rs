//! The per-core block cache: verified 8 KiB blocks of layer files, bounded in
//! bytes, with S3-FIFO eviction so that one large scan cannot flush the hot
//! set.
//!
//! S3-FIFO keeps a small FIFO (a tenth of the capacity) where new blocks
//! start, a main FIFO for blocks that were used again, and a ghost FIFO of
//! recently evicted keys. A block leaving the small FIFO moves to main if it
//! was hit while there, else it is evicted and its key remembered as a
//! ghost; a missed key found among the ghosts goes straight to main. Main
//! evicts like CLOCK with a 2-bit frequency. Every operation is O(1)
//! amortised. The cache is `!Send`: one per core, no locks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// Hashes a [`BlockKey`] with one multiply per word (the keys are the
/// core's own file ids and block numbers, not chosen by a client, so the
/// flooding resistance of the default `SipHash` buys nothing here and it was
/// a tenth of a cached GetPage's time).
#[derive(Default)]
struct BlockKeyHasher(u64);

impl Hasher for BlockKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u32(&mut self, word: u32) {
        self.write_u64(u64::from(word));
    }

    fn write_u64(&mut self, word: u64) {
        // Fx-style mixing: the multiply carries every input bit up, and the
        // rotation brings high product bits down to the low bits hashbrown
        // picks the bucket with (its control bytes come from the top 7).
        self.0 = (self.0.rotate_left(5) ^ word)
            .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
            .rotate_left(26);
    }
}

type BlockMap<V> = HashMap<BlockKey, V, BuildHasherDefault<BlockKeyHasher>>;
type BlockSet = HashSet<BlockKey, BuildHasherDefault<BlockKeyHasher>>;

/// A layer file's identity within one core (assigned by its opener).
pub type FileId = u64;

/// A block's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// The file.
    pub file: FileId,
    /// The block number.
    pub block: u32,
}

/// Hits, misses and evictions since the cache was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found the block.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Blocks evicted to make room.
    pub evictions: u64,
    /// Blocks held now.
    pub blocks: usize,
}

#[derive(Debug)]
struct Slot {
    block: Rc<[u8]>,
    /// 0..=3: hits since insertion (small) or since the last pass (main).
    frequency: u8,
    in_main: bool,
}

/// The cache.
#[derive(Debug)]
pub struct BlockCache {
    slots: BlockMap<Slot>,
    small: VecDeque<BlockKey>,
    main: VecDeque<BlockKey>,
    ghost: VecDeque<BlockKey>,
    ghost_set: BlockSet,
    /// Invariant: `slots.len() <= capacity_blocks`.
    capacity_blocks: usize,
    small_target: usize,
    stats: CacheStats,
}

/// The size of every cached block.
pub const CACHE_BLOCK_SIZE: usize = 8192;

impl BlockCache {
    /// A cache holding at most `capacity_bytes` of blocks (at least one block).
    pub fn new(capacity_bytes: usize) -> BlockCache {
        let capacity_blocks = (capacity_bytes / CACHE_BLOCK_SIZE).max(1);
        BlockCache {
            slots: BlockMap::with_capacity_and_hasher(
                capacity_blocks,
                BuildHasherDefault::default(),
            ),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: BlockSet::default(),
            capacity_blocks,
            small_target: (capacity_blocks / 10).max(1),
            stats: CacheStats::default(),
        }
    }

    /// The block, if cached (counts a hit or a miss).
    pub fn get(&mut self, key: BlockKey) -> Option<Rc<[u8]>> {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.frequency = (slot.frequency + 1).min(3);
            self.stats.hits += 1;
            Some(slot.block.clone())
        } else {
            self.stats.misses += 1;
            None
        }
    }

    /// Adds a block that was just read and verified.
    pub fn insert(&mut self, key: BlockKey, block: Rc<[u8]>) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.block = block;
            return;
        }
        self.make_room();
        self.insert_new(key, block);
    }

    /// Adds a copy of `bytes` (a block just read and verified) and returns
    /// it. When the cache is full, the memory of the block evicted for it
    /// is reused if no reader still holds that block, so a miss in a full
    /// cache allocates and frees nothing.
    pub fn insert_copy(&mut self, key: BlockKey, bytes: &[u8]) -> Rc<[u8]> {
        if let Some(slot) = self.slots.get_mut(&key) {
            let block: Rc<[u8]> = Rc::from(bytes);
            slot.block = Rc::clone(&block);
            return block;
        }
        let block = match self.make_room() {
            Some(mut spare) if spare.len() == bytes.len() => match Rc::get_mut(&mut spare) {
                Some(memory) => {
                    memory.copy_from_slice(bytes);
                    spare
                }
                None => Rc::from(bytes),
            },
            _ => Rc::from(bytes),
        };
        self.insert_new(key, Rc::clone(&block));
        block
    }

    /// Evicts until one more block fits; the last block evicted, if any.
    fn make_room(&mut self) -> Option<Rc<[u8]>> {
        let mut evicted = None;
        while self.slots.len() >= self.capacity_blocks {
            if let Some(block) = self.evict_one() {
                evicted = Some(block);
            }
        }
        evicted
    }

    /// Adds `block` under `key`, which the cache lacks and has room for.
    fn insert_new(&mut self, key: BlockKey, block: Rc<[u8]>) {
        let in_main = self.ghost_set.remove(&key);
        if in_main {
            self.main.push_back(key);
        } else {
            self.small.push_back(key);
        }
        self.slots.insert(
            key,
            Slot {
                block,
                frequency: 0,
                in_main,
            },
        );
    }

    /// Drops every block of `file` (when a layer is deleted).
    pub fn forget_file(&mut self, file: FileId) {
        self.slots.retain(|key, _| key.file != file);
        self.small.retain(|key| key.file != file);
        self.main.retain(|key| key.file != file);
    }

    /// Counters and occupancy.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            blocks: self.slots.len(),
            ..self.stats
        }
    }

    /// Evicts one block (none when every queue is empty); the block.
    fn evict_one(&mut self) -> Option<Rc<[u8]>> {
        if self.small.len() >= self.small_target || self.main.is_empty() {
            self.evict_from_small()
        } else {
            self.evict_from_main()
        }
    }

    fn evict_from_small(&mut self) -> Option<Rc<[u8]>> {
        while let Some(key) = self.small.pop_front() {
            let Some(slot) = self.slots.get_mut(&key) else {
                continue; // forgotten
            };
            if slot.frequency > 0 {
                slot.frequency = 0;
                slot.in_main = true;
                self.main.push_back(key);
                continue;
            }
            let evicted = self.slots.remove(&key).map(|slot| slot.block);
            self.stats.evictions += 1;
            self.remember_ghost(key);
            return evicted;
        }
        self.evict_from_main()
    }

    fn evict_from_main(&mut self) -> Option<Rc<[u8]>> {
        while let Some(key) = self.main.pop_front() {
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            if slot.frequency > 0 {
                slot.frequency -= 1;
                self.main.push_back(key);
                continue;
            }
            let evicted = self.slots.remove(&key).map(|slot| slot.block);
            self.stats.evictions += 1;
            return evicted;
        }
        None
    }

    fn remember_ghost(&mut self, key: BlockKey) {
        self.ghost.push_back(key);
        self.ghost_set.insert(key);
        while self.ghost.len() > self.capacity_blocks {
            if let Some(old) = self.ghost.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(block: u32) -> BlockKey {
        BlockKey { file: 1, block }
    }

    fn block(n: u32) -> Rc<[u8]> {
        Rc::from(vec![u8::try_from(n % 251).unwrap(); 16])
    }

    #[test]
    fn holds_what_fits_and_counts() {
        let mut cache = BlockCache::new(4 * CACHE_BLOCK_SIZE);
        for n in 0..4 {
            cache.insert(key(n), block(n));
        }
        assert_eq!(cache.get(key(2)).as_deref(), Some(&*block(2)));
        assert!(cache.get(key(9)).is_none());
        cache.insert(key(4), block(4));
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.evictions, stats.blocks),
            (1, 1, 1, 4)
        );
    }

    #[test]
    fn a_scan_does_not_flush_the_hot_set() {
        let mut cache = BlockCache::new(1000 * CACHE_BLOCK_SIZE);
        let hot: Vec<u32> = (0..500).collect();
        for _ in 0..3 {
            for &n in &hot {
                if cache.get(key(n)).is_none() {
                    cache.insert(key(n), block(n));
                }
            }
        }
        // A scan of 20,000 blocks read once each.
        for n in 100_000..120_000 {
            if cache.get(key(n)).is_none() {
                cache.insert(key(n), block(n));
            }
        }
        let before = cache.stats().hits;
        for &n in &hot {
            cache.get(key(n));
        }
        let hot_hits = cache.stats().hits - before;
        assert!(
            hot_hits >= 490,
            "only {hot_hits} of 500 hot blocks survived the scan"
        );
        assert!(cache.stats().blocks <= 1000);
    }

    #[test]
    fn a_reused_key_returns_to_main_through_the_ghosts() {
        let mut cache = BlockCache::new(10 * CACHE_BLOCK_SIZE);
        for n in 0..15 {
            cache.insert(key(n), block(n));
        }
        // Block 0 was evicted from small unread: it is a ghost now.
        assert!(cache.get(key(0)).is_none());
        cache.insert(key(0), block(0));
        assert!(cache.slots.get(&key(0)).is_some_and(|s| s.in_main));
    }

    #[test]
    fn a_copy_into_a_full_cache_reuses_the_evicted_blocks_memory_unless_held() {
        let mut cache = BlockCache::new(2 * CACHE_BLOCK_SIZE);
        let first = cache.insert_copy(key(0), &[1; 16]);
        let first_memory = first.as_ptr();
        drop(first);
        cache.insert_copy(key(1), &[2; 16]);
        // Key 0 is evicted for key 2, and nobody holds it: its memory
        // carries key 2's bytes now.
        let third = cache.insert_copy(key(2), &[3; 16]);
        assert_eq!(third.as_ptr(), first_memory);
        assert_eq!(&*third, &[3; 16]);
        assert!(cache.get(key(0)).is_none());
        assert_eq!(cache.get(key(1)).as_deref(), Some(&[2; 16][..]));
        // A reader still holds key 1 when it is evicted: its bytes stay.
        let held = cache.get(key(1)).expect("cached");
        drop(third);
        cache.insert_copy(key(3), &[4; 16]);
        cache.insert_copy(key(4), &[5; 16]);
        assert_eq!(&*held, &[2; 16]);
        assert_eq!(cache.get(key(4)).as_deref(), Some(&[5; 16][..]));
        // A key already cached takes the new bytes.
        let again = cache.insert_copy(key(4), &[6; 16]);
        assert_eq!(&*again, &[6; 16]);
        assert_eq!(cache.get(key(4)).as_deref(), Some(&[6; 16][..]));
        assert!(cache.stats().blocks <= 2);
    }

    #[test]
    fn forgetting_a_file_drops_its_blocks() {
        let mut cache = BlockCache::new(10 * CACHE_BLOCK_SIZE);
        cache.insert(BlockKey { file: 1, block: 0 }, block(0));
        cache.insert(BlockKey { file: 2, block: 0 }, block(1));
        cache.forget_file(1);
        assert!(cache.get(BlockKey { file: 1, block: 0 }).is_none());
        assert!(cache.get(BlockKey { file: 2, block: 0 }).is_some());
        for n in 0..50 {
            cache.insert(BlockKey { file: 3, block: n }, block(n));
        }
        assert!(cache.stats().blocks <= 10);
    }
}
