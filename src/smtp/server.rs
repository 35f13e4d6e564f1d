//! The running relay: binds the listeners, enforces the connection limit, starts one session
//! task per client (PROXY header and implicit TLS first where configured), reloads policy and
//! certificates on SIGHUP, and stops gracefully on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::conn::Stream;
use super::session::Session;
use super::state::{Listener, Live, Shared};
use crate::audit::AuditLog;
use crate::config::{Config, TlsMode};
use crate::deliver::Stages;
use crate::metrics::{Observe, RejectReason};
use crate::relay::Upstream;
use crate::reply::Reply;

pub fn run_from_cli(config: &Path) -> ExitCode {
    tune_allocator();
    // Both ring and aws-lc could be linked in by dependencies; choose explicitly once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bccguard: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config.to_path_buf())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("bccguard: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Serves message buffers over 4 MiB straight from mmap: growing one then uses mremap instead of
/// copying into a fresh heap block, so a message costs about its size in RSS, not old + new copy.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called once before any thread starts.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20) };
    if ok != 1 {
        tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused; large messages may cost more memory");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

pub async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let cfg = Config::load(&config_path)?;
    let live = Live::build(&cfg)?;
    let relay_networks = cfg.relay_networks()?;
    let metrics = cfg
        .metrics
        .as_ref()
        .map(|_| Arc::new(crate::metrics::Metrics::new()));
    let observe = Observe::new(metrics.clone());
    observe.tls_certificate(cfg.tls.as_ref()); // metrics: certificate expiry gauge
    let upstream = Upstream::new(&cfg.upstream, &cfg.server.hostname, observe.clone())?;
    let audit = Arc::new(
        AuditLog::open(&cfg.audit, &live.policy.version()).context("opening the audit log")?,
    );
    if !audit.is_writable() {
        tracing::error!(
            path = %cfg.audit.path.display(),
            "audit log is not writable: messages that need an audit record will get 451 4.3.0 until it is fixed"
        );
    }

    let mut bound = Vec::new();
    for (i, lc) in cfg.listeners.iter().enumerate() {
        let addr = lc.socket_addr().map_err(anyhow::Error::msg)?;
        let socket = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding listener {addr}"))?;
        let local = socket.local_addr().unwrap_or(addr);
        bound.push((
            Arc::new(Listener {
                cfg: lc.clone(),
                local,
                proxy_networks: cfg.proxy_networks(i)?,
            }),
            socket,
        ));
    }
    tracing::info!(policy_version = %live.policy.version(), "policy loaded: {}", live.policy.describe_one_line()); // admin: one line
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (spool, spool_task) = crate::spool::start_for_serve(
        &cfg,
        upstream.clone(),
        metrics.clone(),
        Arc::clone(&audit),
        shutdown_rx.clone(),
    )?;
    let stages = Stages {
        upstream,
        audit,
        metrics: observe,
        hostname: cfg.server.hostname.clone(),
        spool: Some(spool),
    };
    let shared = Arc::new(Shared::new(cfg, relay_networks, stages, live));

    let limit = Arc::new(Semaphore::new(shared.cfg.server.max_connections));
    let mut accept_loops = JoinSet::new();
    let sessions = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
    for (listener, socket) in bound {
        tracing::info!(address = %listener.local, tls = %listener.cfg.tls, auth = %listener.cfg.auth, proxy_protocol = listener.cfg.proxy_protocol, "listening");
        accept_loops.spawn(accept_loop(
            shared.clone(),
            listener,
            socket,
            limit.clone(),
            sessions.clone(),
            shutdown_rx.clone(),
        ));
    }
    if let (Some(mc), Some(m)) = (shared.cfg.metrics.as_ref(), metrics) {
        spawn_metrics_endpoint(&mc.address, m, &shared, shutdown_rx.clone()).await?;
    }

    crate::service::ready("accepting mail"); // admin: systemd Type=notify
    wait_for_stop_signal(&shared, &config_path).await;
    crate::service::stopping(); // admin: systemd Type=notify
    tracing::info!("shutting down: no new connections; transactions in flight may finish");
    let _ = shutdown_tx.send(true);
    accept_loops.shutdown().await;
    let grace = Duration::from_secs(shared.cfg.server.shutdown_grace_seconds);
    let mut sessions = sessions.lock().await;
    let drained = tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = sessions.len(),
            "grace period over: closing remaining sessions"
        );
        sessions.shutdown().await;
    }
    let _ = spool_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves `/metrics` and `/healthz` (ready = upstream answers and the audit log is writable).
async fn spawn_metrics_endpoint(
    address: &str,
    metrics: Arc<crate::metrics::Metrics>,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    for l in &shared.cfg.listeners {
        metrics.register_listener(&l.address);
    }
    let live = shared.live();
    metrics.register_rules(
        shared
            .cfg
            .policy
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r.action)),
        live.policy.mode(),
    );
    let socket = TcpListener::bind(address)
        .await
        .with_context(|| format!("binding metrics endpoint {address}"))?;
    let audit_shared = shared.clone();
    let health = crate::metrics::ProbeHealth::new(
        shared.cfg.upstream.address.clone(),
        Duration::from_secs(shared.cfg.upstream.timeout_seconds.min(5)),
        shared.cfg.upstream.tls != TlsMode::Implicit,
        shared.cfg.audit.path.display().to_string(),
        Arc::new(move || audit_shared.stages.audit.is_writable()),
    );
    let health = match &shared.stages.spool {
        Some(spool) => {
            let (status, max_age) = spool.health_probe();
            health.spool(status, max_age)
        }
        None => health,
    };
    tracing::info!(
        address,
        "metrics at /metrics, readiness at /readyz (= /healthz), liveness at /livez"
    );
    tokio::spawn(async move {
        if let Err(e) = crate::metrics::serve(socket, metrics, Arc::new(health), shutdown).await {
            tracing::error!("metrics endpoint stopped: {e:#}");
        }
    });
    Ok(())
}

/// Waits for SIGTERM/SIGINT; reloads on SIGHUP in between.
async fn wait_for_stop_signal(shared: &Arc<Shared>, config_path: &Path) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => reload(shared, config_path).await,
        }
    }
}

/// Re-reads the config; a bad one is refused and the old one kept.
async fn reload(shared: &Shared, config_path: &Path) {
    // metrics: reload duration
    let started = std::time::Instant::now();
    // Off the runtime: building the policy may wait for a directory's first answer.
    let path = config_path.to_path_buf();
    let built = tokio::task::spawn_blocking(move || {
        Config::load(&path)
            .map_err(anyhow::Error::from)
            .and_then(|cfg| Live::build(&cfg).map(|live| (cfg, live)))
    })
    .await;
    let result = built.unwrap_or_else(|e| Err(anyhow::anyhow!("reload task failed: {e}")));
    match result {
        Ok((cfg, live)) => {
            let old_version = shared.live().policy.version();
            let version = live.policy.version();
            let needs_restart = restart_only_changes(&shared.cfg, &cfg);
            if !needs_restart.is_empty() {
                tracing::warn!(
                    sections = %needs_restart.join(", "),
                    "reload: these sections changed but take effect only after a restart"
                );
            }
            shared.stages.audit.set_policy_version(&version);
            shared.replace_live(live);
            tracing::info!(old = %old_version, new = %version, "reload: policy, TLS certificates and users reloaded: {}", shared.live().policy.describe_one_line());
            shared.stages.metrics.reload(true, started.elapsed()); // metrics
            shared.stages.metrics.tls_certificate(cfg.tls.as_ref()); // metrics
        }
        Err(e) => {
            shared.stages.metrics.reload(false, started.elapsed()); // metrics
            tracing::error!("reload refused, keeping the running configuration: {e:#}");
        }
    }
}

/// Config sections SIGHUP does not apply (sockets, upstream, audit file, limits) that differ.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
    }
    let mut changed = Vec::new();
    if differs(&running.server, &new.server) {
        changed.push("[server]");
    }
    if differs(&running.listeners, &new.listeners) {
        changed.push("[[listener]]");
    }
    if differs(&running.upstream, &new.upstream) {
        changed.push("[upstream]");
    }
    if differs(&running.audit, &new.audit) {
        changed.push("[audit]");
    }
    if differs(&running.metrics, &new.metrics) {
        changed.push("[metrics]");
    }
    if differs(&running.spool, &new.spool) {
        changed.push("[spool]");
    }
    changed
}

static SESSION_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Short unique session id: start time and a counter, so ids sort and never repeat across restarts.
fn session_id() -> String {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let n = SESSION_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{start:x}-{n:x}")
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    socket: TcpListener,
    limit: Arc<Semaphore>,
    sessions: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = match socket.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept on {}: {e}", listener.local);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared
                .stages
                .metrics
                .rejected(RejectReason::ConnectionLimit);
            tokio::spawn(refuse_busy(tcp));
            continue;
        };
        let shared = shared.clone();
        let listener = listener.clone();
        let shutdown = shutdown.clone();
        let id = session_id();
        let span = tracing::info_span!("session", id = %id);
        let task = async move {
            let _permit = permit;
            serve_connection(shared, listener, tcp, peer, id, shutdown).await;
        }
        .instrument(span);
        let mut set = sessions.lock().await;
        // Reap finished sessions so the set does not grow without bound.
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }
}

async fn refuse_busy(mut tcp: TcpStream) {
    let reply = Reply::new(
        421,
        (4, 3, 2),
        "Too many connections, please try again later",
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&reply.to_wire())).await;
}

async fn serve_connection(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    tcp: TcpStream,
    socket_peer: SocketAddr,
    id: String,
    shutdown: watch::Receiver<bool>,
) {
    let timeout = Duration::from_secs(shared.cfg.server.command_timeout_seconds);
    // hardening: IPv4 clients of a `[::]` listener match IPv4 relay/proxy networks.
    let socket_peer = crate::config::networks::canonical_peer(socket_peer);
    let (tcp, peer) = match resolve_peer(&shared, &listener, tcp, socket_peer, timeout).await {
        Some(pair) => pair,
        None => return,
    };
    tracing::info!(client = %peer, listener = %listener.local, "connected");
    // Checked on the real client address (after PROXY): insiders are exempt, like $mynetworks.
    let max_per_client = if shared.in_relay_networks(peer.ip()) {
        0
    } else {
        shared.cfg.server.max_connections_per_client
    };
    let Some(_slot) = shared.clients.try_enter(peer.ip(), max_per_client) else {
        shared
            .stages
            .metrics
            .rejected(RejectReason::ConnectionLimit);
        tracing::info!(client = %peer.ip(), limit = max_per_client, "too many connections from this client");
        let mut tcp = tcp;
        let reply = Reply::new(
            421,
            (4, 7, 0),
            "Too many connections from your address, please try again later",
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&reply.to_wire())).await;
        return;
    };
    let metrics = &shared.stages.metrics;
    let stream = if listener.cfg.tls == TlsMode::Implicit {
        let Some(acceptor) = shared.live().tls.clone() else {
            return;
        };
        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                metrics.tls_handshake(true);
                metrics.tls_session(super::tls::resumed(tls.get_ref().1));
                Stream::Tls(Box::new(tls))
            }
            Ok(Err(e)) => {
                metrics.tls_handshake(false);
                tracing::info!("TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                metrics.tls_handshake(false);
                tracing::info!("TLS handshake timed out");
                return;
            }
        }
    } else {
        Stream::Plain(tcp)
    };
    let label = listener.cfg.address.clone();
    let _active = metrics.session(&label);
    let end = Session::new(shared.clone(), listener, id, peer, stream, shutdown)
        .run()
        .await;
    tracing::info!(end = %end, "disconnected");
}

/// The client's real address: the socket peer, or what a trusted load balancer's PROXY header says.
/// `None` = drop the connection without a word (untrusted sender of PROXY headers, bad header).
async fn resolve_peer(
    shared: &Shared,
    listener: &Listener,
    mut tcp: TcpStream,
    socket_peer: SocketAddr,
    timeout: Duration,
) -> Option<(TcpStream, SocketAddr)> {
    use super::proxy::{read_proxy_header, trusted_proxy};
    if !listener.cfg.proxy_protocol {
        return Some((tcp, socket_peer));
    }
    if !trusted_proxy(socket_peer.ip(), &listener.proxy_networks) {
        tracing::warn!(peer = %socket_peer, "PROXY listener: connection from outside proxy_networks dropped");
        shared.stages.metrics.rejected(RejectReason::ProxyHeader);
        return None;
    }
    match read_proxy_header(&mut tcp, timeout).await {
        Ok(addrs) => Some((tcp, addrs.client_or(socket_peer))),
        Err(e) => {
            tracing::warn!(peer = %socket_peer, "bad PROXY header: {e}");
            shared.stages.metrics.rejected(RejectReason::ProxyHeader);
            None
        }
    }
}
