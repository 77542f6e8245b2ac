//! A regular file's data: a reflink (`FICLONE`) where the filesystem shares extents, else the
//! data extents found with `SEEK_DATA`/`SEEK_HOLE` copied with `copy_file_range` (or read and
//! write where that is refused), so holes stay holes.

use std::io;
use std::os::fd::BorrowedFd;

use crate::sys;

/// Which side of the copy an error came from, for the message.
pub(crate) enum DataError {
    Read(io::Error),
    Write(io::Error),
    /// `copy_file_range` does both; `ENOSPC` and friends are the destination's.
    Copy(io::Error),
}

/// How a file's data was copied.
pub(crate) struct Copied {
    pub reflinked: bool,
    /// Bytes moved (holes excluded); the file's size when reflinked.
    pub bytes: u64,
}

/// Per-copy memory of what the filesystems support, so a refusal is paid once, not per file.
pub(crate) struct DataCopier {
    reflink: bool,
    copy_range: bool,
    buf: Vec<u8>,
}

const BUF_SIZE: usize = 256 * 1024;

/// Makes `dst` exactly `size` long, truncating only when it is not: on XFS even a same-size
/// truncate zeroes the last block's tail, which unshares a reflinked block and costs a
/// synchronous read per file (about 3x a whole reflinked copy, docs/performance.md).
fn set_len(dst: BorrowedFd<'_>, size: u64) -> Result<(), DataError> {
    let st = sys::statx_fd(dst).map_err(DataError::Write)?;
    if st.stx_size != size {
        sys::ftruncate(dst, size as i64).map_err(DataError::Write)?;
    }
    Ok(())
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

impl DataCopier {
    /// With `reflink` false, data is also never moved with `copy_file_range`: on XFS and btrfs
    /// the kernel clones extents there too, and "never" must mean independent blocks.
    pub fn new(reflink: bool) -> DataCopier {
        DataCopier {
            reflink,
            copy_range: reflink,
            buf: Vec::new(),
        }
    }

    /// Copies the first `size` bytes of `src` into the empty `dst`, which ends up `size` long.
    pub fn copy(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        size: u64,
    ) -> Result<Copied, DataError> {
        if self.reflink && size > 0 {
            match sys::ficlone(dst, src) {
                Ok(()) => {
                    // A file that grew after the stat is cloned whole; cut it back to the
                    // size the rest of the copy (metadata, record) describes.
                    set_len(dst, size)?;
                    return Ok(Copied {
                        reflinked: true,
                        bytes: size,
                    });
                }
                // This filesystem (pair) cannot share extents: stop asking.
                Err(e)
                    if matches!(
                        errno(&e),
                        libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::ENOSYS
                    ) =>
                {
                    self.reflink = false
                }
                // This file cannot be cloned (a swap file, different flags): copy it.
                Err(e) if matches!(errno(&e), libc::EINVAL | libc::EPERM | libc::ETXTBSY) => {}
                Err(e) => return Err(DataError::Copy(e)),
            }
        }
        let size = size as i64;
        let mut bytes = 0u64;
        let mut off = 0i64;
        while off < size {
            let data = match sys::lseek(src, off, libc::SEEK_DATA) {
                Ok(d) => d,
                // No data after `off`: the rest is a hole (or the file shrank).
                Err(e) if errno(&e) == libc::ENXIO => break,
                // No SEEK_DATA support: treat everything as data.
                Err(e) if errno(&e) == libc::EINVAL => off,
                Err(e) => return Err(DataError::Read(e)),
            };
            if data >= size {
                break;
            }
            let hole = match sys::lseek(src, data, libc::SEEK_HOLE) {
                Ok(h) => h.min(size),
                Err(e) if errno(&e) == libc::ENXIO => break,
                Err(e) if errno(&e) == libc::EINVAL => size,
                Err(e) => return Err(DataError::Read(e)),
            };
            let (n, eof) = self.copy_range(src, dst, data, hole)?;
            bytes += n;
            if eof {
                break;
            }
            off = hole;
        }
        // Trailing holes, and a file that shrank under the copy, end up the stated size.
        set_len(dst, size as u64)?;
        Ok(Copied {
            reflinked: false,
            bytes,
        })
    }

    /// Copies `[start, end)` at the same offsets. Returns the bytes copied and whether the
    /// source ended early.
    fn copy_range(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        start: i64,
        end: i64,
    ) -> Result<(u64, bool), DataError> {
        let mut pos = start;
        while pos < end {
            let want = (end - pos) as usize;
            if self.copy_range {
                let (mut from, mut to) = (pos, pos);
                match sys::copy_file_range(src, &mut from, dst, &mut to, want) {
                    Ok(0) => return Ok(((pos - start) as u64, true)),
                    Ok(n) => {
                        pos += n as i64;
                        continue;
                    }
                    // Not between these files or filesystems: read and write instead.
                    Err(e)
                        if matches!(
                            errno(&e),
                            libc::EXDEV
                                | libc::EINVAL
                                | libc::ENOSYS
                                | libc::EOPNOTSUPP
                                | libc::EBADF
                                | libc::ETXTBSY
                        ) =>
                    {
                        self.copy_range = false;
                        continue;
                    }
                    Err(e) => return Err(DataError::Copy(e)),
                }
            }
            if self.buf.is_empty() {
                self.buf = vec![0; BUF_SIZE];
            }
            let chunk = want.min(self.buf.len());
            let n = match sys::pread(src, &mut self.buf[..chunk], pos) {
                Ok(0) => return Ok(((pos - start) as u64, true)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DataError::Read(e)),
            };
            let mut written = 0;
            while written < n {
                match sys::pwrite(dst, &self.buf[written..n], pos + written as i64) {
                    Ok(0) => return Err(DataError::Write(io::ErrorKind::WriteZero.into())),
                    Ok(w) => written += w,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(DataError::Write(e)),
                }
            }
            pos += n as i64;
        }
        Ok(((pos - start) as u64, false))
    }
}
