//! The `sitewatch` binary: everything lives in the library.

/// mimalloc: fewer cycles per allocation than glibc malloc on the probe path, and freed
/// memory goes back to the system after a large reload instead of staying in glibc arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sitewatch::cli::main()
}
