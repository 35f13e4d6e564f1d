//! `bccguard spool list|flush`: the admin's view of the durable spool of split copies.
//!
//! `list` reads the spool folder directly (no running relay needed, safe while one runs) and
//! prints one line per waiting copy, or a JSON array with `--json`; damaged files are reported
//! on stderr. Exit 0, or 2 when the folder cannot be read.
//! `flush` creates the trigger file `flush` in the folder; the running relay sees it within a
//! second, removes it and retries every copy at once. With no relay running it says so (the
//! trigger then waits for the next start). Exit 0, or 2 on error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::spool::{self, SpoolEntryInfo};

#[derive(clap::Subcommand, Debug)]
pub enum SpoolCommand {
    /// List the copies waiting for a retry.
    List {
        #[arg(long, env = crate::config::CONFIG_ENV, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Spool folder (default: the configured `[spool] path`).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Ask the running relay to retry every waiting copy now.
    Flush {
        #[arg(long, env = crate::config::CONFIG_ENV, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Spool folder (default: the configured `[spool] path`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub fn run(cmd: &SpoolCommand) -> ExitCode {
    let (what, config, dir) = match cmd {
        SpoolCommand::List { config, dir, .. } => ("spool list", config, dir),
        SpoolCommand::Flush { config, dir } => ("spool flush", config, dir),
    };
    let dir = match dir {
        Some(d) => d.clone(),
        None => match Config::load(config) {
            Ok(c) => c.spool.path,
            Err(e) => {
                eprintln!("{what}: {e} (or name the folder: --dir PATH)");
                return ExitCode::from(2);
            }
        },
    };
    let result = match cmd {
        SpoolCommand::List { json, .. } => list(&dir, *json),
        SpoolCommand::Flush { .. } => flush(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn list(dir: &Path, json: bool) -> anyhow::Result<()> {
    if !dir.exists() {
        // Never started with a spool yet: nothing waits.
        if json {
            println!("[]");
        } else {
            println!("{}: no spool folder yet, 0 copies waiting", dir.display());
        }
        return Ok(());
    }
    let (entries, damaged) = spool::scan(dir)
        .map_err(|e| anyhow::anyhow!("reading spool folder {}: {e}", dir.display()))?;
    for (path, why) in &damaged {
        eprintln!("{}: {why}", path.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    let bytes: u64 = entries.iter().map(|e| e.size).sum();
    println!(
        "{}: {} copies waiting, {} bytes",
        dir.display(),
        entries.len(),
        bytes
    );
    for e in &entries {
        println!("{}", line(e));
    }
    Ok(())
}

fn rfc3339(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn line(e: &SpoolEntryInfo) -> String {
    let from = if e.from.is_empty() { "<>" } else { &e.from };
    let mut s = format!(
        "{}  from {}  to {}  {} bytes  queued {}  tries {}  next {}",
        e.id,
        from,
        e.rcpt,
        e.size,
        rfc3339(e.created_ms),
        e.attempts,
        rfc3339(e.next_attempt_ms)
    );
    if let Some(err) = &e.last_error {
        s.push_str(&format!("  last error: {err}"));
    }
    s
}

fn flush(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        anyhow::bail!("no spool folder at {}", dir.display());
    }
    let trigger = dir.join(spool::FLUSH_TRIGGER);
    std::fs::write(&trigger, b"")
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", trigger.display()))?;
    if spool::relay_running(dir) {
        println!("flush requested: the relay retries every waiting copy within a second");
    } else {
        println!(
            "no relay is running on {}: the copies are retried when it starts",
            dir.display()
        );
    }
    Ok(())
}
