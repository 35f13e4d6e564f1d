//! `bccguard` command line: `serve` runs the relay; the other commands are offline admin tools.
//!
//! The config file is `--config`, else `$BCCGUARD_CONFIG`, else `/etc/bccguard/bccguard.toml`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use bccguard::config::{CONFIG_ENV, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(
    name = "bccguard",
    version,
    about = "Outbound SMTP relay that stops the CC-instead-of-BCC accident",
    after_help = "The config file is --config, else $BCCGUARD_CONFIG, else /etc/bccguard/bccguard.toml. \
Any key can be overridden from the environment: BCCGUARD__SECTION__KEY (e.g. BCCGUARD__UPSTREAM__ADDRESS=10.0.0.5:587)."
)]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `--config`, shared by every command that reads the config.
#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Config file.
    #[arg(long, env = CONFIG_ENV, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve(ConfigArg),
    /// Dry-run the policy on a raw message (FILE, or - for stdin), or on every message of
    /// folders, Maildirs and mbox files with a summary per rule; sends nothing.
    Check(bccguard::cli::check::CheckArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: bccguard::cli::audit::AuditCommand,
    },
    /// Read a password on stdin and print a users-file line hash for it.
    Passwd,
    /// Spool of split copies waiting for a retry.
    Spool {
        #[command(subcommand)]
        command: bccguard::cli::spool::SpoolCommand,
    },
    /// Write the man page or shell completions to stdout.
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Preflight: load everything `serve` loads (certificates, keys, users, audit folder) and
    /// print the effective policy in words.
    Check(ConfigArg),
    /// Print the effective configuration (defaults filled in, environment overrides marked).
    Show(ConfigArg),
}

#[derive(Subcommand)]
enum Generate {
    /// The man page bccguard(1) to stdout, or with --dir every page (bccguard-audit-report(1) ...).
    Man {
        /// Write bccguard.1 and one page per subcommand into this folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `RUST_LOG` wins; else the config's `server.log_level`; else `info`. Client text is escaped
/// in every format (log forging, issue 12.5).
fn init_logging(format: LogFormat, level: Option<&str>) {
    bccguard::logging::init_with_level(matches!(format, LogFormat::Json), level);
}

/// Offline commands print to stdout; `bccguard audit query | head -1` closes the pipe early.
/// The default SIGPIPE action ends the process quietly there, as for any Unix filter, instead
/// of a panic in `println!`. Not for `serve`: a client closing its socket must never kill it.
fn quiet_on_broken_pipe() {
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        // The level comes from the config; a config that does not load is reported by `serve`.
        let level = bccguard::config::Config::load(&args.config)
            .ok()
            .and_then(|c| c.server.log_level);
        init_logging(cli.log_format, level.as_deref());
    } else {
        quiet_on_broken_pipe();
        init_logging(cli.log_format, None);
    }
    match cli.command {
        Command::Serve(args) => bccguard::smtp::server::run_from_cli(&args.config),
        Command::Check(args) => bccguard::cli::check::run_check(&args),
        Command::Config {
            command: ConfigCommand::Check(args),
        } => bccguard::cli::config::run_config_check(&args.config),
        Command::Config {
            command: ConfigCommand::Show(args),
        } => bccguard::cli::config::run_config_show(&args.config),
        Command::Audit { command } => bccguard::cli::audit::run(&command),
        Command::Passwd => bccguard::smtp::auth::run_passwd(),
        Command::Spool { command } => bccguard::cli::spool::run(&command),
        Command::Generate { what } => generate(what),
    }
}

fn generate(what: Generate) -> ExitCode {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout();
    match what {
        Generate::Man { dir: Some(dir) } => {
            if let Err(e) = clap_mangen::generate_to(cmd, &dir) {
                eprintln!("bccguard generate man: {}: {e}", dir.display());
                return ExitCode::from(1);
            }
        }
        Generate::Man { dir: None } => {
            if let Err(e) = clap_mangen::Man::new(cmd).render(&mut out) {
                eprintln!("bccguard generate man: {e}");
                return ExitCode::from(1);
            }
        }
        Generate::Completions { shell } => {
            clap_complete::generate(shell, &mut cmd, "bccguard", &mut out);
        }
    }
    ExitCode::SUCCESS
}
