//! Files to objects and back, streamed: an upload reads its file in parts
//! (one `PUT` up to [`Limits::part_size`](crate::config::Limits), a
//! multipart upload above it, at most `parts_in_flight` parts in flight), a
//! download writes what arrives to a temporary file beside the target,
//! checks size and CRC-32C, `fsync`s, renames into place and `fsync`s the
//! directory. Neither holds a whole large file in memory. A failed attempt
//! starts over (a multipart upload is aborted first, best effort).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::RemoteError;
use crate::ops::object_path;
use crate::service::{Context, Operation};

/// What an upload or download moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes.
    pub size: u64,
    /// CRC-32C of them.
    pub crc32c: u32,
}

/// Uploads a local file (immutable while it is read) to `key`.
pub struct UploadFile {
    /// The file.
    pub local: PathBuf,
    /// The object.
    pub key: String,
}

impl Operation for UploadFile {
    type Output = Transferred;
    const NAME: &'static str = "upload";

    async fn run(self, ctx: Arc<Context>) -> Result<Transferred, RemoteError> {
        let path = object_path(&self.key)?;
        let sent = ctx
            .retry(Self::NAME, &self.key, || {
                upload_once(&ctx, &self.local, &self.key, &path)
            })
            .await?;
        ctx.metrics.uploads.inc();
        ctx.metrics.upload_bytes.inc_by(sent.size);
        Ok(sent)
    }
}

/// Reads up to `n` bytes (fewer only at the end of the file).
async fn read_part(
    file: &mut tokio::fs::File,
    n: usize,
    local: &FsPath,
) -> Result<Vec<u8>, RemoteError> {
    let mut part = Vec::with_capacity(n);
    file.take(n as u64)
        .read_to_end(&mut part)
        .await
        .map_err(|e| RemoteError::local("read", local, e))?;
    Ok(part)
}

async fn upload_once(
    ctx: &Context,
    local: &FsPath,
    key: &str,
    path: &Path,
) -> Result<Transferred, RemoteError> {
    let op = UploadFile::NAME;
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(|e| RemoteError::local("open", local, e))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| RemoteError::local("stat", local, e))?
        .len();
    let part_size = ctx.config.limits.part_size;
    let changed = || {
        RemoteError::local(
            "upload",
            local,
            std::io::Error::other("the file's length changed while it was read"),
        )
    };
    if size <= part_size as u64 {
        let bytes = read_part(&mut file, part_size + 1, local).await?;
        if bytes.len() as u64 != size {
            return Err(changed());
        }
        let crc32c = quire_checksum::crc32c(&bytes);
        ctx.store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(|e| RemoteError::store_write(op, key, e))?;
        return Ok(Transferred { size, crc32c });
    }
    let mut upload = ctx
        .store
        .put_multipart(path)
        .await
        .map_err(|e| RemoteError::store_write(op, key, e))?;
    match send_parts(ctx, &mut file, upload.as_mut(), local, key).await {
        Ok(sent) if sent.size == size => {
            upload
                .complete()
                .await
                .map_err(|e| RemoteError::store_write(op, key, e))?;
            Ok(sent)
        }
        outcome => {
            // Parts of an abandoned upload are not an object; removing them
            // is a courtesy (a lifecycle rule expires what is left).
            let _ = upload.abort().await;
            outcome.and(Err(changed()))
        }
    }
}

/// Reads the file part by part into `upload`, at most `parts_in_flight`
/// parts in flight.
async fn send_parts(
    ctx: &Context,
    file: &mut tokio::fs::File,
    upload: &mut dyn MultipartUpload,
    local: &FsPath,
    key: &str,
) -> Result<Transferred, RemoteError> {
    let limits = &ctx.config.limits;
    let mut in_flight: FuturesUnordered<object_store::UploadPart> = FuturesUnordered::new();
    let mut sent = Transferred { size: 0, crc32c: 0 };
    loop {
        while in_flight.len() >= limits.parts_in_flight {
            if let Some(result) = in_flight.next().await {
                result.map_err(|e| RemoteError::store_write(UploadFile::NAME, key, e))?;
            }
        }
        let part = read_part(file, limits.part_size, local).await?;
        if part.is_empty() {
            break;
        }
        sent.crc32c = quire_checksum::crc32c_append(sent.crc32c, &part);
        sent.size += part.len() as u64;
        in_flight.push(upload.put_part(PutPayload::from(Bytes::from(part))));
    }
    while let Some(result) = in_flight.next().await {
        result.map_err(|e| RemoteError::store_write(UploadFile::NAME, key, e))?;
    }
    Ok(sent)
}

/// Downloads `key` to the file `local` (replacing it), checking what
/// arrives against `expect` if given.
pub struct Download {
    /// The object.
    pub key: String,
    /// The file to write.
    pub local: PathBuf,
    /// The size and CRC-32C the object must have (from the index).
    pub expect: Option<Transferred>,
}

impl Operation for Download {
    type Output = Transferred;
    const NAME: &'static str = "download";

    async fn run(self, ctx: Arc<Context>) -> Result<Transferred, RemoteError> {
        let path = object_path(&self.key)?;
        let (Some(dir), Some(name)) = (self.local.parent(), self.local.file_name()) else {
            return Err(RemoteError::local(
                "download to",
                &self.local,
                std::io::Error::other("not a file path"),
            ));
        };
        let mut temp_name = name.to_owned();
        temp_name.push(".download");
        let temp = dir.join(temp_name);
        let got = ctx
            .retry(Self::NAME, &self.key, || async {
                let result = download_once(&ctx, &path, &self.key, &temp, self.expect).await;
                if result.is_err() {
                    let _ = tokio::fs::remove_file(&temp).await;
                }
                result
            })
            .await?;
        tokio::fs::rename(&temp, &self.local)
            .await
            .map_err(|e| RemoteError::local("rename into place", &self.local, e))?;
        let dir_file = tokio::fs::File::open(dir)
            .await
            .map_err(|e| RemoteError::local("open directory", dir, e))?;
        dir_file
            .sync_all()
            .await
            .map_err(|e| RemoteError::local("fsync directory", dir, e))?;
        ctx.metrics.downloads.inc();
        ctx.metrics.download_bytes.inc_by(got.size);
        Ok(got)
    }
}

async fn download_once(
    ctx: &Context,
    path: &Path,
    key: &str,
    temp: &FsPath,
    expect: Option<Transferred>,
) -> Result<Transferred, RemoteError> {
    let op = Download::NAME;
    let corrupt = |what: String| RemoteError::Corrupt {
        key: key.to_owned(),
        what,
    };
    let result = ctx
        .store
        .get(path)
        .await
        .map_err(|e| RemoteError::store(op, key, e))?;
    if let Some(expect) = expect
        && result.meta.size != expect.size
    {
        return Err(corrupt(format!(
            "{} bytes, the index says {}",
            result.meta.size, expect.size
        )));
    }
    let mut file = tokio::fs::File::create(temp)
        .await
        .map_err(|e| RemoteError::local("create", temp, e))?;
    let mut got = Transferred { size: 0, crc32c: 0 };
    let mut stream = result.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| RemoteError::store(op, key, e))?;
        got.size += chunk.len() as u64;
        if expect.is_some_and(|expect| got.size > expect.size) {
            return Err(corrupt("longer than the index says".to_owned()));
        }
        got.crc32c = quire_checksum::crc32c_append(got.crc32c, &chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| RemoteError::local("write", temp, e))?;
    }
    if let Some(expect) = expect
        && got != expect
    {
        return Err(corrupt(format!(
            "{} bytes with CRC-32C {:08x}, the index says {} bytes with {:08x}",
            got.size, got.crc32c, expect.size, expect.crc32c
        )));
    }
    file.sync_all()
        .await
        .map_err(|e| RemoteError::local("fsync", temp, e))?;
    Ok(got)
}
