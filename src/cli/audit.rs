//! `bccguard audit verify|query`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::DEFAULT_CONFIG_PATH;

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain; exit 1 naming the first broken record.
    Verify {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Audit log file (default: the configured one).
        path: Option<PathBuf>,
    },
    /// Search the audit log.
    Query {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        sender: Option<String>,
        #[arg(long)]
        recipient: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(_cmd: &AuditCommand) -> ExitCode {
    eprintln!("audit: not implemented yet");
    ExitCode::from(2)
}
