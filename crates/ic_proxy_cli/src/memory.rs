//! Giving memory back to the system after load. The C library keeps what
//! freed logical connections used in its arenas; after many of them close,
//! `malloc_trim` returns it, so a proxy shrinks back toward its idle size.

/// Trim once this many logical connections have closed since the peak.
pub const TRIM_AFTER_CLOSED: i64 = 256;

#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes
    // no pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
