//! The `pil` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pil::config::Settings;

// glibc's allocator spent a fifth of the CPU under load (payments, rows and HTTP buffers are
// allocated on one thread and freed on another); mimalloc halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pil",
    version,
    about = "Payment interoperability layer for G2P cash programmes"
)]
struct Cli {
    /// Configuration file (default: ./pil.toml when present). PIL_* variables override it.
    #[arg(long, global = true, env = "PIL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum DirectoryAction {
    /// Import a CSV with header `id_type,id_value,fa` then attribute columns. All or nothing:
    /// every bad row is listed and nothing is imported.
    Import { file: PathBuf },
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, dispatcher, callbacks and poller.
    Serve,
    /// Run the built-in DFSP simulator (MTN MoMo, Mojaloop SDK and M-Pesa Daraja APIs).
    Simulator {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// Milliseconds added before each answer.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Fraction of submissions answered 500 without executing.
        #[arg(long, default_value_t = 0.0)]
        failure_rate: f64,
        /// Fraction answered 429.
        #[arg(long, default_value_t = 0.0)]
        rate_429: f64,
        /// Fraction executed but answered only after --hang-ms.
        #[arg(long, default_value_t = 0.0)]
        timeout_rate: f64,
        #[arg(long, default_value_t = 30_000)]
        hang_ms: u64,
        /// Fraction of callbacks never sent.
        #[arg(long, default_value_t = 0.0)]
        callback_loss_rate: f64,
        /// Fraction of callbacks sent twice.
        #[arg(long, default_value_t = 0.0)]
        callback_dup_rate: f64,
    },
    /// Compile and validate all scripts and adapter configs; errors as file:line:col.
    Check {
        /// A folder holding rules/ and adapters/ (default: the configured folders).
        path: Option<PathBuf>,
    },
    /// Run adapter fixtures (adapters/<id>/tests/*.json|toml); a diff for each mismatch.
    Test {
        /// Only this adapter (default: all).
        adapter: Option<String>,
        /// A folder holding rules/ and adapters/ (default: the configured folders).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Dry run of one payment (JSON file): routing decision and each candidate's request.
    Route { file: PathBuf },
    /// Create or upgrade the database schema.
    Migrate,
    /// The payee directory (id type + value → financial address + attributes).
    Directory {
        #[command(subcommand)]
        action: DirectoryAction,
    },
    /// Print the SHA-256 (hex) of a token read from standard input, for
    /// `[admin_tokens.<name>] sha256 = "..."` in pil.toml (so the token itself is never written
    /// there). One trailing newline is ignored.
    HashToken,
    /// PIL + simulator in one process with a sample disbursement.
    Demo {
        #[arg(long, default_value_t = 10_000)]
        payments: usize,
        /// Exit after the summary (status 0 only if every payment ended as predicted).
        #[arg(long)]
        exit: bool,
        #[arg(long, default_value = "127.0.0.1:8090")]
        simulator_listen: SocketAddr,
    },
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    pil::startup::disable_transparent_huge_pages();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The token on standard input without its line ending (`echo "$TOKEN" | pil hash-token`).
fn hash_token(input: &mut impl std::io::Read) -> anyhow::Result<String> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .context("reading the token from standard input")?;
    let token = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    anyhow::ensure!(!token.is_empty(), "no token on standard input");
    anyhow::ensure!(
        token.trim() == token,
        "the token starts or ends with white space; PIL trims what clients send, so it could never match"
    );
    Ok(pil::script_files::sha256_hex(token.as_bytes()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Needs no configuration: it may be run before pil.toml exists.
    if let Command::HashToken = cli.command {
        println!("{}", hash_token(&mut std::io::stdin().lock())?);
        return Ok(ExitCode::SUCCESS);
    }
    let settings = Settings::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve => {
            init_tracing(&settings.log);
            runtime.block_on(async {
                let app = pil::startup::Application::build(settings).await?;
                tracing::info!(url = %app.url(), "PIL is serving");
                app.run_until_stopped().await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulator {
            listen,
            latency_ms,
            failure_rate,
            rate_429,
            timeout_rate,
            hang_ms,
            callback_loss_rate,
            callback_dup_rate,
        } => {
            init_tracing(&settings.log);
            let config = pil::simulator::SimConfig {
                latency_ms,
                failure_rate,
                rate_429,
                timeout_rate,
                hang_ms,
                callback_loss_rate,
                callback_dup_rate,
                ..Default::default()
            };
            runtime.block_on(async {
                let sim = pil::simulator::spawn(config, listen).await?;
                println!("simulator listening on {}", sim.base_url());
                tokio::signal::ctrl_c().await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { path } => {
            let (rules, adapters) = match path {
                Some(p) => (p.join("rules"), p.join("adapters")),
                None => (settings.rules_dir.clone(), settings.adapters_dir.clone()),
            };
            match pil::tools::check(&rules, &adapters) {
                Ok(bundle) => {
                    println!("ok {} ({})", bundle.routing.file, bundle.routing.version);
                    for (id, a) in &bundle.adapters {
                        println!("ok adapters/{id} ({})", a.script.version);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("{e}");
                    }
                    eprintln!("{} error(s)", errors.0.len());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Test { adapter, path } => {
            let (rules, adapters) = match path {
                Some(p) => (p.join("rules"), p.join("adapters")),
                None => (settings.rules_dir.clone(), settings.adapters_dir.clone()),
            };
            let bundle = match pil::tools::check(&rules, &adapters) {
                Ok(b) => b,
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("{e}");
                    }
                    eprintln!("{} error(s); no fixture was run", errors.0.len());
                    return Ok(ExitCode::FAILURE);
                }
            };
            if let Some(id) = &adapter
                && bundle.adapter(id).is_none()
            {
                eprintln!("no adapter '{id}' in {}", adapters.display());
                return Ok(ExitCode::FAILURE);
            }
            let results = pil::fixtures::run_all(&bundle, &adapters, adapter.as_deref());
            let failed = results.iter().filter(|r| !r.passed()).count();
            for r in &results {
                if r.passed() {
                    println!("ok   {}/{}", r.adapter, r.name);
                } else {
                    println!("FAIL {}/{} ({})", r.adapter, r.name, r.file.display());
                    for p in &r.problems {
                        println!("       {p}");
                    }
                }
            }
            println!("{} fixture(s), {failed} failed", results.len());
            Ok(if failed == 0 && !results.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Route { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let input: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let bundle = pil::tools::check(&settings.rules_dir, &settings.adapters_dir)
                .map_err(|e| anyhow::anyhow!("scripts are invalid:\n{e}"))?;
            match pil::tools::dry_run(&bundle, &input) {
                Ok(out) => {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Migrate => {
            runtime.block_on(async {
                pil::store::open(&settings.database_url).await?;
                println!("database {} is up to date", settings.database_url);
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Directory {
            action: DirectoryAction::Import { file },
        } => {
            let data = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            runtime.block_on(async {
                let store = pil::store::open(&settings.database_url).await?;
                match pil::directory::import(store.as_ref(), &data, pil::clock::now_ms()).await {
                    Ok(n) => {
                        println!("imported {n} directory row(s) from {}", file.display());
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(pil::directory::ImportError::Rows(rows)) => {
                        for r in &rows {
                            eprintln!(
                                "{}:{}: {} ({}): {}",
                                file.display(),
                                r.line,
                                r.field,
                                r.code,
                                r.message
                            );
                        }
                        eprintln!("{} bad row(s); nothing was imported", rows.len());
                        Ok(ExitCode::FAILURE)
                    }
                    Err(pil::directory::ImportError::Store(e)) => Err(anyhow::Error::from(e)),
                }
            })
        }
        // Answered above, before the configuration is read.
        Command::HashToken => Ok(ExitCode::SUCCESS),
        Command::Demo {
            payments,
            exit,
            simulator_listen,
        } => {
            init_tracing("warn");
            let ok = runtime.block_on(pil::demo::run(
                settings,
                pil::demo::DemoOptions {
                    payments,
                    exit,
                    simulator_listen,
                },
            ))?;
            Ok(if ok || !exit {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
