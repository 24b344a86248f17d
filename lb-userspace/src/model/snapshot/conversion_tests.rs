//! Service and EndpointSlice objects to the snapshot's types, table by
//! table: each row an object as the API would send it and the ServiceInfo
//! or SliceInfo it must become, or the error naming its field.

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};

use super::*;

fn service(spec: Value) -> Value {
    json!({"metadata": {"name": "web", "namespace": "x"}, "spec": spec})
}

/// What every row's Service is unless the row says otherwise.
fn base() -> ServiceInfo {
    ServiceInfo {
        key: ObjRef::new("x", "web"),
        skip: None,
        cluster_ips: vec!["10.96.0.10".parse().unwrap()],
        ports: vec![port("", 80, Proto::Tcp, None)],
        external_ips: vec![],
        lb_ips: vec![],
        external_local: false,
        internal_local: false,
        health_check_node_port: None,
        affinity_timeout: 0,
        source_ranges: vec![],
        created: None,
    }
}

fn port(name: &str, port: u16, proto: Proto, node_port: Option<u16>) -> ServicePortInfo {
    ServicePortInfo {
        name: name.into(),
        port,
        proto,
        node_port,
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|i| i.parse().unwrap()).collect()
}

#[test]
fn services_convert_field_by_field() {
    let lb_local = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
        "ports": [{"port": 80, "nodePort": 30080}], "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 30999});
    let rows: Vec<(&str, Value, ServiceInfo)> = vec![
        (
            "a ClusterIP; protocol TCP when unset",
            service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})),
            base(),
        ),
        (
            "dual stack: clusterIPs win over clusterIP",
            service(
                json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"port": 9, "protocol": "SCTP"}]}),
            ),
            ServiceInfo {
                cluster_ips: ips(&["10.96.0.10", "fd00::10"]),
                ports: vec![
                    port("dns", 53, Proto::Udp, None),
                    port("", 9, Proto::Sctp, None),
                ],
                ..base()
            },
        ),
        (
            "a NodePort Service's nodePort",
            service(
                json!({"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
            ServiceInfo {
                ports: vec![port("", 80, Proto::Tcp, Some(30080))],
                ..base()
            },
        ),
        (
            "a nodePort on a ClusterIP Service is no NodePort",
            service(
                json!({"type": "ClusterIP", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
            base(),
        ),
        (
            "headless: skipped, no addresses",
            service(
                json!({"clusterIP": "None", "ports": [{"port": 80}], "externalIPs": ["192.0.2.1"]}),
            ),
            ServiceInfo {
                skip: Some("headless (clusterIP None)"),
                cluster_ips: vec![],
                ..base()
            },
        ),
        (
            "ExternalName: skipped",
            service(
                json!({"type": "ExternalName", "externalName": "example.com", "ports": [{"port": 80}]}),
            ),
            ServiceInfo {
                skip: Some("type ExternalName"),
                cluster_ips: vec![],
                ..base()
            },
        ),
        (
            "externalIPs, spaces trimmed as kube-proxy does",
            service(
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}], "externalIPs": [" 192.0.2.1 ", "2001:db8::1"]}),
            ),
            ServiceInfo {
                external_ips: ips(&["192.0.2.1", "2001:db8::1"]),
                ..base()
            },
        ),
        (
            "externalTrafficPolicy Local on a LoadBalancer, its healthCheckNodePort",
            service(lb_local.clone()),
            ServiceInfo {
                ports: vec![port("", 80, Proto::Tcp, Some(30080))],
                external_local: true,
                health_check_node_port: Some(30999),
                ..base()
            },
        ),
        (
            "externalTrafficPolicy Local means nothing on a ClusterIP",
            service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}],
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 30999})),
            base(),
        ),
        (
            "internalTrafficPolicy Local",
            service(
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}], "internalTrafficPolicy": "Local"}),
            ),
            ServiceInfo {
                internal_local: true,
                ..base()
            },
        ),
        (
            "sessionAffinity ClientIP: 3 hours unless configured",
            service(
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}], "sessionAffinity": "ClientIP"}),
            ),
            ServiceInfo {
                affinity_timeout: 10800,
                ..base()
            },
        ),
        (
            "sessionAffinity ClientIP with its timeout",
            service(
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}], "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
            ),
            ServiceInfo {
                affinity_timeout: 60,
                ..base()
            },
        ),
        (
            "loadBalancerSourceRanges",
            service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}],
                "loadBalancerSourceRanges": ["10.0.0.0/8", "2001:db8::/32"]})),
            ServiceInfo {
                source_ranges: vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
                ..base()
            },
        ),
        (
            "creationTimestamp in Unix seconds; namespace default when unset",
            json!({"metadata": {"name": "web", "creationTimestamp": "2024-01-01T00:00:00Z"},
                "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}),
            ServiceInfo {
                key: ObjRef::new("default", "web"),
                created: Some(1_704_067_200),
                ..base()
            },
        ),
    ];
    for (why, obj, want) in rows {
        let svc: Service = serde_json::from_value(obj).unwrap();
        assert_eq!(service_info(&svc), Ok(want), "{why}");
    }

    // LoadBalancer ingress addresses: the Service's own status.
    let mut obj = service(lb_local);
    obj["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "lb.example.com"}]}});
    let svc: Service = serde_json::from_value(obj).unwrap();
    assert_eq!(service_info(&svc).unwrap().lb_ips, ips(&["198.51.100.7"]));
    let mut obj = service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
    obj["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}});
    let svc: Service = serde_json::from_value(obj).unwrap();
    assert_eq!(
        service_info(&svc).unwrap().lb_ips,
        Vec::<IpAddr>::new(),
        "not a LoadBalancer"
    );
}

#[test]
fn a_service_that_cannot_be_represented_is_refused_naming_the_field() {
    let rows: Vec<(Value, &str)> = vec![
        (
            service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 70000}]})),
            "Service x/web: spec.ports[0].port: port 70000 is out of range 1-65535",
        ),
        (
            service(
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}, {"port": 81, "protocol": "ICMP"}]}),
            ),
            "Service x/web: spec.ports[1].protocol: unknown protocol `ICMP`",
        ),
        (
            service(json!({"clusterIP": "10.96.0.999", "ports": [{"port": 80}]})),
            "Service x/web: spec.clusterIPs[0]: `10.96.0.999` is not an IP address",
        ),
        (
            service(
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}], "externalIPs": ["example.com"]}),
            ),
            "Service x/web: spec.externalIPs[0]: `example.com` is not an IP address",
        ),
        (
            service(
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}], "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
            ),
            "Service x/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is not in 1..=86400",
        ),
        (
            service(
                json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}], "sessionAffinity": "Sticky"}),
            ),
            "Service x/web: spec.sessionAffinity: unknown value `Sticky`",
        ),
        (
            json!({"metadata": {"namespace": "x"}, "spec": {"clusterIP": "10.96.0.10"}}),
            "Service: metadata.name is missing",
        ),
    ];
    for (obj, want) in rows {
        let svc: Service = serde_json::from_value(obj).unwrap();
        assert_eq!(service_info(&svc), Err(want.to_string()));
    }
}

fn slice(address_type: &str, endpoints: Value) -> Value {
    json!({"metadata": {"name": "web-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": address_type, "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints})
}

fn endpoint(addr: &str, ready: bool, serving: bool, terminating: bool) -> EndpointInfo {
    EndpointInfo {
        addr: Some(addr.parse().unwrap()),
        ready,
        serving,
        terminating,
        node: None,
        hints: None,
    }
}

fn slice_info_of(obj: Value) -> Result<SliceInfo, String> {
    let s: EndpointSlice = serde_json::from_value(obj).unwrap();
    slice_info(&s)
}

#[test]
fn endpoint_slices_convert_field_by_field() {
    let base = |endpoints: Vec<EndpointInfo>| SliceInfo {
        key: ObjRef::new("x", "web-1"),
        service: Some(ObjRef::new("x", "web")),
        family: Some(Family::V4),
        ports: vec![SlicePortInfo {
            name: "http".into(),
            port: 8080,
            proto: Proto::Tcp,
        }],
        endpoints,
    };
    let rows: Vec<(&str, Value, SliceInfo)> = vec![
        (
            "unset conditions read as kube-proxy reads them: ready and serving",
            slice("IPv4", json!([{"addresses": ["10.244.1.5"]}])),
            base(vec![endpoint("10.244.1.5", true, true, false)]),
        ),
        (
            "conditions as given, the node kept",
            slice(
                "IPv4",
                json!([{"addresses": ["10.244.1.5"], "nodeName": "n1",
                "conditions": {"ready": false, "serving": true, "terminating": true}}]),
            ),
            base(vec![EndpointInfo {
                node: Some("n1".into()),
                ..endpoint("10.244.1.5", false, true, true)
            }]),
        ),
        (
            "hints kept when they name something, empty ones dropped",
            slice(
                "IPv4",
                json!([
                {"addresses": ["10.244.1.5"], "hints": {"forZones": [{"name": "za"}], "forNodes": [{"name": "n1"}]}},
                {"addresses": ["10.244.1.6"], "hints": {}}]),
            ),
            base(vec![
                EndpointInfo {
                    hints: Some(Box::new(Hints {
                        zones: vec!["za".into()],
                        nodes: vec!["n1".into()],
                    })),
                    ..endpoint("10.244.1.5", true, true, false)
                },
                endpoint("10.244.1.6", true, true, false),
            ]),
        ),
        (
            "the first address only, as kube-proxy (the others are all checked)",
            slice("IPv4", json!([{"addresses": ["10.244.1.5", "10.244.1.6"]}])),
            base(vec![endpoint("10.244.1.5", true, true, false)]),
        ),
        (
            "IPv6",
            slice("IPv6", json!([{"addresses": ["fd00:244::5"]}])),
            SliceInfo {
                family: Some(Family::V6),
                ..base(vec![endpoint("fd00:244::5", true, true, false)])
            },
        ),
        (
            "FQDN: no family, no addresses (ignored, as kube-proxy does)",
            slice("FQDN", json!([{"addresses": ["db.example.com"]}])),
            SliceInfo {
                family: None,
                ..base(vec![EndpointInfo {
                    addr: None,
                    ..endpoint("10.244.1.5", true, true, false)
                }])
            },
        ),
    ];
    for (why, obj, want) in rows {
        assert_eq!(slice_info_of(obj), Ok(want), "{why}");
    }

    // A port without a number (all ports) is left out; no service label,
    // no Service.
    let got = slice_info_of(
        json!({"metadata": {"name": "loose", "namespace": "x"}, "addressType": "IPv4",
        "ports": [{"name": "all"}, {"port": 53, "protocol": "UDP"}]}),
    )
    .unwrap();
    assert_eq!(got.service, None);
    assert_eq!(
        got.ports,
        [SlicePortInfo {
            name: String::new(),
            port: 53,
            proto: Proto::Udp
        }]
    );
}

#[test]
fn a_slice_that_cannot_be_represented_is_refused_naming_the_field() {
    let rows: Vec<(Value, &str)> = vec![
        (
            slice("IPX", json!([])),
            "EndpointSlice x/web-1: addressType: unknown address type `IPX`",
        ),
        (
            slice(
                "IPv4",
                json!([{"addresses": ["10.244.1.5"]}, {"addresses": ["fd00::5"]}]),
            ),
            "EndpointSlice x/web-1: endpoints[1].addresses[0]: `fd00::5` does not match addressType IPv4",
        ),
        (
            slice("IPv4", json!([{"addresses": ["10.244.1"]}])),
            "EndpointSlice x/web-1: endpoints[0].addresses[0]: `10.244.1` is not an IP address",
        ),
        (
            json!({"metadata": {"name": "web-1", "namespace": "x"}, "addressType": "IPv4", "ports": [{"port": 0}]}),
            "EndpointSlice x/web-1: ports[0].port: port 0 is out of range 1-65535",
        ),
    ];
    for (obj, want) in rows {
        assert_eq!(slice_info_of(obj), Err(want.to_string()));
    }
}
