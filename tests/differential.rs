//! Differential test: bccguard's visible-recipient finder against independent readers people
//! and scripts use (SPEC section 2: "never the smaller reading").
//!
//! Seeded generated address fields (display names, Last, First, encoded words with raw and
//! encoded punctuation, encoded words in quotes, backslash escapes, comments, groups, quoted
//! local parts, IDN and trailing-dot domains, name-only words) plus random mutations of them
//! are fed to the finder and to:
//! - Python's `email` (tests/differential/readers.py): policy.default's structured headers,
//!   `getaddresses` over the decoded header strings, and the compat32 `getaddresses` over raw values;
//! - Perl's Email::Address::XS (tests/differential/readers.pl, Debian libemail-address-xs-perl).
//!
//! The test fails when the finder accepted a message (did not refuse it) and counts fewer
//! mailboxes than any reader shows. Counting more is allowed (the safe side) and reported.
//! Readers run once each over the whole batch, so the test takes a few seconds.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use bccguard::message::header;
use bccguard::policy::address::canonical_domain;
use bccguard::policy::visible::find_visible;
use serde_json::Value;

mod common;
use common::XorShift;

const CASES: usize = 4000;

const LOCALS: &[&str] = &[
    "anna",
    "bob.smith",
    "c_d",
    "eve+news",
    "F.Ox",
    "o'hara",
    "zed",
];
const DOMAINS: &[&str] = &[
    "example.org",
    "ext.example",
    "EXT.Example",
    "ext.example.",
    "bücher.example",
    "xn--bcher-kva.example",
    "mail.example.net",
    "a.b.c.example",
];
const NAMES: &[&str] = &[
    "Smith",
    "John",
    "Müller",
    "Doe",
    "Sales (EMEA)",
    "Team",
    "O'Brien",
];

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn q(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b' ' => "_".to_string(),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("={b:02X}"),
        })
        .collect()
}

fn addr(rng: &mut XorShift) -> String {
    format!("{}@{}", rng.pick(LOCALS), rng.pick(DOMAINS))
}

/// One list element in one of the forms readers disagree on (or a plain one).
fn element(rng: &mut XorShift) -> String {
    let a = addr(rng);
    let (n1, n2) = (rng.pick(NAMES), rng.pick(NAMES));
    match rng.below(22) {
        0 => a,
        1 => format!("{n1} <{a}>"),
        2 => format!("\"{n1}, {n2}\" <{a}>"),
        3 => format!("{n1}, {n2} <{a}>"),
        4 => format!("=?utf-8?Q?{n1},_{n2}?= <{a}>"),
        5 => format!("=?utf-8?Q?{}?= <{a}>", q(&format!("{n1}, {n2}"))),
        6 => format!(
            "=?utf-8?B?{}?= <{a}>",
            b64(&format!("\"{n1}\" ({n2}), <x@{}>", rng.pick(DOMAINS)))
        ),
        7 => format!("=?utf-8?Q?\"{n1}?= <{a}>"),
        8 => format!("{n1}\\, {n2} <{a}>"),
        9 => format!("{a} ({n1} {n2})"),
        10 => format!("\"{} {}\"@{}", n1, rng.pick(LOCALS), rng.pick(DOMAINS)),
        11 => format!("=?utf-8?Q?({n1}?= <{a}>"),
        12 => format!("\"=?utf-8?Q?{}?=\" <{a}>", q(&format!("{n1}, {n2}"))),
        13 => format!("\\\"{n1} <{a}>"),
        14 => format!("{n1}: {}, {};", addr(rng), addr(rng)),
        15 => n1.to_string(),
        16 => format!("=?utf-8?Q?{}?= <{a}>", q(&format!("<{}>", addr(rng)))),
        17 => format!("\"{n1}\""),
        18 => format!("=?utf-8?Q?{n1}\"?= <{a}>"),
        19 => format!("{n1}\\({n2} <{a}>"),
        20 => format!("<{a}>"),
        _ => format!("=?utf-8?Q?{}_{}?= <{a}>", q(n1), q(n2)),
    }
}

fn field(rng: &mut XorShift) -> String {
    let n = 1 + rng.below(5);
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push_str(rng.pick(&[", ", ",\r\n ", "; ", " , ", ","]));
        }
        s.push_str(&element(rng));
    }
    s
}

const INTERESTING: &[u8] = b"<>\"()\\,;:@[]. \t=?_";

fn mutate(rng: &mut XorShift, v: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(v.len() + 1);
        match rng.below(3) {
            0 if at < v.len() => v[at] = INTERESTING[rng.below(INTERESTING.len())],
            1 => v.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            _ if at < v.len() => {
                let end = (at + 1 + rng.below(4)).min(v.len());
                v.drain(at..end);
            }
            _ => {}
        }
    }
}

fn case(rng: &mut XorShift) -> Vec<u8> {
    let mut raw = b"From: sender@example.org\r\n".to_vec();
    for name in ["To", "Cc"] {
        if name == "Cc" && rng.below(2) == 0 {
            continue;
        }
        let mut value = field(rng).into_bytes();
        if rng.below(2) == 0 && std::env::var_os("DIFFERENTIAL_NO_MUTATION").is_none() {
            mutate(rng, &mut value);
        }
        raw.extend_from_slice(format!("{name}: ").as_bytes());
        raw.extend_from_slice(&value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"Subject: differential\r\n\r\nbody\r\n");
    raw
}

/// Unfolded values of the visible fields, for readers that take field values (Perl).
fn visible_values(raw: &[u8]) -> Vec<Vec<u8>> {
    let Ok(section) = header::split(raw) else {
        return Vec::new();
    };
    section
        .fields
        .iter()
        .filter(|f| {
            ["to", "cc", "resent-to", "resent-cc"]
                .iter()
                .any(|n| f.name_is(n))
        })
        .map(|f| {
            f.value
                .iter()
                .copied()
                .filter(|&b| b != b'\r' && b != b'\n')
                .collect()
        })
        .collect()
}

fn python() -> PathBuf {
    // Debian's python3 (where the CI installs packages) when present, else whatever is on PATH.
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

/// Runs one reader over every case (JSON lines in, JSON lines out).
fn run_reader(
    program: &Path,
    script: &str,
    input: String,
) -> HashMap<u64, HashMap<String, Option<Vec<String>>>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/differential")
        .join(script);
    let mut child = Command::new(program)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} {}: {e}",
                program.display(),
                script.display()
            )
        });
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("reader output");
    writer.join().expect("writer thread").expect("write cases");
    assert!(
        out.status.success(),
        "{} failed (install tests/install-deps packages: python3, libemail-address-xs-perl): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut results = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).expect("reader JSON");
        let id = v["id"].as_u64().expect("id");
        let readers = v["readers"]
            .as_object()
            .expect("readers")
            .iter()
            .map(|(name, list)| {
                let list = list.as_array().map(|l| {
                    l.iter()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                });
                (name.clone(), list)
            })
            .collect();
        results.insert(id, readers);
    }
    results
}

/// A reader's addresses with domains in bccguard's canonical spelling (SPEC section 2: IDN
/// U-label = A-label, case and trailing dot do not matter), duplicates dropped: the readers
/// differ in how they spell domains, not in which mailboxes they show.
fn same_mailboxes(list: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in list {
        // Some readers hand back display text around the mailbox (`\John <a@x>`): the mailbox
        // shown is the one inside the last <...>, and of a local part holding white space,
        // quotes or brackets, the address-like tail.
        let a = a.rsplit('<').next().unwrap_or(a).trim_end_matches('>');
        let Some((local, domain)) = a.rsplit_once('@') else {
            continue;
        };
        let messy = |c: char| c.is_whitespace() || "\"(<>\\".contains(c);
        let local = if local.contains(messy) {
            let tail = local.rsplit(messy).next().unwrap_or_default();
            if tail.is_empty() {
                local
            } else {
                tail
            }
        } else {
            local
        };
        // Likewise the domain shown is the leading run of domain characters.
        let domain = domain
            .split(|c: char| !(c.is_alphanumeric() || "-._[]:".contains(c)))
            .next()
            .unwrap_or_default();
        let canon = format!("{local}@{}", canonical_domain(domain));
        if !out.contains(&canon) {
            out.push(canon);
        }
    }
    out
}

#[test]
fn finder_never_counts_fewer_mailboxes_than_python_or_perl() {
    let mut rng = XorShift(0xD1FF_E4E7_1A15_2026);
    let cases: Vec<Vec<u8>> = (0..CASES).map(|_| case(&mut rng)).collect();
    let engine = base64::engine::general_purpose::STANDARD;
    let mut py_in = String::new();
    let mut pl_in = String::new();
    for (id, raw) in cases.iter().enumerate() {
        py_in.push_str(&serde_json::json!({"id": id, "raw": engine.encode(raw)}).to_string());
        py_in.push('\n');
        let values: Vec<String> = visible_values(raw)
            .iter()
            .map(|v| engine.encode(v))
            .collect();
        pl_in.push_str(&serde_json::json!({"id": id, "values": values}).to_string());
        pl_in.push('\n');
    }
    let py = run_reader(&python(), "readers.py", py_in);
    let pl = run_reader(Path::new("perl"), "readers.pl", pl_in);

    let mut refused = 0;
    let mut failures = Vec::new();
    // reader -> (compared, we count more, same count)
    let mut stats: HashMap<String, (usize, usize, usize)> = HashMap::new();
    for (id, raw) in cases.iter().enumerate() {
        let ours = match find_visible(raw) {
            Ok(v) => v.addresses,
            Err(e) => {
                refused += 1;
                if std::env::var_os("DIFFERENTIAL_DEBUG").is_some() {
                    eprintln!("refused: {} {:?}", e.reason, String::from_utf8_lossy(raw));
                }
                continue;
            }
        };
        let id = id as u64;
        let theirs = py
            .get(&id)
            .into_iter()
            .chain(pl.get(&id))
            .flat_map(|m| m.iter());
        for (reader, list) in theirs {
            let Some(list) = list else { continue };
            let list = same_mailboxes(list);
            let s = stats.entry(reader.clone()).or_default();
            s.0 += 1;
            if ours.len() > list.len() {
                s.1 += 1;
                if std::env::var_os("DIFFERENTIAL_DEBUG").is_some() {
                    eprintln!(
                        "more than {reader}: {:?}\n  {list:?}\n  {ours:?}",
                        String::from_utf8_lossy(raw)
                    );
                }
            } else if ours.len() == list.len() {
                s.2 += 1;
            } else {
                failures.push(format!(
                    "{reader} shows {} mailboxes, bccguard counts {}:\n  message: {:?}\n  {reader}: {list:?}\n  bccguard: {ours:?}",
                    list.len(),
                    ours.len(),
                    String::from_utf8_lossy(raw)
                ));
            }
        }
    }
    let mut names: Vec<_> = stats.keys().cloned().collect();
    names.sort();
    eprintln!("{CASES} cases, {refused} refused by bccguard");
    for n in &names {
        let (c, more, same) = stats[n];
        eprintln!("{n}: compared {c}, same count {same}, bccguard counts more {more}");
    }
    // Every reader must actually have read cases, or the comparison proves nothing.
    for reader in [
        "python-default",
        "python-getaddresses",
        "python-compat32",
        "perl-email-address-xs",
    ] {
        let compared = stats.get(reader).map_or(0, |s| s.0);
        assert!(
            compared > CASES / 2,
            "{reader} compared only {compared} cases"
        );
    }
    assert!(
        failures.is_empty(),
        "{} comparisons where a reader shows more mailboxes than bccguard counts:\n{}",
        failures.len(),
        failures
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        refused < CASES / 3,
        "{refused} of {CASES} refused: the generator is too noisy"
    );
}
