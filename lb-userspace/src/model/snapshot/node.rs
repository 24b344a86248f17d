//! This node as its Node object describes it.

use std::net::IpAddr;

/// This node, as its Node object describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub addrs: Vec<IpAddr>,
    /// metadata.deletionTimestamp is set: `/healthz` answers 503.
    pub deleting: bool,
    /// The `topology.kubernetes.io/zone` label (EndpointSlice zone hints).
    pub zone: Option<String>,
}

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

pub fn node_info(node: &k8s_openapi::api::core::v1::Node) -> Result<NodeInfo, String> {
    let name = node
        .metadata
        .name
        .clone()
        .ok_or("Node: metadata.name is missing")?;
    let mut addrs = Vec::new();
    for (i, a) in node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .enumerate()
    {
        if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
            let ip: IpAddr = a.address.parse().map_err(|_| {
                format!(
                    "Node {name}: status.addresses[{i}].address: `{}` is not an IP address",
                    a.address
                )
            })?;
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
    }
    Ok(NodeInfo {
        name,
        addrs,
        deleting: node.metadata.deletion_timestamp.is_some(),
        zone: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .cloned(),
    })
}
