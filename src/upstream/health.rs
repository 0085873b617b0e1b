//! Background work of an upstream group: active health checks and DNS re-resolution. Both run
//! off the request path, in tasks the supervisor (`app.rs`) starts and stops.

use super::target::TargetState;
use super::UpstreamGroup;
use crate::upstream::config::{ActiveHealth, CheckKind};
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::protocols::ALPN;
use pingora::{Error, ErrorType};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Checks every target of `group` forever, every `interval`. Cancel by aborting the task.
pub async fn run_active(group: Arc<UpstreamGroup>) {
    let Some(cfg) = group.active.clone() else {
        return;
    };
    loop {
        check_all(&group, &cfg).await;
        tokio::time::sleep(cfg.interval.0).await;
    }
}

/// One round of checks over all current targets, in parallel.
pub async fn check_all(group: &Arc<UpstreamGroup>, cfg: &ActiveHealth) {
    let mut set = JoinSet::new();
    for t in group.targets() {
        let (g, c) = (group.clone(), cfg.clone());
        set.spawn(async move {
            let ok = check_one(&g, &t, &c).await;
            if let Some(up) = t.record_check(ok, c.healthy_after, c.unhealthy_after) {
                // A recovery is good news (info); a target going down is a warning.
                if up {
                    log::info!(
                        "upstream {}: target {} is now healthy (active check)",
                        g.name,
                        t.addr
                    );
                } else {
                    log::warn!(
                        "upstream {}: target {} is now unhealthy (active check)",
                        g.name,
                        t.addr
                    );
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

async fn check_one(g: &UpstreamGroup, t: &TargetState, c: &ActiveHealth) -> bool {
    let Ok(backend) = Backend::new(&t.addr.to_string()) else {
        return false;
    };
    let fut = async {
        match c.kind {
            CheckKind::Tcp => {
                let mut hc = TcpHealthCheck::new();
                hc.peer_template.options.connection_timeout = Some(c.timeout.0);
                hc.check(&backend).await.is_ok()
            }
            CheckKind::Http => match http_check(g, t, c) {
                Some(hc) => hc.check(&backend).await.is_ok(),
                None => false,
            },
        }
    };
    tokio::time::timeout(c.timeout.0, fut)
        .await
        .unwrap_or(false)
}

fn http_check(g: &UpstreamGroup, t: &TargetState, c: &ActiveHealth) -> Option<HttpHealthCheck> {
    let host = c
        .host
        .clone()
        .or_else(|| t.host.as_ref().map(|h| h.to_string()))
        .unwrap_or_else(|| t.addr.to_string());
    let tls = g.peer.tls;
    let mut hc = HttpHealthCheck::new(&host, tls);
    let mut req = RequestHeader::build("GET", c.path.as_bytes(), None).ok()?;
    req.insert_header("host", &host).ok()?;
    req.insert_header("user-agent", "postern-health-check")
        .ok()?;
    hc.req = req;
    if let Some(sni) = &g.peer.sni {
        hc.peer_template.sni = sni.clone();
    }
    let o = &mut hc.peer_template.options;
    o.connection_timeout = Some(c.timeout.0);
    o.read_timeout = Some(c.timeout.0);
    o.verify_cert = g.peer.verify;
    o.verify_hostname = g.peer.verify;
    o.ca = g.peer.ca.clone();
    o.alpn = ALPN::H1;
    let statuses = c.expected_statuses.clone();
    hc.validator = Some(Box::new(move |resp| {
        if statuses.contains(&resp.status.as_u16()) {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::Custom("unexpected health check status"),
                resp.status.to_string(),
            )
        }
    }));
    Some(hc)
}

/// Re-resolves the group's host names every `resolve_interval`; keeps the last good addresses
/// of a name that fails to resolve.
pub async fn run_dns(group: Arc<UpstreamGroup>) {
    if !group.has_names() {
        return;
    }
    loop {
        tokio::time::sleep(group.resolve_interval).await;
        let mut resolved: Vec<Vec<SocketAddr>> = Vec::with_capacity(group.specs.len());
        let current = group.targets();
        for s in &group.specs {
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((s.host.as_str(), s.port))
                .await
            {
                Ok(it) => it.collect(),
                Err(e) => {
                    log::warn!(
                        "upstream {}: cannot resolve {}: {e}; keeping the last addresses",
                        group.name,
                        s.host
                    );
                    current
                        .iter()
                        .filter(|t| {
                            t.host.as_deref() == Some(s.host.as_str()) && t.addr.port() == s.port
                        })
                        .map(|t| t.addr)
                        .collect()
                }
            };
            resolved.push(addrs);
        }
        if group.set_addresses(resolved) {
            log::info!(
                "upstream {}: targets changed after DNS re-resolution",
                group.name
            );
        }
    }
}
