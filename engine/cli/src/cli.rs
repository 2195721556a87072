//! The `weir` command line: `weir run`, `weir executor`, `weir udf check`,
//! `weir udf call`, `weir udf new`, `weir checkpoint inspect`, `weir history`,
//! and the job server's `weir serve`, `weir submit`, `weir jobs`,
//! `weir status`, `weir stop`, `weir logs` (in `serve.rs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use weir::listener::ConsoleProgress;
use weir::scheduler::{CheckpointOptions, Clock, ClusterOptions, Master, RunOptions, StopSignal};
use weir::udf::{UdfKind, UdfRuntime};

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("WEIR_COMMIT"), ")");

/// `weir --version`: the release, the commit, the UDF ABI versions and the
/// wasmtime release (what a bug report needs).
static LONG_VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let abis: Vec<String> = weir::UDF_ABI_VERSIONS.iter().map(|v| format!("v{v}")).collect();
    format!("{VERSION}\nUDF ABI: {}\nwasmtime: {}", abis.join(", "), weir::WASMTIME_VERSION)
});

#[derive(Parser, Debug)]
#[command(name = "weir", version = VERSION, long_version = LONG_VERSION.as_str(), about = "Micro-batch stream processing with WebAssembly UDFs")]
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
    /// Run an executor process that joins a driver.
    Executor(ExecutorArgs),
    /// Look into checkpoint directories.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Serve the status page of a finished job from its event log (--event-log).
    History(HistoryArgs),
    /// Run the multi-tenant job server (docs/serve.md).
    Serve(crate::serve::ServeArgs),
    /// Submit a job to a server: uploads the job file and its modules; prints the job's id.
    Submit(crate::serve::SubmitArgs),
    /// List your jobs on a server.
    Jobs(crate::serve::ServerArgs),
    /// A job's status on a server (JSON).
    Status(crate::serve::JobArgs),
    /// Stop a job on a server: after the batch in flight, or --now.
    Stop {
        #[command(flatten)]
        job: crate::serve::JobArgs,
        /// Stop now instead of after the batch in flight.
        #[arg(long)]
        now: bool,
    },
    /// A job's log on a server.
    Logs {
        #[command(flatten)]
        job: crate::serve::JobArgs,
        /// Keep printing new lines until the job ends.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// The event-log directory.
    pub dir: PathBuf,
    /// Serve on HOST:PORT (port 0: any free port; a taken port: the next free one).
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub ui: String,
    /// Requests must carry the token in this file (required off loopback).
    #[arg(long)]
    pub ui_token_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ExecutorArgs {
    /// The driver's executor address (HOST:PORT), or several separated by
    /// commas (where the driver may run: the first that accepts is joined).
    #[arg(long, value_delimiter = ',', required = true)]
    pub driver: Vec<String>,
    /// When the driver goes away (it died, moved to another host, or
    /// declared this executor lost), join again as a new executor: the same
    /// address or the next of --driver's, until a driver shuts this
    /// executor down or none accepts it for --rejoin-timeout-ms.
    #[arg(long)]
    pub rejoin: bool,
    /// With --rejoin: give up (exit with an error) after this long without
    /// a driver (ms).
    #[arg(long, default_value_t = 60_000)]
    pub rejoin_timeout_ms: u64,
    /// Treat the driver as lost after this long without a frame from it
    /// (it heartbeats every 100 ms): rejoin with --rejoin, else exit with an
    /// error (ms; at least 500).
    #[arg(long, default_value_t = 3000)]
    pub heartbeat_timeout_ms: u64,
    /// Tasks to run at once.
    #[arg(long, default_value_t = 1)]
    pub cores: u32,
    /// The largest frame taken from the driver, a block fetcher or a block
    /// server, in bytes (from 1 MiB to 1 GiB).
    #[arg(long, default_value_t = weir::cluster::protocol::MAX_FRAME as u64)]
    pub max_frame_bytes: u64,
    /// File holding the cluster secret (default: the WEIR_SECRET environment variable).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Claim another protocol version (for testing the driver's refusal).
    #[arg(long, hide = true, default_value_t = weir::cluster::executor::VERSION)]
    pub protocol_version: u32,
}

#[derive(Subcommand, Debug)]
pub enum CheckpointCommand {
    /// What the newest valid checkpoint holds, and which files are invalid.
    Inspect {
        /// The checkpoint directory, or object-store URL (s3://bucket/prefix).
        dir: PathBuf,
        /// The job file whose `[checkpoint]` bounds (max_state_bytes,
        /// max_metadata_bytes, ...) to read the checkpoint under, as that
        /// job does; without it, the defaults.
        #[arg(long)]
        job: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The job file.
    pub job: PathBuf,
    /// Where executors run: local[N] (N threads in this process),
    /// local-cluster[N] or local-cluster[N,CORES] (N executor processes on this
    /// machine), cluster[N] (wait for N executors to join at --listen).
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
    /// Checkpoint into DIR, and recover from it if it holds a checkpoint.
    /// DIR may be an object-store URL: s3://bucket/prefix (gs://, az://),
    /// configured by the standard environment variables (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, ...).
    #[arg(long, value_name = "DIR|URL")]
    pub checkpoint: Option<PathBuf>,
    /// Object-store checkpoints: the driver's lease lasts this long
    /// unrenewed (ms; renewed every third of it). A driver finding a lease
    /// nobody renews takes it over after this long.
    #[arg(long, default_value_t = 30_000, requires = "checkpoint")]
    pub checkpoint_lease_ms: u64,
    /// Discard what the checkpoint directory holds and start over.
    #[arg(long, requires = "checkpoint")]
    pub fresh: bool,
    /// Recover although a UDF module changed since the checkpoint.
    #[arg(long, requires = "checkpoint")]
    pub accept_module_change: bool,
    /// Recover although what a stateful stream depends on changed since the
    /// checkpoint (its operations upstream, their modules or arguments), or
    /// a stateful stream was added or removed. Edits elsewhere (outputs,
    /// stateless streams, comments) need no flag.
    #[arg(long, requires = "checkpoint")]
    pub accept_job_change: bool,
    /// Stop the run when more batches than this are pending because their
    /// outputs failed (each keeps its input and lineage in memory until it
    /// completes; a restart with the same --checkpoint re-runs them).
    #[arg(long, default_value_t = weir::scheduler::DEFAULT_MAX_PENDING_BATCHES)]
    pub max_pending_batches: usize,
    /// Metadata checkpoints to keep (at least 1).
    #[arg(long, default_value_t = 10, requires = "checkpoint", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_checkpoints: u64,
    /// Restart the driver when it dies (killed by a signal or crashed), with
    /// backoff; with --checkpoint each restart recovers where the last stopped.
    #[arg(long)]
    pub supervise: bool,
    /// With --supervise: give up after this many restarts.
    #[arg(long, default_value_t = 10)]
    pub max_restarts: u32,
    /// Accept executors on this address (HOST:PORT); needs a cluster secret
    /// unless it is a loopback address.
    #[arg(long)]
    pub listen: Option<String>,
    /// File holding the cluster secret (default: the WEIR_SECRET environment variable).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Declare an executor lost after this long without a heartbeat (ms;
    /// at least 500).
    #[arg(long, default_value_t = 3000)]
    pub heartbeat_timeout_ms: u64,
    /// Fail the batch in flight when no executor has been connected for this
    /// long (ms; at least 500), instead of waiting for one.
    #[arg(long, default_value_t = 60000)]
    pub no_executor_timeout_ms: u64,
    /// The largest frame the driver (and its local-cluster executors) take
    /// from an authenticated executor or block fetcher, in bytes (from 1 MiB
    /// to 1 GiB).
    #[arg(long, default_value_t = weir::cluster::protocol::MAX_FRAME as u64)]
    pub max_frame_bytes: u64,
    /// Serve the status page, /metrics and /api/v1 on HOST:PORT (a taken
    /// port: the next free one; port 0: any free port), or `off`.
    #[arg(long, default_value = weir_ui::DEFAULT_ADDR, value_name = "HOST:PORT|off")]
    pub ui: String,
    /// Requests to the status page must carry the token in this file
    /// (`Authorization: Bearer TOKEN` or `?token=TOKEN`); required when
    /// --ui is not a loopback address.
    #[arg(long)]
    pub ui_token_file: Option<PathBuf>,
    /// The per-batch progress on stderr: a text line or a JSON object.
    #[arg(long, value_enum, default_value_t = ProgressArg::Text)]
    pub progress: ProgressArg,
    /// Write listener events to DIR as JSON lines (rotated, bounded), for
    /// `weir history DIR`.
    #[arg(long, value_name = "DIR")]
    pub event_log: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressArg {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ClockArg {
    Wall,
    Logical,
}

#[derive(Subcommand, Debug)]
pub enum UdfCommand {
    /// Validate a module against the UDF ABI, list its functions, and
    /// explain what it would need (imports, kinds, components, memory).
    Check {
        /// A .wasm or .wat file.
        module: PathBuf,
    },
    /// Run one function on records given as JSON; print the output records
    /// as JSON (stdout), the fuel used and the time (stderr).
    Call {
        /// A .wasm or .wat file.
        module: PathBuf,
        /// The function's name (without its kind).
        function: String,
        /// The input records as a JSON array (arrays are tuples; a reduce
        /// group is an array of values), or @FILE to read them from FILE.
        #[arg(long)]
        input: String,
        /// The function's kind, when the module has several functions of
        /// that name.
        #[arg(long, value_parser = parse_kind)]
        kind: Option<UdfKind>,
        /// A parameter for the function, as a job file's `module.f(...)`
        /// gives it (docs/udf-abi.md, section 3a): `NAME=VALUE` (named) or
        /// `VALUE` (positional, in order, before the named ones). VALUE is
        /// a JSON number, "string", true, false or null, or @PATH: a
        /// dataset's records (a `batches` file or a directory of text
        /// files). Repeatable.
        #[arg(long = "param", value_name = "[NAME=]VALUE")]
        params: Vec<String>,
        /// The batch time the instance is handed (ms since the epoch; the
        /// module's `weir_batch_time`, a component's WASI clocks), as in
        /// the batch of that time. Without it: 0.
        #[arg(long = "batch-time", value_name = "MS")]
        batch_time: Option<i64>,
        /// The partition the call stands for (it seeds a component's WASI
        /// random numbers with the module hash and the batch time). Without
        /// it: 0.
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Write a ready-to-build UDF project (a WordCount) into directory NAME.
    New {
        /// The language.
        #[arg(value_enum)]
        lang: crate::udf_new::Lang,
        /// The project's name, and the directory it is written to.
        name: String,
        /// Write into this directory instead of ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The weir-udf SDK (the repository's udf-sdk/ directory) the Rust
        /// template depends on; default: the one this weir was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

fn parse_kind(s: &str) -> Result<UdfKind, String> {
    s.parse().map_err(|()| {
        let known: Vec<&str> = UdfKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown kind {s:?} (known: {})", known.join(", "))
    })
}

/// `-v`/`-vv` raise Weir's own events (the `weir*` targets) only; the
/// wasmtime and cranelift internals stay at warnings unless `-vvv` or
/// `WEIR_LOG` (an `EnvFilter` directive) asks for them.
fn log_filter(verbose: u8, quiet: bool) -> String {
    match (quiet, verbose) {
        (true, _) => "error".into(),
        (false, 0) => "warn".into(),
        (false, 1) => "warn,weir=info".into(),
        (false, 2) => "warn,weir=debug".into(),
        _ => "trace".into(),
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(verbose, quiet)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // The chain of causes, each once: typed errors often already
            // quote their source in their own message.
            let mut msg = String::new();
            for cause in e.chain() {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    if !msg.is_empty() {
                        msg.push_str(": ");
                    }
                    msg.push_str(&c);
                }
            }
            eprintln!("weir: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Udf { command: UdfCommand::Check { module } } => crate::udf::check(&module),
        Command::Udf { command: UdfCommand::Call { module, function, input, kind, params, batch_time, partition } } => {
            crate::udf::call(&module, &function, &input, kind, &params, (batch_time, partition))
        }
        Command::Udf { command: UdfCommand::New { lang, name, dir, sdk } } => {
            crate::udf_new::new(lang, &name, dir.as_deref(), sdk.as_deref())
        }
        Command::Run(args) if args.supervise => supervise(&args),
        Command::Run(args) => run_job(args, cli.quiet),
        Command::Executor(a) => {
            let secret = weir::cluster::secret_from(a.secret_file.as_deref())
                .with_context(|| secret_what(a.secret_file.as_deref()))?
                .context("no cluster secret: set WEIR_SECRET or pass --secret-file")?;
            let mut opts = weir::cluster::executor::ExecutorOptions::new(a.cores);
            opts.version = a.protocol_version;
            opts.rejoin = a.rejoin.then(|| std::time::Duration::from_millis(a.rejoin_timeout_ms));
            opts.driver_timeout = std::time::Duration::from_millis(a.heartbeat_timeout_ms);
            opts.max_frame = weir::cluster::protocol::check_frame_limit(a.max_frame_bytes)
                .map_err(anyhow::Error::msg)
                .context("--max-frame-bytes")?;
            weir::cluster::executor::run_with(&a.driver, &secret, &opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Checkpoint { command: CheckpointCommand::Inspect { dir, job } } => {
            let bounds = match &job {
                Some(job) => weir::job::checkpoint_bounds(job)?,
                None => weir::checkpoint::CheckpointBounds::default(),
            };
            print_out(&weir::checkpoint::inspect_bounded(&dir, bounds)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::History(a) => history(&a),
        Command::Serve(a) => crate::serve::serve(&a),
        Command::Submit(a) => crate::serve::submit(&a),
        Command::Jobs(a) => crate::serve::jobs(&a),
        Command::Status(a) => crate::serve::status(&a),
        Command::Stop { job, now } => crate::serve::stop(&job, now),
        Command::Logs { job, follow } => crate::serve::logs(&job, follow),
    }
}

/// What reading the cluster secret was, for its error: the file it names
/// (a missing one's error says only "No such file or directory").
fn secret_what(file: Option<&std::path::Path>) -> String {
    match file {
        Some(f) => format!("reading the cluster secret from {}", f.display()),
        None => "reading the cluster secret (WEIR_SECRET)".into(),
    }
}

/// `weir history DIR`: serves the pages of the event log until interrupted.
fn history(a: &HistoryArgs) -> Result<ExitCode> {
    let token = a.ui_token_file.as_deref().map(weir_ui::read_token).transpose()?;
    let (addr, bad, n) = weir_ui::serve_history(&a.dir, &a.ui, token, Default::default())
        .with_context(|| format!("serving the event log in {}", a.dir.display()))?;
    if bad > 0 {
        tracing::warn!("{bad} line(s) of the event log could not be read and were skipped");
    }
    eprintln!("weir: history of {} ({n} events) at http://{addr}/ (Ctrl-C to stop)", a.dir.display());
    loop {
        // The server runs on its own threads; SIGINT/SIGTERM end the process.
        std::thread::park();
    }
}

/// Starts the status page and event log as `weir run` asked.
fn start_ui(args: &RunArgs, job: &weir::job::Job, master: &str, clock: Clock) -> Result<Option<weir_ui::Ui>> {
    let off = args.ui.eq_ignore_ascii_case("off");
    if off && args.event_log.is_none() {
        return Ok(None);
    }
    let mut info = weir_ui::event::JobInfo::from_graph(&job.context.graph());
    info.name = args.job.display().to_string();
    info.master = master.to_string();
    info.clock = format!("{clock:?}").to_lowercase();
    info.modules = job.context.registry().modules();
    info.set_limits(job.context.registry().limits());
    let mut opts = weir_ui::UiOptions::default();
    opts.addr = (!off).then(|| args.ui.clone());
    opts.token = args.ui_token_file.as_deref().map(weir_ui::read_token).transpose()?;
    opts.event_log = args.event_log.clone();
    let default_addr = args.ui == weir_ui::DEFAULT_ADDR;
    let ui = match weir_ui::Ui::start(opts.clone(), info.clone()) {
        // The default page is a convenience: many jobs on one machine must
        // not fail because the ports after 4040 are taken.
        Err(e @ weir_ui::Error::Bind { .. }) if default_addr => {
            tracing::warn!("no status page: {e}");
            opts.addr = None;
            weir_ui::Ui::start(opts, info)?
        }
        r => r.context("starting the status page")?,
    };
    if let Some(a) = ui.addr() {
        eprintln!("weir: status page at http://{a}/");
    }
    Ok(Some(ui))
}

/// `--supervise`: runs the driver as a child process and restarts it when it
/// dies, with backoff (1 s doubling to 30 s) and a limit. A driver that
/// exits by itself — success, a bad job, failed batches — is not restarted.
/// SIGINT and SIGTERM to the supervisor go to the driver (which drains), and
/// the supervisor waits for it and exits with its status: it never leaves a
/// driver running alone.
fn supervise(args: &RunArgs) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the weir executable")?;
    let child_args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--supervise").collect();
    // A restart recovers from what the first driver checkpointed: `--fresh`
    // again would discard it (and a socket source's logged lines with it).
    let restart_args: Vec<String> = child_args.iter().filter(|a| *a != "--fresh").cloned().collect();
    let mut backoff = std::time::Duration::from_secs(1);
    let mut restarts = 0;
    let signals = forward_signals();
    loop {
        // Its own process group: a Ctrl-C in the terminal reaches only the
        // supervisor, which forwards it once (two would stop the driver at once).
        let child = std::process::Command::new(&exe)
            .args(if restarts == 0 { &child_args } else { &restart_args })
            .process_group(0)
            .spawn()
            .context("cannot start the driver")?;
        signals.set_child(child.id());
        let status = wait_child(child)?;
        signals.set_child(0);
        if signals.forwarded() {
            return Ok(ExitCode::from(status.code().unwrap_or(1) as u8));
        }
        let died = match status.code() {
            None => true,      // killed by a signal
            Some(101) => true, // panicked
            Some(c) => return Ok(ExitCode::from(c as u8)),
        };
        if died {
            if restarts >= args.max_restarts {
                anyhow::bail!("the driver died {} times ({status}); giving up", restarts + 1);
            }
            restarts += 1;
            eprintln!("weir: the driver died ({status}); restart {restarts} of {} in {backoff:?}", args.max_restarts);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
        }
    }
}

/// Writes to stdout. A closed pipe (`| head`) is the reader's choice, not an
/// error; any other failure (a full disk behind a redirect) is one.
pub(crate) fn print_out(s: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

fn run_job(args: RunArgs, quiet: bool) -> Result<ExitCode> {
    let master: Master = args.master.parse().map_err(anyhow::Error::msg).context("--master")?;
    let runtime = UdfRuntime::shared()?;
    let job = weir::job::load(&args.job, runtime)?;
    let clock = match args.clock {
        Some(ClockArg::Wall) => Clock::Wall,
        Some(ClockArg::Logical) => Clock::Logical,
        None => job.clock.unwrap_or(Clock::Wall),
    };
    let stop = StopSignal::default();
    install_ctrl_c(stop.clone());
    let mut opts = RunOptions::default();
    opts.master = master;
    opts.clock = clock;
    opts.max_batches = args.batches;
    opts.explain = args.explain;
    opts.stop = stop;
    let ui = start_ui(&args, &job, &args.master, clock)?;
    if let Some(ui) = &ui {
        opts.listeners.push(ui.listener());
    }
    opts.listeners.push(Arc::new(weir_ui::ReceiverLog::default()));
    match args.progress {
        ProgressArg::Json if !quiet => {
            opts.listeners.push(Arc::new(ConsoleProgress { batches: false }));
            opts.listeners.push(Arc::new(weir_ui::JsonProgress::default()));
        }
        _ => opts.listeners.push(Arc::new(ConsoleProgress { batches: !quiet })),
    }
    let mut cluster = ClusterOptions::default();
    cluster.listen = args.listen.clone();
    cluster.secret = weir::cluster::secret_from(args.secret_file.as_deref())
        .with_context(|| secret_what(args.secret_file.as_deref()))?;
    cluster.heartbeat_timeout = std::time::Duration::from_millis(args.heartbeat_timeout_ms);
    cluster.no_executor_timeout = std::time::Duration::from_millis(args.no_executor_timeout_ms);
    cluster.max_frame_bytes = weir::cluster::protocol::check_frame_limit(args.max_frame_bytes)
        .map_err(anyhow::Error::msg)
        .context("--max-frame-bytes")?;
    // Executors are this very program, whatever it is called.
    cluster.executor_binary = std::env::current_exe().ok();
    opts.cluster = cluster;
    opts.max_pending_batches = args.max_pending_batches;
    opts.checkpoint = args.checkpoint.as_ref().map(|dir| {
        let mut c = CheckpointOptions::new(dir.clone());
        c.keep = usize::try_from(args.keep_checkpoints).unwrap_or(usize::MAX);
        c.fresh = args.fresh;
        c.accept_module_change = args.accept_module_change;
        c.accept_job_change = args.accept_job_change;
        c.lease_ttl = std::time::Duration::from_millis(args.checkpoint_lease_ms);
        c
    });
    let result = job.context.run(opts);
    if let Some(ui) = ui {
        let (run, failed) = result.as_ref().map_or((0, 0), |r| (r.batches_run, r.batches_failed));
        ui.finish(run, failed);
    }
    let report = result.with_context(|| format!("running {}", args.job.display()))?;
    let failed = report.batches_failed;
    if failed > 0 {
        eprintln!("weir: {failed} of {} batch(es) failed (see the errors above)", report.batches_run);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `f(signal number)` for every SIGINT and SIGTERM, on a thread of its own.
fn on_signals(f: impl Fn(i32) + Send + 'static) {
    use tokio::signal::unix::{signal, SignalKind};
    let _ = std::thread::Builder::new().name("weir-signals".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            loop {
                let n = tokio::select! {
                    s = int.recv() => s.map(|_| libc::SIGINT),
                    s = term.recv() => s.map(|_| libc::SIGTERM),
                };
                let Some(n) = n else { return };
                f(n);
            }
        });
    });
}

/// First SIGINT or SIGTERM: finish the batch in flight, write the
/// checkpoint, exit 0. A second one: exit now (128 + the signal).
fn install_ctrl_c(stop: StopSignal) {
    on_signals(move |n| {
        if stop.request_again(false) {
            std::process::exit(128 + n);
        }
        eprintln!("weir: stopping after the batch in flight (Ctrl-C again to exit now)");
    });
}

/// The supervisor's signal forwarding: the driver's pid (0 between drivers)
/// and whether a signal was forwarded (then the driver is not restarted).
struct Forwarder {
    child: std::sync::atomic::AtomicU32,
    forwarded: AtomicBool,
}

impl Forwarder {
    fn set_child(&self, pid: u32) {
        self.child.store(pid, Ordering::SeqCst);
    }
    fn forwarded(&self) -> bool {
        self.forwarded.load(Ordering::SeqCst)
    }
}

fn forward_signals() -> Arc<Forwarder> {
    let f = Arc::new(Forwarder { child: 0.into(), forwarded: AtomicBool::new(false) });
    let g = f.clone();
    on_signals(move |n| {
        g.forwarded.store(true, Ordering::SeqCst);
        let pid = g.child.load(Ordering::SeqCst);
        if pid == 0 {
            // Between drivers (in the restart backoff): nothing to drain.
            std::process::exit(128 + n);
        }
        // SAFETY: kill(2) with a pid this process started and still waits
        // for (so it cannot have been reused) and a valid signal number.
        unsafe {
            libc::kill(pid as libc::pid_t, n);
        }
    });
    f
}

/// Waits for the driver; a signal to the supervisor does not interrupt the wait.
fn wait_child(mut child: std::process::Child) -> Result<std::process::ExitStatus> {
    loop {
        match child.wait() {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("waiting for the driver"),
        }
    }
}
