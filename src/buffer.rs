//! A growable byte buffer with the alignment a version needs, whose every allocation can fail.
//!
//! # Why not `rkyv::util::AlignedVec`
//!
//! Version bytes arrive from the network, and nothing the network says may crash or bloat the
//! host process (SPEC invariant 10). `AlignedVec` has no fallible reservation: a reservation it
//! cannot satisfy calls `handle_alloc_error`, which aborts the host; and its
//! `extend_from_reader` zero-fills the whole reserved capacity, so reserving a length a server
//! merely *announced* makes the host resident in that much memory before one byte arrived.
//!
//! This buffer is a `Vec` of 16-byte blocks: the allocator gives it the alignment, and
//! `Vec::try_reserve` gives it fallible growth. [`AlignedBuf::read_capped`] grows it with the
//! bytes actually received (geometrically, so a 100 MB download costs a few reallocations)
//! and never past the caller's cap, so a server that announces gigabytes and trickles bytes
//! costs the host only what it really sent.

use std::collections::TryReserveError;
use std::io::{self, Read};

use crate::format::ALIGN;

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Block([u8; ALIGN]);

const _: () =
    assert!(std::mem::align_of::<Block>() == ALIGN && std::mem::size_of::<Block>() == ALIGN);

/// The first reservation of a download, whatever length was announced: large enough that a
/// small version needs no reallocation, small enough that a lie costs nothing.
const FIRST_RESERVE: usize = 1 << 20;

/// How much spare room is zeroed ahead of a read: bounds what a reservation makes resident.
const READ_AHEAD: usize = 256 << 10;

/// Why [`AlignedBuf::read_capped`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("more than {0} bytes")]
    TooLarge(u64),
    #[error("out of memory after {received} bytes ({source})")]
    OutOfMemory {
        received: usize,
        source: TryReserveError,
    },
}

/// Bytes aligned to [`ALIGN`], grown only by fallible reservations.
#[derive(Clone, Default)]
pub struct AlignedBuf {
    blocks: Vec<Block>,
    /// Bytes in use; every byte of `blocks` past it is initialized (zero) spare room.
    len: usize,
}

impl AlignedBuf {
    pub fn new() -> AlignedBuf {
        AlignedBuf::default()
    }

    /// A buffer with room for `bytes` bytes; an allocation failure is an error.
    pub fn try_with_capacity(bytes: usize) -> Result<AlignedBuf, TryReserveError> {
        let mut b = AlignedBuf::new();
        b.try_reserve(bytes)?;
        Ok(b)
    }

    /// Room for `additional` more bytes. Growth is at least geometric (`Vec`'s policy).
    pub fn try_reserve(&mut self, additional: usize) -> Result<(), TryReserveError> {
        let want = self.len.saturating_add(additional).div_ceil(ALIGN);
        self.blocks
            .try_reserve(want.saturating_sub(self.blocks.len()))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.blocks.capacity() * ALIGN
    }

    /// Makes at least `min` initialized spare bytes past `len` (zeroed, never more than the
    /// reservation already holds plus `min`).
    fn try_spare(&mut self, min: usize) -> Result<(), TryReserveError> {
        let need = self.len.saturating_add(min).div_ceil(ALIGN);
        if need > self.blocks.len() {
            self.blocks.try_reserve(need - self.blocks.len())?;
            // Within the reservation: cannot allocate.
            self.blocks.resize(need, Block([0; ALIGN]));
        }
        Ok(())
    }

    fn spare_mut(&mut self) -> &mut [u8] {
        let total = self.blocks.len() * ALIGN;
        // SAFETY: `blocks` is `total` initialized bytes (plain byte arrays, no padding), and
        // the borrow of `self` keeps them alive and unaliased.
        let all =
            unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), total) };
        &mut all[self.len..]
    }

    /// Appends `bytes`; an allocation failure is an error and leaves the buffer as it was.
    pub fn try_extend_from_slice(&mut self, bytes: &[u8]) -> Result<(), TryReserveError> {
        self.try_spare(bytes.len())?;
        self.spare_mut()[..bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }

    /// Appends `bytes`, aborting like `Vec` if memory runs out: for data this process made
    /// itself (encoding), never for data from the network.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_extend_from_slice(bytes) {
            panic!("out of memory: {e}");
        }
    }

    /// Reads `reader` to its end, appending at most `cap` bytes: one more is
    /// [`ReadError::TooLarge`]. `expected` (an announced length, untrusted) only sizes the first
    /// reservation, never beyond [`FIRST_RESERVE`]; memory grows with what arrives.
    pub fn read_capped(
        &mut self,
        reader: &mut dyn Read,
        cap: u64,
        expected: Option<u64>,
    ) -> Result<(), ReadError> {
        let start = self.len;
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        let first = expected.map_or(FIRST_RESERVE as u64, |e| e.saturating_add(1));
        let first = (first.min(FIRST_RESERVE as u64) as usize).min(cap.saturating_add(1));
        self.try_reserve(first)
            .map_err(|source| ReadError::OutOfMemory {
                received: 0,
                source,
            })?;
        loop {
            let received = self.len - start;
            if received > cap {
                self.len = start;
                return Err(ReadError::TooLarge(cap as u64));
            }
            // One byte past the cap is how an oversized body is recognised.
            let left = (cap - received).saturating_add(1);
            if self.len == self.blocks.len() * ALIGN {
                let room = READ_AHEAD.min(left);
                self.try_spare(room)
                    .map_err(|source| ReadError::OutOfMemory { received, source })?;
            }
            let spare = self.spare_mut();
            let limit = spare.len().min(left);
            match reader.read(&mut spare[..limit]) {
                Ok(0) => return Ok(()),
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of `blocks` are initialized; see `spare_mut`.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        // SAFETY: as in `Deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), len) }
    }
}

impl rkyv::ser::Positional for AlignedBuf {
    fn pos(&self) -> usize {
        self.len
    }
}

impl<E: rkyv::rancor::Source> rkyv::ser::Writer<E> for AlignedBuf {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.try_extend_from_slice(bytes).map_err(E::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns `chunk` bytes per call, `total` in all.
    struct Trickle {
        left: u64,
        chunk: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = (self.left as usize).min(self.chunk).min(buf.len());
            buf[..n].fill(7);
            self.left -= n as u64;
            Ok(n)
        }
    }

    #[test]
    fn bytes_are_aligned_and_kept_in_order() {
        let mut b = AlignedBuf::new();
        for i in 0..1000u32 {
            b.extend_from_slice(&i.to_le_bytes());
        }
        assert_eq!(b.len(), 4000);
        assert!((b.as_ptr() as usize).is_multiple_of(ALIGN));
        assert_eq!(&b[396..400], &99u32.to_le_bytes());
    }

    #[test]
    fn an_announced_length_does_not_reserve_memory() {
        let mut b = AlignedBuf::new();
        let mut r = Trickle { left: 10, chunk: 1 };
        b.read_capped(&mut r, u64::MAX, Some(1 << 40)).unwrap();
        assert_eq!(b.len(), 10);
        assert!(b.capacity() <= 2 * FIRST_RESERVE, "{}", b.capacity());
    }

    #[test]
    fn memory_grows_with_the_bytes_received() {
        let mut b = AlignedBuf::new();
        let mut r = Trickle {
            left: 5 << 20,
            chunk: 8192,
        };
        b.read_capped(&mut r, u64::MAX, None).unwrap();
        assert_eq!(b.len(), 5 << 20);
        assert!(
            b.capacity() <= 2 * (5 << 20) + READ_AHEAD,
            "{}",
            b.capacity()
        );
    }

    #[test]
    fn a_body_past_the_cap_is_refused() {
        let mut b = AlignedBuf::new();
        let mut r = Trickle {
            left: 1001,
            chunk: 100,
        };
        let e = b.read_capped(&mut r, 1000, Some(10)).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge(1000)), "{e}");
        let mut r = Trickle {
            left: 1000,
            chunk: 100,
        };
        b.read_capped(&mut r, 1000, None).unwrap();
        assert_eq!(b.len(), 1000);
    }

    #[test]
    fn an_impossible_reservation_is_an_error_not_an_abort() {
        let mut b = AlignedBuf::new();
        assert!(b.try_reserve(usize::MAX / 2).is_err());
        assert!(AlignedBuf::try_with_capacity(isize::MAX as usize).is_err());
        b.extend_from_slice(b"still usable");
        assert_eq!(&b[..], b"still usable");
    }
}
