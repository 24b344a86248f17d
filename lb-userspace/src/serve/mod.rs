//! HTTP endpoints: the agent's health and metrics, the healthCheckNodePorts.

pub mod health;
pub mod health_check;
mod http;
pub mod metrics;
pub mod report;
