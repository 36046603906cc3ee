//! Giving memory back to the system after load. The C library keeps what
//! closed logical connections and finished streams used in its arenas; once
//! the proxy goes quiet (`ic_proxy_core::TrimPolicy`), `malloc_trim` returns
//! it, so a proxy shrinks back toward its idle size.

/// How often the proxy is asked whether it went quiet after work.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes
    // no pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
