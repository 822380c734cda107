//! A streaming structural check of a tar archive (`docker save` output), fed chunk by chunk as
//! an upload arrives: every header's checksum is right, every entry's data is complete, and
//! the archive ends with its end-of-archive marker. It decides nothing about the contents; it
//! catches "not a tar", "empty" and "truncated" while the upload is still open, so the API can
//! answer 400 naming the `image` part instead of accepting a deploy that fails later.

use thiserror::Error;

const BLOCK: usize = 512;

/// Why an upload is not a whole tar archive.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TarError {
    #[error("is empty (expected a `docker save` tar)")]
    Empty,
    #[error("is not a tar archive (bad header checksum at byte {offset})")]
    BadChecksum { offset: u64 },
    #[error("is not a tar archive (unreadable size field at byte {offset})")]
    BadSize { offset: u64 },
    #[error("is truncated: entry {name:?} needs {missing} more bytes")]
    TruncatedEntry { name: String, missing: u64 },
    #[error("is truncated after {bytes} bytes (no end-of-archive marker)")]
    NoEndMarker { bytes: u64 },
    #[error("is truncated after {bytes} bytes (partial 512-byte block)")]
    PartialBlock { bytes: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// The next block is a header (or the first zero block of the end marker).
    Header,
    /// `remaining` bytes of the data of entry `name` follow (padded to whole blocks).
    Data { name: String, remaining: u64 },
    /// A zero block was seen: the archive has ended (trailing padding is ignored).
    End,
}

/// Feed with [`TarCheck::update`], then call [`TarCheck::finish`] at the end of the upload.
#[derive(Debug)]
pub struct TarCheck {
    state: State,
    partial: Vec<u8>,
    total: u64,
    entries: u64,
}

impl Default for TarCheck {
    fn default() -> Self {
        Self::new()
    }
}

fn octal(field: &[u8]) -> Option<u64> {
    // GNU base-256 for large values: high bit of the first byte set.
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ');
    let mut v: u64 = 0;
    let mut digits = 0;
    for b in text {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(v)
}

fn checksum_ok(h: &[u8]) -> bool {
    let Some(stored) = octal(&h[148..156]) else {
        return false;
    };
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    sum == stored
}

impl TarCheck {
    pub fn new() -> Self {
        Self {
            state: State::Header,
            partial: Vec::with_capacity(BLOCK),
            total: 0,
            entries: 0,
        }
    }

    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Checks the next chunk of the upload; the first error is final.
    pub fn update(&mut self, mut chunk: &[u8]) -> Result<(), TarError> {
        while !chunk.is_empty() {
            if let State::Data { remaining, .. } = &mut self.state {
                // Skip data without copying it: only headers are looked at.
                if self.partial.is_empty() && *remaining >= BLOCK as u64 {
                    let whole = (*remaining / BLOCK as u64) * BLOCK as u64;
                    let n = whole.min(chunk.len() as u64 / BLOCK as u64 * BLOCK as u64) as usize;
                    if n > 0 {
                        *remaining -= n as u64;
                        if *remaining == 0 {
                            self.state = State::Header;
                        }
                        self.total += n as u64;
                        chunk = &chunk[n..];
                        continue;
                    }
                }
            }
            let take = (BLOCK - self.partial.len()).min(chunk.len());
            self.partial.extend_from_slice(&chunk[..take]);
            self.total += take as u64;
            chunk = &chunk[take..];
            if self.partial.len() == BLOCK {
                let block = std::mem::replace(&mut self.partial, Vec::with_capacity(BLOCK));
                self.block(&block)?;
            }
        }
        Ok(())
    }

    fn block(&mut self, b: &[u8]) -> Result<(), TarError> {
        let offset = self.total - BLOCK as u64;
        match &mut self.state {
            State::End => Ok(()),
            State::Data { remaining, .. } => {
                *remaining = remaining.saturating_sub(BLOCK as u64);
                if *remaining == 0 {
                    self.state = State::Header;
                }
                Ok(())
            }
            State::Header => {
                if b.iter().all(|&x| x == 0) {
                    self.state = if self.entries == 0 {
                        // A zero block first is not an archive anybody saved.
                        return Err(TarError::BadChecksum { offset });
                    } else {
                        State::End
                    };
                    return Ok(());
                }
                if !checksum_ok(b) {
                    return Err(TarError::BadChecksum { offset });
                }
                let size = octal(&b[124..136]).ok_or(TarError::BadSize { offset })?;
                // Links, devices, directories and FIFOs carry no data whatever `size` says.
                let size = if matches!(b[156], b'1'..=b'6') {
                    0
                } else {
                    size
                };
                self.entries += 1;
                if size > 0 {
                    let name_end = b[..100].iter().position(|&c| c == 0).unwrap_or(100);
                    let name = String::from_utf8_lossy(&b[..name_end]).into_owned();
                    let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
                    self.state = State::Data {
                        name,
                        remaining: padded,
                    };
                }
                Ok(())
            }
        }
    }

    /// Called at the end of the upload: Ok only for a whole archive.
    pub fn finish(&self) -> Result<(), TarError> {
        if self.total == 0 {
            return Err(TarError::Empty);
        }
        match &self.state {
            State::End => Ok(()),
            State::Data { name, remaining } => Err(TarError::TruncatedEntry {
                name: name.clone(),
                missing: *remaining - self.partial.len() as u64,
            }),
            State::Header if !self.partial.is_empty() => {
                Err(TarError::PartialBlock { bytes: self.total })
            }
            State::Header => Err(TarError::NoEndMarker { bytes: self.total }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header for a regular file (`typeflag` '0') or directory ('5').
    fn header(name: &str, size: u64, typeflag: u8) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        let sz = format!("{size:011o}");
        h[124..135].copy_from_slice(sz.as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let cs = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(cs.as_bytes());
        h
    }

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&header("dir/", 0, b'5'));
        for (name, data) in files {
            out.extend_from_slice(&header(name, data.len() as u64, b'0'));
            out.extend_from_slice(data);
            let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
            out.extend(std::iter::repeat_n(0u8, pad));
        }
        out.extend(std::iter::repeat_n(0u8, 2 * BLOCK));
        out
    }

    fn check_in_chunks(data: &[u8], chunk: usize) -> Result<(), TarError> {
        let mut c = TarCheck::new();
        for part in data.chunks(chunk.max(1)) {
            c.update(part)?;
        }
        c.finish()
    }

    #[test]
    fn a_whole_archive_passes_at_any_chunking() {
        let big = vec![7u8; 5000];
        let a = archive(&[("dir/a", b"hello"), ("dir/big", &big), ("dir/empty", b"")]);
        for chunk in [1, 3, 511, 512, 513, 4096, a.len()] {
            check_in_chunks(&a, chunk).unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        }
        // GNU tar pads to 10 KiB records after the end marker: still whole.
        let mut padded = a.clone();
        padded.extend(std::iter::repeat_n(0u8, 8192));
        check_in_chunks(&padded, 1000).unwrap();
    }

    #[test]
    fn empty_garbage_and_truncated_uploads_are_named() {
        assert_eq!(check_in_chunks(b"", 10), Err(TarError::Empty));
        let garbage = b"PK\x03\x04 this is a zip file, not a tar".repeat(40);
        assert!(matches!(
            check_in_chunks(&garbage, 100),
            Err(TarError::BadChecksum { offset: 0 })
        ));
        assert!(matches!(
            check_in_chunks(&[0u8; 2048], 100),
            Err(TarError::BadChecksum { offset: 0 })
        ));
        let big = vec![1u8; 3000];
        let a = archive(&[("dir/big", &big)]);
        // Cut inside the data of dir/big.
        let cut = &a[..BLOCK * 2 + 1000];
        match check_in_chunks(cut, 300) {
            Err(TarError::TruncatedEntry { name, missing }) => {
                assert_eq!(name, "dir/big");
                assert_eq!(missing, 3072 - 1000);
            }
            other => panic!("{other:?}"),
        }
        // Cut exactly after the last entry: no end marker.
        let no_end = &a[..a.len() - 2 * BLOCK];
        assert!(matches!(
            check_in_chunks(no_end, 512),
            Err(TarError::NoEndMarker { .. })
        ));
        // Cut inside a header block.
        assert!(matches!(
            check_in_chunks(&a[..700], 64),
            Err(TarError::PartialBlock { bytes: 700 })
        ));
        // A flipped byte in a header breaks its checksum.
        let mut bad = a.clone();
        bad[BLOCK + 3] ^= 0x20;
        assert!(matches!(
            check_in_chunks(&bad, 512),
            Err(TarError::BadChecksum { offset: 512 })
        ));
    }

    #[test]
    fn size_fields_in_octal_and_base256() {
        assert_eq!(octal(b"00000000012\0"), Some(10));
        assert_eq!(octal(b" 12 \0\0\0\0"), Some(10));
        assert_eq!(octal(b"\0\0\0\0"), None);
        assert_eq!(octal(b"0009\0"), None);
        let mut b = [0u8; 12];
        b[0] = 0x80;
        b[10] = 1;
        b[11] = 2;
        assert_eq!(octal(&b), Some(258));
    }
}
