//! The command line's parsing (flags refused, defaults).

use clap::Parser as _;

use super::{Cli, Cmd};

fn run(args: &[&str]) -> Result<Cmd, clap::Error> {
    let argv = [&["lb-agent", "run", "--source", "kube"][..], args].concat();
    Cli::try_parse_from(argv).map(|c| c.cmd)
}

#[test]
fn conntrack_sizes_are_refused_at_zero_and_max_ct_is_optional() {
    for flag in [
        "--ct-initial=0",
        "--max-ct=0",
        "--policy-ct-initial=0",
        "--max-policy-ct=0",
        "--affinity-initial=0",
        "--max-affinity=0",
        "--max-maglev-tables=0",
        "--maglev-tables-initial=0",
    ] {
        let e = run(&[flag]).err().expect(flag);
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{flag}");
    }
    let Ok(Cmd::Run {
        max_ct, ct_initial, ..
    }) = run(&[])
    else {
        panic!("run without conntrack flags");
    };
    assert_eq!((max_ct, ct_initial), (None, lb_common::DEFAULT_CT_MAX));
    let Ok(Cmd::Run { max_ct, .. }) = run(&["--max-ct=4096"]) else {
        panic!("--max-ct=4096");
    };
    assert_eq!(max_ct, Some(4096));
    let Ok(Cmd::Run {
        max_policy_ct,
        policy_ct_initial,
        ..
    }) = run(&["--policy-ct-initial=64"])
    else {
        panic!("--policy-ct-initial=64");
    };
    assert_eq!((max_policy_ct, policy_ct_initial), (None, 64));
    let Ok(Cmd::Run {
        max_affinity,
        affinity_initial,
        ..
    }) = run(&["--affinity-initial=64"])
    else {
        panic!("--affinity-initial=64");
    };
    assert_eq!((max_affinity, affinity_initial), (None, 64));
    let Ok(Cmd::Run {
        max_maglev_tables, ..
    }) = run(&["--max-maglev-tables=8"])
    else {
        panic!("--max-maglev-tables=8");
    };
    assert_eq!(max_maglev_tables, Some(8));
}
