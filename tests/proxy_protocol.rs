//! PROXY protocol reader over real loopback TCP connections: v1 and v2 forms, rejection of
//! garbage, no over-reading, timeouts, and (when the binary exists) a real HAProxy in front.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bccguard::smtp::proxy::{read_proxy_header, trusted_proxy, ProxiedAddrs, ProxyError};
use ppp::v2::{Builder, Command, Protocol, Type, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(5);

/// A connected (client, server-side) pair on loopback.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    (client, server)
}

/// Sends `bytes` in one write and reads a header from the other side.
async fn parse(bytes: &[u8]) -> (Result<ProxiedAddrs, ProxyError>, TcpStream, TcpStream) {
    let (mut client, mut server) = pair().await;
    client.write_all(bytes).await.unwrap();
    let r = read_proxy_header(&mut server, T).await;
    (r, client, server)
}

fn sa(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

/// Reads exactly `n` bytes that follow the header.
async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(T, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

#[tokio::test]
async fn v1_tcp4() {
    let (r, _c, _s) = parse(b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 587\r\n").await;
    assert_eq!(
        r.unwrap(),
        ProxiedAddrs {
            source: sa("192.0.2.10:56324"),
            destination: sa("198.51.100.1:587")
        }
    );
}

#[tokio::test]
async fn v1_tcp6() {
    let (r, _c, _s) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::25 40000 25\r\n").await;
    assert_eq!(
        r.unwrap(),
        ProxiedAddrs {
            source: sa("[2001:db8::1]:40000"),
            destination: sa("[2001:db8::25]:25")
        }
    );
}

#[tokio::test]
async fn v1_mapped_ipv6_becomes_ipv4() {
    let (r, _c, _s) = parse(b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1000 25\r\n").await;
    assert_eq!(r.unwrap().source, sa("192.0.2.7:1000"));
}

#[tokio::test]
async fn v1_unknown_means_use_the_peer() {
    let (r, _c, server) = parse(b"PROXY UNKNOWN\r\n").await;
    let addrs = r.unwrap();
    assert_eq!(addrs, ProxiedAddrs::default());
    let peer = server.peer_addr().unwrap();
    assert_eq!(addrs.client_or(peer), peer);
    // UNKNOWN may carry addresses; they are ignored.
    let (r, _c, _s) = parse(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n").await;
    assert_eq!(r.unwrap(), ProxiedAddrs::default());
}

#[tokio::test]
async fn v1_bytes_after_the_header_stay_in_the_socket() {
    let (r, _c, mut server) = parse(b"PROXY TCP4 192.0.2.10 198.51.100.1 1 25\r\nEHLO x\r\n").await;
    assert_eq!(r.unwrap().source, sa("192.0.2.10:1"));
    assert_eq!(read_n(&mut server, 8).await, b"EHLO x\r\n");
}

#[tokio::test]
async fn v1_split_across_slow_writes() {
    let (mut client, mut server) = pair().await;
    let writer = tokio::spawn(async move {
        for chunk in [
            &b"PRO"[..],
            b"XY TCP4 10.0.0.1",
            b" 10.0.0.2 5",
            b"5 25\r",
            b"\nQUIT\r\n",
        ] {
            client.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client
    });
    let r = read_proxy_header(&mut server, T).await.unwrap();
    assert_eq!(r.source, sa("10.0.0.1:55"));
    assert_eq!(read_n(&mut server, 6).await, b"QUIT\r\n");
    writer.await.unwrap();
}

#[tokio::test]
async fn v1_malformed_headers_are_errors() {
    for bad in [
        &b"PROXY TCP4 192.0.2.10 198.51.100.1 1 25\n"[..], // LF without CR
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 25\rX\r\n", // stray CR
        b"PROXY TCP4 2001:db8::1 198.51.100.1 1 25\r\n",   // family mismatch
        b"PROXY TCP4 192.0.2.10 198.51.100.1 70000 25\r\n", // port out of range
        b"PROXY TCP5 192.0.2.10 198.51.100.1 1 25\r\n",    // no such protocol
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1\r\n",       // missing port
        b"PROXY \nTCP4 1.2.3.4 1.2.3.4 1 2\r\n",           // early LF
    ] {
        let (r, _c, _s) = parse(bad).await;
        assert!(
            matches!(r, Err(ProxyError::V1(_))),
            "{:?} gave {r:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[tokio::test]
async fn v1_too_long_is_refused_without_reading_on() {
    let mut long = b"PROXY TCP4 ".to_vec();
    long.extend(std::iter::repeat_n(b'1', 200));
    long.extend_from_slice(b"\r\n");
    let (r, _c, mut server) = parse(&long).await;
    assert!(matches!(r, Err(ProxyError::TooLong(107))), "{r:?}");
    // Exactly 107 bytes were consumed.
    let rest = read_n(&mut server, long.len() - 107).await;
    assert_eq!(rest, &long[107..]);
}

fn v2_tcp4_with_tlvs() -> Vec<u8> {
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (
            "203.0.113.9:40123".parse::<SocketAddr>().unwrap(),
            "10.1.2.3:465".parse::<SocketAddr>().unwrap(),
        ),
    )
    .write_tlv(Type::UniqueId, b"req-42".as_slice())
    .unwrap()
    .write_tlv(Type::Authority, b"mail.example.org".as_slice())
    .unwrap()
    .write_tlv(Type::NoOp, [0u8; 7].as_slice())
    .unwrap()
    .build()
    .unwrap()
}

#[tokio::test]
async fn v2_proxy_tcp4_with_tlvs_then_payload() {
    let mut bytes = v2_tcp4_with_tlvs();
    // A TLS ClientHello starts right after the header on an implicit-TLS listener.
    bytes.extend_from_slice(b"\x16\x03\x01EHLO x\r\n");
    let (r, _c, mut server) = parse(&bytes).await;
    assert_eq!(
        r.unwrap(),
        ProxiedAddrs {
            source: sa("203.0.113.9:40123"),
            destination: sa("10.1.2.3:465")
        }
    );
    assert_eq!(read_n(&mut server, 11).await, b"\x16\x03\x01EHLO x\r\n");
}

#[tokio::test]
async fn v2_proxy_tcp6() {
    let bytes = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (
            "[2001:db8::7]:1234".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:25".parse::<SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let (r, _c, _s) = parse(&bytes).await;
    assert_eq!(r.unwrap().source, sa("[2001:db8::7]:1234"));
}

#[tokio::test]
async fn v2_local_means_use_the_peer() {
    // LOCAL with addresses filled in anyway: they must be ignored.
    let bytes = Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Stream,
        (
            "203.0.113.9:1".parse::<SocketAddr>().unwrap(),
            "10.1.2.3:2".parse::<SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let mut with_tail = bytes.clone();
    with_tail.extend_from_slice(b"EHLO x\r\n");
    let (r, _c, mut server) = parse(&with_tail).await;
    assert_eq!(r.unwrap(), ProxiedAddrs::default());
    assert_eq!(read_n(&mut server, 8).await, b"EHLO x\r\n");

    // The minimal LOCAL header HAProxy sends for its health checks: 16 bytes, UNSPEC.
    let mut minimal = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    minimal.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let (r, _c, _s) = parse(&minimal).await;
    assert_eq!(r.unwrap(), ProxiedAddrs::default());
}

#[tokio::test]
async fn v2_unsupported_and_malformed() {
    // UDP
    let udp = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Datagram,
        (
            "203.0.113.9:1".parse::<SocketAddr>().unwrap(),
            "10.1.2.3:2".parse::<SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let (r, _c, _s) = parse(&udp).await;
    assert!(matches!(r, Err(ProxyError::Unsupported(_))), "{r:?}");

    // AF_UNIX, stream: 216 bytes of addresses.
    let mut unix = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    unix.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
    unix.extend(std::iter::repeat_n(0u8, 216));
    let (r, _c, _s) = parse(&unix).await;
    assert!(matches!(r, Err(ProxyError::Unsupported(_))), "{r:?}");

    // Version 1 in the binary form.
    let mut v1bin = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v1bin.extend_from_slice(&[0x11, 0x11, 0x00, 12]);
    v1bin.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2]);
    let (r, _c, _s) = parse(&v1bin).await;
    assert!(matches!(r, Err(ProxyError::V2(_))), "{r:?}");

    // Length too short for the IPv4 addresses.
    let mut short = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    short.extend_from_slice(&[0x21, 0x11, 0x00, 4, 1, 2, 3, 4]);
    let (r, _c, _s) = parse(&short).await;
    assert!(matches!(r, Err(ProxyError::V2(_))), "{r:?}");

    // A TLV that claims more bytes than the header has.
    let mut tlv = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    tlv.extend_from_slice(&[0x21, 0x11, 0x00, 12 + 4]);
    tlv.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2]);
    tlv.extend_from_slice(&[0x05, 0x00, 0x09, b'x']);
    let (r, _c, _s) = parse(&tlv).await;
    assert!(matches!(r, Err(ProxyError::V2(_))), "{r:?}");

    // Announced length over the cap: refused before reading it.
    let mut huge = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let (r, _c, _s) = parse(&huge).await;
    assert!(matches!(r, Err(ProxyError::TooLong(_))), "{r:?}");
}

#[tokio::test]
async fn garbage_is_a_bad_signature() {
    for bad in [
        &b"EHLO client.example\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00",
    ] {
        let (r, _c, _s) = parse(bad).await;
        assert!(
            matches!(r, Err(ProxyError::BadSignature(_))),
            "{bad:?} gave {r:?}"
        );
    }
}

#[tokio::test]
async fn closed_mid_header() {
    let (mut client, mut server) = pair().await;
    client.write_all(b"PROXY TCP4 192.0.2.10").await.unwrap();
    drop(client);
    let r = read_proxy_header(&mut server, T).await;
    assert!(matches!(r, Err(ProxyError::Closed)), "{r:?}");

    let (client, mut server) = pair().await;
    drop(client);
    let r = read_proxy_header(&mut server, T).await;
    assert!(matches!(r, Err(ProxyError::Closed)), "{r:?}");
}

#[tokio::test]
async fn silent_or_slow_sender_times_out() {
    // Nothing at all: an SMTP client that waits for our greeting, as a direct connection would.
    let (_client, mut server) = pair().await;
    let started = std::time::Instant::now();
    let r = read_proxy_header(&mut server, Duration::from_millis(200)).await;
    assert!(matches!(r, Err(ProxyError::Timeout(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Half a header and then silence: the deadline covers the whole header.
    let (mut client, mut server) = pair().await;
    client
        .write_all(b"PROXY TCP4 192.0.2.10 198.51.100.1")
        .await
        .unwrap();
    let r = read_proxy_header(&mut server, Duration::from_millis(200)).await;
    assert!(matches!(r, Err(ProxyError::Timeout(_))), "{r:?}");
}

#[test]
fn trusted_proxy_matches_networks_and_mapped_addresses() {
    let nets: Vec<ipnet::IpNet> =
        vec!["10.0.0.10/32".parse().unwrap(), "fd00::/8".parse().unwrap()];
    assert!(trusted_proxy(Ipv4Addr::new(10, 0, 0, 10).into(), &nets));
    assert!(trusted_proxy("::ffff:10.0.0.10".parse().unwrap(), &nets));
    assert!(trusted_proxy("fd12::1".parse().unwrap(), &nets));
    assert!(!trusted_proxy(Ipv4Addr::new(10, 0, 0, 11).into(), &nets));
    assert!(!trusted_proxy("2001:db8::1".parse().unwrap(), &[]));
}

/// A real HAProxy in front (`send-proxy-v2` and `send-proxy`): skipped with a message when the
/// binary is missing (CI installs it).
#[tokio::test]
async fn real_haproxy_sends_what_we_read() {
    let Some(haproxy) = [
        "/usr/sbin/haproxy",
        "/usr/local/sbin/haproxy",
        "/usr/bin/haproxy",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists()) else {
        eprintln!("SKIP real_haproxy_sends_what_we_read: haproxy not installed");
        return;
    };
    for (option, label) in [("send-proxy-v2", "v2"), ("send-proxy", "v1")] {
        haproxy_round_trip(haproxy, option, label).await;
    }
}

async fn haproxy_round_trip(haproxy: &str, option: &str, label: &str) {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    // HAProxy needs a fixed frontend port: take a free one and release it just before start.
    let front_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stderr format raw local0 warning\n\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\n\
             frontend smtp\n  bind {front_addr}\n  default_backend relay\n\n\
             backend relay\n  server s1 {backend_addr} {option}\n"
        ),
    )
    .unwrap();
    let child = Child(
        std::process::Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .spawn()
            .unwrap(),
    );

    // Wait until HAProxy listens.
    let mut client = None;
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(front_addr).await {
            client = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client =
        client.unwrap_or_else(|| panic!("haproxy ({label}) did not listen on {front_addr}"));
    let client_local = client.local_addr().unwrap();
    client.write_all(b"EHLO through.haproxy\r\n").await.unwrap();

    let (mut server, peer) = tokio::time::timeout(T, backend.accept())
        .await
        .unwrap()
        .unwrap();
    let addrs = read_proxy_header(&mut server, T).await.unwrap();
    assert_eq!(
        addrs.source,
        Some(client_local),
        "{label}: source is the real client"
    );
    assert_eq!(
        addrs.destination,
        Some(front_addr),
        "{label}: destination is the frontend"
    );
    assert_eq!(addrs.client_or(peer).ip(), Ipv4Addr::LOCALHOST);
    assert_eq!(
        read_n(&mut server, 22).await,
        b"EHLO through.haproxy\r\n",
        "{label}"
    );

    drop(child);
}

/// Kills and reaps HAProxy when the test ends, even on a failed assertion.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
