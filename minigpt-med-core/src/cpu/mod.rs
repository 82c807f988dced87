//! What every CPU kernel module builds on: the instruction set the kernels may use, known only
//! by asking the CPU, the output pointer parallel tasks share, how memory is held, and the
//! arithmetic ceiling the kernels are measured against.
//!
//! [`Isa::Avx2`] carries an [`Avx2`] token that only [`Isa::detect`] can make, so holding one
//! proves the CPU runs AVX2, FMA and F16C: a kernel that matches it may call the AVX2 code
//! without checking again, and no caller can hand it a wrong value.

mod malloc;
mod pages;
mod peak;
pub use malloc::keep_freed_memory;
pub(crate) use pages::{Pages, Zeroable};
pub use peak::{fma_peak, FmaPeak};

/// Proof that this CPU runs AVX2, FMA and F16C, whether the quantized kernels may use
/// AVX-512 VNNI's `vpdpbusd` (AVX512-VNNI and AVX512-VL: Ice Lake, Zen 4 and later), and
/// whether the f32 GEMM may use 512-bit FMAs (AVX512F). Made only by [`Isa::detect`] and
/// [`Isa::available`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avx2 {
    vnni: bool,
    avx512: bool,
}

impl Avx2 {
    /// Whether the CPU runs AVX512-VNNI and AVX512-VL (checked when the token was made).
    pub fn vnni(self) -> bool {
        self.vnni
    }

    /// Whether the CPU runs AVX512F (checked when the token was made).
    pub fn avx512(self) -> bool {
        self.avx512
    }
}

#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

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
            return Self::Avx2(Avx2 { vnni: has_vnni(), avx512: is_x86_feature_detected!("avx512f") });
        }
        Self::Portable
    }

    /// Every instruction set this CPU runs, [`Isa::Portable`] first (for tests and benches
    /// that compare the kernels): on a CPU with AVX-512, AVX2 both without and with its
    /// AVX-512 kernels.
    pub fn available() -> Vec<Self> {
        let mut all = vec![Self::Portable];
        #[cfg(target_arch = "x86_64")]
        if let Self::Avx2(a) = Self::detect() {
            let plain = Avx2 { vnni: false, avx512: false };
            if a != plain {
                all.push(Self::Avx2(plain));
            }
            all.push(Self::Avx2(a));
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
