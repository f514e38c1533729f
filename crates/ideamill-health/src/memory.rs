//! Giving freed heap memory back to the system.

/// Bodies from this size up are followed by [`give_back_freed`].
pub const LARGE_BUFFER: usize = 1024 * 1024;

/// Return the heap's free pages to the system. glibc gives freed memory
/// back only from the top of a heap, so a few small allocations that
/// another thread (a store connection's, say) makes while a large body is
/// parsed pin the megabytes freed below them, for as long as they live; a
/// mill that takes such bodies now and then would keep each one's size.
/// Call after a large buffer and what was parsed from it are dropped: it
/// walks malloc's free lists and releases their whole pages.
pub fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases pages of free chunks, under malloc's
    // own locks; it touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
