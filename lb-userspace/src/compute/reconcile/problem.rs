//! What a change set could not do, by kind: logged as sentences naming the
//! object and field, and counted by kind in `/metrics`.

use std::net::IpAddr;

use crate::{compute::policy::PolicyProblem, model::snapshot::ObjRef};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The snapshot refused an object (its conversion names the field).
    #[error("{0}; keeping its previous state")]
    Invalid(String),
    #[error("Service {service}: spec.externalIPs[{index}] {ip} {why}; not programmed")]
    ExternalIpRefused {
        service: ObjRef,
        index: usize,
        ip: IpAddr,
        why: String,
    },
    #[error(
        "Service {service}: spec.healthCheckNodePort {port} already belongs to Service {holder}"
    )]
    HealthCheckPortTaken {
        service: ObjRef,
        port: u16,
        holder: ObjRef,
    },
    #[error(
        "Service {loser}: frontend {frontend} belongs to Service {winner} ({why}); not programmed for {loser}"
    )]
    FrontendTaken {
        loser: ObjRef,
        winner: ObjRef,
        frontend: String,
        why: &'static str,
    },
    /// The NetworkPolicy stage's: each fails closed.
    #[error(transparent)]
    Policy(#[from] PolicyProblem),
}

impl Problem {
    /// The `kind` label of `lb_sync_problems_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_object",
            Self::ExternalIpRefused { .. } => "external_ip_refused",
            Self::HealthCheckPortTaken { .. } => "health_check_node_port_taken",
            Self::FrontendTaken { .. } => "frontend_taken",
            Self::Policy(p) => p.label(),
        }
    }
}
