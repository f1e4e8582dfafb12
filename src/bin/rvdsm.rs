//! `rvdsm`: the command-line client of rvdsmd, in the style of vdsm-client:
//! `rvdsm [connection options] Namespace method [name=value ...]`, `rvdsm --events` to follow
//! the daemon's events, and `rvdsm pki init DIR` to make a lab CA and certificates.
//!
//! Exit status: 0 success; 1 the daemon answered with an error (code and message on stderr);
//! 2 bad usage; 3 the daemon could not be reached or the connection failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use rvdsm::api;
use rvdsm::cli::{self, UsageError};
use rvdsm::client::{Client, ClientError, Endpoint};
use rvdsm::config::{DEFAULT_PORT, DEFAULT_UNIX_SOCKET, TlsConfig};
use rvdsm::rpc::tls::TlsFiles;
use serde_json::{Map, Value};

const EXIT_SERVER_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONNECTION: u8 = 3;

/// Sends one request to rvdsmd and prints the result as JSON.
#[derive(Parser)]
#[command(version, about, disable_help_flag = true)]
struct Args {
    /// The daemon's Unix socket (the default connection).
    #[arg(long, env = "RVDSM_SOCKET", default_value = DEFAULT_UNIX_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Connect over TCP to this host instead of the Unix socket.
    #[arg(short = 'a', long)]
    host: Option<String>,
    /// TCP port (with --host).
    #[arg(short, long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// With --host: plain TCP, no TLS (a daemon with `server.tls.enabled = false`).
    #[arg(long)]
    insecure: bool,
    /// With --host: the client certificate presented to the daemon [default: the host's, as
    /// vdsm-client does].
    #[arg(long, value_name = "PEM")]
    cert: Option<PathBuf>,
    /// With --host: the client certificate's private key.
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
    /// With --host: the CA the daemon's certificate must chain to.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Follow the daemon's events (job ends, VM status changes), one JSON line each.
    #[arg(long)]
    events: bool,
    /// With --events: exit after this many events.
    #[arg(long, value_name = "N")]
    max_events: Option<u64>,
    /// Seconds to wait for the connection and for the answer.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Read the parameters as a JSON object from FILE (`-` for standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    param_file: Option<PathBuf>,
    /// List the verbs and exit.
    #[arg(long)]
    list: bool,
    /// For verbs that start a job (VM.snapshot, VM.merge): follow it to its end, showing its
    /// progress, and exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
    /// Show help; after `Namespace method`, describe that verb.
    #[arg(short, long)]
    help: bool,
    /// Namespace (Host, VM, ...).
    namespace: Option<String>,
    /// Method (getVMList, getStats, ...).
    method: Option<String>,
    /// Parameters as name=value; a value that is JSON is sent typed, @FILE reads it from FILE.
    params: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        print!("{}", cli::list_verbs());
        return ExitCode::SUCCESS;
    }
    if args.events {
        return run(follow_events(&args));
    }
    if args.namespace.as_deref() == Some("pki") {
        return pki(&args);
    }
    let (Some(namespace), Some(method)) = (&args.namespace, &args.method) else {
        let _ = Args::command().print_help();
        return if args.help {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_USAGE)
        };
    };
    let name = format!("{namespace}.{method}");
    if args.help {
        return match api::find(&name) {
            Some(verb) => {
                print!("{}", cli::describe_verb(verb));
                ExitCode::SUCCESS
            }
            None => usage_error(&format!("unknown verb {name}; see rvdsm --list")),
        };
    }
    let mut params = match collect_params(&args) {
        Ok(params) => params,
        Err(err) => return usage_error(&err.to_string()),
    };
    let starts_job = matches!(name.as_str(), "VM.snapshot" | "VM.merge");
    if args.wait && starts_job && !params.contains_key("jobUUID") {
        // A job can only be followed by its id: give it one.
        params.insert(
            "jobUUID".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rvdsm: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let job = params
        .get("jobUUID")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match runtime.block_on(call(&args, &name, params.clone())) {
        Ok(result) if args.wait => match job {
            Some(job) => runtime.block_on(follow_job(&args, &job)),
            None => {
                println!("{}", pretty(&result));
                ExitCode::SUCCESS
            }
        },
        Ok(result) => {
            println!("{}", pretty(&result));
            ExitCode::SUCCESS
        }
        Err(err @ ClientError::Server { .. }) => {
            eprintln!(
                "rvdsm: Command {name} with args {} failed:\n{err}",
                Value::Object(params)
            );
            ExitCode::from(EXIT_SERVER_ERROR)
        }
        Err(err) => {
            eprintln!("rvdsm: {err}");
            ExitCode::from(EXIT_CONNECTION)
        }
    }
}

fn collect_params(args: &Args) -> Result<Map<String, Value>, UsageError> {
    match &args.param_file {
        Some(_) if !args.params.is_empty() => Err(UsageError::Mixed),
        Some(file) => cli::read_param_file(file),
        None => cli::parse_assignments(&args.params),
    }
}

fn endpoint(args: &Args) -> Endpoint {
    let Some(host) = &args.host else {
        return Endpoint::Unix(args.socket.clone());
    };
    let defaults = TlsConfig::default();
    let tls = (!args.insecure).then(|| TlsFiles {
        cert: args.cert.clone().unwrap_or(defaults.cert),
        key: args.key.clone().unwrap_or(defaults.key),
        ca: args.ca.clone().unwrap_or(defaults.ca),
    });
    Endpoint::Tcp {
        host: host.clone(),
        port: args.port,
        tls,
    }
}

async fn call(args: &Args, name: &str, params: Map<String, Value>) -> Result<Value, ClientError> {
    let client = Client::connect(&endpoint(args), Duration::from_secs(args.timeout)).await?;
    client.call(name, Value::Object(params)).await
}

/// Runs `work` on a small runtime.
fn run(work: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(err) => {
            eprintln!("rvdsm: cannot start: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `--events`: prints each event as one JSON line until the daemon goes away.
async fn follow_events(args: &Args) -> ExitCode {
    let subscribed = async {
        let client = Client::connect(&endpoint(args), Duration::from_secs(args.timeout)).await?;
        let events = client.events().await?;
        Ok::<_, ClientError>((client, events))
    };
    let (_client, mut events) = match subscribed.await {
        Ok(subscribed) => subscribed,
        Err(err) => {
            eprintln!("rvdsm: {err}");
            return ExitCode::from(EXIT_CONNECTION);
        }
    };
    let mut seen = 0;
    while args.max_events.is_none_or(|max| seen < max) {
        match events.next().await {
            Some(Ok(event)) => {
                println!("{event}");
                seen += 1;
            }
            Some(Err(err)) => eprintln!("rvdsm: unreadable event: {err}"),
            None => {
                eprintln!("rvdsm: the daemon closed the event stream");
                return ExitCode::from(EXIT_CONNECTION);
            }
        }
    }
    ExitCode::SUCCESS
}

/// `rvdsm pki init DIR [NAME...]`: a lab CA, host and client certificates.
fn pki(args: &Args) -> ExitCode {
    let (Some("init"), Some(dir)) = (args.method.as_deref(), args.params.first()) else {
        return usage_error("usage: rvdsm pki init DIR [HOSTNAME...]");
    };
    match rvdsm::pki::init(std::path::Path::new(dir), &args.params[1..]) {
        Ok(files) => {
            println!("CA certificate:     {}", files.server.ca.display());
            println!("host certificate:   {}", files.server.cert.display());
            println!("host key:           {}", files.server.key.display());
            println!("client certificate: {}", files.client.cert.display());
            println!("client key:         {}", files.client.key.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("rvdsm: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Polls `Host.getJobs` until the job ends; prints its progress on stderr and the final job
/// on stdout. Exit status 1 if it failed.
async fn follow_job(args: &Args, job: &str) -> ExitCode {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let params = serde_json::json!({"job_ids": [job]});
        let jobs = match call(
            args,
            "Host.getJobs",
            params.as_object().cloned().unwrap_or_default(),
        )
        .await
        {
            Ok(jobs) => jobs,
            Err(err) => {
                eprintln!("rvdsm: following job {job}: {err}");
                return ExitCode::from(EXIT_CONNECTION);
            }
        };
        let Some(info) = jobs.get(job) else {
            eprintln!("rvdsm: job {job} is not known to the host");
            return ExitCode::from(EXIT_SERVER_ERROR);
        };
        let status = info["status"].as_str().unwrap_or("unknown").to_owned();
        let percent = info["progress"].as_u64().unwrap_or(0);
        let line = cli::progress_line(job, &status, percent);
        if line != last {
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        if tty && matches!(status.as_str(), "done" | "failed" | "aborted") {
            eprintln!();
        }
        match status.as_str() {
            "done" => {
                println!("{}", pretty(info));
                return ExitCode::SUCCESS;
            }
            "failed" | "aborted" => {
                println!("{}", pretty(info));
                eprintln!("rvdsm: job {job} {status}: {}", info["error"]["message"]);
                return ExitCode::from(EXIT_SERVER_ERROR);
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("rvdsm: {message}");
    ExitCode::from(EXIT_USAGE)
}
