//! The counters of what an ingest has done ([`IngestStats`]).

/// What ingest has done.
#[derive(Clone, Copy, Debug, Default)]
pub struct IngestStats {
    /// WAL records ingested.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Records with at least one block reference replayed by Postgres.
    pub postgres_redo_records: u64,
    /// Records whose page changes are all full-page images (no redo).
    pub image_records: u64,
    /// Records turned into Rust redo records (SLRU bits, visibility map).
    pub rust_redo_records: u64,
    /// Records with neither (metadata, or nothing for the storage).
    pub other_records: u64,
    /// Page images stored.
    pub page_images: u64,
    /// Postgres redo records stored (one per block reference).
    pub page_records: u64,
    /// Rust records stored on relation pages (visibility-map clears).
    pub rust_page_records: u64,
    /// Layers flushed.
    pub flushes: u64,
    /// Records skipped because the timeline already held them.
    pub skipped_records: u64,
    /// Relation block values not stored: another shard owns the block.
    pub not_owned_values: u64,
    /// The compute's relation-size messages taken (whether they raised a
    /// size or not).
    pub relsize_messages: u64,
    /// Of them, those that raised a size.
    pub relsize_raised: u64,
    /// Relation-size messages ignored: the timeline has no such fork.
    pub relsize_unknown_forks: u64,
    /// Relation-size messages ignored: their payload is off the layout.
    pub relsize_malformed: u64,
    /// Cut markers stored: blocks of this shard cut off a fork by a
    /// truncation, or left by a dropped fork whose file number came back.
    pub cut_blocks: u64,
}

impl std::ops::AddAssign for IngestStats {
    /// Sums the counters (of one ingest before a restart and after).
    fn add_assign(&mut self, other: IngestStats) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.postgres_redo_records += other.postgres_redo_records;
        self.image_records += other.image_records;
        self.rust_redo_records += other.rust_redo_records;
        self.other_records += other.other_records;
        self.page_images += other.page_images;
        self.page_records += other.page_records;
        self.rust_page_records += other.rust_page_records;
        self.flushes += other.flushes;
        self.skipped_records += other.skipped_records;
        self.not_owned_values += other.not_owned_values;
        self.relsize_messages += other.relsize_messages;
        self.relsize_raised += other.relsize_raised;
        self.relsize_unknown_forks += other.relsize_unknown_forks;
        self.relsize_malformed += other.relsize_malformed;
        self.cut_blocks += other.cut_blocks;
    }
}
