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
    sort_free_chunks();
}

/// glibc leaves the chunks a trim consolidated in its unsorted list, and
/// the allocations that follow sort them into size bins, 10,000 at most
/// per call (its MAX_ITERS): after a cold start at 100,000 Services
/// (about 370,000 chunks) that held the first change after it for 40-50
/// ms on each thread that allocated, the watch's and the sync loop's.
/// Sorted here instead, while the large change set is still being
/// recorded (about 120 ms there): each allocation of a size no free chunk
/// has sorts through them, and is freed back at once.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "glibc's malloc and free, called directly")]
fn sort_free_chunks() {
    // Large (over 1 KiB: the fast bins are consolidated first, and no
    // small chunk ends the walk) and under the mmap threshold (served
    // from the heap).
    const PROBE: usize = 24 << 10;
    // 10M chunks at most; an already sorted heap answers each in well
    // under a microsecond.
    for _ in 0..1_000 {
        // black_box: the compiler would otherwise drop a malloc freed
        // unused, and with it the sorting.
        // SAFETY: a fresh allocation (or null) freed at once, never
        // dereferenced.
        unsafe { libc::free(std::hint::black_box(libc::malloc(PROBE))) };
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
