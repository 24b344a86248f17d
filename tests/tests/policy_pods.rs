//! NetworkPolicy where pods come and go and the agent restarts: one node
//! namespace with the real agent, a client pod, and a pod created under a
//! default-deny policy while the agent runs.

use std::{path::Path, process::Command};

use lb_tests::{
    agent::{AgentProc, Manifests, pin_path},
    netns::Netns,
    spawn::{Cgroup, Proc},
    testbed::TempDir,
};
use serde_json::Value;

const CLIENT_IP: &str = "10.244.1.10";
const POD_IP: &str = "10.244.1.20";
const GATEWAY: &str = "10.244.1.1";

fn pod_yaml(ns: &str, name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\n\
         spec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
    )
}

const DENY_INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
    metadata: {name: deny, namespace: back}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";

const ALLOW_TCP_FROM_FRONT: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
    metadata: {name: allow, namespace: back}\n\
    spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: front}}}], ports: [{port: 8080, protocol: TCP}]}]}\n";

/// A pod's network namespace on a veth whose host side is `lxc` in `node`,
/// set up as a CNI would (link first, then addresses and routes).
fn plug(node: &Netns, pod: &Netns, lxc: &str, ip: &str) {
    node.sh(&format!(
        "ip link add {lxc} type veth peer name eth0 netns {}
         ethtool -K {lxc} tx off >/dev/null
         ip link set {lxc} up",
        pod.path().file_name().unwrap().to_string_lossy()
    ));
    pod.sh(&format!(
        "ethtool -K eth0 tx off >/dev/null
         ip link set lo up; ip link set eth0 up
         ip addr add {ip}/32 dev eth0
         ip route add {GATEWAY} dev eth0 scope link
         ip route add default via {GATEWAY} dev eth0"
    ));
    node.sh(&format!(
        "ip addr add {GATEWAY}/32 dev {lxc} 2>/dev/null || true
         ip route add {ip}/32 dev {lxc}"
    ));
}

fn probes(client: &Netns, cg: &Path, proto: &str, count: usize, timeout_ms: u64) -> Proc {
    let mut cmd = Command::new(lb_tests::helper_bin());
    cmd.args([
        "probe",
        &format!("{POD_IP}:8080"),
        proto,
        &count.to_string(),
        &format!("--timeout-ms={timeout_ms}"),
    ]);
    if proto == "udp" {
        cmd.arg("--udp=connected");
    }
    Proc::spawn(cmd, Some(cg), Some(&client.path()))
}

fn results(p: &mut Proc, count: usize) -> Vec<Value> {
    (0..count)
        .map(|_| serde_json::from_str(&p.read_line()).expect("probe JSON"))
        .collect()
}

/// Drop order: the agent (killed, pins reset), servers, cgroup, namespaces, files.
struct Bed {
    agent: AgentProc,
    servers: Vec<Proc>,
    cgroup: Cgroup,
    client: Netns,
    pod: Netns,
    node: Netns,
    m: Manifests,
    dir: TempDir,
}

impl Bed {
    fn new() -> Self {
        Self::with(&[])
    }

    /// With these agent flags too.
    fn with(flags: &[&str]) -> Self {
        lb_tests::require_kernel();
        let prefix = lb_tests::unique("pp");
        let dir = TempDir(std::env::temp_dir().join(&prefix));
        std::fs::create_dir_all(&dir.0).unwrap();
        let node = Netns::new(format!("{prefix}-n"));
        node.sh("sysctl -qw net.ipv4.ip_forward=1; ip link set lo up");
        let client = Netns::new(format!("{prefix}-c"));
        let pod = Netns::new(format!("{prefix}-p"));
        plug(&node, &client, "lxc000001", CLIENT_IP);
        let cgroup = Cgroup::new(&prefix);
        let mut m = Manifests::new(dir.0.join("m"));
        m.write(
            "node.yaml",
            &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nstatus: {{addresses: [{{type: InternalIP, address: {GATEWAY}}}]}}\n"),
        );
        m.write("client.yaml", &pod_yaml("front", "client", CLIENT_IP));
        m.write("deny.yaml", DENY_INGRESS);
        let g = m.commit();
        let mut agent = AgentProc::new(
            pin_path(&prefix),
            cgroup.path.clone(),
            m.dir.clone(),
            dir.0.join("agent.log"),
        );
        agent.netns = Some(node.path());
        agent.extra = vec!["--node-name=n1".into()];
        agent.extra.extend(flags.iter().map(|f| f.to_string()));
        agent.start();
        agent.wait_synced(g);
        Self {
            agent,
            servers: vec![],
            cgroup,
            client,
            pod,
            node,
            m,
            dir,
        }
    }

    fn apply(&mut self, name: &str, yaml: &str) {
        self.m.write(name, yaml);
        let g = self.m.commit();
        self.agent.wait_synced(g);
    }

    fn serve(&mut self) {
        let mut cmd = Command::new(lb_tests::helper_bin());
        cmd.args(["serve", "back/new", "8080"]);
        let mut p = Proc::spawn(cmd, Some(&self.cgroup.path), Some(&self.pod.path()));
        assert_eq!(p.read_line().trim(), "ready");
        self.servers.push(p);
    }

    /// The pod plugged in and serving, its Pod object known, TCP 8080
    /// allowed to it from namespace front.
    fn serve_allowed(&mut self) {
        plug(&self.node, &self.pod, "lxc000002", POD_IP);
        self.serve();
        self.apply("new.yaml", &pod_yaml("back", "new", POD_IP));
        self.apply("allow.yaml", ALLOW_TCP_FROM_FRONT);
    }

    /// New TCP connections from the client to the pod back to back, until
    /// the returned file is written.
    fn tcp_loop(&self) -> (std::path::PathBuf, Proc) {
        let stop = self.dir.0.join("stop");
        let mut cmd = Command::new(lb_tests::helper_bin());
        cmd.args(["loop", &format!("{POD_IP}:8080"), &stop.to_string_lossy()]);
        let mut tcp = Proc::spawn(cmd, Some(&self.cgroup.path), Some(&self.client.path()));
        assert_eq!(tcp.read_line().trim(), "started");
        (stop, tcp)
    }

    /// Stops a `tcp_loop`: it made connections and none failed `while`.
    fn no_failures(&self, (stop, mut tcp): (std::path::PathBuf, Proc), while_: &str) {
        std::fs::write(&stop, "").unwrap();
        let sum: Value = serde_json::from_str(&tcp.read_line()).unwrap();
        let log = self.agent.log_text();
        assert!(sum["ok"].as_u64().unwrap() > 0, "{sum}");
        assert_eq!(
            sum["failed"], 0,
            "allowed connections failed {while_}: {sum}\n{log}"
        );
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut a: Vec<&str> = args.to_vec();
        a.push("-o");
        a.push("json");
        let out = self.agent.cli(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[test]
fn a_pod_created_under_default_deny_never_answers_from_its_first_packet() {
    let mut bed = Bed::new();
    // Probes start before the pod exists and go on while its interface
    // appears, gets its address and route, and its server starts.
    let mut early = probes(&bed.client, &bed.cgroup.path, "tcp", 30, 100);
    plug(&bed.node, &bed.pod, "lxc000002", POD_IP);
    bed.serve();
    for r in results(&mut early, 30) {
        assert_eq!(r["ok"], false, "reached a pod a policy isolates: {r}");
    }
    let status = bed.cli_json(&["status"]);
    assert!(
        status["policy"]["policy-unknown-endpoint"]
            .as_u64()
            .unwrap()
            > 0,
        "dropped as an unknown pod before its Pod object arrived: {status}"
    );
    // Its Pod object arrives: still isolated, now as itself.
    bed.apply("new.yaml", &pod_yaml("back", "new", POD_IP));
    for r in results(&mut probes(&bed.client, &bed.cgroup.path, "tcp", 3, 200), 3) {
        assert_eq!(r["ok"], false, "{r}");
    }
    let eps = bed.cli_json(&["endpoint", "list"]);
    let new = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pod"] == "back/new")
        .unwrap_or_else(|| panic!("{eps}"));
    assert_eq!(new["ingress_isolated"], true);
    assert!(
        new["verdicts"]["policy-denied-ingress"].as_u64().unwrap() > 0,
        "{new}"
    );
    // Allowed from namespace front on TCP 8080: the path itself works.
    bed.apply("allow.yaml", ALLOW_TCP_FROM_FRONT);
    for r in results(
        &mut probes(&bed.client, &bed.cgroup.path, "tcp", 3, 1000),
        3,
    ) {
        assert_eq!(
            r["ok"],
            true,
            "{r}\n{}\n{}\n{}",
            bed.cli_json(&["endpoint", "list"]),
            bed.cli_json(&["identity", "list"]),
            bed.cli_json(&["policy", "get", "back/new"])
        );
    }
    let get = bed.cli_json(&["policy", "get", "back/new"]);
    let allows = get["allows"].as_array().unwrap();
    assert!(
        allows.iter().any(|a| a["ports"] == "TCP/8080"
            && a["from"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "back/allow ingress[0]")),
        "policy get names the rule: {get}"
    );
}

#[test]
fn a_restarted_agent_keeps_enforcing_with_no_window() {
    let mut bed = Bed::new();
    bed.serve_allowed();
    for r in results(&mut probes(&bed.client, &bed.cgroup.path, "udp", 3, 200), 3) {
        assert_eq!(
            r["ok"],
            false,
            "UDP is not allowed: {r}\n{}",
            bed.cli_json(&["policy", "get", "back/new"])
        );
    }
    // TCP 8080 is allowed (new connections back to back until told to
    // stop), UDP 8080 is not: both run across two restarts.
    let looping = bed.tcp_loop();
    let n_udp = 30;
    let mut udp = probes(&bed.client, &bed.cgroup.path, "udp", n_udp, 100);
    for _ in 0..2 {
        bed.agent.kill9();
        bed.agent.start();
        let g = bed.m.commit();
        bed.agent.wait_synced(g);
    }
    for r in results(&mut udp, n_udp) {
        assert_eq!(
            r["ok"], false,
            "denied traffic passed across a restart: {r}"
        );
    }
    bed.no_failures(looping, "across a restart");
}

/// A NetworkPolicy whose ipBlocks need more CIDR entries than the map's
/// first 16,384: the map grows before the pod's entries are written, so
/// the pod is never isolated for want of room, and an allowed client's
/// connection loop does not fail across the growth.
#[test]
fn the_policy_maps_grow_before_a_state_that_does_not_fit_is_written() {
    let mut bed = Bed::new();
    bed.serve_allowed();
    let status = bed.cli_json(&["status"]);
    assert_eq!(
        status["maps"]["LB_POL_CIDR_V1"]["max_entries"], 16384,
        "{status}"
    );
    let looping = bed.tcp_loop();

    let blocks: String = (0..17_000u32)
        .map(|i| {
            format!(
                "    - ipBlock: {{cidr: 172.16.{}.{}/32}}\n",
                i / 256,
                i % 256
            )
        })
        .collect();
    bed.apply(
        "blocks.yaml",
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: blocks, namespace: back}}\n\
             spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n{blocks}"
        ),
    );
    bed.no_failures(looping, "while the map grew");
    let log = bed.agent.log_text();
    let status = bed.cli_json(&["status"]);
    let cidrs = &status["maps"]["LB_POL_CIDR_V1"];
    assert_eq!(cidrs["max_entries"], 32768, "{status}");
    assert!(
        cidrs["entries"].as_u64().unwrap() >= 17_000,
        "every block written: {status}"
    );
    assert!(
        log.contains("NetworkPolicy maps grown for the cluster"),
        "{log}"
    );
    assert!(!log.contains("do not fit"), "nothing reported short: {log}");
    let eps = bed.cli_json(&["endpoint", "list"]);
    let new = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pod"] == "back/new")
        .unwrap_or_else(|| panic!("{eps}"));
    assert!(new["error"].is_null(), "{new}");
    // A restarted agent keeps the grown size.
    bed.agent.kill9();
    bed.agent.start();
    let g = bed.m.commit();
    bed.agent.wait_synced(g);
    let status = bed.cli_json(&["status"]);
    assert_eq!(
        status["maps"]["LB_POL_CIDR_V1"]["max_entries"], 32768,
        "{status}"
    );
}

/// A policy conntrack map the allowed flows outgrow (1,024 entries at
/// first; closed flows keep theirs for 600 s) grows while the agent runs,
/// after a sweep finds it more than three quarters full, with no failed
/// connection from the allowed client across the growth.
#[test]
fn the_policy_conntrack_map_grows_while_running() {
    let mut bed = Bed::with(&["--policy-ct-initial=1024", "--ct-timeout-tcp-closing=600"]);
    bed.serve_allowed();
    let size = |bed: &Bed| {
        bed.agent.status().map_or(Value::Null, |s| {
            s["maps"]["LB_POL_CT_V1"]["max_entries"].clone()
        })
    };
    assert_eq!(size(&bed), 1024, "the initial size");
    let looping = bed.tcp_loop();
    // A sweep every 10 s, the sync loop's look at it every 10 s (later
    // when a busy machine stretches the sweeps). The growth is logged once
    // every link runs the new programs; the bigger map is pinned earlier,
    // when its object starts loading on a thread.
    bed.agent.wait_until(
        std::time::Duration::from_secs(60),
        "the policy conntrack map's growth, logged",
        |a| a.log_text().contains("policy 1024 -> "),
    );
    assert!(size(&bed).as_u64().unwrap_or(0) > 1024, "{:?}", size(&bed));
    // Connections went on across the swap of every link's program.
    bed.no_failures(looping, "across the growth");
    let log = bed.agent.log_text();
    // Its entries come over after the swap on a thread of their own, the
    // programs looking in the old map on a miss meanwhile, and the carry
    // then ends.
    assert!(
        log.lines().any(|l| l.contains("LB_POL_CT_V1")
            && l.contains("copying the earlier map's entries on a thread of their own; the programs look them up there meanwhile")),
        "{log}"
    );
    let old_pin = bed.agent.pin_dir.join("LB_POL_CT_V1_PREVIOUS");
    bed.agent.wait_until(
        std::time::Duration::from_secs(10),
        "the end of the carry: the copy done, the old map's pin gone",
        |_| !old_pin.exists(),
    );
}
