// Rebuild the object when bpf-linker changes (a new linker can change the output).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // bpf-linker asks LLVM to keep memcpy's loads and stores in order by
    // default, which also turns every memset (a struct's zeroing) into a
    // call to a byte-by-byte loop: a few dozen nanoseconds on the packet
    // path. Without it LLVM writes them as plain stores.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
