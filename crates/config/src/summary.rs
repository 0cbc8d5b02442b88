//! A human summary of a configuration, printed by `sluice check`.

use std::fmt::Write;
use std::time::Duration;

use crate::model::{Config, HostMatch, ListenerMode, PathMatch, RelayMode, Timeouts};

impl Config {
    /// Several lines: listeners with their addresses, routes in match order, pools with their
    /// backend counts, then timeouts, limits and relay settings. No trailing newline.
    ///
    /// ```text
    /// listeners (1)
    ///   public  127.0.0.1:8080  http  2 routes
    /// routes (2)
    ///   public  host chat.example.com  path_prefix /chat  header x-tenant=blue  -> chat
    ///   public  any request  -> main
    /// pools (3)
    ///   chat  round_robin  3 backends  connect_attempts 3
    ///   main  least_conn  1 backend  connect_attempts 1
    ///   rooms  hash cookie:room (fallback least_conn, factor 1.5)  3 backends  connect_attempts 3  sticky_cookie srv
    /// timeouts  handshake 5s, connect 3s, response 10s, tunnel_idle 1h, shutdown 30s (spread 5s)
    /// limits    max_head_bytes 16384, max_headers 100, max_connections from the open-file limit
    /// relay     auto, pipe_size 65536, max_pipes 1024, buffer_size 16384
    /// admin     127.0.0.1:9090 (no token)
    /// ```
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_summary(&mut out);
        out.truncate(out.trim_end().len());
        out
    }

    fn write_summary(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "listeners ({})", self.listeners.len())?;
        for l in &self.listeners {
            let mode = l.mode.as_str();
            let routes = match l.mode {
                ListenerMode::Http => plural(self.routes_for(&l.name).count(), "route"),
                ListenerMode::Tcp => format!("pool {}", l.pool.as_deref().unwrap_or("-")),
                ListenerMode::TlsPassthrough => format!(
                    "{}, default pool {}",
                    plural(l.sni_routes.len(), "sni route"),
                    l.pool.as_deref().unwrap_or("none (close)")
                ),
            };
            write!(out, "  {}  {}  {mode}  {routes}", l.name, l.listen)?;
            if let Some(accept) = &l.accept_proxy_protocol {
                write!(
                    out,
                    "  accept_proxy_protocol from {}",
                    comma_list(&accept.from)
                )?;
            }
            if let Some(max) = l.max_connections {
                write!(out, "  max_connections {max}")?;
            }
            if let Some(tls) = &l.tls {
                write!(
                    out,
                    "  tls {}",
                    plural(tls.certificates.len(), "certificate")
                )?;
            }
            if !l.trusted_proxies.is_empty() {
                write!(out, "  trusted_proxies {}", comma_list(&l.trusted_proxies))?;
            }
            writeln!(out)?;
        }

        writeln!(out, "routes ({})", self.routes.len())?;
        for r in &self.routes {
            write!(out, "  {}", r.listener)?;
            match &r.host {
                Some(HostMatch::Exact(h)) => write!(out, "  host {h}")?,
                Some(HostMatch::Wildcard(suffix)) => write!(out, "  host *{suffix}")?,
                None => {}
            }
            match &r.path {
                Some(PathMatch::Prefix(p)) => write!(out, "  path_prefix {p}")?,
                Some(PathMatch::Exact(p)) => write!(out, "  path_exact {p}")?,
                None => {}
            }
            for h in &r.headers {
                match &h.value {
                    Some(v) => write!(out, "  header {}={v}", h.name)?,
                    None => write!(out, "  header {}", h.name)?,
                }
            }
            if r.host.is_none() && r.path.is_none() && r.headers.is_empty() {
                write!(out, "  any request")?;
            }
            writeln!(out, "  -> {}", r.pool)?;
        }

        writeln!(out, "pools ({})", self.pools.len())?;
        for p in &self.pools {
            let mut balance = p.balance.as_str().to_owned();
            if let Some(hash) = &p.hash {
                let factor = hash
                    .balance_factor
                    .map_or_else(|| "unbounded".to_owned(), |f| format!("factor {f}"));
                balance = format!(
                    "{balance} {} (fallback {}, {factor})",
                    hash.key,
                    hash.fallback.as_str()
                );
            }
            let backends = match &p.discovery {
                Some(d) => format!("backends from DNS ({})", d.query),
                None => plural(p.backends.len(), "backend"),
            };
            write!(
                out,
                "  {}  {balance}  {backends}  connect_attempts {}",
                p.name, p.connect_attempts
            )?;
            if !p.source_addrs.is_empty() {
                write!(out, "  source_addrs {}", p.source_addrs.len())?;
            }
            if let Some(cookie) = &p.sticky_cookie {
                write!(out, "  sticky_cookie {}", cookie.name)?;
            }
            if let Some(check) = &p.health_check {
                write!(
                    out,
                    "  health_check {} every {} (rise {}, fall {})",
                    check.kind.as_str(),
                    human(check.interval),
                    check.rise,
                    check.fall
                )?;
            }
            if let Some(outlier) = &p.outlier {
                write!(
                    out,
                    "  outlier {} failures, cool_down {}",
                    outlier.consecutive_failures,
                    human(outlier.cool_down)
                )?;
            }
            if let Some(window) = p.slow_start {
                write!(out, "  slow_start {}", human(window))?;
            }
            if let Some(version) = p.send_proxy_protocol {
                write!(out, "  send_proxy_protocol {}", version.as_str())?;
            }
            if let Some(max) = p.max_connections_per_backend {
                write!(out, "  max_connections_per_backend {max}")?;
            }
            if let Some(tls) = &p.tls {
                write!(
                    out,
                    "  tls (sni {}, {})",
                    tls.sni.as_deref().unwrap_or("none"),
                    if tls.verify {
                        "verified"
                    } else {
                        "NOT verified"
                    }
                )?;
            }
            writeln!(out)?;
        }

        let t = &self.timeouts;
        writeln!(
            out,
            "timeouts  handshake {}, connect {}, response {}, tunnel_idle {}, shutdown {} (spread {})",
            human(t.handshake),
            human(t.connect),
            human(t.response),
            t.tunnel_idle.map_or_else(|| "off".to_owned(), human),
            human(t.shutdown),
            human(t.shutdown_spread),
        )?;
        if let Some(half_closed) = t.half_closed {
            // Continues the timeouts line.
            out.truncate(out.trim_end().len());
            writeln!(out, ", half_closed {}", human(half_closed))?;
        }
        // The plain-HTTP timeouts continue it too when they are not the defaults.
        let defaults = Timeouts::default();
        if (t.client_idle, t.body_stall) != (defaults.client_idle, defaults.body_stall) {
            out.truncate(out.trim_end().len());
            writeln!(
                out,
                ", client_idle {}, body_stall {}",
                human(t.client_idle),
                human(t.body_stall)
            )?;
        }
        let l = &self.limits;
        writeln!(
            out,
            "limits    max_head_bytes {}, max_headers {}, max_connections {}",
            l.max_head_bytes,
            l.max_headers,
            l.max_connections
                .map_or_else(|| "from the open-file limit".to_owned(), |n| n.to_string()),
        )?;
        if let Some(max_body_bytes) = l.max_body_bytes {
            // Continues the limits line.
            out.truncate(out.trim_end().len());
            writeln!(out, ", max_body_bytes {max_body_bytes}")?;
        }
        let s = &self.per_source;
        if s.is_enabled() {
            write!(out, "per source")?;
            if let Some(max) = s.max_connections {
                write!(out, "  max_connections {max}")?;
            }
            if let Some(rate) = s.connection_rate {
                write!(
                    out,
                    "  connection_rate {rate}/s (burst {})",
                    s.connection_burst
                )?;
            }
            write!(
                out,
                "  by /{} (IPv4), /{} (IPv6)  table_size {}",
                s.ipv4_prefix, s.ipv6_prefix, s.table_size
            )?;
            if !s.exempt.is_empty() {
                write!(out, "  exempt {}", comma_list(&s.exempt))?;
            }
            writeln!(out)?;
        }
        let r = &self.relay;
        let mode = match r.mode {
            RelayMode::Auto => "auto",
            RelayMode::Splice => "splice",
            RelayMode::Copy => "copy",
        };
        write!(
            out,
            "relay     {mode}, pipe_size {}, max_pipes {}, buffer_size {}",
            r.pipe_size, r.max_pipes, r.buffer_size
        )?;
        if let Some(k) = r.tcp_keepalive {
            write!(
                out,
                ", tcp_keepalive {}/{}/{}",
                human(k.idle),
                human(k.interval),
                k.count
            )?;
        }
        if let Some(d) = r.tcp_user_timeout {
            write!(out, ", tcp_user_timeout {}", human(d))?;
        }
        writeln!(out)?;
        match &self.admin {
            Some(a) => writeln!(
                out,
                "admin     {} ({})",
                a.listen,
                if a.token.is_some() {
                    "token required"
                } else {
                    "no token"
                }
            ),
            None => writeln!(out, "admin     off"),
        }
    }
}

/// Networks (or anything displayable) as `a,b,c`.
fn comma_list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
