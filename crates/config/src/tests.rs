//! Tests of `parse` and `load` through the file format: what parses, into what, and every error
//! with its exact position.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::*;

fn ok(text: &str) -> Config {
    match parse(text, "t.toml") {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// Every error, displayed, one string each.
fn errors(text: &str) -> Vec<String> {
    match parse(text, "t.toml") {
        Ok(_) => panic!("expected errors, the config parsed"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

/// The one error of `text`.
fn error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got {errors:#?}\nfrom:\n{text}"
    );
    errors.into_iter().next().unwrap_or_default()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A valid file; tests append to it or replace parts of it.
const BASE: &str = r#"[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[routes]]
listener = "public"
pool = "main"

[pools.main]
backends = ["127.0.0.1:9001"]
"#;

/// BASE plus `extra` appended (line 12 is the first line of `extra`).
fn base(extra: &str) -> String {
    format!("{BASE}\n{extra}")
}

#[test]
fn a_minimal_file_parses_with_defaults() {
    let config = ok(BASE);
    assert_eq!(
        config,
        Config {
            listeners: vec![Listener {
                name: "public".into(),
                listen: addr("127.0.0.1:8080"),
                mode: ListenerMode::Http,
                unknown_host_status: 404,
                trusted_proxies: vec![],
                pool: None,
                sni_routes: vec![],
                accept_proxy_protocol: None,
                max_connections: None,
                tls: None,
            }],
            routes: vec![Route {
                listener: "public".into(),
                host: None,
                path: None,
                headers: vec![],
                pool: "main".into(),
                origins: None,
            }],
            pools: vec![Pool {
                name: "main".into(),
                balance: Balance::RoundRobin,
                hash: None,
                sticky_cookie: None,
                backends: vec![Backend {
                    addr: addr("127.0.0.1:9001"),
                    weight: 1,
                }],
                discovery: None,
                source_addrs: Vec::new(),
                connect_attempts: 3,
                drain_timeout: None,
                drain_spread: Duration::from_secs(10),
                health_check: None,
                outlier: None,
                slow_start: None,
                idle_connections: 16,
                idle_timeout: Duration::from_secs(4),
                send_proxy_protocol: None,
                max_connections_per_backend: None,
                tls: None,
            }],
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            per_source: PerSourceLimits::default(),
            relay: Relay::default(),
            admin: None,
        }
    );
    // The constructor other crates' tests build pools with gives what the file gives.
    let backend = Backend {
        addr: addr("127.0.0.1:9001"),
        weight: 1,
    };
    assert_eq!(config.pools[0], Pool::with_backends("main", vec![backend]));
}

#[test]
fn every_example_file_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("config/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("sluice.toml")),
        "config/sluice.toml is missing from {files:?}"
    );
    for file in files {
        if let Err(e) = load(&file) {
            panic!("{} does not parse:\n{e}", file.display());
        }
    }
}

#[test]
fn the_example_file_is_what_make_run_expects() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/sluice.toml");
    let config = load(&path).expect("config/sluice.toml parses");
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.listeners[0].listen, addr("127.0.0.1:8080"));
    let echo = config.pool("echo").expect("pool echo");
    let backends: Vec<SocketAddr> = echo.backends.iter().map(|b| b.addr).collect();
    assert_eq!(
        backends,
        [
            addr("127.0.0.1:9001"),
            addr("127.0.0.1:9002"),
            addr("127.0.0.1:9003")
        ]
    );
    // Pools keep file order.
    let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["echo", "beta"]);
    // Shows every kind of matcher, and ends with a catch-all.
    let routes: Vec<&Route> = config.routes_for("public").collect();
    assert_eq!(routes.len(), 3);
    assert!(routes.iter().any(|r| r.host.is_some()));
    assert!(
        routes
            .iter()
            .any(|r| r.headers.iter().any(|h| h.value.is_none()))
    );
    assert!(
        routes
            .iter()
            .any(|r| r.headers.iter().any(|h| h.value.is_some()))
    );
    assert_eq!(
        routes.last().map(|r| (&r.path, &r.pool[..])),
        Some((&Some(PathMatch::Prefix("/".into())), "echo"))
    );
    // The values written are the defaults, except where the file says otherwise.
    assert_eq!(config.timeouts, Timeouts::default());
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.relay, Relay::default());
}

#[test]
fn a_full_file_parses_into_typed_values() {
    let config = ok(r#"
[[listeners]]
name = "public"
listen = "0.0.0.0:8080"
mode = "http"
unknown_host_status = 421
trusted_proxies = ["10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1"]

[[listeners]]
name = "internal"
listen = "[::1]:8081"

[[routes]]
listener = "public"
host = "Chat.Example.com"
path_prefix = "/chat"
headers = [{ name = "X-Tenant", value = "blue" }, { name = "X-Beta" }]
pool = "chat"

[[routes]]
listener = "internal"
host = "*.Example.com"
path_exact = "/admin"
pool = "zeta"

[pools.zeta]
balance = "least_conn"
connect_attempts = 16
backends = [{ addr = "10.0.0.1:9000", weight = 256 }]

[pools.chat]
backends = ["10.0.0.1:9000", { addr = "[fd00::2]:9000", weight = 2 }, { addr = "10.0.0.3:9000" }]

[timeouts]
handshake = "250ms"
connect = "1s 500ms"
response = "2m"
tunnel_idle = "0"
shutdown = "1h"

[limits]
max_head_bytes = 1_048_576
max_headers = 1
max_connections = 0x10

[relay]
mode = "copy"
pipe_size = 4096
pipe_max_size = 8192
max_pipes = 0
buffer_size = 1024
"#);
    let public = &config.listeners[0];
    assert_eq!(public.listen, addr("0.0.0.0:8080"));
    assert_eq!(public.unknown_host_status, 421);
    let nets: Vec<String> = public
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        nets,
        ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8", "::1/128"]
    );
    assert_eq!(config.listeners[1].listen, addr("[::1]:8081"));

    assert_eq!(
        config.routes[0],
        Route {
            listener: "public".into(),
            host: Some(HostMatch::Exact("chat.example.com".into())),
            path: Some(PathMatch::Prefix("/chat".into())),
            headers: vec![
                HeaderMatch {
                    name: "x-tenant".into(),
                    value: Some("blue".into())
                },
                HeaderMatch {
                    name: "x-beta".into(),
                    value: None
                },
            ],
            pool: "chat".into(),
            origins: None,
        }
    );
    assert_eq!(
        config.routes[1].host,
        Some(HostMatch::Wildcard(".example.com".into()))
    );
    assert_eq!(
        config.routes[1].path,
        Some(PathMatch::Exact("/admin".into()))
    );

    // File order, not alphabetical.
    assert_eq!(config.pools[0].name, "zeta");
    assert_eq!(config.pools[0].balance, Balance::LeastConn);
    assert_eq!(config.pools[0].connect_attempts, 16);
    assert_eq!(config.pools[0].backends[0].weight, 256);
    let chat = config.pool("chat").expect("pool chat");
    assert_eq!(
        chat.backends,
        [
            Backend {
                addr: addr("10.0.0.1:9000"),
                weight: 1
            },
            Backend {
                addr: addr("[fd00::2]:9000"),
                weight: 2
            },
            Backend {
                addr: addr("10.0.0.3:9000"),
                weight: 1
            },
        ]
    );

    assert_eq!(
        config.timeouts,
        Timeouts {
            handshake: Duration::from_millis(250),
            connect: Duration::from_millis(1500),
            response: Duration::from_secs(120),
            tunnel_idle: None,
            half_closed: None,
            client_idle: Duration::from_secs(60),
            body_stall: Duration::from_secs(30),
            shutdown: Duration::from_secs(3600),
            shutdown_spread: Duration::from_secs(5),
        }
    );
    assert_eq!(
        config.limits,
        Limits {
            max_head_bytes: 1 << 20,
            max_headers: 1,
            max_body_bytes: None,
            max_connections: Some(16),
        }
    );
    assert_eq!(
        config.relay,
        Relay {
            mode: RelayMode::Copy,
            pipe_size: 4096,
            pipe_max_size: 8192,
            max_pipes: 0,
            buffer_size: 1024,
            tcp_keepalive: None,
            tcp_user_timeout: None,
        }
    );
}

#[test]
fn many_errors_are_all_reported_with_their_positions() {
    let text = r#"[[listeners]]
name = "public"
listen = "127.0.0.1:80800"
lisen = "x"

[[listeners]]
name = "public"
listen = "127.0.0.1:8081"
mode = "udp"

[[routes]]
listener = "pubic"
pool = "chat"
path_prefix = "chat"

[pools.chat]
balance = "rand"
connect_attempts = 0
backends = ["127.0.0.1:9001", "backend-2:9000", "127.0.0.1:9001", { weight = 2 }]

[pools.empty]
backends = []

[timeouts]
handshake = 5
tunnel_idle = "1 fortnight"

[limits]
max_headers = 5000

[relay]
mode = "zero-copy"
"#;
    assert_eq!(
        errors(text),
        [
            "t.toml:3:10: listeners[0].listen: invalid address \"127.0.0.1:80800\": invalid port \"80800\"; expected a number from 0 to 65535",
            "t.toml:4:1: listeners[0].lisen: unknown key; did you mean \"listen\"?",
            "t.toml:7:8: listeners[1].name: duplicate listener name \"public\" (first used on line 2)",
            "t.toml:9:8: listeners[1].mode: unknown value \"udp\"; expected one of \"http\", \"tcp\", \"tls-passthrough\"",
            "t.toml:12:12: routes[0].listener: no listener named \"pubic\"; did you mean \"public\"?",
            "t.toml:14:15: routes[0].path_prefix: invalid path \"chat\": a path must start with '/', as in \"/chat\"",
            "t.toml:17:11: pools.chat.balance: unknown value \"rand\"; expected one of \"round_robin\", \"least_conn\", \"random_two\", \"hash\" (did you mean \"random_two\"?)",
            "t.toml:18:20: pools.chat.connect_attempts: 0 is out of range; expected 1 to 16",
            "t.toml:19:31: pools.chat.backends[1]: invalid address \"backend-2:9000\": DNS names are not resolved here; use IP:port, such as \"10.0.0.1:9000\" (a pool takes backends from DNS with discovery)",
            "t.toml:19:49: pools.chat.backends[2]: duplicate backend 127.0.0.1:9001; it is already pools.chat.backends[0]",
            "t.toml:19:67: pools.chat.backends[3].addr: required key is missing; expected an IP:port address such as \"127.0.0.1:8080\"",
            "t.toml:22:12: pools.empty.backends: a pool needs at least one backend, such as [\"127.0.0.1:9001\"]",
            "t.toml:25:13: timeouts.handshake: expected a duration string with a unit, found integer 5; write \"5s\" for seconds or \"5ms\" for milliseconds",
            "t.toml:26:15: timeouts.tunnel_idle: invalid duration \"1 fortnight\": unknown unit \"fortnight\"; expected ms, s, m, h or d, as in \"250ms\", \"5s\" or \"1h 30m\"",
            "t.toml:29:15: limits.max_headers: 5000 is out of range; expected 1 to 1000",
            "t.toml:32:8: relay.mode: unknown value \"zero-copy\"; expected one of \"auto\", \"splice\", \"copy\"",
        ]
    );
}

#[test]
fn a_syntax_error_is_one_error_with_its_position() {
    let e = parse(
        "[[listeners]]\nname = \"public\nlisten = 1\n",
        "sluice.toml",
    )
    .expect_err("unterminated string");
    assert_eq!(e.errors.len(), 1);
    let e = &e.errors[0];
    assert_eq!(
        (e.origin.as_str(), e.line, e.column),
        ("sluice.toml", 2, 15)
    );
    assert!(e.message.starts_with("invalid TOML: "), "{}", e.message);

    assert_eq!(
        error("[[listeners]]\nname = public\n"),
        "t.toml:2:8: invalid TOML: string values must be quoted, expected literal string"
    );
    assert_eq!(
        error("[timeouts]\nconnect = \"1s\"\n\n[timeouts]\n"),
        "t.toml:4:2: invalid TOML: duplicate key `timeouts`: a key or table may appear only once"
    );
    assert_eq!(
        error(&base("[pools.main]\nbackends = []\n")),
        "t.toml:12:8: invalid TOML: duplicate key `main`: a key or table may appear only once"
    );
}

#[test]
fn errors_display_one_per_line() {
    let e = parse(
        &base("[relay]\nmode = \"fast\"\n\n[limits]\nmax_headers = 0\n"),
        "sluice.toml",
    )
    .expect_err("two errors");
    assert_eq!(
        e.to_string(),
        "sluice.toml:13:8: relay.mode: unknown value \"fast\"; expected one of \"auto\", \"splice\", \"copy\"\n\
         sluice.toml:16:15: limits.max_headers: 0 is out of range; expected 1 to 1000"
    );
}

// ---- the document as a whole ----------------------------------------------------------------

#[test]
fn listeners_and_pools_are_required() {
    assert_eq!(
        errors(""),
        [
            // Pools are read first (listeners refer to them); errors at one position keep that order.
            "t.toml:1:1: pools: required key is missing; expected at least one pool, such as [pools.main] with backends = [\"127.0.0.1:9001\"]",
            "t.toml:1:1: listeners: required key is missing; expected at least one [[listeners]] table",
        ]
    );
    assert_eq!(
        errors("listeners = []\npools = {}\n"),
        [
            "t.toml:1:13: listeners: at least one [[listeners]] table is required",
            "t.toml:2:9: pools: at least one pool is required; expected at least one pool, such as [pools.main] with backends = [\"127.0.0.1:9001\"]",
        ]
    );
    // Routes naming listeners and pools that are missing altogether are not reported as well.
    assert_eq!(
        errors("[[routes]]\nlistener = \"public\"\npool = \"main\"\n").len(),
        2
    );
    assert_eq!(
        errors("listeners = []\npools = {}\n[[routes]]\nlistener = \"public\"\npool = \"main\"\n")
            .len(),
        2
    );
    // Nor are routes naming a listener whose name is missing or not a string.
    assert_eq!(
        error(&BASE.replace("name = \"public\"\n", "")),
        "t.toml:1:1: listeners[0].name: required key is missing; expected a name such as \"public\""
    );
    // Routes are optional: a listener without routes is allowed.
    let config = ok(
        "[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[pools.p]\nbackends = [\"127.0.0.1:2\"]\n",
    );
    assert!(config.routes.is_empty());
}

#[test]
fn unknown_keys_are_reported_everywhere() {
    assert_eq!(
        error(&base("[admin]\nlisen = \"127.0.0.1:9090\"\n")),
        "t.toml:13:1: admin.lisen: unknown key; did you mean \"listen\"?"
    );
    assert_eq!(
        error(&base("[timeout]\nconnect = \"1s\"\n")),
        "t.toml:12:2: timeout: unknown key; did you mean \"timeouts\"?"
    );
    assert_eq!(
        error(&base("[relay]\nfoo = 1\n")),
        "t.toml:13:1: relay.foo: unknown key; expected one of \"mode\", \"pipe_size\", \"pipe_max_size\", \"max_pipes\", \"buffer_size\", \"tcp_keepalive\", \"tcp_user_timeout\""
    );
    assert_eq!(
        error(&base("[limits]\nmax_header_bytes = 1\n")),
        "t.toml:13:1: limits.max_header_bytes: unknown key; did you mean \"max_head_bytes\"?"
    );
    assert_eq!(
        error(&base("[timeouts]\nidle = \"1s\"\n")),
        "t.toml:13:1: timeouts.idle: unknown key; expected one of \"handshake\", \"connect\", \"response\", \"tunnel_idle\", \"half_closed\", \"client_idle\", \"body_stall\", \"shutdown\", \"shutdown_spread\""
    );
    assert_eq!(
        error(&BASE.replace(
            "pool = \"main\"",
            "pool = \"main\"\nheader = { name = \"x\" }"
        )),
        "t.toml:8:1: routes[0].header: unknown key; did you mean \"headers\"?"
    );
    assert_eq!(
        error(&BASE.replace(
            "pool = \"main\"",
            "pool = \"main\"\nheaders = [{ name = \"x\", valeu = \"y\" }]"
        )),
        "t.toml:8:26: routes[0].headers[0].valeu: unknown key; did you mean \"value\"?"
    );
    assert_eq!(
        error(&BASE.replace("listen = ", "tls = {}\nlisten = ")),
        "t.toml:3:7: listeners[0].tls.certificates: required key is missing; expected an array such as [{ cert = \"chat.pem\", key = \"chat.key\" }]"
    );
    assert_eq!(
        error(&BASE.replace("backends = ", "hash_key = \"cookie:s\"\nbackends = ")),
        "t.toml:10:12: pools.main.hash_key: only used with balance = \"hash\" (this pool's balance is \"round_robin\"); set balance = \"hash\" or remove hash_key"
    );
    assert_eq!(
        error(&BASE.replace(
            "backends = [\"127.0.0.1:9001\"]",
            "backends = [{ addr = \"127.0.0.1:9001\", wieght = 2 }]"
        )),
        "t.toml:10:40: pools.main.backends[0].wieght: unknown key; did you mean \"weight\"?"
    );
    assert_eq!(
        error(&BASE.replace("pool = \"main\"", "pool = \"main\"\n\"odd key\" = 1")),
        "t.toml:8:1: routes[0].\"odd key\": unknown key; expected one of \"listener\", \"host\", \"path_prefix\", \"path_exact\", \"headers\", \"pool\", \"allowed_origins\", \"allow_missing_origin\""
    );
}

#[test]
fn sections_of_the_wrong_shape_are_reported() {
    assert_eq!(
        error(&BASE.replace("[[routes]]", "[routes]")),
        "t.toml:5:1: routes: expected an array of tables ([[routes]]), found a table"
    );
    assert_eq!(
        error(&format!("timeouts = \"5s\"\n{BASE}")),
        "t.toml:1:12: timeouts: expected a table, found string \"5s\""
    );
    assert_eq!(
        error(&BASE.replace(
            "[pools.main]\nbackends = [\"127.0.0.1:9001\"]",
            "[pools]\nmain = \"127.0.0.1:9001\""
        )),
        "t.toml:10:8: pools.main: expected a table, found string \"127.0.0.1:9001\""
    );
    assert_eq!(
        error(&BASE.replace(
            "backends = [\"127.0.0.1:9001\"]",
            "backends = \"127.0.0.1:9001\""
        )),
        "t.toml:10:12: pools.main.backends: expected an array of backends, found string \"127.0.0.1:9001\""
    );
}

// ---- listeners ------------------------------------------------------------------------------

#[test]
fn listener_rules() {
    assert_eq!(
        error(&BASE.replace("name = \"public\"\n", "")),
        "t.toml:1:1: listeners[0].name: required key is missing; expected a name such as \"public\""
    );
    assert_eq!(
        error(&BASE.replace("listen = \"127.0.0.1:8080\"\n", "")),
        "t.toml:1:1: listeners[0].listen: required key is missing; expected an IP:port address such as \"127.0.0.1:8080\""
    );
    assert_eq!(
        error(
            &BASE
                .replace("name = \"public\"", "name = \"pub lic\"")
                .replace("listener = \"public\"", "listener = \"pub lic\"")
        ),
        "t.toml:2:8: listeners[0].name: invalid character ' ' in name \"pub lic\"; names use letters, digits, '_' and '-' only, at most 64 characters"
    );
    assert_eq!(
        error(&BASE.replace("name = \"public\"", "name = 7")),
        "t.toml:2:8: listeners[0].name: expected a string, found integer 7"
    );
    assert_eq!(
        error(&BASE.replace("\"127.0.0.1:8080\"", "\"localhost:8080\"")),
        "t.toml:3:10: listeners[0].listen: invalid address \"localhost:8080\": DNS names are not resolved here; use IP:port, such as \"10.0.0.1:9000\" (a pool takes backends from DNS with discovery)"
    );
    assert_eq!(
        error(&BASE.replace("\"127.0.0.1:8080\"", "\"127.0.0.1\"")),
        "t.toml:3:10: listeners[0].listen: invalid address \"127.0.0.1\": the port is missing; expected IP:port, such as \"127.0.0.1:8080\""
    );
    assert_eq!(
        error(&BASE.replace("\"127.0.0.1:8080\"", "8080")),
        "t.toml:3:10: listeners[0].listen: expected a string, found integer 8080"
    );
    assert_eq!(
        error(&base(
            "[[listeners]]\nname = \"b\"\nlisten = \"127.0.0.1:8080\"\n"
        )),
        "t.toml:14:10: listeners[1].listen: address 127.0.0.1:8080 is already used by the listener on line 3"
    );
    assert_eq!(
        error(&base(
            "[[listeners]]\nname = \"b\"\nlisten = \"0.0.0.0:8080\"\n"
        )),
        "t.toml:14:10: listeners[1].listen: address 0.0.0.0:8080 overlaps 127.0.0.1:8080 of the listener on line 3"
    );
    // Other ports, other families, and port 0 (bound by whoever starts sluice) do not clash.
    ok(&base(
        "[[listeners]]\nname = \"b\"\nlisten = \"0.0.0.0:8081\"\n[[listeners]]\nname = \"c\"\nlisten = \"[::]:8080\"\n",
    ));
    ok(&base(
        "[[listeners]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nname = \"c\"\nlisten = \"127.0.0.1:0\"\n",
    ));

    assert_eq!(
        errors(&BASE.replace("listen = ", "mode = \"tls-passthrough\"\nlisten = ")),
        [
            "t.toml:3:8: listeners[0].mode: a tls-passthrough listener needs sni_routes, a default_pool, or both",
            "t.toml:7:12: routes[0].listener: routes apply to http listeners only; \"public\" is a tls-passthrough listener, routed by its sni_routes and default_pool",
        ]
    );
    assert_eq!(
        error(&BASE.replace("listen = ", "mode = \"HTTP\"\nlisten = ")),
        "t.toml:3:8: listeners[0].mode: unknown value \"HTTP\"; expected one of \"http\", \"tcp\", \"tls-passthrough\" (did you mean \"http\"?)"
    );
}

#[test]
fn unknown_host_status_is_404_or_421() {
    let with = |v: &str| {
        BASE.replace(
            "listen = ",
            &format!("unknown_host_status = {v}\nlisten = "),
        )
    };
    assert_eq!(ok(&with("421")).listeners[0].unknown_host_status, 421);
    assert_eq!(ok(&with("404")).listeners[0].unknown_host_status, 404);
    assert_eq!(
        error(&with("500")),
        "t.toml:3:23: listeners[0].unknown_host_status: 500 is not allowed; expected 404 (Not Found) or 421 (Misdirected Request)"
    );
    assert_eq!(
        error(&with("4040")),
        "t.toml:3:23: listeners[0].unknown_host_status: 4040 is out of range; expected 100 to 599"
    );
    assert_eq!(
        error(&with("\"421\"")),
        "t.toml:3:23: listeners[0].unknown_host_status: expected an integer, found string \"421\""
    );
}

#[test]
fn trusted_proxies_are_cidrs_or_bare_ips() {
    let with = |v: &str| BASE.replace("listen = ", &format!("trusted_proxies = {v}\nlisten = "));
    let nets = |v: &str| -> Vec<String> {
        ok(&with(v)).listeners[0]
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(nets("[]"), Vec::<String>::new());
    assert_eq!(
        nets(r#"["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1", "0.0.0.0/0"]"#),
        [
            "10.0.0.0/8",
            "192.168.1.7/32",
            "2001:db8::/32",
            "::1/128",
            "0.0.0.0/0"
        ]
    );
    assert_eq!(
        errors(&with(r#"["10.0.0.1/8", "10.0.0/8", "192.168.1.7/33", 5]"#)),
        [
            "t.toml:3:20: listeners[0].trusted_proxies[0]: \"10.0.0.1/8\" has bits set after the prefix length; write the network \"10.0.0.0/8\" or the single address \"10.0.0.1\"",
            "t.toml:3:34: listeners[0].trusted_proxies[1]: invalid network \"10.0.0/8\"; expected an IP address or a CIDR, such as \"192.168.1.7\", \"10.0.0.0/8\" or \"fd00::/8\"",
            "t.toml:3:46: listeners[0].trusted_proxies[2]: invalid network \"192.168.1.7/33\"; expected an IP address or a CIDR, such as \"192.168.1.7\", \"10.0.0.0/8\" or \"fd00::/8\"",
            "t.toml:3:64: listeners[0].trusted_proxies[3]: expected a string, found integer 5",
        ]
    );
    assert_eq!(
        error(&with("\"10.0.0.0/8\"")),
        "t.toml:3:19: listeners[0].trusted_proxies: expected an array of addresses or CIDRs, found string \"10.0.0.0/8\""
    );
}

// ---- routes ---------------------------------------------------------------------------------

/// BASE with the route's `pool = "main"` line replaced by `lines` (starting on line 7).
fn route(lines: &str) -> String {
    BASE.replace("pool = \"main\"\n", lines)
}

#[test]
fn routes_name_an_existing_listener_and_pool() {
    assert_eq!(
        error(&route("pool = \"other\"\n")),
        "t.toml:7:8: routes[0].pool: no pool named \"other\"; the pools are \"main\""
    );
    assert_eq!(
        error(&route("pool = \"mian\"\n")),
        "t.toml:7:8: routes[0].pool: no pool named \"mian\"; did you mean \"main\"?"
    );
    assert_eq!(
        error(&route("")),
        "t.toml:5:1: routes[0].pool: required key is missing; expected the name of a pool"
    );
    assert_eq!(
        error(&BASE.replace("listener = \"public\"\n", "")),
        "t.toml:5:1: routes[0].listener: required key is missing; expected the name of a listener"
    );
    assert_eq!(
        error(&BASE.replace("listener = \"public\"", "listener = \"private\"")),
        "t.toml:6:12: routes[0].listener: no listener named \"private\"; the listeners are \"public\""
    );
    // A listener or pool with errors of its own still counts as declared: one error, not two.
    assert_eq!(
        error(&BASE.replace("backends = [\"127.0.0.1:9001\"]", "backends = []")),
        "t.toml:10:12: pools.main.backends: a pool needs at least one backend, such as [\"127.0.0.1:9001\"]"
    );
    assert_eq!(
        error(&BASE.replace("\"127.0.0.1:8080\"", "\"127.0.0.1:x\"")),
        "t.toml:3:10: listeners[0].listen: invalid address \"127.0.0.1:x\": invalid port \"x\"; expected a number from 0 to 65535"
    );
}

#[test]
fn route_hosts_exact_and_wildcard() {
    let host = |h: &str| {
        ok(&route(&format!("host = \"{h}\"\npool = \"main\"\n"))).routes[0]
            .host
            .clone()
    };
    assert_eq!(
        host("Chat.Example.COM"),
        Some(HostMatch::Exact("chat.example.com".into()))
    );
    assert_eq!(
        host("*.example.com"),
        Some(HostMatch::Wildcard(".example.com".into()))
    );
    assert_eq!(
        host("*.EU.Example.com"),
        Some(HostMatch::Wildcard(".eu.example.com".into()))
    );
    assert_eq!(
        host("127.0.0.1"),
        Some(HostMatch::Exact("127.0.0.1".into()))
    );

    let bad = |h: &str| error(&route(&format!("host = \"{h}\"\npool = \"main\"\n")));
    assert_eq!(
        bad("chat.*.example.com"),
        "t.toml:7:8: routes[0].host: invalid host \"chat.*.example.com\": a wildcard may only be the whole first label, as in \"*.example.com\""
    );
    assert_eq!(
        bad("*chat.example.com"),
        "t.toml:7:8: routes[0].host: invalid host \"*chat.example.com\": a wildcard may only be the whole first label, as in \"*.example.com\""
    );
    assert_eq!(
        bad("chat.example.com:8080"),
        "t.toml:7:8: routes[0].host: invalid host \"chat.example.com:8080\": a host does not include a port (requests are matched whatever their port); write \"chat.example.com\""
    );
    assert_eq!(
        bad("*"),
        "t.toml:7:8: routes[0].host: \"*\" alone is not a host pattern; leave `host` out to match every host"
    );
    assert_eq!(
        bad("chat_example com"),
        "t.toml:7:8: routes[0].host: invalid host \"chat_example com\": the character ' '; expected a name such as \"chat.example.com\" or \"*.example.com\" (letters, digits, '-' and '_' between dots)"
    );
    assert!(bad("").contains("a host cannot be empty"));
    assert!(bad("example.com.").contains("remove the trailing dot"));
}

#[test]
fn route_paths() {
    let path = |line: &str| {
        ok(&route(&format!("{line}\npool = \"main\"\n"))).routes[0]
            .path
            .clone()
    };
    assert_eq!(
        path("path_prefix = \"/chat\""),
        Some(PathMatch::Prefix("/chat".into()))
    );
    assert_eq!(
        path("path_exact = \"/chat\""),
        Some(PathMatch::Exact("/chat".into()))
    );
    assert_eq!(
        error(&route(
            "path_prefix = \"/a\"\npath_exact = \"/b\"\npool = \"main\"\n"
        )),
        "t.toml:8:14: routes[0].path_exact: path_prefix and path_exact cannot both be set; keep one"
    );
    assert_eq!(
        error(&route("path_exact = \"/a?b=1\"\npool = \"main\"\n")),
        "t.toml:7:14: routes[0].path_exact: invalid path \"/a?b=1\": '?' is not allowed; routes match the path before the query"
    );
    assert_eq!(
        error(&route("path_prefix = \"\"\npool = \"main\"\n")),
        "t.toml:7:15: routes[0].path_prefix: invalid path \"\": a path must start with '/', as in \"/chat\""
    );
}

#[test]
fn route_headers() {
    assert_eq!(
        errors(&route(
            "headers = [{ name = \"X Tenant\" }, { value = \"v\" }, { name = \"X-A\", value = \" v\" }, \"X-B\"]\npool = \"main\"\n"
        )),
        [
            "t.toml:7:21: routes[0].headers[0].name: invalid header name \"X Tenant\": the character ' ' is not allowed in a header name (RFC 9110 token)",
            "t.toml:7:35: routes[0].headers[1].name: required key is missing; expected a header name such as \"X-Tenant\"",
            "t.toml:7:76: routes[0].headers[2].value: header value \" v\" has leading or trailing whitespace and would never match; write \"v\"",
            "t.toml:7:84: routes[0].headers[3]: expected a table, found string \"X-B\"",
        ]
    );
    assert_eq!(
        error(&route("headers = { name = \"X-A\" }\npool = \"main\"\n")),
        "t.toml:7:11: routes[0].headers: expected an array of header matches, such as [{ name = \"X-Tenant\", value = \"blue\" }], found a table"
    );
}

// ---- pools ----------------------------------------------------------------------------------

/// BASE with the pool's `backends` line replaced by `lines` (starting on line 10).
fn pool(lines: &str) -> String {
    BASE.replace("backends = [\"127.0.0.1:9001\"]\n", lines)
}

#[test]
fn pool_rules() {
    assert_eq!(
        error(&pool("")),
        "t.toml:9:1: pools.main.backends: required key is missing; expected an array of backend addresses, such as [\"127.0.0.1:9001\"], or a discovery table"
    );
    assert_eq!(
        error(&pool(
            "balance = \"hash\"\nbackends = [\"127.0.0.1:9001\"]\n"
        )),
        "t.toml:9:1: pools.main.hash_key: required key is missing; expected what balance = \"hash\" hashes: \"cookie:NAME\", \"header:NAME\", \"query:NAME\", \"source_ip\" or \"four_tuple\""
    );
    assert_eq!(
        error(&pool(
            "balance = \"leastconn\"\nbackends = [\"127.0.0.1:9001\"]\n"
        )),
        "t.toml:10:11: pools.main.balance: unknown value \"leastconn\"; expected one of \"round_robin\", \"least_conn\", \"random_two\", \"hash\" (did you mean \"least_conn\"?)"
    );
    assert_eq!(
        error(&pool(
            "connect_attempts = 17\nbackends = [\"127.0.0.1:9001\"]\n"
        )),
        "t.toml:10:20: pools.main.connect_attempts: 17 is out of range; expected 1 to 16"
    );
    assert_eq!(
        error(&pool(
            "connect_attempts = 2.5\nbackends = [\"127.0.0.1:9001\"]\n"
        )),
        "t.toml:10:20: pools.main.connect_attempts: expected an integer, found float 2.5"
    );
    // More attempts than backends is fine: at run time it is capped by the backend count.
    assert_eq!(
        ok(&pool(
            "connect_attempts = 16\nbackends = [\"127.0.0.1:9001\"]\n"
        ))
        .pools[0]
            .connect_attempts,
        16
    );
    assert_eq!(
        error(
            &BASE
                .replace("[pools.main]", "[pools.\"ma.in\"]")
                .replace("pool = \"main\"", "pool = \"ma.in\"")
        ),
        "t.toml:9:8: pools.\"ma.in\": invalid character '.' in name \"ma.in\"; names use letters, digits, '_' and '-' only, at most 64 characters"
    );
}

#[test]
fn discovery_from_dns() {
    let config = ok(&pool(
        "discovery = { dns = \"WS.default.svc.cluster.local.\", port = 8080, resolvers = [\"127.0.0.1:5353\"], min_interval = \"100ms\", max_interval = \"10s\", timeout = \"1s\" }\n",
    ));
    let p = &config.pools[0];
    assert!(p.backends.is_empty(), "backends come from DNS");
    let d = p.discovery.as_ref().expect("discovery");
    assert_eq!(
        d.query,
        DnsQuery::Addresses {
            name: "ws.default.svc.cluster.local".into(),
            port: 8080
        }
    );
    assert_eq!(d.resolvers, vec!["127.0.0.1:5353".parse().unwrap()]);
    assert_eq!(d.min_interval, Duration::from_millis(100));
    assert_eq!(d.max_interval, Duration::from_secs(10));
    assert_eq!(d.timeout, Duration::from_secs(1));

    let d = ok(&pool("discovery = { srv = \"_ws._tcp.example\" }\n")).pools[0]
        .discovery
        .clone()
        .expect("discovery");
    assert_eq!(
        d.query,
        DnsQuery::Srv {
            name: "_ws._tcp.example".into()
        }
    );
    assert!(d.resolvers.is_empty(), "resolv.conf by default");
    assert_eq!(d.min_interval, defaults::DISCOVERY_MIN_INTERVAL);
    assert_eq!(d.max_interval, defaults::DISCOVERY_MAX_INTERVAL);
    assert_eq!(d.timeout, defaults::DISCOVERY_TIMEOUT);
}

#[test]
fn discovery_errors_point_at_their_keys() {
    assert_eq!(
        error(&pool(
            "backends = [\"127.0.0.1:9001\"]\ndiscovery = { srv = \"_ws._tcp.example\" }\n"
        )),
        "t.toml:11:13: pools.main.discovery: backends and discovery cannot both be set: a pool's backends come from the file or from DNS; keep one"
    );
    assert_eq!(
        error(&pool("discovery = { dns = \"ws.example\" }\n")),
        "t.toml:10:21: pools.main.discovery.dns: A/AAAA records carry no port; add port = N (the backends' port)"
    );
    assert_eq!(
        error(&pool(
            "discovery = { srv = \"_ws._tcp.example\", port = 80 }\n"
        )),
        "t.toml:10:48: pools.main.discovery.port: an srv discovery takes its ports from the SRV records; remove port"
    );
    assert_eq!(
        error(&pool("discovery = { port = 80 }\n")),
        "t.toml:10:13: pools.main.discovery: a discovery needs dns (with port) or srv; expected { dns = \"ws.default.svc.cluster.local\", port = 8080 } or { srv = \"_ws._tcp.example.com\" }"
    );
    assert_eq!(
        error(&pool(
            "discovery = { dns = \"ws.example\", port = 80, resolvers = [\"dns.example:53\"] }\n"
        )),
        "t.toml:10:59: pools.main.discovery.resolvers[0]: invalid address \"dns.example:53\": DNS names are not resolved here; use IP:port, such as \"10.0.0.1:9000\" (a pool takes backends from DNS with discovery)"
    );
    assert_eq!(
        error(&pool(
            "discovery = { dns = \"ws.example\", port = 80, resolvers = [\"10.0.0.1\"] }\n"
        )),
        "t.toml:10:59: pools.main.discovery.resolvers[0]: invalid address \"10.0.0.1\": the port is missing; expected IP:port, such as \"10.0.0.1:8080\""
    );
    assert_eq!(
        error(&pool("discovery = { dns = \"ws example\", port = 80 }\n")),
        "t.toml:10:21: pools.main.discovery.dns: \"ws example\": ' ' is not allowed in a DNS name; expected letters, digits, '-', '_' and dots"
    );
    assert_eq!(
        error(&pool(
            "discovery = { srv = \"_ws._tcp.example\", min_interval = \"10s\", max_interval = \"5s\" }\n"
        )),
        "t.toml:10:78: pools.main.discovery.max_interval: must be at least min_interval (10s)"
    );
    assert_eq!(
        error(&pool("discovery = \"ws.example\"\n")),
        "t.toml:10:13: pools.main.discovery: expected a table such as { dns = \"ws.default.svc.cluster.local\", port = 8080 } or { srv = \"_ws._tcp.example.com\" }, found string \"ws.example\""
    );
}

#[test]
fn source_addrs_are_local_ips_of_the_backends_family() {
    let config = ok(&pool(
        "source_addrs = [\"127.0.0.2\", \"127.0.0.3\"]\nbackends = [\"127.0.0.1:9001\"]\n",
    ));
    assert_eq!(
        config.pools[0].source_addrs,
        vec![
            "127.0.0.2".parse::<std::net::IpAddr>().unwrap(),
            "127.0.0.3".parse().unwrap()
        ]
    );
    assert!(ok(BASE).pools[0].source_addrs.is_empty());
    assert_eq!(
        error(&pool(
            "source_addrs = [\"127.0.0.2:80\"]\nbackends = [\"127.0.0.1:9001\"]\n"
        )),
        "t.toml:10:17: pools.main.source_addrs[0]: invalid IP address \"127.0.0.2:80\"; expected one such as \"10.0.0.5\" (no port: the kernel picks it)"
    );
    assert_eq!(
        error(&pool(
            "source_addrs = [\"127.0.0.2\", \"127.0.0.2\"]\nbackends = [\"127.0.0.1:9001\"]\n"
        )),
        "t.toml:10:30: pools.main.source_addrs[1]: duplicate source address 127.0.0.2"
    );
    assert_eq!(
        error(&pool(
            "source_addrs = [\"0.0.0.0\"]\nbackends = [\"127.0.0.1:9001\"]\n"
        )),
        "t.toml:10:17: pools.main.source_addrs[0]: 0.0.0.0 is not a source address; expected an address of this host"
    );
    assert_eq!(
        error(&pool(
            "source_addrs = [\"::1\"]\nbackends = [\"127.0.0.1:9001\"]\n"
        )),
        "t.toml:10:16: pools.main.source_addrs: backend 127.0.0.1:9001 is IPv4 but no source address is; add an IPv4 source address"
    );
}

#[test]
fn backend_rules() {
    let with = |b: &str| pool(&format!("backends = [{b}]\n"));
    assert_eq!(
        ok(&with(
            r#""127.0.0.1:9001", { addr = "[::1]:9002", weight = 3 }"#
        ))
        .pools[0]
            .backends,
        [
            Backend {
                addr: addr("127.0.0.1:9001"),
                weight: 1
            },
            Backend {
                addr: addr("[::1]:9002"),
                weight: 3
            }
        ]
    );
    assert_eq!(
        errors(&with(
            r#""127.0.0.1:0", "0.0.0.0:9000", { addr = "127.0.0.1:9001", weight = 0 }, { addr = "127.0.0.1:9002", weight = 257 }, 9003, "127.0.0.1""#
        )),
        [
            "t.toml:10:13: pools.main.backends[0]: 127.0.0.1:0: port 0 cannot be connected to",
            "t.toml:10:28: pools.main.backends[1]: 0.0.0.0:9000 is not a backend address; expected the address of one server, such as \"127.0.0.1:9001\"",
            "t.toml:10:80: pools.main.backends[2].weight: 0 is out of range; expected 1 to 256",
            "t.toml:10:121: pools.main.backends[3].weight: 257 is out of range; expected 1 to 256",
            "t.toml:10:128: pools.main.backends[4]: expected a backend: \"IP:port\" or { addr = \"IP:port\", weight = N }, found integer 9003",
            "t.toml:10:134: pools.main.backends[5]: invalid address \"127.0.0.1\": the port is missing; expected IP:port, such as \"127.0.0.1:8080\"",
        ]
    );
    assert_eq!(
        error(&with(
            r#""127.0.0.1:9001", { addr = "127.0.0.1:9001", weight = 2 }"#
        )),
        "t.toml:10:31: pools.main.backends[1]: duplicate backend 127.0.0.1:9001; it is already pools.main.backends[0]"
    );
    // The same address in two pools is fine.
    ok(&base("[pools.other]\nbackends = [\"127.0.0.1:9001\"]\n"));
}

// ---- timeouts, limits, relay ----------------------------------------------------------------

#[test]
fn durations() {
    let timeout = |key: &str, v: &str| -> Result<Timeouts, Vec<String>> {
        let text = base(&format!("[timeouts]\n{key} = {v}\n"));
        match parse(&text, "t.toml") {
            Ok(c) => Ok(c.timeouts),
            Err(e) => Err(e.errors.iter().map(ToString::to_string).collect()),
        }
    };
    let connect = |v: &str| timeout("connect", v).map(|t| t.connect);
    assert_eq!(connect("\"5s\""), Ok(Duration::from_secs(5)));
    assert_eq!(connect("\"250ms\""), Ok(Duration::from_millis(250)));
    assert_eq!(connect("\"1.5s\""), Ok(Duration::from_millis(1500)));
    assert_eq!(connect("\"1h 30m\""), Ok(Duration::from_secs(5400)));
    assert_eq!(connect("\"2min\""), Ok(Duration::from_secs(120)));
    assert_eq!(connect("\"1d\""), Ok(Duration::from_secs(86400)));
    assert_eq!(connect("\"365d\""), Ok(Duration::from_secs(365 * 86400)));

    assert_eq!(
        connect("\"0s\""),
        Err(vec![
            "t.toml:13:11: timeouts.connect: must be greater than zero".into()
        ])
    );
    assert_eq!(
        connect("3"),
        Err(vec!["t.toml:13:11: timeouts.connect: expected a duration string with a unit, found integer 3; write \"3s\" for seconds or \"3ms\" for milliseconds".into()])
    );
    assert_eq!(
        connect("\"3\""),
        Err(vec!["t.toml:13:11: timeouts.connect: invalid duration \"3\": a unit is needed; write \"3s\" for seconds or \"3ms\" for milliseconds".into()])
    );
    assert_eq!(
        connect("\"three seconds\""),
        Err(vec!["t.toml:13:11: timeouts.connect: invalid duration \"three seconds\"; expected a number with a unit, such as \"250ms\", \"5s\" or \"1h 30m\"".into()])
    );
    assert_eq!(
        connect("\"366d\""),
        Err(vec!["t.toml:13:11: timeouts.connect: duration \"366d\" is too long; the longest accepted is 365d".into()])
    );
    assert_eq!(
        connect("1.5"),
        Err(vec!["t.toml:13:11: timeouts.connect: expected a duration string such as \"5s\", found float 1.5".into()])
    );

    let idle = |v: &str| timeout("tunnel_idle", v).map(|t| t.tunnel_idle);
    assert_eq!(idle("\"0\""), Ok(None));
    assert_eq!(idle("\"0s\""), Ok(None));
    assert_eq!(idle("\"30m\""), Ok(Some(Duration::from_secs(1800))));

    for key in ["handshake", "connect", "response", "shutdown"] {
        assert!(
            timeout(key, "\"0ms\"").is_err(),
            "{key} = 0 must be refused"
        );
        assert_eq!(
            timeout(key, "\"7s\"").map(|t| [t.handshake, t.connect, t.response, t.shutdown]
                .iter()
                .filter(|d| **d == Duration::from_secs(7))
                .count()),
            Ok(1),
            "{key} sets its own field"
        );
    }
}

#[test]
fn limits_ranges() {
    let limits = |v: &str| -> Result<Limits, Vec<String>> {
        match parse(&base(&format!("[limits]\n{v}\n")), "t.toml") {
            Ok(c) => Ok(c.limits),
            Err(e) => Err(e.errors.iter().map(ToString::to_string).collect()),
        }
    };
    assert_eq!(
        limits("max_head_bytes = 1024").map(|l| l.max_head_bytes),
        Ok(1024)
    );
    assert_eq!(
        limits("max_head_bytes = 1023"),
        Err(vec![
            "t.toml:13:18: limits.max_head_bytes: 1023 is out of range; expected 1024 to 1048576"
                .into()
        ])
    );
    assert!(limits("max_head_bytes = 1048577").is_err());
    assert_eq!(
        limits("max_headers = 1000").map(|l| l.max_headers),
        Ok(1000)
    );
    assert!(limits("max_headers = 0").is_err());
    assert_eq!(
        limits("max_connections = 1").map(|l| l.max_connections),
        Ok(Some(1))
    );
    assert_eq!(
        limits("max_connections = 0"),
        Err(vec![
            "t.toml:13:19: limits.max_connections: 0 is out of range; expected at least 1".into()
        ])
    );
    assert_eq!(
        limits("max_connections = -5"),
        Err(vec![
            "t.toml:13:19: limits.max_connections: -5 is out of range; expected at least 1".into()
        ])
    );
    assert_eq!(
        limits("max_connections = 99999999999999999999"),
        Err(vec!["t.toml:13:19: limits.max_connections: 99999999999999999999 is out of range; expected at least 1".into()])
    );
}

#[test]
fn relay_ranges() {
    let relay = |v: &str| -> Result<Relay, Vec<String>> {
        match parse(&base(&format!("[relay]\n{v}\n")), "t.toml") {
            Ok(c) => Ok(c.relay),
            Err(e) => Err(e.errors.iter().map(ToString::to_string).collect()),
        }
    };
    assert_eq!(
        relay("mode = \"splice\"").map(|r| r.mode),
        Ok(RelayMode::Splice)
    );
    assert_eq!(
        relay("mode = \"auto\"").map(|r| r.mode),
        Ok(RelayMode::Auto)
    );
    assert_eq!(
        relay("pipe_size = 1048576").map(|r| r.pipe_size),
        Ok(1 << 20)
    );
    assert_eq!(
        relay("pipe_size = 4095"),
        Err(vec![
            "t.toml:13:13: relay.pipe_size: 4095 is out of range; expected 4096 to 1048576".into()
        ])
    );
    assert_eq!(
        relay("pipe_max_size = 65536").map(|r| r.pipe_max_size),
        Ok(65536)
    );
    assert_eq!(
        relay("pipe_max_size = 2097152"),
        Err(vec![
            "t.toml:13:17: relay.pipe_max_size: 2097152 is out of range; expected 4096 to 1048576"
                .into()
        ])
    );
    assert_eq!(relay("max_pipes = 0").map(|r| r.max_pipes), Ok(0));
    assert_eq!(
        relay("max_pipes = -1"),
        Err(vec![
            "t.toml:13:13: relay.max_pipes: -1 is out of range; expected at least 0".into()
        ])
    );
    assert!(relay("buffer_size = 512").is_err());
    assert!(relay("buffer_size = 2097152").is_err());
}

// ---- load and summary -----------------------------------------------------------------------

#[test]
fn an_unreadable_file_is_one_error_naming_it() {
    let path = Path::new("/nonexistent/sluice.toml");
    let e = load(path).expect_err("missing file");
    assert_eq!(e.errors.len(), 1);
    let e = &e.errors[0];
    assert_eq!(
        (e.origin.as_str(), e.line, e.column),
        ("/nonexistent/sluice.toml", 0, 0)
    );
    assert!(
        e.to_string()
            .starts_with("/nonexistent/sluice.toml: cannot read the configuration file: "),
        "{e}"
    );
}

#[test]
fn a_file_that_is_not_utf8_is_one_error_with_its_position() {
    let dir = std::env::temp_dir().join(format!("sluice-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("latin1.toml");
    std::fs::write(&path, b"# ok\n# caf\xe9\n").expect("write temp file");
    let e = load(&path).expect_err("not UTF-8");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(e.errors.len(), 1);
    assert_eq!((e.errors[0].line, e.errors[0].column), (2, 6));
    assert_eq!(e.errors[0].message, "the file is not valid UTF-8");
}

#[test]
fn load_names_the_file_in_messages() {
    let dir = std::env::temp_dir().join(format!("sluice-config-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, base("[relay]\nmode = \"fast\"\n")).expect("write temp file");
    let e = load(&path).expect_err("bad mode");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(e.errors[0].origin, path.display().to_string());
    assert!(
        e.to_string()
            .starts_with(&format!("{}:13:8: relay.mode:", path.display())),
        "{e}"
    );
}

#[test]
fn summary_lists_listeners_routes_and_pools() {
    let config = ok(&base(
        r#"[[routes]]
listener = "public"
host = "*.example.com"
path_exact = "/chat"
headers = [{ name = "X-Tenant", value = "blue" }, { name = "X-Beta" }]
pool = "chat"

[pools.chat]
balance = "least_conn"
backends = ["10.0.0.1:9000", "10.0.0.2:9000"]

[timeouts]
tunnel_idle = "0"

[limits]
max_connections = 500
"#,
    ));
    assert_eq!(
        config.summary(),
        "listeners (1)
  public  127.0.0.1:8080  http  2 routes
routes (2)
  public  any request  -> main
  public  host *.example.com  path_exact /chat  header x-tenant=blue  header x-beta  -> chat
pools (2)
  main  round_robin  1 backend  connect_attempts 3
  chat  least_conn  2 backends  connect_attempts 3
timeouts  handshake 5s, connect 3s, response 10s, tunnel_idle off, shutdown 30s (spread 5s)
limits    max_head_bytes 16384, max_headers 100, max_connections 500
relay     auto, pipe_size 65536, max_pipes 1024, buffer_size 16384
admin     off"
    );
}

#[test]
fn shutdown_spread_defaults_accepts_zero_and_must_fit_in_the_deadline() {
    let spread = |body: &str| {
        ok(&base(&format!("[timeouts]\n{body}\n")))
            .timeouts
            .shutdown_spread
    };
    assert_eq!(spread(""), Duration::from_secs(5));
    assert_eq!(
        spread("shutdown = \"3s\""),
        Duration::from_millis(500),
        "a sixth of a short deadline"
    );
    assert_eq!(
        spread("shutdown = \"1h\""),
        Duration::from_secs(5),
        "at most 5 s"
    );
    assert_eq!(spread("shutdown_spread = \"0s\""), Duration::ZERO);
    assert_eq!(
        spread("shutdown = \"2s\"\nshutdown_spread = \"2s\""),
        Duration::from_secs(2)
    );
    let e = error(&base(
        "[timeouts]\nshutdown = \"2s\"\nshutdown_spread = \"3s\"\n",
    ));
    assert!(
        e.starts_with(
            "t.toml:14:19: timeouts.shutdown_spread: must not exceed timeouts.shutdown (2s)"
        ),
        "{e}"
    );
}

#[test]
fn drain_settings_default_to_keep_forever_and_parse() {
    let pool = |extra: &str| {
        ok(&BASE.replace("[pools.main]\n", &format!("[pools.main]\n{extra}\n"))).pools[0].clone()
    };
    let p = pool("");
    assert_eq!(
        (p.drain_timeout, p.drain_spread),
        (None, Duration::from_secs(10))
    );
    let p = pool("drain_timeout = \"0\"\ndrain_spread = \"0s\"");
    assert_eq!((p.drain_timeout, p.drain_spread), (None, Duration::ZERO));
    let p = pool("drain_timeout = \"5m\"\ndrain_spread = \"30s\"");
    assert_eq!(
        (p.drain_timeout, p.drain_spread),
        (Some(Duration::from_secs(300)), Duration::from_secs(30))
    );
    let e = error(&BASE.replace("[pools.main]\n", "[pools.main]\ndrain_timeout = 5\n"));
    assert!(
        e.contains("pools.main.drain_timeout: expected a duration"),
        "{e}"
    );
}

#[test]
fn tunnel_keepalive_user_timeout_and_half_closed() {
    let config = ok(&base(
        "[timeouts]\nhalf_closed = \"2m\"\n\n[relay]\ntcp_keepalive = { idle = \"30s\", count = 4 }\ntcp_user_timeout = \"45s\"\n",
    ));
    assert_eq!(config.timeouts.half_closed, Some(Duration::from_secs(120)));
    assert_eq!(
        config.relay.tcp_keepalive,
        Some(TcpKeepalive {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            count: 4,
        })
    );
    assert_eq!(config.relay.tcp_user_timeout, Some(Duration::from_secs(45)));
    // Zero turns each off.
    let config = ok(&base(
        "[timeouts]\nhalf_closed = \"0\"\n\n[relay]\ntcp_user_timeout = \"0s\"\n",
    ));
    assert_eq!(config.timeouts.half_closed, None);
    assert_eq!(config.relay.tcp_user_timeout, None);
    assert_eq!(
        ok(&base("[relay]\ntcp_keepalive = {}\n"))
            .relay
            .tcp_keepalive,
        Some(TcpKeepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 3,
        })
    );

    assert_eq!(
        errors(&base(
            "[relay]\ntcp_keepalive = { idle = \"1500ms\", interval = \"40000s\", count = 200, probes = 1 }\ntcp_user_timeout = \"50d\"\n"
        )),
        [
            "t.toml:13:26: relay.tcp_keepalive.idle: must be a whole number of seconds, at least 1s (the kernel counts seconds), such as \"1s\"",
            "t.toml:13:47: relay.tcp_keepalive.interval: must be at most 32767s",
            "t.toml:13:65: relay.tcp_keepalive.count: 200 is out of range; expected 1 to 127",
            "t.toml:13:70: relay.tcp_keepalive.probes: unknown key; expected one of \"idle\", \"interval\", \"count\"",
            "t.toml:14:20: relay.tcp_user_timeout: must be at most 49d (the kernel counts milliseconds in 32 bits)",
        ]
    );
}

#[test]
fn plain_http_settings_default_and_parse() {
    let config = ok(BASE);
    let p = &config.pools[0];
    assert_eq!(
        (p.idle_connections, p.idle_timeout),
        (16, Duration::from_secs(4))
    );
    assert_eq!(config.timeouts.client_idle, Duration::from_secs(60));
    assert_eq!(config.timeouts.body_stall, Duration::from_secs(30));
    assert_eq!(config.limits.max_body_bytes, None);

    let config = ok(&format!(
        "{}\n[timeouts]\nclient_idle = \"75s\"\nbody_stall = \"250ms\"\n\n[limits]\nmax_body_bytes = 1048576\n",
        BASE.replace(
            "[pools.main]\n",
            "[pools.main]\nidle_connections = 0\nidle_timeout = \"90s\"\n"
        )
    ));
    let p = &config.pools[0];
    assert_eq!(
        (p.idle_connections, p.idle_timeout),
        (0, Duration::from_secs(90))
    );
    assert_eq!(config.timeouts.client_idle, Duration::from_secs(75));
    assert_eq!(config.timeouts.body_stall, Duration::from_millis(250));
    assert_eq!(config.limits.max_body_bytes, Some(1 << 20));
    let summary = config.summary();
    assert!(
        summary.contains(", client_idle 1m 15s, body_stall 250ms\n"),
        "{summary}"
    );
    assert!(summary.contains(", max_body_bytes 1048576\n"), "{summary}");

    let e = errors(&BASE.replace(
        "[pools.main]\n",
        "[pools.main]\nidle_connections = 2000\nidle_timeout = \"0s\"\n",
    ))
    .join("\n");
    assert!(
        e.contains("pools.main.idle_connections: 2000 is out of range; expected 0 to 1024"),
        "{e}"
    );
    assert!(
        e.contains("pools.main.idle_timeout: must be greater than zero"),
        "{e}"
    );
    let e = errors(&format!(
        "{BASE}\n[timeouts]\nclient_idle = \"0s\"\n\n[limits]\nmax_body_bytes = -1\n"
    ))
    .join("\n");
    assert!(
        e.contains("timeouts.client_idle: must be greater than zero"),
        "{e}"
    );
    assert!(
        e.contains("limits.max_body_bytes: -1 is out of range; expected at least 0"),
        "{e}"
    );
}

#[test]
fn l4_listeners_and_tls_termination() {
    let text = r#"[[listeners]]
name = "raw"
listen = "127.0.0.1:7000"
mode = "tcp"
pool = "main"
accept_proxy_protocol = { from = ["10.0.0.0/8", "192.168.1.7"] }
max_connections = 100

[[listeners]]
name = "pass"
listen = "127.0.0.1:7443"
mode = "tls-passthrough"
sni_routes = [{ sni = "Chat.Example.com", pool = "main" }, { sni = "*.example.org", pool = "other" }]
default_pool = "other"

[[listeners]]
name = "public"
listen = "127.0.0.1:8443"
tls = { certificates = [{ cert = "a.pem", key = "a.key" }] }

[[routes]]
listener = "public"
pool = "main"

[pools.main]
balance = "hash"
hash_key = "four_tuple"
send_proxy_protocol = "v1"
max_connections_per_backend = 500
backends = ["127.0.0.1:9001"]

[pools.other]
send_proxy_protocol = "v2"
backends = ["127.0.0.1:9002"]
"#;
    let config = ok(text);
    let (raw, pass, public) = (
        &config.listeners[0],
        &config.listeners[1],
        &config.listeners[2],
    );
    assert_eq!(raw.mode, ListenerMode::Tcp);
    assert_eq!(raw.pool.as_deref(), Some("main"));
    assert_eq!(
        raw.accept_proxy_protocol,
        Some(AcceptProxy {
            from: vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.168.1.7/32".parse().unwrap()
            ]
        })
    );
    assert_eq!(raw.max_connections, Some(100));
    assert_eq!(pass.accept_proxy_protocol, None);
    assert_eq!(config.pools[0].send_proxy_protocol, Some(ProxyVersion::V1));
    assert_eq!(config.pools[0].max_connections_per_backend, Some(500));
    assert_eq!(config.pools[1].send_proxy_protocol, Some(ProxyVersion::V2));
    assert_eq!(config.pools[1].max_connections_per_backend, None);
    assert_eq!(pass.mode, ListenerMode::TlsPassthrough);
    assert_eq!(pass.pool.as_deref(), Some("other"));
    assert_eq!(
        pass.sni_routes,
        vec![
            SniRoute {
                sni: HostMatch::Exact("chat.example.com".into()),
                pool: "main".into()
            },
            SniRoute {
                sni: HostMatch::Wildcard(".example.org".into()),
                pool: "other".into()
            },
        ]
    );
    assert_eq!(
        public.tls,
        Some(ListenerTls {
            certificates: vec![CertificatePaths {
                cert: "a.pem".into(),
                key: "a.key".into()
            }]
        })
    );
    assert_eq!(
        config.pools[0].hash.as_ref().map(|h| h.key.clone()),
        Some(HashKey::FourTuple)
    );

    // Errors: keys of another mode, a missing pool, unknown pools, routes on an L4 listener.
    assert_eq!(
        errors(
            r#"[[listeners]]
name = "raw"
listen = "127.0.0.1:7000"
mode = "tcp"
sni_routes = []
tls = { certificates = [] }

[[listeners]]
name = "pass"
listen = "127.0.0.1:7443"
mode = "tls-passthrough"
sni_routes = [{ sni = "a.example", pool = "mian" }]
pool = "main"

[[listeners]]
name = "web"
listen = "127.0.0.1:8080"
accept_proxy_protocol = { from = [] }

[[routes]]
listener = "raw"
pool = "main"

[pools.main]
backends = ["127.0.0.1:9001"]
"#
        ),
        [
            "t.toml:1:1: listeners[0].pool: required key is missing; expected the name of the pool every connection goes to",
            "t.toml:5:14: listeners[0].sni_routes: sni_routes applies to tls-passthrough listeners only; this listener's mode is \"tcp\"",
            "t.toml:6:7: listeners[0].tls: tls applies to http listeners only; this listener's mode is \"tcp\"",
            "t.toml:6:24: listeners[0].tls.certificates: at least one certificate is required",
            "t.toml:12:43: listeners[1].sni_routes[0].pool: no pool named \"mian\"; did you mean \"main\"?",
            "t.toml:13:8: listeners[1].pool: pool applies to tcp listeners only; this listener's mode is \"tls-passthrough\"",
            "t.toml:18:34: listeners[2].accept_proxy_protocol.from: at least one network is required: a PROXY header is trusted only from the L4 edge in front of sluice, such as [\"10.0.0.0/8\"]",
        ]
    );
    assert_eq!(
        error(&BASE.replace("listen = ", "mode = \"tcp\"\npool = \"main\"\nlisten = ")),
        "t.toml:8:12: routes[0].listener: routes apply to http listeners only; \"public\" is a tcp listener, routed by its pool"
    );
}

#[test]
fn route_origin_allow_list_is_parsed_and_normalised() {
    let config = ok(&BASE.replace(
        "pool = \"main\"",
        "pool = \"main\"\nallowed_origins = [\"https://App.Example.com\", \"https://*.example.com\", \"http://localhost:3000\", \"null\"]",
    ));
    assert_eq!(
        config.routes[0].origins,
        Some(OriginPolicy {
            allowed: vec![
                OriginPattern::Exact {
                    scheme: OriginScheme::Https,
                    host: "app.example.com".into(),
                    port: 443,
                },
                OriginPattern::Wildcard {
                    scheme: OriginScheme::Https,
                    suffix: ".example.com".into(),
                    port: 443,
                },
                OriginPattern::Exact {
                    scheme: OriginScheme::Http,
                    host: "localhost".into(),
                    port: 3000,
                },
                OriginPattern::Null,
            ],
            allow_missing: true,
        })
    );
    let strict = ok(&BASE.replace(
        "pool = \"main\"",
        "pool = \"main\"\nallowed_origins = []\nallow_missing_origin = false",
    ));
    assert_eq!(
        strict.routes[0].origins,
        Some(OriginPolicy {
            allowed: vec![],
            allow_missing: false,
        })
    );
    assert_eq!(ok(BASE).routes[0].origins, None);
}

#[test]
fn malformed_origin_patterns_are_reported_with_their_position() {
    let errors = errors(&BASE.replace(
        "pool = \"main\"",
        "pool = \"main\"\nallowed_origins = [\"https://ok.example\", \"wss://a.example\", \"https://a.example/\", 3]",
    ));
    assert_eq!(
        errors,
        [
            "t.toml:8:42: routes[0].allowed_origins[1]: invalid origin \"wss://a.example\": the scheme must be http or https (browsers send the page's origin, also for ws:// and wss:// connections); expected an origin such as \"https://app.example.com\", \"https://*.example.com\", \"http://localhost:3000\" or \"null\"",
            "t.toml:8:61: routes[0].allowed_origins[2]: invalid origin \"https://a.example/\": an origin has no path, query or trailing slash; write \"https://a.example\"",
            "t.toml:8:83: routes[0].allowed_origins[3]: expected a string, found integer 3",
        ]
    );
    assert_eq!(
        error(&BASE.replace(
            "pool = \"main\"",
            "pool = \"main\"\nallowed_origins = \"https://a.example\""
        )),
        "t.toml:8:19: routes[0].allowed_origins: expected an array of origins, such as [\"https://app.example.com\", \"https://*.example.com\"], found string \"https://a.example\""
    );
    assert_eq!(
        error(&BASE.replace(
            "pool = \"main\"",
            "pool = \"main\"\nallow_missing_origin = false"
        )),
        "t.toml:8:24: routes[0].allow_missing_origin: allow_missing_origin applies only with allowed_origins; add allowed_origins = [\"https://app.example.com\"] or remove this key"
    );
}

#[test]
fn per_source_limits() {
    let config = ok(&base(
        r#"[limits.per_source]
max_connections = 50
connection_rate = 2.5
exempt = ["10.1.0.0/16", "2001:db8::/48"]
ipv6_prefix = 56
table_size = 1024
"#,
    ));
    assert_eq!(
        config.per_source,
        PerSourceLimits {
            max_connections: Some(50),
            connection_rate: Some(2.5),
            connection_burst: 3,
            exempt: vec![
                "10.1.0.0/16".parse().unwrap(),
                "2001:db8::/48".parse().unwrap()
            ],
            ipv4_prefix: 32,
            ipv6_prefix: 56,
            table_size: 1024,
        }
    );
    assert!(config.per_source.is_enabled());
    assert!(!ok(BASE).per_source.is_enabled());
    assert!(
        config.summary().contains(
            "per source  max_connections 50  connection_rate 2.5/s (burst 3)  by /32 (IPv4), \
             /56 (IPv6)  table_size 1024  exempt 10.1.0.0/16,2001:db8::/48\n"
        ),
        "{}",
        config.summary()
    );
    assert!(!ok(BASE).summary().contains("per source"));
    let e = errors(&base(
        r#"[limits.per_source]
connection_rate = 0
connection_burst = 0
ipv6_prefix = 129
table_size = 1
exempt = ["10.0.0.1/8"]
"#,
    ));
    assert_eq!(
        e,
        [
            "t.toml:13:19: limits.per_source.connection_rate: 0 is out of range; expected new connections per second, from 0.001 to 1000000",
            "t.toml:14:20: limits.per_source.connection_burst: 0 is out of range; expected 1 to 1000000",
            "t.toml:15:15: limits.per_source.ipv6_prefix: 129 is out of range; expected 1 to 128",
            "t.toml:16:14: limits.per_source.table_size: 1 is out of range; expected 16 to 16777216",
            "t.toml:17:11: limits.per_source.exempt[0]: \"10.0.0.1/8\" has bits set after the prefix length; write the network \"10.0.0.0/8\" or the single address \"10.0.0.1\"",
        ]
    );
    assert_eq!(
        errors(&base("[limits.per_source]\nconnection_burst = 5\n")),
        [
            "t.toml:13:20: limits.per_source.connection_burst: applies to connection_rate, which is not set; set both or neither"
        ]
    );
}

#[test]
fn the_example_file_shows_the_client_address_and_limit_keys() {
    let config = crate::test_support::example_uncommented(
        &[
            "# accept_proxy_protocol",
            "# max_connections = 5000",
            "# send_proxy_protocol",
            "# max_connections_per_backend",
            "# max_connections = 100 ",
            "# connection_rate",
            "# connection_burst",
            "# exempt",
        ],
        &[],
    );
    let public = &config.listeners[0];
    assert!(public.accept_proxy_protocol.is_some());
    assert_eq!(public.max_connections, Some(5000));
    let echo = config.pool("echo").expect("pool echo");
    assert_eq!(echo.send_proxy_protocol, Some(ProxyVersion::V2));
    assert_eq!(echo.max_connections_per_backend, Some(1000));
    assert_eq!(config.per_source.max_connections, Some(100));
    assert_eq!(config.per_source.connection_rate, Some(20.0));
    assert_eq!(config.per_source.connection_burst, 20);
    assert_eq!(config.per_source.exempt.len(), 1);
}
