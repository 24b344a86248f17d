//! The lab's helper (the `lab` feature, the tests crate's; not in the
//! agent): a lone XDP_PASS program for veth peers in native XDP set-ups,
//! where a veth only sees traffic when its peer has a program too.

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};

/// The XDP_PASS object (no maps).
static XDP_PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp-pass"));

/// Attaches XDP_PASS to `ifaces` of the calling thread's network namespace
/// (native mode); the programs stay while the returned object lives.
pub fn xdp_pass_on(ifaces: &[String]) -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load(XDP_PASS_OBJECT).context("loading the XDP_PASS object")?;
    let prog: &mut Xdp = ebpf
        .program_mut("lb_xdp_pass")
        .ok_or_else(|| anyhow!("lb_xdp_pass missing"))?
        .try_into()?;
    prog.load()?;
    for i in ifaces {
        prog.attach(i, XdpMode::Driver)
            .with_context(|| format!("attaching XDP_PASS to {i}"))?;
    }
    Ok(ebpf)
}
