//! The `sitewatch` binary: everything lives in the library.

/// mimalloc: fewer cycles per allocation than glibc malloc on the probe path, and freed
/// memory goes back to the system after a large reload instead of staying in glibc arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hands memory the allocator keeps for reuse back to the system; called after a reload,
/// which frees a whole parsed configuration at once.
fn trim_memory() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> std::process::ExitCode {
    sitewatch::set_memory_trim(trim_memory);
    sitewatch::cli::main()
}
