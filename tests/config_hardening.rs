//! Config refusals that keep a mistaken config from opening the relay or injecting protocol text
//! (issue 12.4, 12.7): over-wide relay/proxy networks in either family (IPv4-mapped included),
//! a hostname with line breaks or controls, a users file others may change.

use std::path::{Path, PathBuf};
use std::process::Command;

use bccguard::config::Config;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "bccguard-config-hardening-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const USERS_LINE: &str = "alice:$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0ZsQ1PyS3kS/bVzBaCaJ0gfqJY6p4Uu1OXkRyZt0Jx4\n";

/// A valid config with `server` keys and one plain listener (plus `listener_extra` keys).
fn toml(server_extra: &str, listener_extra: &str, users: Option<&Path>) -> String {
    let auth = match users {
        Some(p) => format!("auth = \"optional\"\nallow_cleartext_auth = true\n{listener_extra}\n[auth]\nusers_file = {:?}\n", p.display().to_string()),
        None => format!("auth = \"none\"\n{listener_extra}\n"),
    };
    format!(
        "[server]\n{server_extra}\n\n[[listener]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\n{auth}\n\
         [upstream]\naddress = \"127.0.0.1:2526\"\n"
    )
}

fn load(dir: &Dir, text: &str) -> Result<Config, String> {
    let path = dir.0.join("bccguard.toml");
    std::fs::write(&path, text).expect("write config");
    Config::load(&path).map_err(|e| e.to_string())
}

fn refused(dir: &Dir, text: &str, key: &str) -> String {
    match load(dir, text) {
        Ok(_) => panic!("config must be refused:\n{text}"),
        Err(e) => {
            assert!(e.contains(key), "error does not name `{key}`: {e}");
            e
        }
    }
}

const HOST: &str = "hostname = \"relay.example.org\"";

#[test]
fn relay_networks_that_cover_too_much_are_refused() {
    let dir = Dir::new("relay");
    for nets in [
        r#"["0.0.0.0/0"]"#,
        r#"["0.0.0.0/1", "128.0.0.0/1"]"#,
        r#"["::ffff:0:0/96"]"#,
        r#"["::ffff:0.0.0.0/100"]"#,
        r#"["::/64"]"#,
        r#"["::/0"]"#,
        r#"["2000::/3"]"#,
        r#"["2001:db8::/32", "2001:db9::/32"]"#,
        r#"["44.0.0.0/8", "45.0.0.0/9"]"#,
        r#"["1.0.0.0/9", "1.128.0.0/9", "2.0.0.0/24"]"#,
    ] {
        let e = refused(
            &dir,
            &toml(&format!("{HOST}\nrelay_networks = {nets}"), "", None),
            "server.relay_networks",
        );
        assert!(e.contains("open relay"), "{nets}: {e}");
    }
}

#[test]
fn ordinary_relay_networks_load_and_mapped_entries_match_ipv4_clients() {
    let dir = Dir::new("relay-ok");
    for nets in [
        r#"["127.0.0.0/8", "::1/128"]"#,
        r#"["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]"#,
        r#"["203.0.113.0/24", "2001:db8::/32"]"#,
    ] {
        load(
            &dir,
            &toml(&format!("{HOST}\nrelay_networks = {nets}"), "", None),
        )
        .unwrap_or_else(|e| panic!("{nets}: {e}"));
    }
    let cfg = load(
        &dir,
        &toml(
            &format!("{HOST}\nrelay_networks = [\"::ffff:10.1.0.0/112\"]"),
            "",
            None,
        ),
    )
    .expect("mapped /112 is a /16");
    let nets = cfg.relay_networks().expect("parsed");
    assert_eq!(nets, vec!["10.1.0.0/16".parse::<ipnet::IpNet>().unwrap()]);
    use bccguard::config::networks::{canonical_peer, contains};
    let peer = canonical_peer("[::ffff:10.1.2.3]:4000".parse().unwrap());
    assert_eq!(peer.to_string(), "10.1.2.3:4000");
    assert!(contains(&nets, peer.ip()));
    assert!(!contains(&nets, "10.2.0.1".parse().unwrap()));
}

#[test]
fn wide_proxy_networks_are_refused() {
    let dir = Dir::new("proxy");
    for nets in [
        r#"["0.0.0.0/0"]"#,
        r#"["::ffff:0:0/96"]"#,
        r#"["10.0.0.0/8"]"#,
        r#"["192.168.0.0/16", "192.169.0.0/16"]"#,
        r#"["2001:db8::/32"]"#,
    ] {
        let e = refused(
            &dir,
            &toml(
                HOST,
                &format!("proxy_protocol = true\nproxy_networks = {nets}"),
                None,
            ),
            "listener[1].proxy_networks", // listeners count from 1 in messages
        );
        assert!(e.contains("PROXY header"), "{nets}: {e}");
    }
    load(
        &dir,
        &toml(
            HOST,
            "proxy_protocol = true\nproxy_networks = [\"10.0.0.10/32\", \"fd00:1::/64\"]",
            None,
        ),
    )
    .expect("a few balancers are fine");
}

#[test]
fn hostname_with_line_breaks_or_controls_is_refused() {
    let dir = Dir::new("hostname");
    for bad in [
        r#""relay.example.org\r\nX-Injected: 1""#,
        r#""relay.example.org\n250 fake""#,
        r#""relay example.org""#,
        r#""relay\u001b[2J.example.org""#,
        r#""relay\u0000.example.org""#,
        r#""""#,
    ] {
        refused(
            &dir,
            &toml(&format!("hostname = {bad}"), "", None),
            "server.hostname",
        );
    }
    load(&dir, &toml("hostname = \"mx-1.example.org\"", "", None)).expect("good hostname");
}

#[test]
fn hostname_from_the_environment_is_checked_too() {
    let dir = Dir::new("hostname-env");
    let path = dir.0.join("bccguard.toml");
    std::fs::write(&path, toml(HOST, "", None)).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .args(["config", "check", "--config"])
        .arg(&path)
        .env(
            "BCCGUARD__SERVER__HOSTNAME",
            "relay.example.org\r\nX-Evil: 1",
        )
        .output()
        .expect("run bccguard");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(err.contains("server.hostname"), "{err}");
}

#[cfg(unix)]
#[test]
fn users_file_writable_by_others_is_refused_readable_is_warned() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("users");
    let users = dir.0.join("users");
    std::fs::write(&users, USERS_LINE).expect("users");
    let text = toml(HOST, "", Some(&users));
    let chmod = |m| std::fs::set_permissions(&users, std::fs::Permissions::from_mode(m)).unwrap();

    chmod(0o600);
    load(&dir, &text).expect("private users file");

    for mode in [0o666, 0o620, 0o602] {
        chmod(mode);
        let e = refused(&dir, &text, "auth.users_file");
        assert!(e.contains("chmod 600"), "{e}");
    }

    // Readable by others: loads, with a warning on stderr (same as the audit HMAC key).
    chmod(0o644);
    load(&dir, &text).expect("readable users file only warns");
    let path = dir.0.join("bccguard.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .output()
        .expect("run bccguard");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("users file is readable by group or others"),
        "{err}"
    );
}
