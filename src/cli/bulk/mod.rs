//! `bccguard check` over many messages: files, folders of .eml files, Maildirs and mbox files
//! (say, an export of last month's Sent items). Each message gets the same decision and plan as
//! a single-file `check`; the run ends with a summary of what each rule would have done.
//!
//! Output: with `--json`, one JSON object per message (the single-file object plus `source`,
//! `index` and `offset` in an mbox, `message_id`) and a last line `{"summary": {...}}`; in prose,
//! one line per message a rule or a refusal touched, then the summary table. A progress bar goes
//! to stderr only when it is a terminal. Exit 0, or 2 when the config or some input could not be
//! read (the rest is still checked and counted).

mod stream;
mod summary;
mod walk;

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::check::{check_received, to_json, CheckArgs, Checker, Failure, Report};
use stream::{Layout, Messages};
use summary::Summary;
use walk::{collect, Source};

/// Read size for message files: large enough that an mbox streams at disk speed.
const READ_BUFFER: usize = 256 * 1024;

/// More than one path, a folder, or an mbox file: a single message file (or `-`) keeps the
/// single-file output and exit codes.
pub fn is_bulk(files: &[PathBuf]) -> bool {
    match files {
        [one] => one != Path::new("-") && (one.is_dir() || starts_with_from_line(one)),
        _ => true,
    }
}

/// An mbox starts with a `From ` line; a message file never does (`From:` has a colon).
/// Only regular files are looked into: reading a pipe would take bytes the check needs.
fn starts_with_from_line(path: &Path) -> bool {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = [0u8; 5];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| &head == b"From ")
}

pub fn run(args: &CheckArgs) -> ExitCode {
    let checker = match Checker::load(&args.config) {
        Ok(c) => c,
        Err(f) => {
            if args.json {
                println!("{}", f.to_json());
            }
            eprintln!("bccguard check: {}", f.message);
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let (sources, errors) = collect(&args.files);
    let mut run = Run::new(args, &sources);
    for e in &errors {
        run.input_error(&e.path, &e.why);
    }
    for source in &sources {
        run.source(&checker, source);
    }
    run.bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let summary = if args.json {
        format!("{}\n", run.summary.to_json(seconds))
    } else {
        run.summary.to_text(seconds)
    };
    run.emit(&summary);
    if let Err(e) = run.out.flush() {
        eprintln!("bccguard check: writing the results: {e}");
        return ExitCode::from(2);
    }
    if run.summary.input_errors > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// One bulk run: output, progress, tally.
struct Run<'a> {
    args: &'a CheckArgs,
    out: std::io::BufWriter<std::io::Stdout>,
    bar: ProgressBar,
    /// Lines go through the bar so they do not tear it (both on the terminal).
    through_bar: bool,
    summary: Summary,
    /// Bytes of the sources finished so far.
    done_bytes: u64,
}

impl<'a> Run<'a> {
    fn new(args: &'a CheckArgs, sources: &[Source]) -> Run<'a> {
        let total: u64 = sources.iter().map(|s| s.size).sum();
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {msg:>16} (eta {eta})",
            )
            .map(|s| s.progress_chars("=> "));
            if let Ok(style) = style {
                bar.set_style(style);
            }
            bar
        } else {
            // Never on a pipe or a log file.
            ProgressBar::hidden()
        };
        Run {
            args,
            out: std::io::BufWriter::new(std::io::stdout()),
            through_bar: !bar.is_hidden() && std::io::stdout().is_terminal(),
            bar,
            summary: Summary::default(),
            done_bytes: 0,
        }
    }

    fn emit(&mut self, text: &str) {
        let out = &mut self.out;
        // A closed stdout ends the process (SIGPIPE, see main); other write errors show at flush.
        if self.through_bar {
            self.bar.suspend(|| {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            });
        } else {
            let _ = out.write_all(text.as_bytes());
        }
    }

    fn input_error(&mut self, path: &Path, why: &str) {
        self.summary.input_errors += 1;
        let message = format!("cannot read {}: {why}", path.display());
        if self.args.json {
            let line =
                json!({"source": path.display().to_string(), "error": message, "kind": "input"});
            self.emit(&format!("{line}\n"));
        }
        self.bar.suspend(|| eprintln!("bccguard check: {message}"));
    }

    fn source(&mut self, checker: &Checker, source: &Source) {
        self.summary.sources += 1;
        let input: Box<dyn BufRead> = if source.path == Path::new("-") {
            Box::new(BufReader::with_capacity(READ_BUFFER, std::io::stdin()))
        } else {
            match std::fs::File::open(&source.path) {
                Ok(f) => Box::new(BufReader::with_capacity(READ_BUFFER, f)),
                Err(e) => return self.input_error(&source.path, &e.to_string()),
            }
        };
        let mut input = input;
        let layout = match input.fill_buf() {
            Ok(head) if head.starts_with(b"From ") => Layout::Mbox,
            Ok(_) => Layout::Single,
            Err(e) => return self.input_error(&source.path, &e.to_string()),
        };
        let mut messages = Messages::new(input, layout, checker.max_size());
        loop {
            let item = match messages.next_message() {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => {
                    self.input_error(&source.path, &e.to_string());
                    break;
                }
            };
            let result = check_received(checker, self.args, item.received);
            self.summary.add(&result);
            let at = (layout == Layout::Mbox).then_some((item.index, item.offset));
            self.message(&source.path, at, &result);
            self.bar.set_position(self.done_bytes + messages.position());
            self.bar
                .set_message(format!("{} messages", self.summary.messages));
        }
        self.done_bytes += source.size.max(messages.position());
    }

    /// Prints one message's result. `at`: its number and byte offset in an mbox.
    fn message(&mut self, path: &Path, at: Option<(u64, u64)>, result: &Result<Report, Failure>) {
        if self.args.json {
            let mut v = match result {
                Ok(report) => to_json(report),
                Err(f) => f.to_json(),
            };
            if let Some(obj) = v.as_object_mut() {
                obj.insert("source".into(), json!(path.display().to_string()));
                if let Some((index, offset)) = at {
                    obj.insert("index".into(), json!(index));
                    obj.insert("offset".into(), json!(offset));
                }
                if let Ok(report) = result {
                    obj.insert("message_id".into(), json!(report.message_id));
                }
            }
            self.emit(&format!("{v}\n"));
            return;
        }
        let label = match at {
            Some((index, _)) => format!("{}#{index}", path.display()),
            None => path.display().to_string(),
        };
        let line = match result {
            // Messages no rule touched are only counted: the summary shows them.
            Ok(report) if report.decision.rule.is_none() && report.refusal.is_none() => return,
            Ok(report) => {
                let d = &report.decision;
                let id = report
                    .message_id
                    .as_deref()
                    .map(|id| format!("; Message-ID {}", printable(id)))
                    .unwrap_or_default();
                format!(
                    "{label}: {} - rule '{}' ({}, {}); {} visible, {} outside{id}\n",
                    summary::outcome(report),
                    d.rule.as_deref().unwrap_or(""),
                    d.action.as_str(),
                    d.mode.as_str(),
                    d.visible.len(),
                    d.visible_external,
                )
            }
            Err(f) => format!("{label}: {}\n", f.message),
        };
        self.emit(&line);
    }
}

/// Message-IDs come from the message: no control characters onto the admin's terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
