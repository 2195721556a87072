//! The `weir` binary: a thin command line over the `weir` library.

mod cli;
mod serve;

fn main() -> std::process::ExitCode {
    cli::main()
}
