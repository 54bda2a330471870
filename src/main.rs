//! The `sitewatch` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    sitewatch::cli::main()
}
