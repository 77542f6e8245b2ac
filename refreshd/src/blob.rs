//! Snap blobs: hashing and the checks run on a file before refreshd takes it.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha3::{Digest, Sha3_384};

/// The sha3-384 (hex) and size of a file, read in one pass.
pub fn sha3_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha3_384::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}
