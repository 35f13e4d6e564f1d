//! `bccguard check` and `bccguard config check`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::DEFAULT_CONFIG_PATH;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Envelope sender.
    #[arg(long)]
    pub from: Option<String>,
    /// Envelope recipient (repeatable). Default: the visible recipients.
    #[arg(long)]
    pub rcpt: Vec<String>,
    /// Print one JSON object instead of prose.
    #[arg(long)]
    pub json: bool,
    /// Raw message file, or - for stdin.
    pub file: PathBuf,
}

pub fn run_check(_args: &CheckArgs) -> ExitCode {
    eprintln!("check: not implemented yet");
    ExitCode::from(2)
}

pub fn run_config_check(_path: &Path) -> ExitCode {
    eprintln!("config check: not implemented yet");
    ExitCode::from(2)
}
