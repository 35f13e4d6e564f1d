//! `bccguard` command line: `serve` runs the relay; the other commands are offline admin tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use bccguard::config::DEFAULT_CONFIG_PATH;

#[derive(Parser)]
#[command(
    name = "bccguard",
    version,
    about = "Outbound SMTP relay that stops the CC-instead-of-BCC accident"
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

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Dry-run the policy on one raw message (FILE, or - for stdin); sends nothing.
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
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the config and print the effective policy in words.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    // Escapes client-supplied text in every format (log forging, issue 12.5).
    bccguard::logging::init(matches!(format, LogFormat::Json));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve { config } => bccguard::smtp::server::run_from_cli(&config),
        Command::Check(args) => bccguard::cli::check::run_check(&args),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => bccguard::cli::check::run_config_check(&config),
        Command::Audit { command } => bccguard::cli::audit::run(&command),
        Command::Passwd => bccguard::smtp::auth::run_passwd(),
        Command::Spool { command } => bccguard::cli::spool::run(&command),
    }
}
