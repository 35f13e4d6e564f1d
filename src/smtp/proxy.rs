//! HAProxy PROXY protocol (v1 text, v2 binary) on listeners behind a load balancer.
//!
//! [`read_proxy_header`] reads exactly the header and not one byte more: on an implicit-TLS
//! listener the client's ClientHello follows at once, and it must stay in the socket for the TLS
//! acceptor. v1 is read byte by byte up to its CRLF (at most 107 bytes); v2 reads its 16-byte
//! fixed part, then exactly the length it announces. Parsing is done by the `ppp` crate.
//! Any error means the caller drops the connection without a reply: whatever sent it is not the
//! balancer we were told to trust.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header, CRLF included (proxy-protocol.txt section 2.1).
pub const V1_MAX_LEN: usize = 107;
/// Longest v2 header accepted: 16 fixed bytes plus addresses and TLVs. The protocol allows 64 KiB
/// of TLVs; HAProxy sends a few hundred bytes at most, and the cap bounds memory per connection.
pub const V2_MAX_LEN: usize = 16 + 4096;

const V1_PREFIX: &[u8] = b"PROXY ";
/// The 12-byte v2 signature (`ppp::v2::PROTOCOL_PREFIX`).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The client and server addresses the balancer saw. Both `None` for v1 `UNKNOWN`, v2 `LOCAL`
/// (the balancer's own health checks) and v2 `UNSPEC`: then use the socket's peer address.
/// IPv4-mapped IPv6 addresses are given as plain IPv4 so `relay_networks` checks match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxiedAddrs {
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

impl ProxiedAddrs {
    /// The client address to use from now on: the proxied source, else the socket peer.
    pub fn client_or(&self, peer: SocketAddr) -> SocketAddr {
        self.source.unwrap_or(peer)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no complete PROXY protocol header within {} s", .0.as_secs_f32())]
    Timeout(Duration),
    #[error("connection closed before the PROXY protocol header was complete")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[source] io::Error),
    #[error("not a PROXY protocol header (signature {0:?})")]
    BadSignature(String),
    #[error("PROXY protocol header longer than {0} bytes")]
    TooLong(usize),
    #[error("invalid PROXY protocol v1 header: {0}")]
    V1(#[source] ppp::v1::BinaryParseError),
    #[error("invalid PROXY protocol v2 header: {0}")]
    V2(#[source] ppp::v2::ParseError),
    #[error("PROXY protocol header for an unsupported connection: {0}")]
    Unsupported(&'static str),
}

fn io_error(e: io::Error) -> ProxyError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ProxyError::Closed
    } else {
        ProxyError::Io(e)
    }
}

/// Reads one PROXY protocol header (v1 or v2, detected from the first bytes) from `stream`,
/// consuming nothing after it. Fails with [`ProxyError::Timeout`] if the whole header has not
/// arrived within `timeout`.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxiedAddrs, ProxyError> {
    match tokio::time::timeout(timeout, read_header(stream)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyError::Timeout(timeout)),
    }
}

/// Whether `peer` may send a PROXY header at all (it is one of the listener's `proxy_networks`).
/// An IPv4 peer seen on a dual-stack socket as `::ffff:a.b.c.d` matches IPv4 networks.
pub fn trusted_proxy(peer: IpAddr, proxy_networks: &[IpNet]) -> bool {
    let peer = peer.to_canonical();
    proxy_networks.iter().any(|net| net.contains(&peer))
}

async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxiedAddrs, ProxyError> {
    // 12 bytes tell the versions apart and can never over-read: the v2 signature is 12 bytes and
    // the shortest v1 header ("PROXY UNKNOWN\r\n") is 15.
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.map_err(io_error)?;
    if &head == V2_SIGNATURE {
        read_v2(stream, head).await
    } else if head.starts_with(V1_PREFIX) {
        read_v1(stream, head).await
    } else {
        Err(ProxyError::BadSignature(
            String::from_utf8_lossy(&head).escape_debug().to_string(),
        ))
    }
}

async fn read_v1<S: AsyncRead + Unpin>(
    stream: &mut S,
    head: [u8; 12],
) -> Result<ProxiedAddrs, ProxyError> {
    let mut buf = Vec::with_capacity(V1_MAX_LEN);
    buf.extend_from_slice(&head);
    // A LF this early cannot end a valid header; let the parser say what is wrong.
    if !buf.contains(&b'\n') {
        // Byte by byte: the header's length is only known when its LF arrives.
        loop {
            if buf.len() >= V1_MAX_LEN {
                return Err(ProxyError::TooLong(V1_MAX_LEN));
            }
            let b = stream.read_u8().await.map_err(io_error)?;
            buf.push(b);
            if b == b'\n' {
                break;
            }
        }
    }
    // ppp stops at the first CR; insist that it is the one right before the only LF, so that no
    // bytes after a stray CR are silently ignored.
    let cr = buf.iter().position(|&b| b == b'\r');
    if !buf.ends_with(b"\r\n") || cr != Some(buf.len() - 2) {
        return Err(ProxyError::V1(ppp::v1::ParseError::MissingNewLine.into()));
    }
    let header = ppp::v1::Header::try_from(buf.as_slice()).map_err(ProxyError::V1)?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Unknown => ProxiedAddrs::default(),
        ppp::v1::Addresses::Tcp4(a) => ProxiedAddrs {
            source: Some(socket(a.source_address.into(), a.source_port)),
            destination: Some(socket(a.destination_address.into(), a.destination_port)),
        },
        ppp::v1::Addresses::Tcp6(a) => ProxiedAddrs {
            source: Some(socket(a.source_address.into(), a.source_port)),
            destination: Some(socket(a.destination_address.into(), a.destination_port)),
        },
    })
}

async fn read_v2<S: AsyncRead + Unpin>(
    stream: &mut S,
    head: [u8; 12],
) -> Result<ProxiedAddrs, ProxyError> {
    let mut fixed = [0u8; 4];
    stream.read_exact(&mut fixed).await.map_err(io_error)?;
    let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
    if 16 + len > V2_MAX_LEN {
        return Err(ProxyError::TooLong(V2_MAX_LEN));
    }
    let mut buf = Vec::with_capacity(16 + len);
    buf.extend_from_slice(&head);
    buf.extend_from_slice(&fixed);
    buf.resize(16 + len, 0);
    stream.read_exact(&mut buf[16..]).await.map_err(io_error)?;

    let header = ppp::v2::Header::try_from(buf.as_slice()).map_err(ProxyError::V2)?;
    // ppp checks the TLV area only when iterated; a malformed one means a malformed header.
    for tlv in header.tlvs() {
        tlv.map_err(ProxyError::V2)?;
    }
    if header.command == ppp::v2::Command::Local {
        // The balancer talking for itself (health check): addresses are to be ignored.
        return Ok(ProxiedAddrs::default());
    }
    let stream_protocol = header.protocol == ppp::v2::Protocol::Stream;
    match header.addresses {
        ppp::v2::Addresses::Unspecified => Ok(ProxiedAddrs::default()),
        ppp::v2::Addresses::Unix(_) => Err(ProxyError::Unsupported("AF_UNIX addresses")),
        _ if !stream_protocol => Err(ProxyError::Unsupported("not a TCP (stream) connection")),
        ppp::v2::Addresses::IPv4(a) => Ok(ProxiedAddrs {
            source: Some(socket(a.source_address.into(), a.source_port)),
            destination: Some(socket(a.destination_address.into(), a.destination_port)),
        }),
        ppp::v2::Addresses::IPv6(a) => Ok(ProxiedAddrs {
            source: Some(socket(a.source_address.into(), a.source_port)),
            destination: Some(socket(a.destination_address.into(), a.destination_port)),
        }),
    }
}

fn socket(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.to_canonical(), port)
}
