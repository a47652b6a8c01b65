//! Writing one layer file: the format's writer feeding a durable direct-I/O
//! file, block by block as values arrive.

use std::path::Path;

use quire_io::BlockFileWriter;
use quire_layerfmt::format::Compression;
use quire_layerfmt::writer::LayerDescriptor;
use quire_layerfmt::{LayerKind, LayerWriter, ValueKind};
use quire_postgres::{Key, Lsn};

use crate::layer_file::{LayerKindName, LayerName};
use crate::timeline::TimelineError;
use crate::value::Value;

/// A layer file being written; see the module documentation.
pub struct LayerBuilder {
    name: LayerName,
    writer: LayerWriter,
    file: BlockFileWriter,
}

impl LayerBuilder {
    /// Starts the layer `name` in `dir` (as `<name>.tmp` until finished).
    pub async fn create(
        dir: &Path,
        name: LayerName,
        tenant_id: [u8; 16],
        timeline_id: [u8; 16],
    ) -> Result<LayerBuilder, TimelineError> {
        let kind = match name.kind {
            LayerKindName::Image => LayerKind::Image,
            LayerKindName::Delta => LayerKind::Delta,
        };
        let writer = LayerWriter::new(LayerDescriptor {
            kind,
            tenant_id,
            timeline_id,
            key_range: (name.key_start, name.key_end),
            lsn_range: (name.lsn_start, name.lsn_end),
        });
        let file = BlockFileWriter::create(&dir.join(name.to_string())).await?;
        Ok(LayerBuilder { name, writer, file })
    }

    /// Adds a value (in key, LSN order) and writes the blocks it completes.
    pub async fn add(&mut self, key: Key, lsn: Lsn, value: &Value) -> Result<(), TimelineError> {
        let (kind, will_init) = match value {
            Value::Image(_) => (ValueKind::PageImage, true),
            Value::Record { will_init, .. } => (ValueKind::WalRecord, *will_init),
        };
        self.writer
            .add(key, lsn, kind, will_init, Compression::None, value.bytes())?;
        let (first, blocks) = self.writer.take_blocks();
        self.file.write_blocks(first, &blocks).await?;
        Ok(())
    }

    /// Values added so far.
    pub fn entry_count(&self) -> usize {
        self.writer.entry_count()
    }

    /// Bytes of values added so far.
    pub fn value_bytes(&self) -> u64 {
        self.writer.value_bytes()
    }

    /// Writes the index, the checksum table and block 0, and makes the file
    /// durable under its name.
    pub async fn finish(self) -> Result<LayerName, TimelineError> {
        let finished = self.writer.finish()?;
        self.file
            .write_blocks(finished.first_block, &finished.tail)
            .await?;
        self.file.write_blocks(0, &finished.block0).await?;
        self.file.finish().await?;
        Ok(self.name)
    }
}
