//! Source validation: a pod's interface names its endpoint.

use super::*;

impl Bed {
    fn endpoint_on(&mut self, addr: &str, ep_id: u32, identity: u32, flags: u32, ifindex: u32) {
        let mut m: HashMap<_, NetAddr, PolEndpoint> =
            HashMap::try_from(self.ebpf.map_mut(lb_common::MAP_POL_EP).unwrap()).unwrap();
        let ep = PolEndpoint {
            ep_id,
            identity,
            flags,
            ifindex,
        };
        m.insert(ip(addr), ep, 0).unwrap();
    }

    fn pod_interface(&mut self, ifindex: u32, ep_id: u32) {
        let mut m: HashMap<_, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut(lb_common::MAP_POL_IF).unwrap()).unwrap();
        m.insert(ifindex, ep_id, 0).unwrap();
    }
}

/// BPF_PROG_TEST_RUN hands TC programs a packet on the loopback device.
const TEST_IFINDEX: u32 = 1;

#[test]
fn a_pod_sending_with_another_pods_or_an_unknown_source_is_dropped_as_spoofed() {
    use PolReason::SpoofedSource;
    for net in NETS {
        let mut bed = Bed::new("spoof", net);
        // pod2 (open) on this very interface: its own address passes.
        bed.endpoint_on(net.pod2, EP2, POD2_ID, 0, TEST_IFINDEX);
        bed.pod_interface(TEST_IFINDEX, EP2);
        bed.check(
            FROM,
            &syn(net.pod2, 40000, net.peer, 80),
            OK,
            Some((EP2, AllowedEgress)),
            "a pod with its own address",
        );
        // The isolated pod's address, from pod2's interface: spoofed.
        bed.endpoint_on(net.pod, EP, POD_ID, ISOLATED, TEST_IFINDEX + 41);
        bed.check(
            FROM,
            &syn(net.pod, 40001, net.peer, 80),
            SHOT,
            Some((EP, SpoofedSource)),
            "another local pod's address",
        );
        // An address no pod has, from a known pod's interface: spoofed.
        bed.check(
            FROM,
            &syn(net.stray, 40002, net.peer, 80),
            SHOT,
            Some((EP2, SpoofedSource)),
            "an unknown address from a known pod's interface",
        );
        // Replies into the pod are not its egress: never judged as spoofed.
        bed.check(
            TO,
            &synack(net.peer, 80, net.pod2, 40000),
            OK,
            None,
            "a reply into pod2",
        );
    }
}
