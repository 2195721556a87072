//! The `weir` command line: `weir run`, `weir udf check`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::scheduler::{Clock, Master, RunOptions};
use crate::udf::{UdfLimits, UdfModule, UdfRuntime};

#[derive(Parser, Debug)]
#[command(name = "weir", version, about = "Micro-batch stream processing with WebAssembly UDFs")]
pub struct Cli {
    /// More logging (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a streaming job described by a TOML file.
    Run(RunArgs),
    /// Work with UDF modules.
    Udf {
        #[command(subcommand)]
        command: UdfCommand,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The job file.
    pub job: PathBuf,
    /// Where executors run: local[N] (N threads in this process).
    #[arg(long, default_value = "local[2]")]
    pub master: String,
    /// wall: batches at real time; logical: the next batch as soon as the last is done.
    #[arg(long, value_enum)]
    pub clock: Option<ClockArg>,
    /// Stop after N batches.
    #[arg(long)]
    pub batches: Option<u64>,
    /// Print each output's RDD lineage before its first batch.
    #[arg(long)]
    pub explain: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ClockArg {
    Wall,
    Logical,
}

#[derive(Subcommand, Debug)]
pub enum UdfCommand {
    /// Validate a module against the UDF ABI and list its functions.
    Check {
        /// A .wasm or .wat file.
        module: PathBuf,
    },
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = if quiet {
        "error"
    } else {
        match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Udf { command: UdfCommand::Check { module } } => udf_check(&module),
        Command::Run(args) => run_job(args, cli.quiet),
    }
}

fn udf_check(path: &std::path::Path) -> Result<ExitCode> {
    let runtime = UdfRuntime::new()?;
    let m = UdfModule::load(&runtime, path, UdfLimits::default())
        .with_context(|| format!("{} is not a valid Weir UDF module", path.display()))?;
    println!("{}: valid Weir UDF module (ABI v1)", path.display());
    println!("  sha256 {}", m.hash());
    println!("  {} bytes", m.size());
    if m.functions().is_empty() {
        println!("  no functions exported");
    }
    for (name, kind) in m.functions() {
        println!("  {:<15} {name}", kind.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_job(args: RunArgs, quiet: bool) -> Result<ExitCode> {
    let master: Master = args.master.parse().map_err(anyhow::Error::msg).context("--master")?;
    let runtime = UdfRuntime::new()?;
    let job = crate::job::load(&args.job, runtime)?;
    let clock = match args.clock {
        Some(ClockArg::Wall) => Clock::Wall,
        Some(ClockArg::Logical) => Clock::Logical,
        None => job.clock.unwrap_or(Clock::Wall),
    };
    let stop = Arc::new(AtomicBool::new(false));
    install_ctrl_c(stop.clone());
    let opts = RunOptions {
        master,
        clock,
        max_batches: args.batches,
        explain: args.explain,
        progress: !quiet,
        stop,
        after_batch: None,
    };
    let report = job.context.run(opts).with_context(|| format!("running {}", args.job.display()))?;
    let failed = report.failed_batches().count();
    if failed > 0 {
        eprintln!("weir: {failed} of {} batch(es) failed (see the errors above)", report.batches.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// First Ctrl-C: finish the batch in flight, then stop. Second: exit now.
fn install_ctrl_c(stop: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new().name("weir-signals".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            loop {
                if tokio::signal::ctrl_c().await.is_err() {
                    return;
                }
                if stop.swap(true, Ordering::Relaxed) {
                    std::process::exit(130);
                }
                eprintln!("weir: stopping after the batch in flight (Ctrl-C again to exit now)");
            }
        });
    });
}
