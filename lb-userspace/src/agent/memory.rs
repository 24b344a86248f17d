//! Heap the allocator keeps after a large change set, handed back: a cold
//! start parses every object of the cluster once, and glibc keeps those
//! freed pages in the process (RSS) unless asked to return them.

/// Change sets at least this large (changes) are followed by a trim; small
/// ones free too little to be worth walking the heap.
pub const TRIM_AFTER: usize = 1_000;

/// Returns the free pages of every malloc arena to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "glibc's malloc_trim has no safe wrapper")]
pub fn release_freed() {
    // SAFETY: malloc_trim takes no pointer from us and only walks the
    // allocator's own free lists, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() {}

/// One malloc arena for every thread. The file source parses on a thread
/// of its own and hands the sync loop objects that live as long as the
/// cluster does: in an arena of their own they would sit among the
/// parse's freed pages, which no trim can return (at 100,000 Services
/// that held 150 MiB). The threads seldom allocate at once, so one arena
/// costs no waiting that matters. Called before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "glibc's mallopt has no safe wrapper")]
pub fn one_arena() {
    // SAFETY: mallopt only sets an allocator parameter, under its lock.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn one_arena() {}
