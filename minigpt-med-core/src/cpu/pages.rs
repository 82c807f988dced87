//! Zeroed memory for weights in the kernels' layouts. Large buffers come straight from the
//! kernel as anonymous mappings, asked to use transparent huge pages: nothing writes them
//! before the packer does (a `Vec` of a non-primitive element is zero-filled first, a second
//! pass over gigabytes), the load takes 512x fewer page faults (measured at 7B: 7.5 s ->
//! 5.3 s with THP), and the kernels' weight streams take fewer TLB misses.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// Types whose all-zero bit pattern is a valid value.
///
/// # Safety
/// Implement only for plain-old-data types that are valid when every byte is zero and have
/// no padding that must be initialized in a particular way.
pub(crate) unsafe trait Zeroable: Copy + Send + Sync + 'static {}

// SAFETY: integers and IEEE floats are valid for every bit pattern, zero included.
unsafe impl Zeroable for u8 {}
// SAFETY: as above.
unsafe impl Zeroable for i8 {}
// SAFETY: as above.
unsafe impl Zeroable for f32 {}
// SAFETY: as above (IEEE half).
unsafe impl Zeroable for half::f16 {}

/// Below this many bytes a buffer is an ordinary `Vec` (a mapping costs a system call and at
/// least a page).
const MAP_FROM: usize = 2 << 20;

/// `len` zeroed values of `T`, in a `Vec` when small and in huge-page-backed anonymous memory
/// when large.
pub(crate) struct Pages<T: Zeroable> {
    store: Store<T>,
    len: usize,
    _t: PhantomData<T>,
}

enum Store<T> {
    Vec(Vec<T>),
    Map(memmap2::MmapMut),
}

impl<T: Zeroable> Pages<T> {
    /// `len` zeros. Falls back to a `Vec` if the system refuses the mapping.
    pub(crate) fn zeroed(len: usize) -> Self {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).expect("buffer size overflows usize");
        // A mapping is page-aligned, which covers every `Zeroable` type's alignment.
        debug_assert!(std::mem::align_of::<T>() <= 4096);
        if bytes >= MAP_FROM {
            if let Ok(map) = memmap2::MmapMut::map_anon(bytes) {
                #[cfg(target_os = "linux")]
                // Only a hint: without THP the mapping works with 4 KiB pages.
                let _ = map.advise(memmap2::Advice::HugePage);
                return Self { store: Store::Map(map), len, _t: PhantomData };
            }
        }
        // SAFETY: `T: Zeroable`: the all-zero value is valid.
        let v = vec![unsafe { std::mem::zeroed::<T>() }; len];
        Self { store: Store::Vec(v), len, _t: PhantomData }
    }
}

impl<T: Zeroable> Deref for Pages<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.store {
            Store::Vec(v) => v,
            // SAFETY: the mapping holds `len * size_of::<T>()` zero-initialized or written
            // bytes, is page-aligned (enough for `T`), lives as long as `self`, and every bit
            // pattern written through `deref_mut` is a valid `T`.
            Store::Map(m) => unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<T>(), self.len) },
        }
    }
}

impl<T: Zeroable> DerefMut for Pages<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.store {
            Store::Vec(v) => v,
            // SAFETY: as for `deref`; `&mut self` makes this the only reference.
            Store::Map(m) => unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<T>(), self.len) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_buffers_start_zeroed_and_keep_what_is_written() {
        for len in [0, 5, MAP_FROM / 4 + 3] {
            let mut p = Pages::<f32>::zeroed(len);
            assert_eq!(p.len(), len);
            assert!(p.iter().all(|&v| v == 0.0));
            for (i, v) in p.iter_mut().enumerate() {
                *v = i as f32;
            }
            assert!(p.iter().enumerate().all(|(i, &v)| v == i as f32));
        }
    }
}
