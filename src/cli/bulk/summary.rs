//! The tally of a bulk dry run: per rule, action and mode what happened to how many messages,
//! refusals by the reply `serve` would give, and totals. Bounded by the number of rules and
//! reply kinds, not by the number of messages.

use std::collections::BTreeMap;

use serde_json::json;

use super::super::check::{Failure, Report};
use crate::config::{Action, Mode};

/// What happened to one message, in words (the summary's `outcome` column).
pub fn outcome(report: &Report) -> String {
    let d = &report.decision;
    if let Some(r) = &report.refusal {
        return format!("refused {} {}", r.reply.code, r.reply.status_text());
    }
    match d.effective_action() {
        Action::Rewrite => "rewritten".to_string(),
        Action::Split => "split into one copy per recipient".to_string(),
        Action::Reject => "refused".to_string(),
        Action::Accept if d.mode == Mode::Monitor && d.action != Action::Accept => {
            format!("would {}; delivered unchanged", d.action.as_str())
        }
        Action::Accept => "delivered unchanged".to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RowKey {
    /// `None`: no rule matched (or the message was refused before the policy ran).
    rule: Option<String>,
    action: &'static str,
    mode: &'static str,
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RefusalKey {
    code: u16,
    status: String,
    cause: &'static str,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub sources: u64,
    pub messages: u64,
    rows: BTreeMap<RowKey, u64>,
    refusals: BTreeMap<RefusalKey, u64>,
    delivered_unchanged: u64,
    rewritten: u64,
    split: u64,
    refused: u64,
    would_alter: u64,
    bcc_removed: u64,
    pub input_errors: u64,
}

impl Summary {
    pub fn add(&mut self, result: &Result<Report, Failure>) {
        self.messages += 1;
        match result {
            Ok(report) => self.add_report(report),
            Err(f) => {
                self.refused += 1;
                *self
                    .rows
                    .entry(RowKey {
                        rule: None,
                        action: "-",
                        mode: "-",
                        outcome: match &f.reply {
                            Some(r) => format!("refused {} {}", r.code, r.status_text()),
                            None => "refused".to_string(),
                        },
                    })
                    .or_default() += 1;
                if let Some(r) = &f.reply {
                    *self
                        .refusals
                        .entry(RefusalKey {
                            code: r.code,
                            status: r.status_text(),
                            cause: f.kind,
                        })
                        .or_default() += 1;
                }
            }
        }
    }

    fn add_report(&mut self, report: &Report) {
        let d = &report.decision;
        *self
            .rows
            .entry(RowKey {
                rule: d.rule.clone(),
                action: d.action.as_str(),
                mode: d.mode.as_str(),
                outcome: outcome(report),
            })
            .or_default() += 1;
        if let Some(r) = &report.refusal {
            self.refused += 1;
            *self
                .refusals
                .entry(RefusalKey {
                    code: r.reply.code,
                    status: r.reply.status_text(),
                    cause: r.cause.as_str(),
                })
                .or_default() += 1;
            return;
        }
        if d.bcc_header_stripped {
            self.bcc_removed += 1;
        }
        match d.effective_action() {
            Action::Rewrite => self.rewritten += 1,
            Action::Split => self.split += 1,
            Action::Reject => self.refused += 1,
            Action::Accept => {
                self.delivered_unchanged += 1;
                if d.action != Action::Accept {
                    self.would_alter += 1;
                }
            }
        }
    }

    pub fn to_json(&self, seconds: f64) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|(k, n)| {
                json!({"rule": k.rule, "action": k.action, "mode": k.mode,
                       "outcome": k.outcome, "messages": n})
            })
            .collect();
        let refusals: Vec<_> = self
            .refusals
            .iter()
            .map(|(k, n)| {
                json!({"code": k.code, "status": k.status, "cause": k.cause, "messages": n})
            })
            .collect();
        json!({"summary": {
            "sources": self.sources,
            "messages": self.messages,
            "by_rule": rows,
            "refusals": refusals,
            "totals": {
                "delivered_unchanged": self.delivered_unchanged,
                "rewritten": self.rewritten,
                "split": self.split,
                "refused": self.refused,
                "monitor_would_alter": self.would_alter,
                "bcc_removed": self.bcc_removed,
            },
            "input_errors": self.input_errors,
            "seconds": (seconds * 1000.0).round() / 1000.0,
        }})
    }

    pub fn to_text(&self, seconds: f64) -> String {
        let mut s = format!(
            "Summary: {} {} from {} {} in {seconds:.1} s\n",
            self.messages,
            plural(self.messages, "message", "messages"),
            self.sources,
            plural(self.sources, "file", "files"),
        );
        let mut table = vec![[
            "rule".to_string(),
            "action".to_string(),
            "mode".to_string(),
            "messages".to_string(),
            "outcome".to_string(),
        ]];
        for (k, n) in &self.rows {
            table.push([
                k.rule.clone().unwrap_or_else(|| "(none)".to_string()),
                k.action.to_string(),
                k.mode.to_string(),
                n.to_string(),
                k.outcome.clone(),
            ]);
        }
        s.push_str(&columns(&table));
        if !self.refusals.is_empty() {
            s.push_str("Refused (the reply serve would give):\n");
            let mut table = vec![[
                "reply".to_string(),
                "cause".to_string(),
                "messages".to_string(),
            ]];
            for (k, n) in &self.refusals {
                table.push([
                    format!("{} {}", k.code, k.status),
                    k.cause.to_string(),
                    n.to_string(),
                ]);
            }
            s.push_str(&columns(&table));
        }
        s.push_str(&format!(
            "Totals: {} delivered unchanged ({} of them only because of monitor mode), {} rewritten, {} split, {} refused; Bcc field removed from {}\n",
            self.delivered_unchanged, self.would_alter, self.rewritten, self.split, self.refused, self.bcc_removed
        ));
        if self.input_errors > 0 {
            s.push_str(&format!(
                "Unreadable input: {} (see the errors above)\n",
                self.input_errors
            ));
        }
        s
    }
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// Left-aligned columns (numbers right-aligned), two spaces apart, indented.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(" ");
        for (i, (cell, w)) in row.iter().zip(width).enumerate() {
            let numeric = !cell.is_empty() && cell.bytes().all(|b| b.is_ascii_digit());
            if i + 1 == N {
                line.push_str(&format!(" {cell}"));
            } else if numeric {
                line.push_str(&format!(" {cell:>w$} "));
            } else {
                line.push_str(&format!(" {cell:<w$} "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
