//! `lb-agent run --source kube` against the tests' own API server, which
//! speaks the real list/watch protocol to kube-rs's real client: objects
//! reach the maps, watches drop and resume, a 410 forces a relist, the API
//! goes away and the maps keep serving, and a restarted agent removes
//! nothing until its listings are complete.

use std::{collections::BTreeSet, time::Duration};

use lb_tests::{
    apiserver::ApiServer,
    testbed::{KubeAgent, Testbed, backend_ip4, ready, slice},
};
use serde_json::{Value, json};

const NODE: &str = "n1";
/// Not on any interface of the machine: NodePort frontends appear in the
/// maps and the socket hooks serve them, but no device gets TC programs.
const NODE_IP: &str = "198.51.100.7";

fn node(ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

fn svc(name: &str, ip: &str, node_port: Option<u16>) -> Value {
    let mut port = json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080});
    if let Some(np) = node_port {
        port["nodePort"] = json!(np);
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "t",
                        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                        "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
           "spec": {"type": if node_port.is_some() { "NodePort" } else { "ClusterIP" },
                    "clusterIP": ip, "clusterIPs": [ip], "ports": [port]}})
}

fn web_slice(api: &ApiServer, service: &str, backends: &[usize]) {
    api.apply_yaml(&slice(
        &format!("{service}-v4"),
        service,
        "IPv4",
        &[("http", 8080, "TCP")],
        &ready(backends.iter().map(|i| backend_ip4(*i))),
    ));
}

/// The cluster every test starts from: Service `web` (NodePort 30080) on
/// backends 0 and 1, plus the other kinds the agent watches.
fn cluster(api: &ApiServer) {
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}}));
    api.apply(node(NODE_IP));
    api.apply(svc("web", "10.96.0.10", Some(30080)));
    web_slice(api, "web", &[0, 1]);
    api.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p0", "namespace": "t", "labels": {"app": "web"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]},
        "status": {"podIP": backend_ip4(0)}}));
    api.apply(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "t"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    );
}

/// frontend -> backends, as the kernel maps hold them.
fn frontends(bed: &Testbed) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let out = bed.agent.cli(&["service", "list", "-o", "json"]);
    assert!(out.status.success(), "service list failed");
    let list: Value = serde_json::from_slice(&out.stdout).expect("service list JSON");
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["frontend"].as_str().unwrap().to_string(),
                r["backends"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

/// Waits until the maps satisfy `f` (the agent's work, observed in the
/// kernel, not a sleep).
fn wait_maps(
    bed: &mut Testbed,
    what: &str,
    f: impl Fn(&std::collections::BTreeMap<String, BTreeSet<String>>) -> bool,
) {
    let mut last = None;
    let r = lb_tests::try_wait_until(
        Duration::from_secs(30),
        &format!("maps showing {what}"),
        || {
            let m = frontends(bed);
            if f(&m) {
                return Ok(true);
            }
            last = Some(m);
            bed.agent.assert_running(what);
            Ok(false)
        },
    );
    if let Err(e) = r {
        panic!("{e:#}: {last:#?}\nagent log:\n{}", bed.agent.log_text());
    }
}

fn backends_of(bed: &Testbed, frontend: &str) -> Option<BTreeSet<String>> {
    frontends(bed).get(frontend).cloned()
}

/// Which backends answer `count` connections to `target`; every one must.
fn answering(bed: &Testbed, target: &str, count: usize) -> BTreeSet<String> {
    bed.probe(target, "tcp", count, "-", false)
        .iter()
        .map(|r| {
            assert_eq!(r["ok"], true, "probe of {target} failed: {r}");
            r["served_by"].as_str().unwrap().to_string()
        })
        .collect()
}

fn metric(bed: &Testbed, name_and_labels: &str) -> Option<f64> {
    let (code, body) = bed.agent.http_get("/metrics");
    assert_eq!(code, 200);
    body.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn wait_for(bed: &mut Testbed, what: &str, f: impl Fn(&Testbed) -> bool) {
    let r = lb_tests::try_wait_until(Duration::from_secs(30), what, || {
        if f(bed) {
            return Ok(true);
        }
        bed.agent.assert_running(what);
        Ok(false)
    });
    if let Err(e) = r {
        panic!("{e:#}\nagent log:\n{}", bed.agent.log_text());
    }
}

#[test]
fn every_watched_kind_reaches_the_agent_through_paginated_lists_and_watches() {
    let api = ApiServer::start();
    // One object per page: every kind with more than one object is listed
    // through continue tokens.
    api.set_page_size(1);
    cluster(&api);
    api.apply(svc("other", "10.96.0.20", None));
    let mut bed = Testbed::new_kube(2, &api, NODE);
    assert!(
        !api.continue_tokens_served().is_empty(),
        "the initial lists were paginated"
    );
    let reqs = api.requests();
    for path in [
        "/api/v1/services?",
        "/apis/discovery.k8s.io/v1/endpointslices?",
        "/api/v1/nodes?",
        "/api/v1/pods?",
        "/api/v1/namespaces?",
        "/apis/networking.k8s.io/v1/networkpolicies?",
    ] {
        assert!(
            reqs.iter()
                .any(|r| r.contains(path) && r.contains("watch=true")),
            "no watch of {path}: {reqs:#?}"
        );
    }
    assert!(
        reqs.iter()
            .any(|r| r.contains("/api/v1/nodes?") && r.contains("fieldSelector=metadata.name%3Dn1")),
        "the Node watch is limited to this node: {reqs:#?}"
    );

    // Initial list: ClusterIP and NodePort serve both backends.
    let both: BTreeSet<String> = ["b0".to_string(), "b1".to_string()].into();
    assert_eq!(answering(&bed, "10.96.0.10:80", 40), both);
    assert_eq!(answering(&bed, &format!("{NODE_IP}:30080"), 40), both);
    assert!(backends_of(&bed, "10.96.0.20:80").is_some_and(|b| b.is_empty()));

    // EndpointSlice modified: one backend left.
    web_slice(&api, "web", &[1]);
    wait_maps(&mut bed, "web on b1 only", |m| {
        m.get("10.96.0.10:80").is_some_and(|b| b.len() == 1)
    });
    assert_eq!(
        answering(&bed, "10.96.0.10:80", 10),
        ["b1".to_string()].into()
    );

    // Service added with its slice, another deleted.
    api.apply(svc("api", "10.96.0.30", None));
    web_slice(&api, "api", &[0]);
    api.delete("Service", "t", "other");
    wait_maps(&mut bed, "api added and other removed", |m| {
        m.get("10.96.0.30:80").is_some_and(|b| b.len() == 1) && !m.contains_key("10.96.0.20:80")
    });
    assert_eq!(
        answering(&bed, "10.96.0.30:80", 5),
        ["b0".to_string()].into()
    );

    // Service modified: another port (the slice's named port still maps).
    let mut moved = svc("api", "10.96.0.30", None);
    moved["spec"]["ports"][0]["port"] = json!(81);
    api.apply(moved);
    wait_maps(&mut bed, "api on port 81 instead of 80", |m| {
        m.get("10.96.0.30:81").is_some_and(|b| b.len() == 1) && !m.contains_key("10.96.0.30:80")
    });

    // EndpointSlice deleted: the Service has no backend left.
    api.delete("EndpointSlice", "t", "api-v4");
    wait_maps(&mut bed, "api without backends", |m| {
        m.get("10.96.0.30:81").is_some_and(|b| b.is_empty())
    });

    // Node modified: the NodePort follows the node's address.
    api.apply(node("198.51.100.8"));
    wait_maps(&mut bed, "the NodePort on the new node address", |m| {
        m.contains_key("198.51.100.8:30080") && !m.contains_key(&format!("{NODE_IP}:30080"))
    });

    // Pods, Namespaces and NetworkPolicies are counted as they come and go.
    wait_for(&mut bed, "objects metrics", |b| {
        metric(b, "lb_objects{kind=\"Pod\"}") == Some(1.0)
            && metric(b, "lb_objects{kind=\"NetworkPolicy\"}") == Some(1.0)
            && metric(b, "lb_objects{kind=\"Namespace\"}") == Some(1.0)
    });
    api.delete("Pod", "t", "p0");
    api.delete("NetworkPolicy", "t", "deny");
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "u"}}));
    wait_for(&mut bed, "objects metrics after deletes", |b| {
        metric(b, "lb_objects{kind=\"Pod\"}") == Some(0.0)
            && metric(b, "lb_objects{kind=\"NetworkPolicy\"}") == Some(0.0)
            && metric(b, "lb_objects{kind=\"Namespace\"}") == Some(2.0)
    });

    // The Node is being deleted: /healthz says so.
    assert_eq!(bed.agent.http_get("/healthz").0, 200);
    let mut n = node("198.51.100.8");
    n["metadata"]["deletionTimestamp"] = json!("2026-11-22T10:00:00Z");
    api.apply(n);
    wait_for(&mut bed, "/healthz 503 while the Node is deleted", |b| {
        b.agent.http_get("/healthz").0 == 503
    });
    // Node deleted: its NodePort frontends go; ClusterIPs stay.
    api.delete("Node", "", NODE);
    wait_maps(&mut bed, "no NodePort without the Node", |m| {
        !m.keys().any(|f| f.starts_with("198.51.100.")) && m.contains_key("10.96.0.10:80")
    });
}

#[test]
fn a_dropped_watch_resumes_and_a_410_relist_removes_what_vanished() {
    let api = ApiServer::start();
    cluster(&api);
    api.apply(svc("gone", "10.96.0.40", None));
    let mut bed = Testbed::new_kube(2, &api, NODE);
    wait_maps(&mut bed, "web and gone", |m| {
        m.contains_key("10.96.0.10:80") && m.contains_key("10.96.0.40:80")
    });

    // Watches dropped mid-stream: the agent resumes and sees later changes.
    let watches_before = api
        .requests()
        .iter()
        .filter(|r| r.contains("watch=true"))
        .count();
    api.drop_watches();
    api.apply(svc("late", "10.96.0.50", None));
    wait_maps(&mut bed, "a Service added after the watches dropped", |m| {
        m.contains_key("10.96.0.50:80")
    });
    assert!(
        api.requests()
            .iter()
            .filter(|r| r.contains("watch=true"))
            .count()
            > watches_before,
        "the watches were re-established"
    );

    // `gone` is deleted while history is compacted: the watch gets 410 Gone,
    // the relist no longer holds `gone`, so it must be removed; the others
    // stay, and web keeps answering on the way.
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.contains("/api/v1/services?") && !r.contains("watch=true"))
        .count();
    api.delete_unseen_and_expire("Service", "t", "gone");
    wait_maps(&mut bed, "gone removed after the relist", |m| {
        !m.contains_key("10.96.0.40:80")
    });
    let m = frontends(&bed);
    for f in ["10.96.0.10:80", "10.96.0.50:80", "198.51.100.7:30080"] {
        assert!(m.contains_key(f), "{f} survived the relist: {m:#?}");
    }
    assert!(
        api.requests()
            .iter()
            .filter(|r| r.contains("/api/v1/services?") && !r.contains("watch=true"))
            .count()
            > lists_before,
        "Services were relisted"
    );
    assert_eq!(answering(&bed, "10.96.0.10:80", 20).len(), 2);
    wait_for(&mut bed, "watch restarts counted", |b| {
        metric(b, "lb_watch_restarts_total").is_some_and(|v| v >= 1.0)
    });
}

#[test]
fn the_maps_keep_serving_while_the_api_is_unreachable() {
    let api = ApiServer::start();
    cluster(&api);
    let mut bed = Testbed::new_kube(2, &api, NODE);
    let before = frontends(&bed);
    api.set_unreachable(true);
    // The dropped watches are counted, and the agent has tried again
    // while the API is away (a second restart) before the maps are looked
    // at.
    wait_for(&mut bed, "failed watches counted, and retried", |b| {
        metric(b, "lb_watch_restarts_total").is_some_and(|v| v >= 2.0)
    });
    assert_eq!(frontends(&bed), before, "the maps kept the last state");
    let both: BTreeSet<String> = ["b0".to_string(), "b1".to_string()].into();
    assert_eq!(answering(&bed, "10.96.0.10:80", 40), both);

    // Back: changes flow again.
    api.set_unreachable(false);
    web_slice(&api, "web", &[0]);
    wait_maps(&mut bed, "web on b0 only after the API came back", |m| {
        m.get("10.96.0.10:80").is_some_and(|b| b.len() == 1)
    });
}

#[test]
fn a_restarted_agent_removes_nothing_until_its_listings_complete() {
    let api = ApiServer::start();
    api.set_page_size(1);
    cluster(&api);
    api.apply(svc("keep", "10.96.0.20", None));
    api.apply(svc("gone", "10.96.0.40", None));
    let mut bed = Testbed::new_kube(2, &api, NODE);
    wait_maps(&mut bed, "web, keep and gone", |m| {
        ["10.96.0.10:80", "10.96.0.20:80", "10.96.0.40:80"]
            .iter()
            .all(|f| m.contains_key(*f))
    });

    // The agent dies; meanwhile `gone` is deleted and the API starts failing
    // every request after a list's first page.
    bed.agent.kill9();
    api.delete_unseen_and_expire("Service", "t", "gone");
    api.set_fail_continues(true);
    let tokens_before = api.continue_tokens_served().len();
    let requests_before = api.requests().len();
    bed.agent.start();
    api.wait_requests("a failed continue request from the restarted agent", |r| {
        r[requests_before..]
            .iter()
            .filter(|l| l.contains("/api/v1/services?") && l.contains("continue="))
            .count()
            >= 2
    });
    assert!(
        api.continue_tokens_served().len() > tokens_before,
        "the restarted agent was served a first page with a continue token"
    );
    // Incomplete listings: nothing is removed, everything keeps serving, and
    // the new agent is not healthy yet.
    let m = frontends(&bed);
    for f in [
        "10.96.0.10:80",
        "10.96.0.20:80",
        "10.96.0.40:80",
        "198.51.100.7:30080",
    ] {
        assert!(
            m.contains_key(f),
            "{f} was removed before the listing completed: {m:#?}"
        );
    }
    assert_eq!(m["10.96.0.10:80"].len(), 2, "web kept its backends");
    assert_eq!(answering(&bed, "10.96.0.10:80", 20).len(), 2);
    wait_for(&mut bed, "the restarted agent recording itself", |b| {
        b.agent.status().and_then(|s| s["agent_pid"].as_u64()) == b.agent.pid().map(u64::from)
    });
    assert_eq!(
        bed.agent.http_get("/healthz").0,
        503,
        "healthy only after the first complete sync"
    );

    // The API recovers: the listing completes and only `gone` goes.
    api.set_fail_continues(false);
    wait_maps(&mut bed, "gone removed once the listing completed", |m| {
        !m.contains_key("10.96.0.40:80")
    });
    let m = frontends(&bed);
    for f in ["10.96.0.10:80", "10.96.0.20:80", "198.51.100.7:30080"] {
        assert!(m.contains_key(f), "{f} survived: {m:#?}");
    }
    bed.agent.wait_healthy();
}

#[test]
fn api_server_flag_replaces_the_address_and_keeps_the_credentials() {
    let api = ApiServer::start();
    cluster(&api);
    // The kubeconfig's address is dead (as the `kubernetes` Service is
    // before any kube-proxy runs); --api-server gives the real one.
    let bed = Testbed::new_kube_with(
        2,
        KubeAgent {
            node: NODE.into(),
            kubeconfig_server: "http://127.0.0.1:9".into(),
            token: Some("t0k3n".into()),
            args: vec![format!("--api-server={}", api.url())],
        },
    );
    let auth = api.authorizations();
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a == "Bearer t0k3n"),
        "every request carried the kubeconfig's token: {auth:?}"
    );
    assert_eq!(answering(&bed, "10.96.0.10:80", 20).len(), 2);
    let status = bed.agent.status().expect("status");
    assert_eq!(status["source"], format!("kube {}/", api.url()));
}
