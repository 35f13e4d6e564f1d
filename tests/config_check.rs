//! `bccguard config check` as a preflight and `config show`, run as the built binary: one test per
//! class of refusal, each asserting the file, the line and the key named in the message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Run {
    code: Option<i32>,
    out: String,
    err: String,
}

fn run(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bccguard"));
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BCCGUARD") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    Run {
        code: status.code(),
        out: String::from_utf8_lossy(&stdout).into_owned(),
        err: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A self-signed certificate valid for `days`, as cert.pem and key.pem in `dir`.
fn make_cert(dir: &Path, days: u32) {
    let ok = Command::new("openssl")
        .current_dir(dir)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
        ])
        .arg(days.to_string())
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl could not make a certificate");
}

/// A users file with one valid line, made by `bccguard passwd`.
fn make_users(dir: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .arg("passwd")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let hash = String::from_utf8(out.stdout).unwrap();
    std::fs::write(dir.join("users"), format!("alice:{}\n", hash.trim())).unwrap();
}

/// A full config using relative paths (resolved against the file's folder).
const FULL: &str = r#"[server]
hostname = "relay.test"
relay_networks = ["127.0.0.0/8"]

[[listener]]
address = "127.0.0.1:2525"
tls = "none"
auth = "none"

[[listener]]
address = "127.0.0.1:2587"
tls = "starttls"
auth = "required"

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[auth]
users_file = "users"

[upstream]
address = "127.0.0.1:2526"
tls = "none"

[policy]
internal_domains = ["example.org"]

[[policy.rule]]
name = "mass-external"
min_visible_external = 20
action = "reject"

[[policy.rule]]
name = "many-external"
min_visible_external = 6
action = "rewrite"

[audit]
path = "var/audit.jsonl"
hmac_key_file = "var/audit.key"

[metrics]
address = "127.0.0.1:9025"
"#;

/// A folder holding FULL as bccguard.toml, its certificate and users file.
fn full_setup() -> tempfile::TempDir {
    let dir = tempdir();
    make_cert(dir.path(), 400);
    make_users(dir.path());
    std::fs::write(dir.path().join("bccguard.toml"), FULL).unwrap();
    dir
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("bccguard.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in config"))
        + 1
}

/// Runs `config check` from another folder (so relative paths must resolve against the file).
fn check(dir: &Path) -> Run {
    let elsewhere = std::env::temp_dir();
    let file = dir.join("bccguard.toml");
    run(
        &elsewhere,
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
    )
}

/// Asserts a refusal naming `file:line:` and `key`.
fn assert_refused(r: &Run, dir: &Path, line: usize, key: &str, why: &str) {
    assert_eq!(r.code, Some(1), "out: {}\nerr: {}", r.out, r.err);
    let place = format!("{}:{line}:", dir.join("bccguard.toml").display());
    assert!(r.err.contains(&place), "no {place} in: {}", r.err);
    assert!(
        r.err.contains(&format!("`{key}`")),
        "no key {key} in: {}",
        r.err
    );
    assert!(r.err.contains(why), "no '{why}' in: {}", r.err);
    assert!(
        r.out.is_empty(),
        "printed OK output on a refusal: {}",
        r.out
    );
}

#[test]
fn full_config_passes_from_another_folder_and_prints_what_it_loaded() {
    let dir = full_setup();
    let r = check(dir.path());
    assert_eq!(r.code, Some(0), "{}{}", r.out, r.err);
    let cert = dir.path().join("cert.pem");
    assert!(
        r.out
            .contains(&format!("TLS certificate {}: valid until", cert.display())),
        "{}",
        r.out
    );
    assert!(
        r.out.contains("(399 days left)") || r.out.contains("(400 days left)"),
        "{}",
        r.out
    );
    assert!(r.out.contains(&format!(
        "users file {}",
        dir.path().join("users").display()
    )));
    assert!(r.out.contains(&format!(
        "audit log {}",
        dir.path().join("var/audit.jsonl").display()
    )));
    // A preflight writes nothing.
    assert!(!dir.path().join("var").exists());
}

#[test]
fn refuses_a_missing_certificate() {
    let dir = full_setup();
    std::fs::remove_file(dir.path().join("cert.pem")).unwrap();
    let r = check(dir.path());
    assert_refused(
        &r,
        dir.path(),
        line_of(FULL, "certificate ="),
        "tls.certificate",
        "cert.pem",
    );
}

#[test]
fn refuses_a_missing_or_foreign_private_key() {
    let dir = full_setup();
    std::fs::write(dir.path().join("key.pem"), "not a key\n").unwrap();
    let r = check(dir.path());
    assert_refused(
        &r,
        dir.path(),
        line_of(FULL, "private_key ="),
        "tls.private_key",
        "key.pem",
    );
}

#[test]
fn refuses_a_malformed_users_file() {
    let dir = full_setup();
    std::fs::write(dir.path().join("users"), "alice:not-a-hash\n").unwrap();
    let r = check(dir.path());
    assert_refused(
        &r,
        dir.path(),
        line_of(FULL, "users_file ="),
        "auth.users_file",
        "users:1",
    );
    std::fs::remove_file(dir.path().join("users")).unwrap();
    let r = check(dir.path());
    assert_refused(
        &r,
        dir.path(),
        line_of(FULL, "users_file ="),
        "auth.users_file",
        "users",
    );
}

#[test]
fn refuses_two_listeners_on_one_address() {
    let dir = full_setup();
    let text = FULL.replace("127.0.0.1:2587", "0.0.0.0:2525");
    write(dir.path(), &text);
    let r = check(dir.path());
    let line = line_of(&text, "0.0.0.0:2525");
    assert_refused(
        &r,
        dir.path(),
        line,
        "listener[2].address",
        "clashes with 127.0.0.1:2525",
    );
}

#[test]
fn refuses_a_metrics_address_without_ip() {
    let dir = full_setup();
    let text = FULL.replace("address = \"127.0.0.1:9025\"", "address = \"9025\"");
    write(dir.path(), &text);
    let r = check(dir.path());
    let line = line_of(&text, "\"9025\"");
    assert_refused(&r, dir.path(), line, "metrics.address", "not an IP:port");
    assert!(
        r.err.contains(&format!("bccguard.toml:{line}:11:")),
        "{}",
        r.err
    );
}

#[test]
fn refuses_an_audit_folder_that_cannot_be_made() {
    let dir = full_setup();
    std::fs::write(dir.path().join("var"), "a file where the folder should be").unwrap();
    let r = check(dir.path());
    assert_refused(
        &r,
        dir.path(),
        line_of(FULL, "path = \"var/audit"),
        "audit.path",
        "not a folder",
    );
}

#[test]
fn refuses_a_bad_audit_key() {
    let dir = full_setup();
    std::fs::create_dir(dir.path().join("var")).unwrap();
    std::fs::write(dir.path().join("var/audit.key"), "zz\n").unwrap();
    let r = check(dir.path());
    assert_refused(
        &r,
        dir.path(),
        line_of(FULL, "hmac_key_file ="),
        "audit.hmac_key_file",
        "hex",
    );
}

#[test]
fn refuses_a_missing_dkim_key() {
    let dir = full_setup();
    let text = FULL.replace(
        "[[policy.rule]]\nname = \"mass",
        "[policy.dkim]\non_rewrite = \"resign\"\nprivate_key = \"dkim.pem\"\ndomain = \"example.org\"\nselector = \"s1\"\n\n[[policy.rule]]\nname = \"mass",
    );
    write(dir.path(), &text);
    let r = check(dir.path());
    let line = line_of(&text, "private_key = \"dkim.pem\"");
    assert_refused(&r, dir.path(), line, "policy.dkim.private_key", "dkim.pem");
}

#[test]
fn refuses_a_missing_upstream_password_file() {
    let dir = full_setup();
    let text = FULL.replace(
        "address = \"127.0.0.1:2526\"",
        "address = \"127.0.0.1:2526\"\nusername = \"relay\"\npassword_file = \"upstream.pw\"",
    );
    write(dir.path(), &text);
    let r = check(dir.path());
    let line = line_of(&text, "password_file =");
    assert_refused(
        &r,
        dir.path(),
        line,
        "upstream.password_file",
        "upstream.pw",
    );
    // Present but empty: refused too.
    std::fs::write(dir.path().join("upstream.pw"), "\n").unwrap();
    let r = check(dir.path());
    assert_refused(&r, dir.path(), line, "upstream.password_file", "is empty");
    std::fs::write(dir.path().join("upstream.pw"), "s3cret\n").unwrap();
    assert_eq!(check(dir.path()).code, Some(0));
}

#[test]
fn choices_list_valid_values_and_ignore_letter_case() {
    let dir = full_setup();
    let text = FULL.replace("tls = \"starttls\"", "tls = \"STARTTLS\"");
    write(dir.path(), &text);
    assert_eq!(check(dir.path()).code, Some(0));

    let text = FULL.replace("tls = \"starttls\"", "tls = \"startls\"");
    write(dir.path(), &text);
    let r = check(dir.path());
    let line = line_of(&text, "\"startls\"");
    assert_refused(
        &r,
        dir.path(),
        line,
        "listener[2].tls",
        "valid values: none, starttls, implicit",
    );
    assert!(r.err.contains(":7:"), "column of the value: {}", r.err);
}

#[test]
fn a_rule_error_names_the_rule_counting_from_one() {
    let dir = full_setup();
    let text = FULL.replace("action = \"rewrite\"", "action = \"rewrite-it\"");
    write(dir.path(), &text);
    let r = check(dir.path());
    let line = line_of(&text, "rewrite-it");
    assert_refused(
        &r,
        dir.path(),
        line,
        "policy.rule[2].action",
        "valid values: accept, rewrite, split, reject",
    );
    assert!(r.err.contains("the 2nd rule, 'many-external'"), "{}", r.err);
}

#[test]
fn an_unknown_key_is_placed_on_its_line() {
    let dir = full_setup();
    let text = FULL.replace("min_visible_external = 6", "min_visible_externals = 6");
    write(dir.path(), &text);
    let r = check(dir.path());
    let line = line_of(&text, "min_visible_externals");
    assert_refused(
        &r,
        dir.path(),
        line,
        "policy.rule[2].min_visible_externals",
        "unknown key",
    );
}

#[test]
fn a_bad_value_from_the_environment_names_the_variable() {
    let dir = full_setup();
    let file = dir.path().join("bccguard.toml");
    let r = run(
        dir.path(),
        &["config", "check", "--config", file.to_str().unwrap()],
        &[("BCCGUARD__UPSTREAM__TLS", "tls-please")],
    );
    assert_eq!(r.code, Some(1));
    assert!(
        r.err
            .contains("environment variable BCCGUARD__UPSTREAM__TLS"),
        "{}",
        r.err
    );
    assert!(
        r.err.contains("`upstream.tls`") && r.err.contains("tls-please"),
        "{}",
        r.err
    );
    assert!(
        !r.err.contains("bccguard.toml:"),
        "blamed the file: {}",
        r.err
    );

    // A misspelt section in a variable name is the variable's fault too.
    let r = run(
        dir.path(),
        &["config", "check", "--config", file.to_str().unwrap()],
        &[("BCCGUARD__UPSTRAEM__ADDRESS", "10.0.0.5:25")],
    );
    assert_eq!(r.code, Some(1));
    assert!(
        r.err
            .contains("environment variable BCCGUARD__UPSTRAEM__ADDRESS")
            && r.err.contains("unknown key `upstraem`"),
        "{}",
        r.err
    );
}

#[test]
fn syntax_errors_have_line_and_column() {
    let dir = tempdir();
    write(dir.path(), "[server]\nhostname = \"x\nfoo = 1\n");
    let r = check(dir.path());
    assert_eq!(r.code, Some(1));
    assert!(r.err.contains("bccguard.toml:2:"), "{}", r.err);
    assert!(r.err.contains("not valid TOML"), "{}", r.err);
}

#[test]
fn a_rule_that_can_never_match_is_a_warning() {
    let dir = full_setup();
    // The stricter rule after the looser one is dead.
    let text = FULL
        .replace("min_visible_external = 20", "min_visible_external = 4")
        .replace("min_visible_external = 6", "min_visible_external = 9");
    write(dir.path(), &text);
    let r = check(dir.path());
    assert_eq!(r.code, Some(0), "{}", r.err);
    let line = line_of(&text, "min_visible_external = 9") - 2;
    assert!(
        r.err.contains(&format!("bccguard.toml:{line}:")),
        "{}",
        r.err
    );
    assert!(
        r.err.contains("warning:") && r.err.contains("can never match"),
        "{}",
        r.err
    );
    assert!(
        r.err.contains("'many-external'") && r.err.contains("'mass-external'"),
        "{}",
        r.err
    );
}

#[test]
fn config_file_comes_from_the_environment_when_not_given() {
    let dir = full_setup();
    let file = dir.path().join("bccguard.toml");
    let r = run(
        &std::env::temp_dir(),
        &["config", "check"],
        &[("BCCGUARD_CONFIG", file.to_str().unwrap())],
    );
    assert_eq!(r.code, Some(0), "{}", r.err);
    assert!(r
        .out
        .starts_with(&format!("config OK: {}\n", file.display())));
    let r = run(&std::env::temp_dir(), &["config", "check"], &[]);
    if !Path::new("/etc/bccguard/bccguard.toml").exists() {
        assert_eq!(r.code, Some(1));
        assert!(r.err.contains("/etc/bccguard/bccguard.toml"), "{}", r.err);
    }
}

#[test]
fn show_prints_the_effective_config_and_marks_the_environment() {
    let dir = full_setup();
    let file = dir.path().join("bccguard.toml");
    let r = run(
        dir.path(),
        &["config", "show", "--config", file.to_str().unwrap()],
        &[("BCCGUARD__POLICY__MODE", "monitor")],
    );
    assert_eq!(r.code, Some(0), "{}", r.err);
    assert!(
        r.out
            .contains("mode = \"monitor\"    # env BCCGUARD__POLICY__MODE"),
        "{}",
        r.out
    );
    // Defaults filled in, paths resolved against the file's folder.
    assert!(r.out.contains("max_recipients = 1000"), "{}", r.out);
    assert!(r.out.contains(&format!(
        "certificate = \"{}\"",
        dir.path().join("cert.pem").display()
    )));
    assert_eq!(r.out.matches("[[policy.rule]]").count(), 2, "{}", r.out);
    // What it prints is itself a valid config.
    let shown = dir.path().join("shown.toml");
    std::fs::write(&shown, &r.out).unwrap();
    let again = run(
        dir.path(),
        &["config", "check", "--config", shown.to_str().unwrap()],
        &[],
    );
    assert_eq!(again.code, Some(0), "{}", again.err);
}
