//! The directory transport: the same layout as over HTTP, read from a local directory.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::index::Entry;
use crate::source::{Failure, Opened};

pub(crate) struct DirSource {
    /// Canonical: every file read must resolve to a path under it.
    root: PathBuf,
    /// As given, for messages.
    shown: String,
}

impl DirSource {
    pub(crate) fn open(dir: &Path) -> Result<DirSource> {
        let store_dir = |source| Error::StoreDir {
            path: dir.to_owned(),
            error: source,
        };
        let root = fs::canonicalize(dir).map_err(store_dir)?;
        if !fs::metadata(&root).map_err(store_dir)?.is_dir() {
            return Err(store_dir(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        Ok(DirSource {
            root,
            shown: dir.display().to_string(),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.shown
    }

    /// Where `rel` (already checked to have no `..` or absolute parts) really is, or `None` if
    /// it does not exist. A symlink that leads out of the store is an error naming `field` of
    /// the index of snap `name` (or, with no name, the file).
    fn resolve(&self, rel: &str, name: &str, field: &str) -> Result<Option<PathBuf>> {
        let path = self.root.join(rel);
        match fs::canonicalize(&path) {
            Ok(real) if real.starts_with(&self.root) => Ok(Some(real)),
            Ok(real) => {
                let reason = format!(
                    "{rel} resolves to {}, outside the store (through a symlink)",
                    real.display()
                );
                Err(if name.is_empty() {
                    Error::OutsideStore { reason }
                } else {
                    Error::Index {
                        name: name.to_owned(),
                        field: field.to_owned(),
                        reason,
                    }
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                op: "open",
                path,
                error: source,
            }),
        }
    }

    /// A small file of the store (an index, signed metadata), at most `limit` bytes; `None` if
    /// it does not exist. `too_large` is the error for a longer one.
    pub(crate) fn file(
        &self,
        rel: &str,
        limit: u64,
        too_large: impl FnOnce() -> Error,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let Some(path) = self.resolve(rel, "", "the file")? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
            .map_err(Error::io("read", &path))?;
        if bytes.len() as u64 > limit {
            return Err(too_large().into());
        }
        Ok(Some(bytes))
    }

    pub(crate) fn open_blob(&self, entry: &Entry, offset: u64) -> Result<Opened, Failure> {
        let field = format!("revisions.{}.path", entry.revision);
        let location = || self.root.join(&entry.path).display().to_string();
        let Some(path) = self.resolve(&entry.path, &entry.name, &field)? else {
            return Err(Error::BlobMissing {
                name: entry.name.clone(),
                revision: entry.revision,
                location: location(),
            }
            .into());
        };
        let mut file = File::open(&path).map_err(Error::io("open", &path))?;
        let meta = file.metadata().map_err(Error::io("read", &path))?;
        if !meta.is_file() {
            return Err(Error::BlobMissing {
                name: entry.name.clone(),
                revision: entry.revision,
                location: location(),
            }
            .into());
        }
        if meta.len() > entry.size {
            return Err(Error::BlobTooLarge {
                name: entry.name.clone(),
                revision: entry.revision,
                location: location(),
                size: entry.size,
                actual: Some(meta.len()),
            }
            .into());
        }
        if meta.len() < entry.size {
            return Err(Error::BlobTooSmall {
                name: entry.name.clone(),
                revision: entry.revision,
                location: location(),
                size: entry.size,
                actual: meta.len(),
            }
            .into());
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(Error::io("read", &path))?;
        Ok(Opened {
            reader: Box::new(file),
            start: offset,
            length_known: true,
        })
    }

    /// A local read error will not go away by itself.
    pub(crate) fn read_failure(&self, entry: &Entry, source: io::Error) -> Failure {
        Failure::Fatal(Error::Io {
            op: "read",
            path: self.root.join(&entry.path),
            error: source,
        })
    }
}
