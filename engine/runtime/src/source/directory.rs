//! `directory`: new text files in a directory (Spark's textFileStream).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{InputDescriptor, Source, SourceCursor, SourceError};
use weir_codec::BatchBuilder;

fn read_files(files: &[PathBuf]) -> Result<Vec<u8>, SourceError> {
    let mut b = BatchBuilder::new();
    for path in files {
        let text = std::fs::read(path).map_err(|e| SourceError::Io { path: path.clone(), source: e })?;
        for l in String::from_utf8_lossy(&text).lines() {
            b.push_with(|w| w.str(l));
        }
    }
    Ok(b.finish())
}

/// How far back, before a batch time, a new file's modification time may be.
const DIRECTORY_REMEMBER: Duration = Duration::from_secs(60);

pub(super) struct DirectorySource {
    pub(super) dir: PathBuf,
    pub(super) seen: BTreeSet<PathBuf>,
}

impl Source for DirectorySource {
    fn poll(&mut self, time: i64, wall: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError> {
        let io = |e| SourceError::Io { path: self.dir.clone(), source: e };
        let mut new = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(|e| SourceError::Io { path: self.dir.clone(), source: e })?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            // Hidden and temporary files are being written; skip them.
            if name.starts_with('.') || name.starts_with('_') || self.seen.contains(&path) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if wall {
                let t = SystemTime::UNIX_EPOCH + Duration::from_millis(time.max(0) as u64);
                if mtime > t || mtime + DIRECTORY_REMEMBER < t {
                    continue;
                }
            }
            new.push((mtime, path));
        }
        new.sort();
        let files: Vec<PathBuf> = new.into_iter().map(|(_, p)| p).collect();
        let batch = read_files(&files)?;
        self.seen.extend(files.iter().cloned());
        Ok((batch, InputDescriptor::Files(files)))
    }
    fn replay(&self, _time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError> {
        match d {
            InputDescriptor::Files(files) => read_files(files),
            other => Err(SourceError::Replay(format!("a directory source cannot replay {other:?}"))),
        }
    }
    fn cursor(&self) -> SourceCursor {
        SourceCursor::Files(self.seen.clone())
    }
    fn restore(&mut self, c: &SourceCursor) -> Result<(), SourceError> {
        match c {
            SourceCursor::Files(f) => {
                self.seen = f.clone();
                Ok(())
            }
            other => Err(SourceError::Replay(format!("a directory source cannot resume at {other:?}"))),
        }
    }
    fn exhausted(&self) -> bool {
        false
    }
}
