//! `cpu::keep_freed_memory`: a freed buffer's pages stay with the process, so allocating it again
//! takes no page faults. Alone in its test binary: no other test moves glibc's thresholds first.

/// Minor page faults this thread has taken so far.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn faults() -> i64 {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value we own.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
        u.ru_minflt
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_freed_buffer_is_reused_without_page_faults() {
    assert!(std::env::var_os("GLIBC_TUNABLES").is_none(), "run without GLIBC_TUNABLES");
    assert!(minigpt_med::cpu::keep_freed_memory());
    assert!(minigpt_med::cpu::keep_freed_memory(), "a second call keeps the settings");
    // 24 MiB: above glibc's default mapping threshold (128 KiB, adapting up to 32 MiB), so by
    // default the first buffer is a mapping of its own and the second one fresh heap pages.
    const LEN: usize = 24 << 20;
    let touch = || {
        let v = std::hint::black_box(vec![1u8; LEN]);
        v.iter().step_by(4096).map(|&b| b as usize).sum::<usize>()
    };
    assert_eq!(touch(), LEN / 4096);
    let before = faults();
    for _ in 0..3 {
        assert_eq!(touch(), LEN / 4096);
    }
    let taken = faults() - before;
    // Without the settings the second buffer alone takes LEN / 4096 = 6144 faults.
    assert!(taken < 64, "{taken} page faults for buffers freed and allocated again");
}
