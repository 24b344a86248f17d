//! Generated and mutated packets through every packet program (TC, XDP,
//! the pod programs) on seeded maps, each checked against invariants: the
//! program never fails; its verdict is one it may give; a packet it
//! rewrites and passes still has valid IP and L4 checksums when it came
//! with valid ones, and differs from its input only in addresses, ports
//! and checksums; junk (what is not an IP packet of a known kind, or is
//! cut short) creates no conntrack entry. `LB_FUZZ_PACKETS` sets the
//! count (default 100,000; `cargo xtask fuzz --packets N`), `LB_FUZZ_SEED`
//! the seed.
//!
//! Here: the test and its harness; `packets` generates and mutates the
//! frames; `invariants` checks checksums and what a translation may
//! change; `seed` fills the maps.

mod invariants;
mod packets;
mod seed;

use invariants::{checksums_ok, only_translated};
use packets::{Rng, fix_checksums, mutate, valid};
use seed::seed;

use aya::{
    maps::{
        HashMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{SchedClassifier, Xdp},
};
use etherparse::PacketBuilder;
use lb_common::{
    BACKEND_LOCAL, CtKey, CtValue, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED, IpcacheData, NetAddr, POL_F_ANY_EGRESS, POL_F_ANY_INGRESS, PROTO_TCP,
    PROTO_UDP, PolEndpoint, PolicyData, PolicyState, SVC_FLAG_EXTERNAL,
};

use super::test_run::{Bed, ip, test_run};

fn ct_len(bed: &Bed) -> usize {
    bed.ct().len()
}

const TC_PROGS: [&str; 4] = ["lb_tc_ingress", "lb_tc_egress", "lb_pod_from", "lb_pod_to"];

#[test]
fn generated_and_mutated_packets_keep_every_invariant() {
    let n: u64 = std::env::var("LB_FUZZ_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed0: u64 = std::env::var("LB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5e_ed1b_f00d);
    let mut bed = Bed::new("fuzz");
    seed(&mut bed);
    let mut r = Rng(seed0);
    let (mut rewritten, mut dropped, mut junk_runs) = (0u64, 0u64, 0u64);
    for i in 0..n {
        let mut pkt = valid(&mut r);
        let junk = mutate(&mut r, &mut pkt);
        if !junk && r.below(4) > 0 {
            fix_checksums(&mut pkt);
        }
        let valid_in = checksums_ok(&pkt) == Some(true);
        let before = if junk { ct_len(&bed) } else { 0 };
        for prog in TC_PROGS {
            let p: &SchedClassifier = bed.ebpf.program(prog).unwrap().try_into().unwrap();
            let Some((verdict, out)) = try_run(p, &pkt) else {
                continue;
            };
            assert!(
                matches!(verdict, 0 | 2 | 7),
                "packet {i} (seed {seed0}): {prog} gave verdict {verdict}: {pkt:02x?}"
            );
            if verdict == 2 {
                dropped += 1;
            }
            if verdict == 0 && out != pkt {
                rewritten += 1;
                assert!(
                    only_translated(&pkt, &out),
                    "packet {i} (seed {seed0}): {prog} changed more than a translation:\n in  {pkt:02x?}\n out {out:02x?}"
                );
                if valid_in {
                    assert_eq!(
                        checksums_ok(&out),
                        Some(true),
                        "packet {i} (seed {seed0}): {prog} broke a checksum:\n in  {pkt:02x?}\n out {out:02x?}"
                    );
                }
            }
        }
        let x: &Xdp = bed.ebpf.program("lb_xdp").unwrap().try_into().unwrap();
        if let Some((verdict, out)) = try_run(x, &pkt) {
            assert!(
                matches!(verdict, 1..=3),
                "packet {i}: XDP verdict {verdict}"
            );
            if verdict == 2 && out != pkt && valid_in {
                assert!(only_translated(&pkt, &out), "packet {i}: XDP changed more");
                assert_eq!(checksums_ok(&out), Some(true), "packet {i}: XDP checksum");
            }
        }
        if junk {
            junk_runs += 1;
            assert_eq!(
                ct_len(&bed),
                before,
                "packet {i} (seed {seed0}): junk created conntrack entries: {pkt:02x?}"
            );
        }
        // Keep the LRU from filling with valid flows (fresh state now and then).
        if i % 5000 == 4999 {
            clear_ct(&mut bed);
        }
    }
    let icmp = super::test_run_conntrack::counter(&bed, "icmp_error_translated");
    eprintln!(
        "{n} packets: {rewritten} rewritten ({icmp} ICMP errors), {dropped} drops, {junk_runs} junk"
    );
    assert!(
        rewritten > 0 && dropped > 0 && junk_runs > 0 && icmp > 0,
        "the generator reaches every path"
    );
}

/// BPF_PROG_TEST_RUN of `pkt`; None where the kernel's harness itself
/// refuses the frame (shorter than an Ethernet and IP header: EINVAL).
fn try_run<P>(p: &P, pkt: &[u8]) -> Option<(u32, Vec<u8>)>
where
    P: for<'a> aya::programs::TestRun<
            Opts<'a> = aya::programs::TestRunOptions<'a>,
            Result = aya::programs::TestRunResult,
        >,
{
    let short = pkt.len() < 14 + 40;
    if short {
        let mut out = vec![0u8; 2048];
        let mut opts = aya::programs::TestRunOptions::new();
        opts.data_in = Some(pkt);
        opts.data_out = Some(&mut out);
        return match p.test_run(opts) {
            Ok(r) => {
                out.truncate(r.data_size_out as usize);
                Some((r.return_value, out))
            }
            Err(_) => None,
        };
    }
    Some(test_run(p, pkt))
}

fn clear_ct(bed: &mut Bed) {
    let mut m: HashMap<_, CtKey, CtValue> =
        HashMap::try_from(bed.ebpf.map_mut(lb_common::MAP_CT).unwrap()).unwrap();
    let keys: Vec<CtKey> = m.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = m.remove(&k);
    }
}
