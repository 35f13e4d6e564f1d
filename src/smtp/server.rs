//! Listeners, connection limit, graceful shutdown.

use std::path::Path;
use std::process::ExitCode;

pub fn run_from_cli(_config: &Path) -> ExitCode {
    eprintln!("serve: not implemented yet");
    ExitCode::from(2)
}
