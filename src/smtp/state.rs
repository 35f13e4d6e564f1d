//! What the sessions share: the configuration, the delivery stages, the live snapshot SIGHUP
//! replaces, and each bound listener's settings. Nothing here knows about sessions or sockets.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use ipnet::IpNet;
use tokio_rustls::TlsAcceptor;

use super::auth::AuthService;
use super::limits::ClientConnections;
use crate::config::{Config, ListenerConfig};
use crate::deliver::{Rules, Stages};
use crate::policy::Policy;
use crate::rewrite::Rewriter;

/// What SIGHUP replaces: policy, rewriter (DKIM key), TLS certificates and the users file.
pub struct Live {
    pub policy: Policy,
    pub rewriter: Rewriter,
    pub tls: Option<TlsAcceptor>,
    /// Credentials, with the verified-login cache of this users-file generation.
    pub users: Option<AuthService>,
}

impl Live {
    pub fn build(cfg: &Config) -> anyhow::Result<Live> {
        let policy = Policy::new(&cfg.policy).context("building the policy")?;
        let rewriter = Rewriter::new(&cfg.policy).context("preparing the rewriter")?;
        let tls = cfg.tls.as_ref().map(super::tls::acceptor).transpose()?;
        let users = cfg
            .auth
            .users_file
            .as_deref()
            .map(|path| AuthService::load(path, &cfg.auth))
            .transpose()?;
        Ok(Live {
            policy,
            rewriter,
            tls,
            users,
        })
    }

    pub fn rules(&self) -> Rules<'_> {
        Rules {
            policy: &self.policy,
            rewriter: &self.rewriter,
        }
    }
}

/// State every session shares.
pub struct Shared {
    pub cfg: Config,
    pub relay_networks: Vec<IpNet>,
    pub stages: Stages,
    /// Sessions held per client address.
    pub clients: Arc<ClientConnections>,
    live: RwLock<Arc<Live>>,
}

impl Shared {
    pub fn new(cfg: Config, relay_networks: Vec<IpNet>, stages: Stages, live: Live) -> Shared {
        Shared {
            cfg,
            relay_networks,
            stages,
            clients: Arc::default(),
            live: RwLock::new(Arc::new(live)),
        }
    }

    /// The current snapshot: take it once per message so a reload cannot change it midway.
    pub fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// May this client relay without AUTH?
    pub fn in_relay_networks(&self, ip: std::net::IpAddr) -> bool {
        self.relay_networks.iter().any(|n| n.contains(&ip))
    }

    pub fn replace_live(&self, live: Live) {
        let live = Arc::new(live);
        match self.live.write() {
            Ok(mut guard) => *guard = live,
            Err(poisoned) => *poisoned.into_inner() = live,
        }
    }
}

/// One bound listener's settings.
pub struct Listener {
    pub cfg: ListenerConfig,
    pub local: SocketAddr,
    pub proxy_networks: Vec<IpNet>,
}

impl Listener {
    /// Cleartext AUTH only where passwords cannot cross a network (config validation checks too).
    pub fn cleartext_auth_allowed(&self) -> bool {
        self.cfg.allow_cleartext_auth && self.local.ip().is_loopback()
    }
}
