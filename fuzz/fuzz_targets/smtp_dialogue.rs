//! Fuzz target: arbitrary bytes as a whole client dialogue, fed into an in-process `Session`
//! over `tokio::io::duplex`. The first byte picks the client: a relay-permitted loopback client
//! (envelope and content go to an always-250 upstream on 127.0.0.1, so DATA/BDAT reach policy,
//! rewrite, split and the audit log) or an outsider whose recipients are all refused.
//! Checks: no panic anywhere (session, delivery, relay), the session ends once the client stops
//! sending, and every byte the relay wrote is a well-formed reply line after a 220 greeting.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bccguard::audit::AuditLog;
use bccguard::config::Config;
use bccguard::deliver::Stages;
use bccguard::metrics::Observe;
use bccguard::relay::Upstream;
use bccguard::smtp::conn::Stream;
use bccguard::smtp::session::Session;
use bccguard::smtp::state::{Listener, Live, Shared};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// Longer than any legitimate dialogue of a few KiB could take here: a session still running
/// after this is stuck.
const SESSION_DEADLINE: Duration = Duration::from_secs(20);

struct World {
    rt: Runtime,
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    // Kept alive: dropping it would look like a server shutdown to every session.
    shutdown: watch::Sender<bool>,
}

static WORLD: OnceLock<World> = OnceLock::new();

fn world() -> &'static World {
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let upstream = rt.block_on(always_250_upstream());
        // A fresh folder per process: the audit log of one run never meets another's key.
        let dir = std::env::temp_dir().join(format!("bccguard-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("audit folder");
        let toml = CONFIG
            .replace("UPSTREAM", &upstream.to_string())
            .replace("AUDIT", &dir.display().to_string());
        let cfg: Config = toml::from_str(&toml).expect("config");
        cfg.validate().expect("valid config");
        let live = Live::build(&cfg).expect("live");
        let relay_networks = cfg.relay_networks().expect("networks");
        let observe = Observe::new(None);
        let up = Upstream::new(&cfg.upstream, &cfg.server.hostname, observe.clone())
            .expect("upstream");
        let audit = AuditLog::open(&cfg.audit, &live.policy.version()).expect("audit");
        let stages = Stages {
            upstream: up,
            audit: Arc::new(audit),
            metrics: observe,
            hostname: cfg.server.hostname.clone(),
            spool: None,
        };
        let listener = Arc::new(Listener {
            cfg: cfg.listeners[0].clone(),
            local: "127.0.0.1:2525".parse().expect("addr"),
            proxy_networks: Vec::new(),
        });
        let shared = Arc::new(Shared::new(cfg, relay_networks, stages, live));
        let (shutdown, _) = watch::channel(false);
        World {
            rt,
            shared,
            listener,
            shutdown,
        }
    })
}

const CONFIG: &str = r#"
[server]
hostname = "relay.fuzz"
max_message_size = 65536
max_recipients = 20
relay_networks = ["127.0.0.0/8"]
command_timeout_seconds = 30
data_timeout_seconds = 30

[[listener]]
address = "127.0.0.1:2525"
tls = "none"
auth = "none"

[upstream]
address = "UPSTREAM"
timeout_seconds = 10

[policy]
internal_domains = ["example.org"]

[[policy.rule]]
name = "reject-many"
min_visible_external = 6
action = "reject"

[[policy.rule]]
name = "split-three"
min_visible_external = 3
action = "split"

[[policy.rule]]
name = "rewrite-two"
min_visible_external = 2
action = "rewrite"
notify_sender = true

[audit]
path = "AUDIT/audit.jsonl"
recipients = "none"
rotate_bytes = 4000000
"#;

/// An upstream that says yes to everything, reads DATA content to its end, and closes on QUIT.
async fn always_250_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (rd, mut wr) = tcp.into_split();
                let mut rd = BufReader::new(rd);
                let _ = wr.write_all(b"220 fuzz.upstream ESMTP\r\n").await;
                let mut line = Vec::new();
                let mut in_data = false;
                loop {
                    line.clear();
                    match rd.read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let reply: &[u8] = if in_data {
                        if line != b".\r\n" {
                            continue;
                        }
                        in_data = false;
                        b"250 2.0.0 queued\r\n"
                    } else if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"EHLO") {
                        b"250-fuzz.upstream\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
                    } else if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"DATA") {
                        in_data = true;
                        b"354 go on\r\n"
                    } else if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"QUIT") {
                        let _ = wr.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 2.0.0 ok\r\n"
                    };
                    if wr.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Every reply line: three digits, a space or hyphen, text, CRLF; and the first is the greeting.
fn check_replies(out: &[u8]) {
    assert!(out.starts_with(b"220 "), "no greeting: {out:?}");
    assert!(out.ends_with(b"\r\n"), "unterminated reply: {out:?}");
    for line in out.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r\n").expect("reply lines end in CRLF");
        assert!(line.len() >= 4, "short reply line {line:?}");
        assert!(line[..3].iter().all(u8::is_ascii_digit), "{line:?}");
        assert!(matches!(line[3], b' ' | b'-'), "{line:?}");
        assert!(!line.contains(&b'\r'), "bare CR in a reply line {line:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let (permitted, dialogue) = match data.split_first() {
        Some((first, rest)) => (first & 1 == 0, rest),
        None => (true, data),
    };
    let peer: SocketAddr = if permitted {
        "127.0.0.1:40000"
    } else {
        "192.0.2.1:40000"
    }
    .parse()
    .expect("addr");
    w.rt.block_on(async {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let session = Session::new(
            w.shared.clone(),
            w.listener.clone(),
            "fuzz".to_string(),
            peer,
            Stream::Plain(theirs),
            w.shutdown.subscribe(),
        );
        let session = tokio::spawn(session.run());
        let (mut rd, mut wr) = tokio::io::split(ours);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        });
        // The relay may hang up first (QUIT, error limit): a failed write is fine.
        let _ = wr.write_all(dialogue).await;
        let _ = wr.shutdown().await;
        let ended = tokio::time::timeout(SESSION_DEADLINE, session).await;
        let end = ended.expect("the session ends once the client stops sending");
        end.expect("the session task did not panic");
        drop(wr);
        let out = tokio::time::timeout(SESSION_DEADLINE, reader)
            .await
            .expect("output closed after the session ended")
            .expect("reader task");
        check_replies(&out);
    });
});
