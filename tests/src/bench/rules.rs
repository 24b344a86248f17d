//! What each variant is told about the same cluster: `n` Services of ten
//! endpoints each, the measured one last (the worst case for rule lists
//! walked in order). The agent gets Kubernetes manifests; the baselines
//! get the rules kube-proxy would write for them in its iptables and
//! nftables modes (ClusterIP and NodePort chains, random endpoint choice,
//! masquerade for NodePort traffic).

use std::{fmt::Write as _, net::Ipv4Addr};

use super::topo::{BACKEND, BACKEND_PORT, NODE_NAME, NODE_OUTSIDE, NODE_PORT, SERVICE_PORT};

pub const ENDPOINTS_PER_SERVICE: usize = 10;

/// The Service whose EndpointSlice the churn measurement changes; its
/// slice lives in a file of its own so a change rewrites only that. A
/// NodePort Service (`CHURNED_NODE_PORT`): a change rebuilds its Maglev
/// table, the most an endpoint change writes.
pub const CHURNED: usize = 0;
pub const CHURNED_NODE_PORT: u16 = NODE_PORT + 1;
pub const CHURN_FILE: &str = "churned-slice.yaml";

/// The ClusterIP of Service `i` (10.96.0.0/12 holds a million).
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

/// How many endpoints Service `i` has when whole (the churn takes one
/// away and gives it back).
pub fn full_endpoints(n: usize, i: usize) -> usize {
    if i == target(n) {
        1
    } else {
        ENDPOINTS_PER_SERVICE
    }
}

/// The measured Service: the last of `n`.
pub fn target(n: usize) -> usize {
    n - 1
}

/// The endpoints of Service `i`: the measured one's all lead to the
/// backend namespace (ten ports of one server would need ten servers);
/// the others to addresses nothing answers on, as in a cluster where the
/// client talks to one Service among many.
fn endpoints(n: usize, i: usize) -> Vec<Ipv4Addr> {
    (0..ENDPOINTS_PER_SERVICE)
        .map(|j| {
            if i == target(n) {
                BACKEND
            } else {
                let k = (i * ENDPOINTS_PER_SERVICE + j) as u32;
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + k)
            }
        })
        .collect()
}

/// The agent's manifests: the node, then each Service and its
/// EndpointSlice (flow-style YAML, one document each), but the churned
/// Service's slice (`CHURN_FILE`).
pub fn manifests(n: usize) -> String {
    let mut s = String::with_capacity(n * 700);
    let _ = write!(
        s,
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE_NAME}}}\nstatus: {{addresses: [{{type: InternalIP, address: \"{NODE_OUTSIDE}\"}}]}}\n"
    );
    for i in 0..n {
        s.push_str("---\n");
        s.push_str(&service_yaml(n, i));
        if i != CHURNED {
            s.push_str("---\n");
            s.push_str(&slice_yaml(n, i, ENDPOINTS_PER_SERVICE));
        }
    }
    s
}

fn service_yaml(n: usize, i: usize) -> String {
    let (ty, np) = if i == target(n) {
        ("NodePort", format!(", nodePort: {NODE_PORT}"))
    } else if i == CHURNED {
        ("NodePort", format!(", nodePort: {CHURNED_NODE_PORT}"))
    } else {
        ("ClusterIP", String::new())
    };
    format!(
        "{{apiVersion: v1, kind: Service, metadata: {{name: s{i}, namespace: b}}, spec: {{type: {ty}, clusterIP: \"{ip}\", clusterIPs: [\"{ip}\"], ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {BACKEND_PORT}, protocol: TCP{np}}}]}}}}\n",
        ip = cluster_ip(i)
    )
}

/// Service `i`'s EndpointSlice with its first `count` endpoints.
pub fn slice_yaml(n: usize, i: usize, count: usize) -> String {
    let eps: Vec<String> = endpoints(n, i)
        .iter()
        .take(count)
        .enumerate()
        .map(|(j, a)| {
            // The measured Service's ten endpoints share one address; a
            // slice lists an address once, so its others are told apart
            // by name only where they differ.
            if i == target(n) && j > 0 {
                return String::new();
            }
            format!(
                "{{addresses: [\"{a}\"], nodeName: {NODE_NAME}, conditions: {{ready: true, serving: true, terminating: false}}}}"
            )
        })
        .filter(|e| !e.is_empty())
        .collect();
    format!(
        "{{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: s{i}-x, namespace: b, labels: {{kubernetes.io/service-name: s{i}}}}}, addressType: IPv4, endpoints: [{}], ports: [{{name: http, port: {BACKEND_PORT}, protocol: TCP}}]}}\n",
        eps.join(", ")
    )
}

/// kube-proxy's iptables mode, as `iptables-restore` input: one
/// KUBE-SERVICES rule per Service (walked in order), a KUBE-SVC chain
/// choosing an endpoint with statistic-mode random, a KUBE-SEP chain per
/// endpoint, and NodePorts marked for masquerade.
pub fn iptables(n: usize) -> String {
    let mut chains = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n",
    );
    for i in 0..n {
        let eps = endpoints(n, i);
        let _ = writeln!(chains, ":KUBE-SVC-{i} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport {SERVICE_PORT} -j KUBE-SVC-{i}",
            cluster_ip(i)
        );
        if i == target(n) {
            let _ = writeln!(chains, ":KUBE-EXT-{i} - [0:0]");
            let _ = writeln!(
                rules,
                "-A KUBE-NODEPORTS -p tcp -m tcp --dport {NODE_PORT} -j KUBE-EXT-{i}\n\
                 -A KUBE-EXT-{i} -j KUBE-MARK-MASQ\n-A KUBE-EXT-{i} -j KUBE-SVC-{i}"
            );
        }
        for (j, a) in eps.iter().enumerate() {
            let _ = writeln!(chains, ":KUBE-SEP-{i}-{j} - [0:0]");
            let left = eps.len() - j;
            let pick = if left > 1 {
                format!(
                    " -m statistic --mode random --probability {:.11}",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(rules, "-A KUBE-SVC-{i}{pick} -j KUBE-SEP-{i}-{j}");
            let _ = writeln!(
                rules,
                "-A KUBE-SEP-{i}-{j} -p tcp -m tcp -j DNAT --to-destination {a}:{BACKEND_PORT}"
            );
        }
    }
    rules.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n");
    chains + &rules
}

/// kube-proxy's nftables mode, as `nft -f` input: a verdict map from
/// (address, protocol, port) to each Service's chain, a numgen map over
/// its endpoint chains, and NodePorts through a second map with
/// masquerade marking.
pub fn nftables(n: usize) -> String {
    // Chains first, then the maps whose verdicts name them, then the
    // hooks that use the maps: `nft -f` resolves names in that order.
    let mut s = String::from(
        "table ip kube-proxy {\n\
         chain mark-for-masquerade { meta mark set meta mark | 0x4000; }\n\
         chain masquerading { meta mark & 0x4000 == 0 return; meta mark set meta mark ^ 0x4000; masquerade fully-random; }\n",
    );
    let mut ips = Vec::with_capacity(n);
    let mut node_ports = Vec::new();
    for i in 0..n {
        let eps = endpoints(n, i);
        let _ = writeln!(
            s,
            "chain service-{i} {{ numgen random mod {} vmap {{ {} }}; }}",
            eps.len(),
            (0..eps.len())
                .map(|j| format!("{j} : goto endpoint-{i}-{j}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (j, a) in eps.iter().enumerate() {
            let _ = writeln!(
                s,
                "chain endpoint-{i}-{j} {{ meta l4proto tcp dnat to {a}:{BACKEND_PORT}; }}"
            );
        }
        ips.push(format!(
            "{} . tcp . {SERVICE_PORT} : goto service-{i}",
            cluster_ip(i)
        ));
        if i == target(n) {
            let _ = writeln!(
                s,
                "chain external-{i} {{ jump mark-for-masquerade; goto service-{i}; }}"
            );
            node_ports.push(format!("{NODE_PORT} : goto external-{i}"));
        }
    }
    let _ = writeln!(
        s,
        "map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict\n elements = {{ {} }} }}",
        ips.join(",\n")
    );
    let _ = writeln!(
        s,
        "map service-nodeports {{ type inet_service : verdict\n elements = {{ {} }} }}",
        node_ports.join(", ")
    );
    s.push_str(
        "chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept;\n\
         ip daddr . meta l4proto . th dport vmap @service-ips\n\
         fib daddr type local ip protocol tcp th dport vmap @service-nodeports\n}\n\
         chain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }\n}\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measured_service_is_last_and_leads_to_the_backend() {
        let ipt = iptables(3);
        let last_service = ipt
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES -d"))
            .unwrap();
        assert!(
            last_service.contains(&format!("{}/32", cluster_ip(2))),
            "{last_service}"
        );
        assert!(ipt.contains(&format!(
            "-A KUBE-SEP-2-9 -p tcp -m tcp -j DNAT --to-destination {BACKEND}:{BACKEND_PORT}"
        )));
        assert!(!ipt.contains(&format!(
            "KUBE-SEP-1-0 -p tcp -m tcp -j DNAT --to-destination {BACKEND}:"
        )));
        // The random choice is uniform: 1/10, 1/9, ... 1/2, then the last.
        assert!(ipt.contains(
            "-A KUBE-SVC-0 -m statistic --mode random --probability 0.10000000000 -j KUBE-SEP-0-0"
        ));
        assert!(ipt.contains("-A KUBE-SVC-0 -j KUBE-SEP-0-9"));
        let nft = nftables(3);
        assert!(nft.contains(&format!(
            "{} . tcp . {SERVICE_PORT} : goto service-2",
            cluster_ip(2)
        )));
        assert!(nft.contains(&format!("{NODE_PORT} : goto external-2")));
        let m = manifests(3);
        assert_eq!(m.matches("kind: Service,").count(), 3);
        assert_eq!(
            m.matches("type: NodePort").count(),
            2,
            "the measured and the churned Service"
        );
        assert_eq!(manifests(1).matches("type: NodePort").count(), 1);
    }
}
