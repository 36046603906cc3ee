//! Giving memory back to the system after load. The C library keeps what
//! closed logical connections and finished streams used in its arenas; once
//! the proxy goes quiet (`ic_proxy_core::TrimPolicy`), `malloc_trim` returns
//! it, so a proxy shrinks back toward its idle size.

/// Freed memory the C library keeps, at most, while the proxy works.
const KEEP_WHILE_BUSY: i32 = 64 << 20;
/// Allocations at least this large get their own mapping.
const OWN_MAPPING_FROM: i32 = 4 << 20;

/// Under a steady load the C library would hand the free top of its
/// per-thread heaps back to the kernel after every burst and fault the
/// pages in again at the next (`madvise`, page faults and page zeroing were
/// 5-8% of a busy proxy's CPU). It keeps them instead; [`release_free_memory`]
/// returns them once the proxy goes quiet. Call before any thread starts.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    // SAFETY: mallopt only sets the allocator's thresholds; no pointer.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_WHILE_BUSY);
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM);
    }
}

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
