//! The `weir` binary: a thin command line over the `weir` library.

mod cli;
mod serve;
mod udf;
mod udf_new;

fn main() -> std::process::ExitCode {
    cli::main()
}
