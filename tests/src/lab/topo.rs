//! The lab's network: an underlay bridge in its own namespace, nodes with
//! cgroups, pods on `lxc` veths, and `external`. Built with iproute2 inside
//! each namespace (entered through `crate::netns`, never `ip netns exec`).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use super::control::{Cluster, node_ip};
use super::scenario::Family;

/// Every name a run creates starts with this prefix.
pub fn prefix() -> String {
    format!("lbl{}-", std::process::id())
}

pub fn ns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

pub fn node_ns(k: usize) -> String {
    format!("{}n{}", prefix(), k + 1)
}
pub fn pod_ns(i: usize) -> String {
    format!("{}p{}", prefix(), i + 1)
}
pub fn underlay_ns() -> String {
    format!("{}ul", prefix())
}
pub fn external_ns() -> String {
    format!("{}ext", prefix())
}

pub fn sh(ns: &str, script: &str) -> anyhow::Result<()> {
    let out = crate::netns::command(&ns_path(ns), "sh")
        .args(["-ec", script])
        .output()
        .context("running nsenter")?;
    if !out.status.success() {
        bail!(
            "in namespace {ns}: `{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn sh_out(ns: &str, script: &str) -> String {
    crate::netns::command(&ns_path(ns), "sh")
        .args(["-c", script])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

fn add_ns(name: &str) -> anyhow::Result<()> {
    let st = Command::new("ip").args(["netns", "add", name]).status()?;
    if !st.success() {
        bail!("ip netns add {name} failed");
    }
    sh(
        name,
        "ip link set lo up
         sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
            net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0 \
            net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0",
    )
}

fn mac(last: u8) -> String {
    format!("02:00:0a:64:00:{last:02x}")
}

pub fn lxc_name(pod_index: usize) -> String {
    format!("lxc{:06x}", pod_index + 1)
}

/// Builds every namespace and link of the cluster.
pub fn build(c: &Cluster) -> anyhow::Result<()> {
    let ul = underlay_ns();
    add_ns(&ul)?;
    sh(&ul, "ip link add br0 type bridge; ip link set br0 up")?;
    let members: Vec<(String, u8, IpPair)> = (0..c.nodes.len())
        .map(|k| {
            (
                node_ns(k),
                k as u8 + 1,
                IpPair(
                    node_ip(k, Family::IPv4).to_string(),
                    node_ip(k, Family::IPv6).to_string(),
                ),
            )
        })
        .chain(std::iter::once((
            external_ns(),
            200u8,
            IpPair("10.100.0.200".into(), "fd00:100::200".into()),
        )))
        .collect();
    for (ns, last, ips) in &members {
        add_ns(ns)?;
        let peer = format!("u{last}");
        sh(
            ns,
            &format!(
                "ip link add eth0 address {mac} type veth peer name {peer} netns {ul}
                 ethtool -K eth0 tx off >/dev/null
                 ip addr add {v4}/24 dev eth0
                 ip addr add {v6}/64 dev eth0 nodad
                 ip link set eth0 up",
                mac = mac(*last),
                v4 = ips.0,
                v6 = ips.1
            ),
        )?;
        sh(
            &ul,
            &format!(
                "ethtool -K {peer} tx off >/dev/null; ip link set {peer} master br0; ip link set {peer} up"
            ),
        )?;
    }
    // Permanent neighbours for every underlay address, everywhere.
    for (ns, _, _) in &members {
        let mut script = String::new();
        for (other, last, ips) in &members {
            if other != ns {
                script += &format!(
                    "ip neigh replace {} lladdr {m} dev eth0 nud permanent\nip -6 neigh replace {} lladdr {m} dev eth0 nud permanent\n",
                    ips.0,
                    ips.1,
                    m = mac(*last)
                );
            }
        }
        sh(ns, &script)?;
    }
    for k in 0..c.nodes.len() {
        let mut script =
            String::from("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1\n");
        for j in 0..c.nodes.len() {
            if j != k {
                script += &format!(
                    "ip route add 10.244.{n}.0/24 via {v4}\nip -6 route add fd00:244:{n:x}::/64 via {v6}\n",
                    n = j + 1,
                    v4 = node_ip(j, Family::IPv4),
                    v6 = node_ip(j, Family::IPv6)
                );
            }
        }
        sh(&node_ns(k), &script)?;
    }
    // external: LoadBalancer IPs and externalIPs via the first node, or via
    // the node a probe names (its SO_MARK selects a table).
    let mut ext = format!(
        "ip route add 10.200.0.0/16 via {}\nip -6 route add fd00:200::/64 via {}\n",
        node_ip(0, Family::IPv4),
        node_ip(0, Family::IPv6)
    );
    for k in 0..c.nodes.len() {
        ext += &format!(
            "ip rule add fwmark {m} table {t}\nip -6 rule add fwmark {m} table {t}\nip route add 10.200.0.0/16 via {v4} table {t}\nip -6 route add fd00:200::/64 via {v6} table {t}\n",
            m = k + 1,
            t = 100 + k,
            v4 = node_ip(k, Family::IPv4),
            v6 = node_ip(k, Family::IPv6)
        );
    }
    sh(&external_ns(), &ext)?;
    for (i, p) in c.pods.iter().enumerate() {
        let pns = pod_ns(i);
        add_ns(&pns)?;
        let k = p.node;
        let lxc = lxc_name(i);
        sh(
            &node_ns(k),
            &format!(
                "ip link add {lxc} type veth peer name eth0 netns {pns}
                 ethtool -K {lxc} tx off >/dev/null
                 ip addr add 10.244.{n}.1/32 dev {lxc}
                 ip addr add fe80::1/64 dev {lxc} nodad
                 ip link set {lxc} up
                 ip route add {ip4}/32 dev {lxc} src {nv4}
                 ip -6 route add {ip6}/128 dev {lxc} src {nv6}",
                n = k + 1,
                ip4 = p.ip4(),
                ip6 = p.ip6(),
                nv4 = node_ip(k, Family::IPv4),
                nv6 = node_ip(k, Family::IPv6)
            ),
        )?;
        if let Some(mtu) = p.spec.mtu {
            sh(&node_ns(k), &format!("ip link set {lxc} mtu {mtu}"))?;
            sh(&pns, &format!("ip link set eth0 mtu {mtu}"))?;
        }
        sh(
            &pns,
            &format!(
                "ethtool -K eth0 tx off >/dev/null
                 ip addr add {ip4}/32 dev eth0
                 ip addr add {ip6}/128 dev eth0 nodad
                 ip link set eth0 up
                 ip route add 10.244.{n}.1 dev eth0 scope link
                 ip route add default via 10.244.{n}.1 dev eth0
                 ip -6 route add default via fe80::1 dev eth0",
                n = k + 1,
                ip4 = p.ip4(),
                ip6 = p.ip6()
            ),
        )?;
    }
    Ok(())
}

struct IpPair(String, String);

/// TCP and UDP checksum errors a namespace counted (both families).
pub fn checksum_errors(ns: &str) -> u64 {
    let snmp = sh_out(ns, "cat /proc/net/snmp");
    let mut total = 0;
    let lines: Vec<&str> = snmp.lines().collect();
    for pair in lines.chunks(2) {
        if let [head, vals] = pair {
            let (h, v): (Vec<&str>, Vec<&str>) = (
                head.split_whitespace().collect(),
                vals.split_whitespace().collect(),
            );
            if matches!(h.first(), Some(&"Tcp:") | Some(&"Udp:"))
                && let Some(i) = h.iter().position(|x| *x == "InCsumErrors")
            {
                total += v.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    let snmp6 = sh_out(ns, "cat /proc/net/snmp6");
    for l in snmp6.lines() {
        let mut it = l.split_whitespace();
        if let (Some(k), Some(v)) = (it.next(), it.next())
            && k == "Udp6InCsumErrors"
        {
            total += v.parse::<u64>().unwrap_or(0);
        }
    }
    total
}

/// Every namespace of this run.
pub fn all_namespaces(c: &Cluster) -> Vec<String> {
    let mut v = vec![underlay_ns(), external_ns()];
    v.extend((0..c.nodes.len()).map(node_ns));
    v.extend((0..c.pods.len()).map(pod_ns));
    v
}

/// Attaches XDP_PASS (native) to every bridge-side peer in the underlay:
/// native XDP on a veth only sees traffic when its peer has a program too.
/// Done from a thread inside the underlay namespace; the programs stay
/// while the returned handle lives (and die with the namespace anyway).
pub fn xdp_pass_on_peers(c: &Cluster) -> anyhow::Result<super::aya_keepalive::Keep> {
    let mut peers: Vec<String> = (0..c.nodes.len()).map(|k| format!("u{}", k + 1)).collect();
    peers.push("u200".into());
    crate::netns::in_netns(&ns_path(&underlay_ns()), || -> anyhow::Result<_> {
        Ok(super::aya_keepalive::Keep(Box::new(
            lb_agent::datapath::xdp_pass_on(&peers)?,
        )))
    })?
}
