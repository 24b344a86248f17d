//! `--tc-attach netlink` (kernels without tcx): the agent's cls_bpf filters
//! outlive it, a restarted agent replaces them in place (one filter per
//! direction, a new program), and `lb-agent reset` removes them.

mod common;

use lb_tests::{
    agent::{AgentProc, Manifests, pin_path},
    netns::{Netns, veth},
    spawn::Cgroup,
    testbed::TempDir,
};

/// (program name, program id) of the agent's filters on `eth0`.
fn filters(ns: &Netns) -> Vec<(String, String)> {
    let out = ns.sh_output("tc filter show dev eth0 ingress; tc filter show dev eth0 egress");
    out.lines()
        .filter(|l| l.contains(" pref 27 ") && l.contains("handle 0x1b"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |w: &str| {
                words
                    .iter()
                    .position(|x| *x == w)
                    .and_then(|i| words.get(i + 1))
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            };
            let name = words
                .iter()
                .find(|w| w.starts_with("lb_tc_"))
                .map(|s| s.to_string())
                .unwrap_or_default();
            (name, after("id"))
        })
        .collect()
}

/// One node namespace (eth0 at 198.51.100.7 towards a peer, then `sh`)
/// with a synced agent run with `flags`. Fields drop in order: agent,
/// cgroup, namespaces, files.
struct OneNode {
    agent: AgentProc,
    m: Manifests,
    pins: std::path::PathBuf,
    _cgroup: Cgroup,
    node: Netns,
    _peer: Netns,
    _dir: TempDir,
}

fn one_node(tag: &str, sh: &str, flags: &[&str]) -> OneNode {
    lb_tests::require_kernel();
    let prefix = lb_tests::unique(tag);
    let dir = TempDir(std::env::temp_dir().join(&prefix));
    std::fs::create_dir_all(&dir.0).unwrap();
    let node = Netns::new(format!("{prefix}-n"));
    let peer = Netns::new(format!("{prefix}-p"));
    veth(&node, "eth0", &peer, "eth0");
    node.sh(&format!(
        "ip addr add 198.51.100.7/24 dev eth0; ip link set eth0 up\n{sh}"
    ));
    let cgroup = Cgroup::new(&prefix);
    let mut m = Manifests::new(dir.0.join("m"));
    m.write(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 198.51.100.7}]}\n",
    );
    let g = m.commit();
    let pins = pin_path(&prefix);
    let mut agent = AgentProc::new(
        pins.clone(),
        cgroup.path.clone(),
        m.dir.clone(),
        dir.0.join("agent.log"),
    );
    agent.netns = Some(node.path());
    agent.extra = flags.iter().map(|f| f.to_string()).collect();
    agent.extra.push("--node-name=n1".into());
    agent.start();
    agent.wait_synced(g);
    OneNode {
        agent,
        m,
        pins,
        _cgroup: cgroup,
        node,
        _peer: peer,
        _dir: dir,
    }
}

#[test]
fn clsact_filters_survive_the_agent_are_replaced_in_place_and_reset_removes_them() {
    let mut n = one_node("tca", "", &["--tc-attach=netlink"]);
    let OneNode { agent, m, node, .. } = &mut n;
    let first = filters(node);
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["lb_tc_ingress", "lb_tc_egress"],
        "one filter per direction on the device holding the node's address: {first:?}\n{}",
        agent.log_text()
    );

    agent.kill9();
    assert_eq!(filters(node), first, "the filters outlive the agent");

    agent.start();
    let g2 = m.commit();
    agent.wait_synced(g2);
    let second = filters(node);
    assert_eq!(second.len(), 2, "replaced, not added: {second:?}");
    for ((n1, id1), (n2, id2)) in first.iter().zip(&second) {
        assert_eq!(n1, n2);
        assert_ne!(id1, id2, "{n1}: the restarted agent's program is in place");
    }

    // Another tool's filter in the same slot, on a device this agent never
    // attached to: reset must leave it.
    node.sh(
        "ip link add eth1 type veth peer name eth1p; ip link set eth1 up
         tc qdisc add dev eth1 clsact
         tc filter add dev eth1 ingress pref 27 handle 0x1b bpf bytecode '1,6 0 0 0,'",
    );
    agent.kill9();
    let out = agent.cli(&["reset"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(filters(node).is_empty(), "reset removed the filters");
    assert!(
        node.sh_output("tc filter show dev eth1 ingress")
            .contains("handle 0x1b"),
        "reset removed only what its pin directory recorded"
    );
}

/// A device without Ethernet headers (a tun device, as WireGuard's) among
/// `--devices` is refused by name; the Ethernet one next to it gets its
/// programs and the agent syncs.
#[test]
fn a_device_without_ethernet_headers_is_refused_by_name_and_the_others_attached() {
    let mut n = one_node(
        "tce",
        "ip tuntap add dev tun0 mode tun; ip addr add 192.0.2.7/24 dev tun0; ip link set tun0 up",
        &["--devices=eth0,tun0"],
    );
    let OneNode { agent, pins, .. } = &mut n;
    let links: Vec<String> = std::fs::read_dir(pins.join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        links.iter().any(|l| l == "tc-ingress-eth0") && links.iter().any(|l| l == "tc-egress-eth0"),
        "eth0 gets its programs: {links:?}"
    );
    assert!(
        !links.iter().any(|l| l.contains("tun0")),
        "tun0 gets none: {links:?}"
    );
    let log = agent.log_text();
    assert!(
        log.contains("device tun0 has no Ethernet header"),
        "the refusal names the device:\n{log}"
    );
    agent.assert_running("after refusing tun0");
}

/// (pin name, program id) of every link pinned under `pins`.
fn link_progs(pins: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    let mut progs = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(pins.join("links")).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            continue;
        }
        let path = e.path();
        let out = common::bpftool(&[
            "-j".as_ref(),
            "link".as_ref(),
            "show".as_ref(),
            "pinned".as_ref(),
            path.as_ref(),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let id = v["prog_id"].as_u64().unwrap_or_else(|| panic!("{v}"));
        progs.insert(e.file_name().to_string_lossy().into_owned(), id);
    }
    progs
}

/// An agent restarted into a carry (another conntrack size) with one
/// device fewer and without XDP: no link keeps the earlier programs (the
/// dropped device's run this agent's, the XDP ones go), and only then
/// does the carry end.
#[test]
fn a_carry_ends_once_no_pinned_link_runs_the_earlier_programs() {
    let mut n = one_node(
        "tcs",
        "ip link add eth1 type veth peer name eth1p; ip link set eth1 up; ip link set eth1p up",
        &["--devices=eth0,eth1", "--xdp=generic", "--max-ct=4096"],
    );
    let OneNode {
        agent,
        m,
        pins,
        node,
        ..
    } = &mut n;
    let before = link_progs(pins);
    for l in ["tc-ingress-eth1", "tc-egress-eth1", "xdp-eth0", "xdp-eth1"] {
        assert!(before.contains_key(l), "{l} pinned: {before:?}");
    }

    agent.kill9();
    agent.extra = vec![
        "--devices=eth0".into(),
        "--max-ct=8192".into(),
        "--node-name=n1".into(),
    ];
    agent.start();
    let g = m.commit();
    agent.wait_synced(g);
    let after = link_progs(pins);
    let log = agent.log_text();
    assert!(
        !after.keys().any(|l| l.starts_with("xdp-")),
        "the XDP links went with --xdp off: {after:?}\n{log}"
    );
    assert!(
        !node.sh_output("ip link show").contains("xdp"),
        "no XDP program left on a device"
    );
    for dir in ["ingress", "egress"] {
        let (eth0, eth1) = (format!("tc-{dir}-eth0"), format!("tc-{dir}-eth1"));
        assert_ne!(after[&eth0], before[&eth0], "{eth0}: this agent's program");
        assert_eq!(
            after[&eth1], after[&eth0],
            "{eth1}, a device this agent was not given, runs its program too:\n{log}"
        );
    }
    let previous = carry_left(pins);
    assert!(previous.is_empty(), "the carry ended: {previous:?}\n{log}");
    agent.assert_running("after the carry");
}

/// A device given in `--devices` that does not exist yet is named, and
/// gets its programs at the agent's next periodic tick once it appears
/// (a bond or VLAN made after the agent started), with no restart.
#[test]
fn a_device_that_appears_later_gets_its_programs() {
    let mut n = one_node("tcl", "", &["--devices=eth0,eth1"]);
    let OneNode {
        agent, pins, node, ..
    } = &mut n;
    let links = || link_progs(pins);
    assert!(
        links().contains_key("tc-ingress-eth0"),
        "eth0 attached: {:?}",
        links()
    );
    assert!(!links().contains_key("tc-ingress-eth1"));
    let log = agent.log_text();
    assert!(log.contains("eth1"), "the missing device is named:\n{log}");

    node.sh(
        "ip link add eth1 type veth peer name eth1p; ip link set eth1 up; ip link set eth1p up",
    );
    // The periodic tick comes every 10 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(25);
    while !(links().contains_key("tc-ingress-eth1") && links().contains_key("tc-egress-eth1")) {
        assert!(
            std::time::Instant::now() < deadline,
            "eth1 never got its programs: {:?}\n{}",
            links(),
            agent.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let l = links();
    assert_eq!(
        l["tc-ingress-eth1"], l["tc-ingress-eth0"],
        "the same program"
    );
    agent.assert_running("after attaching eth1");
}

/// Waits for the carry to end (a carried conntrack map's copy after the
/// swap runs on a thread, a moment after the change set): the old pins
/// left after 10 s.
fn carry_left(pins: &std::path::Path) -> Vec<String> {
    let _ = lb_tests::try_wait_until(
        std::time::Duration::from_secs(10),
        "the carry's end",
        || Ok(previous_pins(pins).is_empty()),
    );
    previous_pins(pins)
}

fn previous_pins(pins: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(pins)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_PREVIOUS"))
        .collect()
}

/// Restarted without XDP and with the same map layouts (nothing carried):
/// the earlier agent's XDP programs still go.
#[test]
fn an_earlier_agents_xdp_links_go_when_restarted_without_xdp() {
    let mut n = one_node("tcx", "", &["--xdp=generic"]);
    let OneNode {
        agent,
        m,
        pins,
        node,
        ..
    } = &mut n;
    assert!(link_progs(pins).contains_key("xdp-eth0"));
    agent.kill9();
    agent.extra = vec!["--node-name=n1".into()];
    agent.start();
    let g = m.commit();
    agent.wait_synced(g);
    let after = link_progs(pins);
    assert!(
        !after.contains_key("xdp-eth0"),
        "{after:?}\n{}",
        agent.log_text()
    );
    assert!(!node.sh_output("ip link show eth0").contains("xdp"));
}

/// A device deleted while no agent ran leaves pins of links that run
/// nothing: the next agent's carry still ends, and those pins go.
#[test]
fn a_carry_ends_past_the_links_of_a_device_that_is_gone() {
    let mut n = one_node(
        "tcg",
        "ip link add eth1 type veth peer name eth1p; ip link set eth1 up; ip link set eth1p up",
        &[
            "--devices=eth0,eth1",
            "--max-ct=4096",
            "--xdp=generic",
            "--pod-ifaces=",
        ],
    );
    let OneNode {
        agent,
        m,
        pins,
        node,
        ..
    } = &mut n;
    assert!(link_progs(pins).contains_key("xdp-eth1"));
    agent.kill9();
    node.sh("ip link del eth1");
    // No pod interfaces: nothing else looks for pins of vanished ones.
    agent.extra = vec![
        "--devices=eth0".into(),
        "--max-ct=8192".into(),
        "--xdp=generic".into(),
        "--pod-ifaces=".into(),
        "--node-name=n1".into(),
    ];
    agent.start();
    let g = m.commit();
    agent.wait_synced(g);
    let left = carry_left(pins);
    let log = agent.log_text();
    assert_eq!(left, Vec::<String>::new(), "the carry ended:\n{log}");
    let after = link_progs(pins);
    assert!(
        !after.keys().any(|l| l.ends_with("-eth1")),
        "the dead links' pins went: {after:?}\n{log}"
    );
}
