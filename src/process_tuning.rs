//! Process-wide settings made once at start-up, before any thread exists, so that the
//! compute threads are not slowed by the allocator or by idle spinning.
//!
//! - The binary allocates through mimalloc (`main.rs`). By default mimalloc returns
//!   pages it no longer uses to the kernel after 10 ms, so each training step (and each
//!   forward pass) page-faults its activation buffers in afresh, as zeroed huge pages:
//!   12% of a Fashion-MNIST training run. Purging is turned off: the buffers of one step
//!   are reused by the next. (glibc's malloc had the same problem worse: it unmaps whole
//!   heaps of a thread's arena whatever its thresholds.)
//! - candle's element-wise thread pool spins 25,000 iterations after each op before
//!   sleeping; on a 2-core machine that spinning competes with the rayon threads running
//!   the convolution kernels. A short spin is enough (`CANDLE_BARRIER_POOL_SPIN_LIMIT`,
//!   left alone when the user set it).

/// Applies the settings; call first thing in `main`.
pub fn tune_process() {
    // mimalloc's option `purge_delay` (15 in mimalloc.h's `mi_option_e`); -1 = never.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is not thread safe; no other thread exists yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        std::env::set_var(SPIN, "200");
    }
}
