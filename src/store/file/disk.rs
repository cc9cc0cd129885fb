//! The store file on disk: its format, reading it (with a hash of exactly the bytes read, which
//! replicas acknowledge), writing it atomically, and what tells us it changed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{KeyRecord, StoreError};

pub(super) const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileData {
    pub version: u32,
    pub keys: Vec<KeyRecord>,
}

/// What tells us the file changed under us.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct FileStamp {
    pub modified: Option<SystemTime>,
    len: u64,
    ino: u64,
    dev: u64,
}

impl FileStamp {
    pub(super) fn of(path: &Path) -> io::Result<Self> {
        let m = fs::metadata(path)?;
        Ok(FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
            ino: m.ino(),
            dev: m.dev(),
        })
    }
}

/// SHA-256 of a store file's bytes: what a replica acknowledges having loaded.
pub(super) type ContentHash = [u8; 32];

pub(super) fn content_hash(bytes: &[u8]) -> ContentHash {
    Sha256::digest(bytes).into()
}

/// The records in the file, and the hash of the bytes they were read from.
pub(super) fn read_file(path: &Path) -> Result<(Vec<KeyRecord>, ContentHash), StoreError> {
    let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
    let hash = content_hash(&bytes);
    let text = String::from_utf8(bytes)
        .map_err(|_| StoreError::Corrupt(format!("{}: not UTF-8", path.display())))?;
    if text.trim().is_empty() {
        return Ok((Vec::new(), hash));
    }
    let data: FileData = serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    if data.version != FORMAT_VERSION {
        return Err(StoreError::Corrupt(format!(
            "{}: format version {} (this keygate reads {FORMAT_VERSION})",
            path.display(),
            data.version
        )));
    }
    Ok((data.keys, hash))
}

/// Replaces the file with `data` (temp file, fsync, rename, fsync directory); returns the hash
/// of the bytes written.
pub(super) fn write_atomically(path: &Path, data: &FileData) -> Result<ContentHash, StoreError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut json =
        serde_json::to_vec_pretty(data).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    json.push(b'\n');
    let result = (|| {
        let _ = fs::remove_file(&tmp); // a leftover of a crashed writer
        // Hashes are not keys, but the file is nobody else's business: 0600 unless the
        // operator chose otherwise for the existing file.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Ok(meta) = fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io_err(path, e))?;
    Ok(content_hash(&json))
}

pub(super) fn io_err(path: &Path, e: io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}
