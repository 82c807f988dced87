//! `set_threads` sizes the process-wide pool once, without touching the environment (its own
//! process: the pool is global).

#[test]
fn set_threads_builds_the_pool_once_and_refuses_another_size() {
    std::env::remove_var("RAYON_NUM_THREADS");
    assert!(minigpt_med::set_threads(0).is_err());
    minigpt_med::set_threads(1).unwrap();
    minigpt_med::set_threads(1).expect("the same size again is fine");
    let e = minigpt_med::set_threads(2).unwrap_err().to_string();
    assert!(e.contains("already runs 1 threads and cannot be resized to 2"), "{e}");
    assert_eq!(minigpt_med::threads(), 1, "the pool runs the threads asked for");
    assert!(std::env::var_os("RAYON_NUM_THREADS").is_none(), "the environment was written");
    assert!(std::env::var_os("CANDLE_NUM_THREADS").is_none(), "the environment was written");
}
