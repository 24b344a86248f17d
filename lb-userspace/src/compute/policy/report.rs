//! The policy report: each local endpoint's isolation and allows, and the
//! identities, in words (`lb-agent policy`, the report file).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    DIR_INGRESS, EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED, ID_ANY, ID_HOST,
    POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL, POLICY_PREFIX_PROTO, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, PolEndpoint,
};
use serde::{Deserialize, Serialize};

use crate::{
    compute::desired::ip_of,
    model::policy::{Labels, PodInfo},
};

use super::prefixes::Prefix;

/// What an operator reads: `lb-agent endpoint list`, `identity list`,
/// `policy get`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub endpoints: Vec<EndpointReport>,
    pub identities: Vec<IdentityReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EndpointReport {
    pub pod: String,
    pub ep_id: u32,
    pub identity: u32,
    pub addresses: Vec<IpAddr>,
    /// The pod's interface (0: not known yet; its source is not validated).
    #[serde(default)]
    pub ifindex: u32,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    pub entries: usize,
    pub cidr_entries: usize,
    /// Why the pod is isolated with nothing allowed (its entries do not fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The resolved allow entries and the rules they came from.
    pub allows: Vec<AllowReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AllowReport {
    pub direction: String,
    /// `any`, an identity (`identity 1234`, `host`) or `cidr-set N`.
    pub peer: String,
    /// `any`, `TCP`, `UDP/53`, `TCP/8000-8007`...
    pub ports: String,
    pub from: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IdentityReport {
    pub identity: u32,
    pub namespace: String,
    pub labels: Labels,
    pub pods: usize,
}

/// What `endpoint list` and `policy get` show of one local endpoint.
pub(crate) fn endpoint_report(
    p: &PodInfo,
    ep: &PolEndpoint,
    entries: usize,
    cidr_entries: usize,
    error: Option<String>,
    allows: BTreeMap<(u8, String, String), BTreeSet<String>>,
) -> EndpointReport {
    EndpointReport {
        pod: p.key.to_string(),
        ep_id: ep.ep_id,
        identity: ep.identity,
        addresses: p.ips.clone(),
        ifindex: ep.ifindex,
        ingress_isolated: ep.flags & EP_F_INGRESS_ISOLATED != 0,
        egress_isolated: ep.flags & EP_F_EGRESS_ISOLATED != 0,
        entries,
        cidr_entries,
        error,
        allows: allows
            .into_iter()
            .map(|((dir, peer, ports), from)| AllowReport {
                direction: if dir == DIR_INGRESS {
                    "ingress"
                } else {
                    "egress"
                }
                .into(),
                peer,
                ports,
                from: from.into_iter().collect(),
            })
            .collect(),
    }
}

pub(super) fn peer_name(id: u32) -> String {
    match id {
        ID_ANY => "any".into(),
        ID_HOST => "host".into(),
        id => format!("identity {id}"),
    }
}

pub(super) fn prefix_name(p: &Prefix) -> String {
    let ip = ip_of(&p.addr());
    let len = if ip.is_ipv4() { p.len - 96 } else { p.len };
    format!("{ip}/{len}")
}

pub(super) fn ports_name(proto: u8, port: u16, len: u32) -> String {
    let name = match proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_SCTP => "SCTP",
        _ => return "any".into(),
    };
    if len == POLICY_PREFIX_ANY_PROTO {
        return "any".into();
    }
    if len == POLICY_PREFIX_PROTO {
        return name.into();
    }
    let span = 1u32 << (POLICY_PREFIX_FULL - len);
    if span == 1 {
        format!("{name}/{port}")
    } else {
        format!("{name}/{port}-{}", port as u32 + span - 1)
    }
}
