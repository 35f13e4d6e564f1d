//! The SMTP session in-process: a `Session` over `tokio::io::duplex` (the test writes the client
//! side) relaying to a scripted upstream SMTP server on a real loopback socket that records every
//! byte it receives. Every verb and every refusal, with what the upstream saw (or did not see).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bccguard::audit::AuditLog;
use bccguard::config::Config;
use bccguard::deliver::Stages;
use bccguard::metrics::Observe;
use bccguard::relay::Upstream;
use bccguard::smtp::conn::{End, Stream};
use bccguard::smtp::session::Session;
use bccguard::smtp::state::{Listener, Live, Shared};
use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Generous: argon2 in a debug build on a loaded machine takes seconds per check.
const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The scripted upstream.

/// What the scripted upstream does with one command.
enum Act {
    /// Answer with these reply lines (CRLF added).
    Reply(&'static str),
    /// Close the connection without answering.
    Close,
    /// The default answer for the command.
    Default,
}

/// Decides per (connection index, command line without CRLF; "." = end of DATA content).
type Script = Arc<dyn Fn(usize, &str) -> Act + Send + Sync>;

/// What one upstream connection received, in order.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Cmd(String),
    /// DATA content as sent on the wire (still dot-stuffed), without the final `.` CRLF.
    Data(Vec<u8>),
}

#[derive(Clone, Default)]
struct Record {
    conns: Arc<Mutex<Vec<Vec<Ev>>>>,
}

impl Record {
    fn conns(&self) -> Vec<Vec<Ev>> {
        self.conns.lock().unwrap().clone()
    }

    fn all(&self) -> Vec<Ev> {
        self.conns().concat()
    }

    fn commands(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Cmd(c) => Some(c),
                Ev::Data(_) => None,
            })
            .collect()
    }

    fn data(&self) -> Vec<Vec<u8>> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Data(d) => Some(d),
                Ev::Cmd(_) => None,
            })
            .collect()
    }

    fn push(&self, conn: usize, ev: Ev) {
        self.conns.lock().unwrap()[conn].push(ev);
    }
}

struct MockUpstream {
    addr: SocketAddr,
    record: Record,
    task: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn mock_upstream(script: Script) -> MockUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let record = Record::default();
    let rec = record.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = {
                let mut conns = rec.conns.lock().unwrap();
                conns.push(Vec::new());
                conns.len() - 1
            };
            tokio::spawn(serve_upstream(tcp, n, rec.clone(), script.clone()));
        }
    });
    MockUpstream { addr, record, task }
}

fn default_reply(cmd: &str) -> &'static str {
    let verb = cmd
        .split([' ', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    match verb.as_str() {
        "EHLO" => "250-mock.upstream\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING",
        "HELO" => "250 mock.upstream",
        "DATA" => "354 go ahead",
        "." => "250 2.0.0 Ok: queued as MOCK1",
        "QUIT" => "221 2.0.0 Bye",
        "RSET" => "250 2.0.0 Ok",
        "MAIL" | "RCPT" => "250 2.1.0 Ok",
        _ => "502 5.5.2 unknown",
    }
}

async fn serve_upstream(tcp: TcpStream, n: usize, rec: Record, script: Script) {
    let (rd, mut wr) = tcp.into_split();
    let mut rd = BufReader::new(rd);
    if wr.write_all(b"220 mock.upstream ESMTP\r\n").await.is_err() {
        return;
    }
    let mut line = Vec::new();
    // Like a real MTA, a transaction lasts from an accepted MAIL to RSET or the end of DATA.
    let mut in_transaction = false;
    loop {
        line.clear();
        match rd.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        rec.push(n, Ev::Cmd(cmd.clone()));
        let verb = cmd.get(..4).unwrap_or("").to_ascii_uppercase();
        let answer = |key: &str, in_transaction: bool| match script(n, key) {
            Act::Reply(r) => Some(r),
            Act::Close => None,
            Act::Default => {
                let verb = key.get(..4).unwrap_or("").to_ascii_uppercase();
                Some(match (verb.as_str(), in_transaction) {
                    ("MAIL", true) => "503 5.5.1 Error: nested MAIL command",
                    ("RCPT" | "DATA", false) => "503 5.5.1 Error: need MAIL command",
                    _ => default_reply(key),
                })
            }
        };
        let Some(reply) = answer(&cmd, in_transaction) else {
            return;
        };
        match verb.as_str() {
            "MAIL" if reply.starts_with('2') => in_transaction = true,
            "RSET" | "EHLO" | "HELO" => in_transaction = false,
            _ => {}
        }
        if wr
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        if cmd.eq_ignore_ascii_case("QUIT") || reply.starts_with("421") {
            return;
        }
        if cmd.eq_ignore_ascii_case("DATA") && reply.starts_with("354") {
            let mut content = Vec::new();
            loop {
                line.clear();
                match rd.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line == b".\r\n" {
                    break;
                }
                content.extend_from_slice(&line);
            }
            rec.push(n, Ev::Data(content));
            in_transaction = false;
            let Some(reply) = answer(".", true) else {
                return;
            };
            if wr
                .write_all(format!("{reply}\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

fn always_default() -> Script {
    Arc::new(|_, _| Act::Default)
}

// ---------------------------------------------------------------------------------------------
// The relay under test.

const BASE: &str = r#"
[server]
hostname = "relay.test"
max_message_size = 10000
max_recipients = 3
relay_networks = ["127.0.0.0/8"]

[[listener]]
address = "127.0.0.1:2525"
tls = "none"
auth = "none"

[upstream]
address = "UPSTREAM"
timeout_seconds = 5

[policy]
internal_domains = ["example.org"]

[[policy.rule]]
name = "reject-many"
min_visible_external = 5
action = "reject"

[[policy.rule]]
name = "split-three"
min_visible_external = 3
action = "split"

[[policy.rule]]
name = "rewrite-two"
min_visible_external = 2
action = "rewrite"

[audit]
path = "AUDIT/audit.jsonl"
hmac_key_file = "AUDIT/audit.key"
"#;

struct Relay {
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    // Dropping the sender would look like a server shutdown to every session.
    shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// A relay from `toml` with `UPSTREAM` and `AUDIT` filled in.
fn relay_from(toml: &str, upstream: SocketAddr) -> Relay {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let toml = toml
        .replace("UPSTREAM", &upstream.to_string())
        .replace("AUDIT", &dir.path().display().to_string());
    let cfg: Config = toml::from_str(&toml).unwrap();
    cfg.validate().unwrap();
    let live = Live::build(&cfg).unwrap();
    let relay_networks = cfg.relay_networks().unwrap();
    let observe = Observe::new(None);
    let upstream = Upstream::new(&cfg.upstream, &cfg.server.hostname, observe.clone()).unwrap();
    let audit = AuditLog::open(&cfg.audit, &live.policy.version()).unwrap();
    let stages = Stages {
        upstream,
        audit: Arc::new(audit),
        metrics: observe,
        hostname: cfg.server.hostname.clone(),
        spool: None,
    };
    let listener = Arc::new(Listener {
        cfg: cfg.listeners[0].clone(),
        local: "127.0.0.1:2525".parse().unwrap(),
        proxy_networks: Vec::new(),
    });
    let shared = Arc::new(Shared::new(cfg, relay_networks, stages, live));
    let (shutdown, _) = watch::channel(false);
    Relay {
        shared,
        listener,
        shutdown,
        _dir: dir,
    }
}

fn audit_path(relay: &Relay) -> &Path {
    &relay.shared.cfg.audit.path
}

/// One reply: code and its text lines (without code and separator), joined by `\n`.
#[derive(Debug)]
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Asserts code and that the (first line of) text starts with `start`.
    #[track_caller]
    fn is(&self, code: u16, start: &str) {
        assert_eq!(self.code, code, "reply {self:?}");
        assert!(self.text.starts_with(start), "reply {self:?}, want {start}");
    }
}

/// The test's side of the connection.
struct Client {
    rd: BufReader<ReadHalf<DuplexStream>>,
    wr: WriteHalf<DuplexStream>,
    session: JoinHandle<End>,
}

impl Relay {
    fn connect_from(&self, peer: &str) -> Client {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!("t{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let session = Session::new(
            self.shared.clone(),
            self.listener.clone(),
            id,
            peer.parse().unwrap(),
            Stream::Plain(theirs),
            self.shutdown.subscribe(),
        );
        let session = tokio::spawn(session.run());
        let (rd, wr) = tokio::io::split(ours);
        Client {
            rd: BufReader::new(rd),
            wr,
            session,
        }
    }

    /// A client on the loopback (inside relay_networks), greeted and EHLO'd.
    async fn ready(&self) -> Client {
        let mut c = self.connect_from("127.0.0.1:40000");
        c.reply().await.is(220, "relay.test ESMTP");
        c.cmd("EHLO client.test").await.is(250, "relay.test Hello");
        c
    }
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
    }

    async fn reply(&mut self) -> Reply {
        tokio::time::timeout(T, self.reply_inner())
            .await
            .expect("reply within the timeout")
    }

    async fn reply_inner(&mut self) -> Reply {
        let mut lines = Vec::new();
        let code = loop {
            let mut line = String::new();
            let n = self.rd.read_line(&mut line).await.unwrap();
            assert!(n > 0, "connection closed; replies so far {lines:?}");
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            assert!(line.len() >= 4, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            lines.push(line[4..line.len() - 2].to_string());
            if line.as_bytes()[3] == b' ' {
                break code;
            }
            assert_eq!(line.as_bytes()[3], b'-', "bad separator in {line:?}");
        };
        Reply {
            code,
            text: lines.join("\n"),
        }
    }

    /// Sends one command line (CRLF added) and reads its reply.
    async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// The relay closed the connection: nothing more to read.
    async fn closed(&mut self) {
        let mut rest = Vec::new();
        tokio::time::timeout(T, self.rd.read_to_end(&mut rest))
            .await
            .expect("connection closed within the timeout")
            .unwrap();
        assert!(
            rest.is_empty(),
            "unexpected bytes: {}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// QUIT, then the session's end.
    async fn quit(mut self) -> End {
        self.cmd("QUIT").await.is(221, "2.0.0 Bye");
        self.closed().await;
        self.end().await
    }

    async fn end(self) -> End {
        tokio::time::timeout(T, self.session)
            .await
            .expect("session ended")
            .unwrap()
    }
}

/// The upstream commands that are not connection set-up.
fn transaction_commands(rec: &Record) -> Vec<String> {
    rec.commands()
        .into_iter()
        .filter(|c| !c.starts_with("EHLO") && c != "QUIT")
        .collect()
}

/// Waits until the upstream has seen `pred` true (commands arrive asynchronously after a reply).
async fn eventually(rec: &Record, pred: impl Fn(&Record) -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !pred(rec) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream never got there: {:?}",
            rec.conns()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn setup() -> (MockUpstream, Relay) {
    setup_with(BASE, always_default()).await
}

async fn setup_with(toml: &str, script: Script) -> (MockUpstream, Relay) {
    let up = mock_upstream(script).await;
    let relay = relay_from(toml, up.addr);
    (up, relay)
}

const SMALL: &[u8] = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\nbody line\r\n..leading dot stuffed\r\nlast\r\n";

fn message_to(to: &str) -> Vec<u8> {
    format!(
        "From: alice@example.org\r\nTo: {to}\r\nCc: colleague@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
    )
    .into_bytes()
}

/// Sends DATA, the (already dot-stuffed) content and the terminator; returns the final reply.
async fn data(c: &mut Client, content: &[u8]) -> Reply {
    c.cmd("DATA").await.is(354, "Start mail input");
    c.send(content).await;
    c.send(b".\r\n").await;
    c.reply().await
}

/// Splits the upstream's DATA content into (Received field, the rest).
fn strip_received(content: &[u8]) -> (String, Vec<u8>) {
    assert!(content.starts_with(b"Received: "), "{content:?}");
    // The field is three lines: from, by ... id ...;, date.
    let mut end = 0;
    for _ in 0..3 {
        end += memchr_nl(&content[end..]) + 1;
    }
    (
        String::from_utf8_lossy(&content[..end]).into_owned(),
        content[end..].to_vec(),
    )
}

fn memchr_nl(b: &[u8]) -> usize {
    b.iter().position(|&c| c == b'\n').expect("a line end")
}

// ---------------------------------------------------------------------------------------------
// Greeting, HELO/EHLO and the small talk.

#[tokio::test]
async fn greeting_ehlo_helo_and_empty_argument() {
    let (up, relay) = setup().await;
    let mut c = relay.connect_from("127.0.0.1:40000");
    c.reply().await.is(220, "relay.test ESMTP bccguard ready");
    let r = c.cmd("EHLO client.test").await;
    r.is(250, "relay.test Hello client.test [127.0.0.1]");
    let caps: Vec<&str> = r.text.lines().skip(1).collect();
    for want in [
        "PIPELINING",
        "SIZE 10000",
        "8BITMIME",
        "SMTPUTF8",
        "CHUNKING",
    ] {
        assert!(caps.contains(&want), "EHLO lacks {want}: {caps:?}");
    }
    assert!(!caps.contains(&"STARTTLS"), "no TLS configured: {caps:?}");
    assert!(
        !caps.iter().any(|c| c.starts_with("AUTH")),
        "no AUTH: {caps:?}"
    );
    c.cmd("HELO client.test")
        .await
        .is(250, "relay.test Hello client.test");
    c.cmd("EHLO").await.is(501, "5.5.4");
    c.cmd("HELO").await.is(501, "5.5.4");
    c.cmd("EHLO    ").await.is(501, "5.5.4");
    assert!(matches!(c.quit().await, End::Quit));
    assert!(
        up.record.conns().is_empty(),
        "small talk opens no upstream connection"
    );
}

#[tokio::test]
async fn noop_rset_vrfy_help_unknown_and_quit() {
    let (_up, relay) = setup().await;
    let mut c = relay.connect_from("127.0.0.1:40000");
    c.reply().await.is(220, "relay.test");
    // Before EHLO too.
    c.cmd("NOOP").await.is(250, "2.0.0 OK");
    c.cmd("RSET").await.is(250, "2.0.0 Reset OK");
    c.cmd("VRFY bob@example.net").await.is(252, "2.5.2");
    c.cmd("HELP").await.is(214, "2.0.0");
    c.cmd("EXPN staff").await.is(502, "5.5.1");
    c.cmd("FROBNICATE now")
        .await
        .is(500, "5.5.1 Command unrecognized: FROBNICATE");
    c.cmd("LHLO x").await.is(500, "5.5.1");
    let end = c.quit().await;
    assert!(matches!(end, End::Quit), "{end:?}");
}

#[tokio::test]
async fn malformed_command_lines_get_500_and_the_session_stays_in_step() {
    let (_up, relay) = setup().await;
    let mut c = relay.ready().await;
    // A line ending in a bare LF is refused whole, never guessed at.
    c.send(b"NOOP\n").await;
    c.reply()
        .await
        .is(500, "5.5.2 Syntax error: command lines must end in CRLF");
    // Too long: one 500 for the whole line, however many reads it takes.
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 20_000));
    long.extend_from_slice(b"\r\n");
    c.send(&long).await;
    c.reply().await.is(500, "5.5.2 Command line too long");
    // Just over the limit in one piece, with the end in the same read.
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'y', 4100));
    long.extend_from_slice(b"\r\n");
    c.send(&long).await;
    c.reply().await.is(500, "5.5.2 Command line too long");
    // Still in step: the next command gets its own answer.
    c.cmd("NOOP").await.is(250, "2.0.0 OK");
    assert!(matches!(c.quit().await, End::Quit));
}

#[tokio::test]
async fn starttls_and_auth_when_not_offered() {
    let (_up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("STARTTLS")
        .await
        .is(503, "5.5.1 STARTTLS not available on this port");
    c.cmd("AUTH PLAIN AGFsaWNlAHB3")
        .await
        .is(502, "5.5.1 AUTH not available");
    assert!(matches!(c.quit().await, End::Quit));
}

#[tokio::test]
async fn auth_in_cleartext_is_refused_with_538() {
    let up = mock_upstream(always_default()).await;
    let (toml, _users) = with_users(&BASE.replace("auth = \"none\"", "auth = \"optional\""));
    let relay = relay_from(&toml, up.addr);
    let mut c = relay.ready().await;
    c.cmd("AUTH PLAIN AGFsaWNlAHB3")
        .await
        .is(538, "5.7.11 Encryption required");
    c.cmd("AUTH LOGIN").await.is(538, "5.7.11");
    assert!(matches!(c.quit().await, End::Quit));
}

/// Adds a users file with alice / pw to `toml`; keep the returned folder alive.
fn with_users(toml: &str) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let users = dir.path().join("users");
    let hash = bccguard::smtp::auth::hash_password("pw").unwrap();
    std::fs::write(&users, format!("alice:{hash}\n")).unwrap();
    let toml = format!("{toml}\n[auth]\nusers_file = \"{}\"\n", users.display());
    (toml, dir)
}

// ---------------------------------------------------------------------------------------------
// Envelope order and refusals.

#[tokio::test]
async fn envelope_commands_out_of_order() {
    let (up, relay) = setup().await;
    let mut c = relay.connect_from("127.0.0.1:40000");
    c.reply().await.is(220, "relay.test");
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(503, "5.5.1 Send EHLO/HELO first");
    c.cmd("RCPT TO:<bob@example.net>")
        .await
        .is(503, "5.5.1 Need MAIL before RCPT");
    c.cmd("DATA")
        .await
        .is(503, "5.5.1 Need MAIL and RCPT first");
    c.cmd("EHLO client.test").await.is(250, "relay.test");
    c.cmd("RCPT TO:<bob@example.net>")
        .await
        .is(503, "5.5.1 Need MAIL before RCPT");
    c.cmd("DATA")
        .await
        .is(503, "5.5.1 Need MAIL and RCPT first");
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(503, "5.5.1 Nested MAIL command");
    c.cmd("DATA").await.is(554, "5.5.1 No valid recipients");
    c.cmd("RSET").await.is(250, "2.0.0");
    c.cmd("RCPT TO:<bob@example.net>")
        .await
        .is(503, "5.5.1 Need MAIL before RCPT");
    assert!(matches!(c.quit().await, End::Quit));
    // The upstream saw one MAIL and the RSET that ended it; nothing else.
    assert_eq!(
        transaction_commands(&up.record),
        ["MAIL FROM:<alice@example.org>", "RSET"]
    );
}

#[tokio::test]
async fn relay_denied_outside_relay_networks_without_touching_the_upstream() {
    let (up, relay) = setup().await;
    let mut c = relay.connect_from("192.0.2.1:40000");
    c.reply().await.is(220, "relay.test");
    c.cmd("EHLO outsider.test").await.is(250, "relay.test");
    c.cmd("MAIL FROM:<x@outsider.test>").await.is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>")
        .await
        .is(554, "5.7.1 Relay access denied");
    c.cmd("RCPT TO:<colleague@example.org>")
        .await
        .is(554, "5.7.1 Relay access denied");
    c.cmd("DATA").await.is(554, "5.5.1 No valid recipients");
    assert!(matches!(c.quit().await, End::Quit));
    assert!(up.record.conns().is_empty(), "no upstream connection");
}

#[tokio::test]
async fn max_recipients_gives_452_and_the_rest_still_goes() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    for r in ["a@example.org", "b@example.org", "c@example.org"] {
        c.cmd(&format!("RCPT TO:<{r}>")).await.is(250, "2.1.0");
    }
    c.cmd("RCPT TO:<d@example.org>")
        .await
        .is(452, "4.5.3 Too many recipients (limit 3)");
    data(&mut c, &message_to("a@example.org"))
        .await
        .is(250, "2.0.0 Message accepted by upstream");
    assert!(matches!(c.quit().await, End::Quit));
    let rcpts: Vec<String> = transaction_commands(&up.record)
        .into_iter()
        .filter(|c| c.starts_with("RCPT"))
        .collect();
    assert_eq!(
        rcpts,
        [
            "RCPT TO:<a@example.org>",
            "RCPT TO:<b@example.org>",
            "RCPT TO:<c@example.org>"
        ]
    );
}

#[tokio::test]
async fn size_declared_too_big_is_refused_at_mail() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org> SIZE=10001")
        .await
        .is(552, "5.3.4 Message size exceeds the limit of 10000 bytes");
    // smtp-proto alone reads this as SIZE=999.
    c.cmd("MAIL FROM:<alice@example.org> SIZE=99999999999999999999999")
        .await
        .is(552, "5.3.4");
    c.cmd("MAIL FROM:<alice@example.org> SIZE=100")
        .await
        .is(250, "2.1.0");
    assert!(matches!(c.quit().await, End::Quit));
    assert_eq!(
        transaction_commands(&up.record),
        ["MAIL FROM:<alice@example.org>"],
        "only the acceptable MAIL reached the upstream (SIZE not offered there)"
    );
}

#[tokio::test]
async fn message_over_the_size_limit_during_data_is_refused_and_not_forwarded() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..200 {
        big.extend_from_slice(&[b'z'; 98]);
        big.extend_from_slice(b"\r\n");
    }
    data(&mut c, &big).await.is(552, "5.3.4 Message refused");
    assert!(matches!(c.quit().await, End::Quit));
    assert!(up.record.data().is_empty(), "nothing forwarded");
    assert_eq!(
        transaction_commands(&up.record),
        [
            "MAIL FROM:<alice@example.org>",
            "RCPT TO:<bob@example.net>",
            "RSET"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// DATA and BDAT.

#[tokio::test]
async fn data_happy_path_forwards_received_field_and_the_exact_bytes() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    data(&mut c, SMALL).await.is(
        250,
        "2.0.0 Message accepted by upstream: Ok: queued as MOCK1",
    );
    assert!(matches!(c.quit().await, End::Quit));
    let sent = up.record.data();
    assert_eq!(sent.len(), 1);
    let (received, rest) = strip_received(&sent[0]);
    assert!(
        received.starts_with("Received: from client.test ([127.0.0.1])\r\n\tby relay.test (bccguard) with ESMTP id t"),
        "{received}"
    );
    assert!(received.contains(".0;\r\n\t"), "{received}");
    // Header unchanged, body dot-stuffed again exactly as the client sent it.
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(SMALL)
    );
    assert_eq!(
        transaction_commands(&up.record),
        [
            "MAIL FROM:<alice@example.org>",
            "RCPT TO:<bob@example.net>",
            "DATA"
        ]
    );
}

#[tokio::test]
async fn two_messages_in_one_session_each_get_their_own_received_id() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    for _ in 0..2 {
        c.cmd("MAIL FROM:<alice@example.org>")
            .await
            .is(250, "2.1.0");
        c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
        data(&mut c, SMALL).await.is(250, "2.0.0");
    }
    assert!(matches!(c.quit().await, End::Quit));
    let sent = up.record.data();
    assert_eq!(sent.len(), 2);
    let ids: Vec<String> = sent
        .iter()
        .map(|d| {
            let (r, _) = strip_received(d);
            r.split(" id ")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(up.record.conns().len(), 1, "one upstream session for both");
}

#[tokio::test]
async fn bare_lf_in_data_is_refused_and_nothing_is_forwarded() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    // The smuggling shape: a bare-LF "terminator" followed by a command.
    let content = b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@example.net>\r\n";
    data(&mut c, content).await.is(550, "5.6.0");
    // The session is in step and the transaction is gone.
    c.cmd("RCPT TO:<bob@example.net>")
        .await
        .is(503, "5.5.1 Need MAIL before RCPT");
    assert!(matches!(c.quit().await, End::Quit));
    assert!(up.record.data().is_empty());
    assert_eq!(
        transaction_commands(&up.record),
        [
            "MAIL FROM:<alice@example.org>",
            "RCPT TO:<bob@example.net>",
            "RSET"
        ]
    );
}

#[tokio::test]
async fn bdat_chunks_and_last_forward_the_whole_message() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org> BODY=8BITMIME")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    // Raw content (no dot-stuffing in BDAT); the first chunk splits a CRLF.
    let msg =
        b"From: alice@example.org\r\nTo: bob@example.net\r\n\r\n.dot at line start\r\nend\r\n";
    let (a, b) = msg.split_at(24);
    c.send(format!("BDAT {}\r\n", a.len()).as_bytes()).await;
    c.send(a).await;
    c.reply()
        .await
        .is(250, &format!("2.0.0 {} octets received", a.len()));
    c.send(format!("BDAT {} LAST\r\n", b.len()).as_bytes())
        .await;
    c.send(b).await;
    c.reply()
        .await
        .is(250, "2.0.0 Message accepted by upstream");
    assert!(matches!(c.quit().await, End::Quit));
    let sent = up.record.data();
    assert_eq!(sent.len(), 1);
    let (_, rest) = strip_received(&sent[0]);
    // Upstream speaks DATA: the line starting with a dot is stuffed on the wire.
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "From: alice@example.org\r\nTo: bob@example.net\r\n\r\n..dot at line start\r\nend\r\n"
    );
    assert_eq!(
        transaction_commands(&up.record)[0],
        "MAIL FROM:<alice@example.org> BODY=8BITMIME"
    );
}

#[tokio::test]
async fn bdat_zero_last_alone_is_refused_and_nothing_is_forwarded() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    c.cmd("BDAT 0 LAST")
        .await
        .is(554, "5.6.0 Message refused: it is empty");
    c.cmd("RCPT TO:<bob@example.net>")
        .await
        .is(503, "5.5.1 Need MAIL before RCPT");
    assert!(matches!(c.quit().await, End::Quit));
    assert!(up.record.data().is_empty());
    assert!(!up.record.commands().iter().any(|c| c == "DATA"));
    assert_eq!(
        transaction_commands(&up.record),
        [
            "MAIL FROM:<alice@example.org>",
            "RCPT TO:<bob@example.net>",
            "RSET"
        ]
    );
}

#[tokio::test]
async fn bdat_without_recipients_is_refused_but_its_chunk_is_consumed() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.send(b"BDAT 6\r\nNOOP\r\n").await;
    c.reply().await.is(503, "5.5.1");
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.send(b"BDAT 6 LAST\r\nQUIT\r\n").await;
    c.reply().await.is(554, "5.5.1 No valid recipients");
    c.cmd("NOOP").await.is(250, "2.0.0 OK");
    assert!(matches!(c.quit().await, End::Quit));
    assert!(up.record.data().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Policy actions as the upstream sees them.

#[tokio::test]
async fn rewrite_rule_hides_the_recipients_from_the_upstream_copy() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<x@one.example>").await.is(250, "2.1.0");
    c.cmd("RCPT TO:<y@two.example>").await.is(250, "2.1.0");
    let msg = message_to("x@one.example, y@two.example");
    data(&mut c, &msg).await.is(250, "2.0.0");
    assert!(matches!(c.quit().await, End::Quit));
    let sent = up.record.data();
    assert_eq!(sent.len(), 1, "one copy, one transaction");
    let (_, rest) = strip_received(&sent[0]);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("To: undisclosed-recipients:;\r\n"), "{text}");
    assert!(!text.contains("x@one.example"), "{text}");
    assert!(
        !text.contains("colleague@example.org"),
        "Cc removed too: {text}"
    );
    assert!(text.contains("Subject: hi\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nHello.\r\n"), "{text}");
    // Envelope unchanged.
    let rcpts = transaction_commands(&up.record)
        .into_iter()
        .filter(|c| c.starts_with("RCPT"))
        .count();
    assert_eq!(rcpts, 2);
    let audit = std::fs::read_to_string(audit_path(&relay)).unwrap();
    assert!(audit.contains("\"rewrite\""), "audited: {audit}");
}

#[tokio::test]
async fn split_rule_sends_one_transaction_per_recipient() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    let rcpts = ["x@one.example", "y@two.example", "z@three.example"];
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    for r in rcpts {
        c.cmd(&format!("RCPT TO:<{r}>")).await.is(250, "2.1.0");
    }
    let msg = message_to(&rcpts.join(", "));
    data(&mut c, &msg)
        .await
        .is(250, "2.0.0 Message split into 3 copies");
    assert!(matches!(c.quit().await, End::Quit));
    // After the client's own transaction is reset, one MAIL / RCPT / DATA per recipient.
    let cmds = transaction_commands(&up.record);
    let after_reset: Vec<&String> = cmds.iter().skip_while(|c| *c != "RSET").skip(1).collect();
    let want: Vec<String> = rcpts
        .iter()
        .flat_map(|r| {
            [
                "MAIL FROM:<alice@example.org>".to_string(),
                format!("RCPT TO:<{r}>"),
                "DATA".to_string(),
            ]
        })
        .collect();
    assert_eq!(after_reset, want.iter().collect::<Vec<_>>());
    let sent = up.record.data();
    assert_eq!(sent.len(), 3);
    for (copy, r) in sent.iter().zip(rcpts) {
        let text = String::from_utf8_lossy(copy);
        let tos: Vec<&str> = text.lines().filter(|l| l.starts_with("To:")).collect();
        assert_eq!(tos.len(), 1, "{text}");
        assert!(tos[0].contains(r), "{text}");
        for other in rcpts.iter().filter(|o| **o != r) {
            assert!(
                !text.contains(other),
                "{other} visible in {r}'s copy: {text}"
            );
        }
    }
}

#[tokio::test]
async fn reject_rule_gives_550_571_and_resets_the_upstream() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    let rcpts = ["a@1.example", "b@2.example", "c@3.example"];
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    for r in rcpts {
        c.cmd(&format!("RCPT TO:<{r}>")).await.is(250, "2.1.0");
    }
    let msg = message_to(&(rcpts.join(", ") + ", d@4.example, e@5.example"));
    data(&mut c, &msg).await.is(550, "5.7.1");
    assert!(matches!(c.quit().await, End::Quit));
    assert!(up.record.data().is_empty());
    assert_eq!(transaction_commands(&up.record).last().unwrap(), "RSET");
    let audit = std::fs::read_to_string(audit_path(&relay)).unwrap();
    assert!(audit.contains("\"reject\""), "audited: {audit}");
}

// ---------------------------------------------------------------------------------------------
// The upstream's verdicts and failures.

#[tokio::test]
async fn upstream_550_on_rcpt_is_passed_through() {
    let script: Script = Arc::new(|_, cmd| {
        if cmd.contains("nobody@") {
            Act::Reply("550 5.1.1 <nobody@example.net>: Recipient address rejected")
        } else {
            Act::Default
        }
    });
    let (up, relay) = setup_with(BASE, script).await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<nobody@example.net>").await.is(
        550,
        "5.1.1 <nobody@example.net>: Recipient address rejected",
    );
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    data(&mut c, SMALL).await.is(250, "2.0.0");
    assert!(matches!(c.quit().await, End::Quit));
    assert_eq!(up.record.data().len(), 1);
}

#[tokio::test]
async fn upstream_dropping_the_connection_at_data_gives_451_and_no_ack() {
    let script: Script = Arc::new(|_, cmd| {
        if cmd == "DATA" {
            Act::Close
        } else {
            Act::Default
        }
    });
    let (up, relay) = setup_with(BASE, script).await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    data(&mut c, SMALL).await.is(451, "4.4.2");
    // The next transaction works on a fresh upstream connection.
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    assert!(matches!(c.quit().await, End::Quit));
    assert!(up.record.data().is_empty(), "acknowledged 0, delivered 0");
    assert_eq!(up.record.conns().len(), 2);
}

#[tokio::test]
async fn upstream_dropping_the_connection_after_the_content_gives_451() {
    let script: Script = Arc::new(|_, cmd| if cmd == "." { Act::Close } else { Act::Default });
    let (up, relay) = setup_with(BASE, script).await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    data(&mut c, SMALL).await.is(451, "4.4.2");
    assert!(matches!(c.quit().await, End::Quit));
    // The upstream got the bytes but never said it took them: the client keeps the message.
    assert_eq!(up.record.data().len(), 1);
}

#[tokio::test]
async fn upstream_421_at_mail_on_a_pooled_session_is_retried_fresh() {
    // Connection 0 serves the first client, goes to the pool, then says 421 to the next MAIL.
    let mails = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = mails.clone();
    let script: Script = Arc::new(move |conn, cmd| {
        if conn == 0 && cmd.starts_with("MAIL") {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 1 {
                return Act::Reply("421 4.4.2 idle too long, closing");
            }
        }
        Act::Default
    });
    let (up, relay) = setup_with(BASE, script).await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    data(&mut c, SMALL).await.is(250, "2.0.0");
    assert!(matches!(c.quit().await, End::Quit));

    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<carol@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    data(&mut c, SMALL).await.is(250, "2.0.0");
    assert!(matches!(c.quit().await, End::Quit));

    let conns = up.record.conns();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(
        conns[0].last(),
        Some(&Ev::Cmd("MAIL FROM:<carol@example.org>".into())),
        "the pooled session was tried first"
    );
    assert!(conns[1].contains(&Ev::Cmd("MAIL FROM:<carol@example.org>".into())));
    assert_eq!(up.record.data().len(), 2, "acknowledged 2, delivered 2");
}

// ---------------------------------------------------------------------------------------------
// Envelope addresses reach the upstream as the client meant them.

#[tokio::test]
async fn quoted_local_part_is_forwarded_quoted() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<\"john doe\"@example.net>")
        .await
        .is(250, "2.1.0");
    data(&mut c, SMALL).await.is(250, "2.0.0");
    assert!(matches!(c.quit().await, End::Quit));
    assert!(
        up.record
            .commands()
            .contains(&"RCPT TO:<\"john doe\"@example.net>".to_string()),
        "{:?}",
        up.record.commands()
    );
}

/// RFC 5321 4.5.1: `RCPT TO:<Postmaster>` needs no domain and must be accepted; forwarded as
/// written. `RCPT TO:<>` stays an error.
#[tokio::test]
async fn postmaster_without_a_domain_is_accepted_and_forwarded() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<>").await.is(501, "5.1.3");
    c.cmd("RCPT TO:<Postmaster>").await.is(250, "2.1.0");
    data(&mut c, SMALL).await.is(250, "2.0.0");
    assert!(matches!(c.quit().await, End::Quit));
    assert_eq!(
        transaction_commands(&up.record),
        [
            "MAIL FROM:<alice@example.org>",
            "RCPT TO:<Postmaster>",
            "DATA"
        ]
    );
}

#[tokio::test]
async fn quoted_local_part_cannot_inject_mail_parameters() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<\"a@evil.example> ENVID=x\"@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<\"x@victim.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x\"@example.net>")
        .await
        .is(250, "2.1.0");
    assert!(matches!(c.quit().await, End::Quit));
    let cmds = transaction_commands(&up.record);
    assert_eq!(
        cmds,
        [
            "MAIL FROM:<\"a@evil.example> ENVID=x\"@example.org>",
            "RCPT TO:<\"x@victim.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x\"@example.net>",
        ]
    );
}

#[tokio::test]
async fn control_characters_in_addresses_are_refused() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.send(b"MAIL FROM:<al\0ice@example.org>\r\n").await;
    c.reply().await.is(501, "5.1.7");
    c.send(b"MAIL FROM:<\"al\\\0ice\"@example.org>\r\n").await;
    c.reply().await.is(501, "5.1.7");
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.send(b"RCPT TO:<bo\0b@example.net>\r\n").await;
    c.reply().await.is(501, "5.1.3");
    c.send(b"RCPT TO:<\"bo\x07b\"@example.net>\r\n").await;
    c.reply().await.is(501, "5.1.3");
    assert!(matches!(c.quit().await, End::Quit));
    assert!(
        up.record
            .commands()
            .iter()
            .all(|c| !c.contains('\0') && !c.contains('\x07')),
        "{:?}",
        up.record.commands()
    );
    assert!(!transaction_commands(&up.record)
        .iter()
        .any(|c| c.starts_with("RCPT")));
}

// ---------------------------------------------------------------------------------------------
// Limits.

#[tokio::test]
async fn hard_error_limit_disconnects_with_421() {
    let (_up, relay) = setup().await;
    let mut c = relay.ready().await;
    for i in 0..19 {
        let r = c.cmd("BOGUS").await;
        assert_eq!(r.code, 500, "error {i}: {r:?}");
    }
    // A good command in between does not reset the count.
    c.cmd("NOOP").await.is(250, "2.0.0");
    c.cmd("RCPT TO:<x@example.net>").await.is(503, "5.5.1");
    c.reply().await.is(421, "4.7.0 Too many errors");
    c.closed().await;
    let end = c.end().await;
    assert!(matches!(end, End::TooManyErrors), "{end:?}");
}

#[tokio::test]
async fn refused_relay_recipients_count_towards_the_error_limit() {
    let (up, relay) = setup().await;
    let mut c = relay.connect_from("192.0.2.1:40000");
    c.reply().await.is(220, "relay.test");
    c.cmd("EHLO outsider.test").await.is(250, "relay.test");
    c.cmd("MAIL FROM:<x@outsider.test>").await.is(250, "2.1.0");
    // Pipelined: the relay must stop reading after the 20th refusal.
    let mut burst = Vec::new();
    for i in 0..100 {
        burst.extend_from_slice(format!("RCPT TO:<v{i}@victim.example>\r\n").as_bytes());
    }
    c.send(&burst).await;
    for _ in 0..20 {
        c.reply().await.is(554, "5.7.1");
    }
    c.reply().await.is(421, "4.7.0");
    c.closed().await;
    assert!(matches!(c.end().await, End::TooManyErrors));
    assert!(up.record.conns().is_empty());
}

#[tokio::test]
async fn client_closing_mid_data_ends_the_session_and_nothing_is_forwarded() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    c.cmd("DATA").await.is(354, "Start");
    c.send(b"Subject: cut\r\n\r\npartial").await;
    c.wr.shutdown().await.unwrap();
    let end = c.end().await;
    assert!(matches!(end, End::Closed), "{end:?}");
    // The upstream transaction is abandoned, not completed.
    eventually(&up.record, |r| {
        r.commands()
            .last()
            .is_some_and(|c| c == "RSET" || c == "QUIT")
    })
    .await;
    assert!(up.record.data().is_empty());
}

#[tokio::test]
async fn pipelined_transaction_gets_its_replies_in_order() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    let mut burst = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nRCPT TO:<nobody>\r\nDATA\r\n".to_vec();
    c.send(&burst).await;
    c.reply().await.is(250, "2.1.0");
    c.reply().await.is(250, "2.1.0");
    c.reply().await.is(501, "5.1.3");
    c.reply().await.is(354, "Start mail input");
    burst.clear();
    burst.extend_from_slice(SMALL);
    burst.extend_from_slice(b".\r\nNOOP\r\nQUIT\r\n");
    c.send(&burst).await;
    c.reply()
        .await
        .is(250, "2.0.0 Message accepted by upstream");
    c.reply().await.is(250, "2.0.0 OK");
    c.reply().await.is(221, "2.0.0 Bye");
    c.closed().await;
    assert!(matches!(c.end().await, End::Quit));
    assert_eq!(up.record.data().len(), 1);
}

#[tokio::test]
async fn upstream_verdict_on_the_content_is_passed_through() {
    let script: Script = Arc::new(|_, cmd| match cmd {
        "." => Act::Reply("554 5.7.1 Spam content refused"),
        _ => Act::Default,
    });
    let (up, relay) = setup_with(BASE, script).await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    data(&mut c, SMALL)
        .await
        .is(554, "5.7.1 Spam content refused");
    assert!(matches!(c.quit().await, End::Quit));
    assert_eq!(up.record.data().len(), 1);

    let script: Script = Arc::new(|_, cmd| match cmd {
        "DATA" => Act::Reply("452 4.3.1 Insufficient system storage"),
        _ => Act::Default,
    });
    let (up, relay) = setup_with(BASE, script).await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    data(&mut c, SMALL)
        .await
        .is(452, "4.3.1 Insufficient system storage");
    // The upstream still holds MAIL and RCPT after refusing DATA: the next transaction on the
    // same session must not meet "nested MAIL".
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    assert!(matches!(c.quit().await, End::Quit));
    assert!(up.record.data().is_empty());
    assert_eq!(up.record.conns().len(), 1);
}

#[tokio::test]
async fn upstream_closing_with_421_at_rcpt_loses_nothing_and_the_next_transaction_works() {
    let script: Script = Arc::new(|conn, cmd| {
        if conn == 0 && cmd.contains("second@") {
            Act::Reply("421 4.3.2 Shutting down")
        } else {
            Act::Default
        }
    });
    let (up, relay) = setup_with(BASE, script).await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<first@example.net>").await.is(250, "2.1.0");
    let r = c.cmd("RCPT TO:<second@example.net>").await;
    assert!(r.is_transient(), "{r:?}");
    // DATA now cannot be acknowledged: the upstream is gone.
    let r = data(&mut c, SMALL).await;
    assert!(r.is_transient(), "{r:?}");
    c.cmd("RSET").await.is(250, "2.0.0");
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<first@example.net>").await.is(250, "2.1.0");
    data(&mut c, SMALL).await.is(250, "2.0.0");
    assert!(matches!(c.quit().await, End::Quit));
    assert_eq!(up.record.data().len(), 1, "acknowledged 1, delivered 1");
    assert_eq!(up.record.conns().len(), 2);
}

#[tokio::test]
async fn ehlo_names_that_are_no_domain_or_address_literal_get_501() {
    let (_up, relay) = setup().await;
    let mut c = relay.connect_from("127.0.0.1:40000");
    c.reply().await.is(220, "relay.test");
    for bad in [
        &b"EHLO a\0b.example\r\n"[..],
        b"EHLO a\x1bb.example\r\n",
        b"HELO <script>\r\n",
        b"EHLO user@example.org\r\n",
    ] {
        c.send(bad).await;
        let r = c.reply().await;
        assert_eq!(r.code, 501, "{bad:?}: {r:?}");
    }
    // Nothing learnt from the refused greetings: MAIL still needs EHLO.
    c.cmd("MAIL FROM:<a@example.org>").await.is(503, "5.5.1");
    for good in [
        "EHLO mail.example.org",
        "EHLO localhost",
        "EHLO [192.0.2.1]",
        "EHLO [IPv6:2001:db8::1]",
        "EHLO WIN_PC-01",
        "EHLO bücher.example",
    ] {
        c.cmd(good).await.is(250, "relay.test Hello");
    }
    assert!(matches!(c.quit().await, End::Quit));
}

#[tokio::test]
async fn invalid_utf8_in_addresses_is_refused_never_replaced() {
    let (up, relay) = setup().await;
    let mut c = relay.ready().await;
    c.send(b"MAIL FROM:<al\xffice@example.org> SMTPUTF8\r\n")
        .await;
    c.reply().await.is(500, "5.5.2 Error: bad UTF-8 syntax");
    c.cmd("MAIL FROM:<alice@example.org> SMTPUTF8")
        .await
        .is(250, "2.1.0");
    c.send(b"RCPT TO:<b\xc3\x28ob@example.net>\r\n").await;
    c.reply().await.is(500, "5.5.2 Error: bad UTF-8 syntax");
    c.cmd("RCPT TO:<jörg@bücher.example>")
        .await
        .is(250, "2.1.0");
    assert!(matches!(c.quit().await, End::Quit));
    let cmds = transaction_commands(&up.record);
    assert_eq!(
        cmds,
        [
            "MAIL FROM:<alice@example.org> SMTPUTF8",
            "RCPT TO:<jörg@bücher.example>"
        ]
    );
}

#[tokio::test]
async fn smtputf8_to_an_upstream_without_it_is_refused_with_553() {
    let script: Script = Arc::new(|_, cmd| {
        if cmd.starts_with("EHLO") {
            Act::Reply("250-mock.upstream\r\n250 8BITMIME")
        } else {
            Act::Default
        }
    });
    let (up, relay) = setup_with(BASE, script).await;
    let mut c = relay.ready().await;
    c.cmd("MAIL FROM:<jörg@example.org> SMTPUTF8")
        .await
        .is(553, "5.6.7");
    c.cmd("MAIL FROM:<alice@example.org> BODY=8BITMIME")
        .await
        .is(250, "2.1.0");
    assert!(matches!(c.quit().await, End::Quit));
    assert_eq!(
        transaction_commands(&up.record),
        ["MAIL FROM:<alice@example.org> BODY=8BITMIME"]
    );
}

#[tokio::test]
async fn auth_required_listener_refuses_mail_without_auth_and_auth_lets_outsiders_relay() {
    let up = mock_upstream(always_default()).await;
    let (toml, _users) = with_users(&BASE.replace(
        "auth = \"none\"",
        "auth = \"required\"\nallow_cleartext_auth = true",
    ));
    let relay = relay_from(&toml, up.addr);
    let mut c = relay.connect_from("192.0.2.1:40000");
    c.reply().await.is(220, "relay.test");
    let r = c.cmd("EHLO outsider.test").await;
    assert!(r.text.lines().any(|l| l == "AUTH PLAIN LOGIN"), "{r:?}");
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(530, "5.7.0 Authentication required");
    // base64("\0alice\0wrong"), then base64("\0alice\0pw").
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n")
        .await
        .is(535, "5.7.8 Authentication credentials invalid");
    c.cmd("AUTH PLAIN AGFsaWNlAHB3")
        .await
        .is(235, "2.7.0 Authentication successful");
    c.cmd("AUTH PLAIN AGFsaWNlAHB3")
        .await
        .is(503, "5.5.1 Already authenticated");
    c.cmd("MAIL FROM:<alice@example.org>")
        .await
        .is(250, "2.1.0");
    c.cmd("RCPT TO:<bob@example.net>").await.is(250, "2.1.0");
    let r = data(&mut c, SMALL).await;
    r.is(250, "2.0.0");
    assert!(matches!(c.quit().await, End::Quit));
    let (received, _) = strip_received(&up.record.data()[0]);
    assert!(received.contains("with ESMTPA id"), "{received}");
}

#[tokio::test]
async fn three_failed_auth_attempts_close_the_connection() {
    let up = mock_upstream(always_default()).await;
    let (toml, _users) = with_users(&BASE.replace(
        "auth = \"none\"",
        "auth = \"optional\"\nallow_cleartext_auth = true",
    ));
    let relay = relay_from(&toml, up.addr);
    let mut c = relay.ready().await;
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n").await.is(535, "5.7.8");
    // LOGIN with challenges: "alice", "wrong".
    c.cmd("AUTH LOGIN").await.is(334, "VXNlcm5hbWU6");
    c.cmd("YWxpY2U=").await.is(334, "UGFzc3dvcmQ6");
    c.cmd("d3Jvbmc=").await.is(535, "5.7.8");
    c.cmd("AUTH PLAIN").await.is(334, "");
    c.cmd("*").await.is(501, "5.0.0 Authentication cancelled");
    c.cmd("AUTH PLAIN !!!")
        .await
        .is(501, "5.5.2 Invalid base64");
    c.cmd("AUTH CRAM-MD5").await.is(504, "5.5.4");
    c.cmd("AUTH PLAIN AGJvYgB4").await.is(535, "5.7.8");
    c.reply().await.is(421, "4.7.0");
    c.closed().await;
    assert!(matches!(c.end().await, End::TooManyErrors));
}
