//! A one-node test bed for the socket-level datapath: a client namespace and
//! N backend namespaces on a bridge (in a hub namespace of its own), one
//! cgroup that the agent attaches to and that clients and servers join, and
//! a file source. Nothing is routed into the machine's root namespace.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

use crate::{
    agent::{AgentProc, Manifests, pin_path},
    netns::{Netns, veth},
    spawn::{Cgroup, Proc},
};

pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;

pub struct Testbed {
    // Drop order: agent (and pins), servers, cgroup, namespaces, files.
    pub agent: AgentProc,
    pub servers: Vec<Proc>,
    pub cgroup: Cgroup,
    pub client: Netns,
    pub backends: Vec<Netns>,
    pub hub: Netns,
    pub manifests: Manifests,
    pub dir: TempDir,
}

/// An agent with `--source kube`: its kubeconfig names
/// `kubeconfig_server` (with `token`, if any); `args` are added.
pub struct KubeAgent {
    pub node: String,
    pub kubeconfig_server: String,
    pub token: Option<String>,
    pub args: Vec<String>,
}

pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn client_ip4() -> String {
    "10.250.0.1".into()
}
pub fn client_ip6() -> String {
    "fd00:250::1".into()
}
pub fn backend_ip4(i: usize) -> String {
    format!("10.250.0.{}", 10 + i)
}
pub fn backend_ip6(i: usize) -> String {
    format!("fd00:250::{:x}", 10 + i)
}

impl Testbed {
    /// Brings the bed up with `n` backends serving, and an agent running on
    /// an empty manifest directory (generation 1 synced).
    pub fn new(n: usize) -> Self {
        Self::up(n, None, &[])
    }

    /// The same bed, its agent started with `args` added (e.g.
    /// `--max-services=12`).
    pub fn with_agent_args(n: usize, args: &[&str]) -> Self {
        Self::up(n, None, args)
    }

    /// The same bed with the agent watching `api` as node `node`.
    pub fn new_kube(n: usize, api: &crate::apiserver::ApiServer, node: &str) -> Self {
        Self::up(
            n,
            Some(KubeAgent {
                node: node.into(),
                kubeconfig_server: api.url(),
                token: None,
                args: vec![],
            }),
            &[],
        )
    }

    pub fn new_kube_with(n: usize, agent: KubeAgent) -> Self {
        Self::up(n, Some(agent), &[])
    }

    fn up(n: usize, kube: Option<KubeAgent>, args: &[&str]) -> Self {
        crate::require_kernel();
        let prefix = crate::unique("tb");
        let dir = TempDir(std::env::temp_dir().join(&prefix));
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        let hub = Netns::new(format!("{prefix}-hub"));
        hub.sh("ip link add br0 type bridge; ip link set br0 up");
        let client = Netns::new(format!("{prefix}-c"));
        veth(&client, "eth0", &hub, "c");
        hub.sh("ip link set c master br0");
        client.sh(&format!(
            "ip addr add {}/24 dev eth0; ip addr add {}/64 dev eth0 nodad",
            client_ip4(),
            client_ip6()
        ));
        let mut backends = Vec::new();
        for i in 0..n {
            let b = Netns::new(format!("{prefix}-b{i}"));
            veth(&b, "eth0", &hub, &format!("b{i}"));
            hub.sh(&format!("ip link set b{i} master br0"));
            b.sh(&format!(
                "ip addr add {}/24 dev eth0; ip addr add {}/64 dev eth0 nodad",
                backend_ip4(i),
                backend_ip6(i)
            ));
            backends.push(b);
        }
        let cgroup = Cgroup::new(&prefix);
        let mut servers = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let mut cmd = Command::new(crate::helper_bin());
            cmd.args([
                "serve",
                &format!("b{i}"),
                &TCP_PORT.to_string(),
                &UDP_PORT.to_string(),
            ]);
            let mut p = Proc::spawn(cmd, Some(&cgroup.path), Some(&b.path()));
            assert_eq!(p.read_line().trim(), "ready", "server b{i} did not start");
            servers.push(p);
        }
        let mut manifests = Manifests::new(dir.0.join("manifests"));
        let mut agent = AgentProc::new(
            pin_path(&prefix),
            cgroup.path.clone(),
            manifests.dir.clone(),
            dir.0.join("agent.log"),
        );
        agent.extra = args.iter().map(|a| a.to_string()).collect();
        match kube {
            None => {
                let g = manifests.commit();
                agent.start();
                agent.wait_synced(g);
            }
            Some(k) => {
                let kubeconfig = dir.0.join("kubeconfig");
                crate::apiserver::ApiServer::write_kubeconfig(
                    &kubeconfig,
                    &k.kubeconfig_server,
                    k.token.as_deref(),
                );
                let mut args = vec![
                    "--source=kube".into(),
                    format!("--kubeconfig={}", kubeconfig.display()),
                    format!("--node-name={}", k.node),
                ];
                args.extend(k.args);
                agent.source_args = Some(args);
                agent.start();
                agent.wait_healthy();
            }
        }
        Self {
            agent,
            servers,
            cgroup,
            client,
            backends,
            hub,
            manifests,
            dir,
        }
    }

    /// Runs `lbh probe` in the client namespace and cgroup. `mode`: how
    /// UDP is sent (`connected`, `unconnected`, `same-socket`; `-`: the
    /// default, unconnected).
    pub fn probe(
        &self,
        target: &str,
        proto: &str,
        count: usize,
        mode: &str,
        v6sock: bool,
    ) -> Vec<Value> {
        let mut cmd = Command::new(crate::helper_bin());
        cmd.args(["probe", target, proto, &count.to_string()]);
        if mode != "-" {
            cmd.arg(format!("--udp={mode}"));
        }
        if v6sock {
            cmd.arg("--v6sock");
        }
        let mut p = Proc::spawn(cmd, Some(&self.cgroup.path), Some(&self.client.path()));
        let mut out = Vec::new();
        for _ in 0..count {
            let l = p.read_line();
            out.push(
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("probe output `{l}`: {e}")),
            );
        }
        out
    }

    /// A helper process in the client namespace and cgroup.
    pub fn client_proc(&self, args: &[&str]) -> Proc {
        let mut cmd = Command::new(crate::helper_bin());
        cmd.args(args);
        Proc::spawn(cmd, Some(&self.cgroup.path), Some(&self.client.path()))
    }

    /// Writes and commits, then waits for the agent to sync.
    pub fn apply(&mut self, name: &str, yaml: &str) -> u64 {
        self.manifests.write(name, yaml);
        let g = self.manifests.commit();
        self.agent.wait_synced(g);
        g
    }
}

/// A Service manifest. `ports`: (name, port, protocol).
pub fn service(name: &str, cluster_ips: &[&str], ports: &[(&str, u16, &str)]) -> String {
    let ips = cluster_ips
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let ports = ports
        .iter()
        .map(|(n, p, pr)| format!("{{name: \"{n}\", port: {p}, protocol: {pr}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  clusterIP: \"{first}\"\n  clusterIPs: [{ips}]\n  ports: [{ports}]\n",
        first = cluster_ips[0]
    )
}

/// An EndpointSlice. `endpoints`: (address, ready, serving, terminating).
pub fn slice(
    name: &str,
    service: &str,
    family: &str,
    ports: &[(&str, u16, &str)],
    endpoints: &[(String, bool, bool, bool)],
) -> String {
    let ports = ports
        .iter()
        .map(|(n, p, pr)| format!("{{name: \"{n}\", port: {p}, protocol: {pr}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let eps = endpoints
        .iter()
        .map(|(a, r, s, t)| format!("  - {{addresses: [\"{a}\"], conditions: {{ready: {r}, serving: {s}, terminating: {t}}}}}"))
        .collect::<Vec<_>>()
        .join("\n");
    let eps = if eps.is_empty() {
        "endpoints: []".to_string()
    } else {
        format!("endpoints:\n{eps}")
    };
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: t\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: {family}\n{eps}\nports: [{ports}]\n"
    )
}

pub fn ready(addrs: impl IntoIterator<Item = String>) -> Vec<(String, bool, bool, bool)> {
    addrs.into_iter().map(|a| (a, true, true, false)).collect()
}
