//! Process-wide settings made once at start-up, before any thread exists, so that the
//! compute threads are not slowed by the allocator or by idle spinning.
//!
//! - glibc returns every allocation above 128 KiB to the kernel when freed, so each
//!   activation buffer of a forward pass costs fresh page faults (measured: about 10% of a
//!   MobileNetV2 forward). Raising the mmap and trim thresholds keeps freed buffers in the
//!   heap for the next batch.
//! - candle's element-wise thread pool spins 25,000 iterations after each op before
//!   sleeping; on a 2-core machine that spinning competes with the rayon threads running
//!   the convolution kernels. A short spin is enough (`CANDLE_BARRIER_POOL_SPIN_LIMIT`,
//!   left alone when the user set it).

/// Applies the settings; call first thing in `main`.
pub fn tune_process() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const BYTES: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters; no allocation is in flight
        // on another thread because none has been started yet.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, BYTES);
            libc::mallopt(libc::M_TRIM_THRESHOLD, BYTES);
        }
    }
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        std::env::set_var(SPIN, "200");
    }
}
