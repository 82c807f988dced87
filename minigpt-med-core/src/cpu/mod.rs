//! What every CPU kernel module builds on: the instruction set the kernels may use, known only
//! by asking the CPU, the output pointer parallel tasks share, and how memory is held.
//!
//! [`Isa::Avx2`] carries an [`Avx2`] token that only [`Isa::detect`] can make, so holding one
//! proves the CPU runs AVX2, FMA and F16C: a kernel that matches it may call the AVX2 code
//! without checking again, and no caller can hand it a wrong value.

mod malloc;
mod pages;
pub use malloc::keep_freed_memory;
pub(crate) use pages::{Pages, Zeroable};

/// Proof that this CPU runs AVX2, FMA and F16C. Made only by [`Isa::detect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avx2(());

/// The instruction set the kernels run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX2 + FMA + F16C (x86-64 since Haswell / Zen 1).
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
    /// Plain Rust: runs everywhere, and is the reference the SIMD kernels are tested against.
    Portable,
}

impl Isa {
    /// The fastest instruction set this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            return Self::Avx2(Avx2(()));
        }
        Self::Portable
    }

    /// Every instruction set this CPU runs, [`Isa::Portable`] first (for tests and benches
    /// that compare the kernels).
    pub fn available() -> Vec<Self> {
        let mut all = vec![Self::Portable];
        if Self::detect() != Self::Portable {
            all.push(Self::detect());
        }
        all
    }
}

/// Raw pointer to an output buffer that parallel tasks share; each writes disjoint elements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: every user hands each task a disjoint set of elements of one live buffer, so the
// pointer may cross threads; the elements themselves are never shared.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: tasks only write elements no other task touches.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `offset` elements further.
    ///
    /// # Safety
    /// The result must stay inside the buffer.
    pub(crate) unsafe fn add(self, offset: usize) -> Self {
        // SAFETY: in bounds per this function's contract.
        Self(unsafe { self.0.add(offset) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_stable_and_portable_is_always_there() {
        assert_eq!(Isa::detect(), Isa::detect());
        let all = Isa::available();
        assert_eq!(all[0], Isa::Portable);
        assert!(all.contains(&Isa::detect()));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            matches!(Isa::detect(), Isa::Avx2(_)),
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
        );
    }
}
