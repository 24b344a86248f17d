//! The bench's routed topology: a client namespace, a node namespace that
//! routes between it and a backend namespace (the pod), the client in a
//! cgroup of its own for the socket hooks. Client and server are pinned to
//! one CPU each. Nothing is routed into the machine's root namespace.

use std::{net::Ipv4Addr, path::Path, process::Command};

use anyhow::Context as _;

use crate::{
    netns::{Netns, veth},
    spawn::{Cgroup, Proc},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 253, 1, 1);
/// The client namespace's second address, the source of `Client::Outside`
/// connections: a process of the node and a client elsewhere never share
/// an address (and so never a connection's tuple at the backend).
pub const CLIENT_OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 253, 1, 3);
/// The node's address towards the client: NodePorts are served on it.
pub const NODE_OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 253, 1, 2);
pub const NODE_INSIDE: Ipv4Addr = Ipv4Addr::new(10, 253, 2, 1);
pub const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 253, 2, 10);
pub const BACKEND_PORT: u16 = 8080;
pub const SERVICE_PORT: u16 = 80;
pub const NODE_PORT: u16 = 30080;
pub const NODE_NAME: &str = "bench-node";
/// The node's device towards the client (the agent's `--devices`).
pub const NODE_DEVICE: &str = "eth0";
/// The node's side of the pod's veth, named as Cilium names them so the
/// agent's default `--pod-ifaces` covers it.
pub const POD_DEVICE: &str = "lxcbench";

pub const CLIENT_CPU: usize = 0;
pub const SERVER_CPU: usize = 1;

/// Where the client process is, as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Inside,
    Outside,
}

pub struct Topology {
    // Drop order: server, cgroup, namespaces.
    pub server: Proc,
    pub cgroup: Cgroup,
    pub client: Netns,
    pub node: Netns,
    pub backend: Netns,
}

/// The one JSON line a bench client prints when done (after its
/// `FIRST_OK` line, unless `wait_first_ok` read that already).
pub fn client_result(p: &mut Proc) -> anyhow::Result<serde_json::Value> {
    let mut l = p.read_line();
    if l.trim_end() == super::load::FIRST_OK {
        l = p.read_line();
    }
    serde_json::from_str(&l).with_context(|| format!("the bench client said `{l}`"))
}

/// Blocks until the client has completed its first connection (or
/// request); fails with what it said instead if it ended without one.
pub fn wait_first_ok(p: &mut Proc) -> anyhow::Result<()> {
    let l = p.read_line();
    anyhow::ensure!(
        l.trim_end() == super::load::FIRST_OK,
        "the bench client ended without a completed connection: `{l}`"
    );
    Ok(())
}

/// `lb-bench` itself, run as a server or client in the topology.
pub fn bench_bin() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .filter(|p| p.file_name().is_some_and(|n| n == "lb-bench"))
        .unwrap_or_else(|| crate::built("lb-bench"))
}

/// `cmd` pinned to `cpu` (through taskset, which execs it in place, so
/// the cgroup and namespace it joined stay its own).
fn pinned(cpu: usize, args: &[&str]) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string()])
        .arg(bench_bin())
        .args(args);
    cmd
}

impl Topology {
    pub fn up() -> anyhow::Result<Self> {
        let prefix = crate::unique("bench");
        let client = Netns::new(format!("{prefix}-c"));
        let node = Netns::new(format!("{prefix}-n"));
        let backend = Netns::new(format!("{prefix}-b"));
        veth(&client, "eth0", &node, NODE_DEVICE);
        veth(&backend, "eth0", &node, POD_DEVICE);
        client.sh(&format!(
            "ip addr add {CLIENT}/24 dev eth0; ip addr add {CLIENT_OUTSIDE}/24 dev eth0; \
             ip route add default via {NODE_OUTSIDE} src {CLIENT}"
        ));
        backend.sh(&format!(
            "ip addr add {BACKEND}/24 dev eth0; ip route add default via {NODE_INSIDE}"
        ));
        node.sh(&format!(
            "ip addr add {NODE_OUTSIDE}/24 dev {NODE_DEVICE}; ip addr add {NODE_INSIDE}/24 dev {POD_DEVICE}; \
             sysctl -qw net.ipv4.ip_forward=1"
        ));
        let cgroup = Cgroup::new(&prefix);
        let mut server = Proc::spawn(
            pinned(SERVER_CPU, &["server", &BACKEND_PORT.to_string()]),
            None,
            Some(&backend.path()),
        );
        let l = server.read_line();
        anyhow::ensure!(l.trim() == "ready", "the bench server did not start: `{l}`");
        Ok(Self {
            server,
            cgroup,
            client,
            node,
            backend,
        })
    }

    /// Runs the bench client in the client namespace and returns its one
    /// JSON line. `Inside` the agent's cgroup its connect() meets the
    /// socket hooks (a pod or process of the node); `Outside`, its packets
    /// meet TC and XDP on the node's device (a client on another machine).
    pub fn client(&self, at: Client, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        client_result(&mut self.spawn_client(at, args))
    }

    /// The bench client started; `client_result` reads what it measured.
    pub fn spawn_client(&self, at: Client, args: &[&str]) -> Proc {
        let outside = CLIENT_OUTSIDE.to_string();
        let (cgroup, src) = match at {
            Client::Inside => (Some(self.cgroup.path.as_path()), None),
            Client::Outside => (None, Some(outside.as_str())),
        };
        Proc::spawn(
            pinned(CLIENT_CPU, &[&["client"], args, src.as_slice()].concat()),
            cgroup,
            Some(&self.client.path()),
        )
    }

    /// A shell snippet in the node namespace, with its stdin from `input`.
    pub fn node_sh_with_input(&self, script: &str, input: &Path) -> anyhow::Result<()> {
        let out = crate::netns::command(&self.node.path(), "sh")
            .args(["-ec", script])
            .stdin(std::fs::File::open(input)?)
            .output()
            .with_context(|| format!("running `{script}` in the node namespace"))?;
        anyhow::ensure!(
            out.status.success(),
            "`{script}` in the node namespace failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

/// Keeps the XDP_PASS program on the client's device loaded.
pub struct XdpPeer(
    #[expect(dead_code, reason = "held for its drop")] Box<dyn std::any::Any + Send>,
);

impl Topology {
    /// An XDP_PASS program on the client's end of the node's veth: native
    /// XDP on a veth needs a program on its peer for the frames it sends
    /// back out (as on the lab's underlay).
    pub fn xdp_pass_on_client(&self) -> anyhow::Result<XdpPeer> {
        crate::netns::in_netns(&self.client.path(), || -> anyhow::Result<XdpPeer> {
            Ok(XdpPeer(Box::new(lb_agent::datapath::xdp_pass_on(&[
                "eth0".to_string(),
            ])?)))
        })?
    }

    /// `f` run on a thread inside the node's namespace: sockets it makes
    /// (a listener, say) stay there.
    pub fn in_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        crate::netns::in_netns(&self.node.path(), f)
    }
}
