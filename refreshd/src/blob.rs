//! Snap blobs: hashing and the checks run on a file before refreshd takes it.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha3::{Digest, Sha3_384};

/// The sha3-384 (hex) and size of a file, read in one pass.
pub fn sha3_file(path: &Path) -> io::Result<(String, u64)> {
    sha3_file_with(path, &mut |_, _| {})
}

/// [`sha3_file`], telling `progress` the bytes hashed of the file's size: at the start and after
/// every read.
pub fn sha3_file_with(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = Sha3_384::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    progress(0, len);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
        progress(size, len.max(size));
    }
    Ok((hex::encode(h.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_reports_its_progress_from_nothing_to_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        // Several reads' worth.
        std::fs::write(&path, vec![7u8; 200_000]).unwrap();
        let mut seen = vec![];
        let (hash, size) =
            sha3_file_with(&path, &mut |done, total| seen.push((done, total))).unwrap();
        assert_eq!((hash, size), sha3_file(&path).unwrap());
        assert_eq!(seen.first(), Some(&(0, 200_000)));
        assert_eq!(seen.last(), Some(&(200_000, 200_000)));
        assert!(seen.len() > 2, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    }
}
