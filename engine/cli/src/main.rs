//! The `weir` binary: a thin command line over the `weir` library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
