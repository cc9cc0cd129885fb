//! The audit sink of the file store: an append-only JSON-lines file, rotated by size to
//! `<file>.1` … `<file>.<keep>` (oldest dropped). Appends take an exclusive lock on a sibling
//! `.lock` file, so the CLI and a running proxy can share one trail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct FileSink {
    path: PathBuf,
    lock_path: PathBuf,
    max_size: u64,
    keep: usize,
}

impl FileSink {
    pub fn new(path: PathBuf, max_size: u64, keep: usize) -> FileSink {
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        FileSink {
            path,
            lock_path: lock_path.into(),
            max_size,
            keep,
        }
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    /// Appends lines (each one JSON event, without newline) in one write. Blocking.
    pub fn append(&self, lines: &[String]) -> io::Result<()> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)?;
        lock.lock()?;
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        let size = fs::metadata(&self.path).map_or(0, |m| m.len());
        if size > 0 && size + buf.len() as u64 > self.max_size {
            self.rotate()?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        f.write_all(&buf)?;
        f.sync_data()
    }

    fn rotate(&self) -> io::Result<()> {
        if self.keep == 0 {
            return fs::remove_file(&self.path);
        }
        let _ = fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            match fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&self.path, self.rotated(1))
    }

    /// Every stored line, oldest file first. Blocking.
    pub fn read_all(&self) -> io::Result<Vec<String>> {
        let mut files: Vec<PathBuf> = (1..=self.keep).rev().map(|n| self.rotated(n)).collect();
        files.push(self.path.clone());
        let mut out = Vec::new();
        for path in files {
            match File::open(&path) {
                Ok(f) => {
                    for line in BufReader::new(f).lines() {
                        let line = line?;
                        if !line.trim().is_empty() {
                            out.push(line);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The newest stored line, if any (read from the end of the current or newest rotated
    /// file). Blocking.
    pub fn last_line(&self) -> io::Result<Option<String>> {
        use std::io::{Read, Seek, SeekFrom};
        for path in
            std::iter::once(self.path.clone()).chain((1..=self.keep).map(|n| self.rotated(n)))
        {
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let len = f.metadata()?.len();
            let start = len.saturating_sub(256 * 1024);
            f.seek(SeekFrom::Start(start))?;
            let mut tail = String::new();
            f.read_to_string(&mut tail)?;
            if let Some(line) = tail.lines().rev().find(|l| !l.trim().is_empty()) {
                return Ok(Some(line.to_owned()));
            }
        }
        Ok(None)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path().join("audit.jsonl"), 100, 2);
        let lines: Vec<String> = (0..12).map(|i| format!("{{\"n\":{i:020}}}")).collect();
        for l in &lines {
            sink.append(std::slice::from_ref(l)).unwrap();
        }
        // 31 bytes a line, 100 bytes a file, 3 files kept: the last 9 lines survive, in order.
        let back = sink.read_all().unwrap();
        assert_eq!(back, lines[lines.len() - back.len()..]);
        assert!(back.len() >= 6 && back.len() < 12, "{}", back.len());
        assert!(!sink.rotated(3).exists());
    }
}
