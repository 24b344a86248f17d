//! The socket iterator program of the UDP pass, assembled here against
//! the running kernel's BTF (aya 0.14 cannot load a program that calls a
//! kfunc): `Layout` reads what it needs from the kernel, `Asm` writes
//! instructions with labelled jumps, `program` is the iterator itself.

use std::sync::OnceLock;

use anyhow::{Context as _, anyhow};

use crate::datapath::btf::Btf;

const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_GET_SOCKET_COOKIE: i32 = 46;
const HELPER_SK_STORAGE_GET: i32 = 107;
const JNE_X: u8 = 0x5d;

/// What the program needs from the running kernel.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// The BTF id the iterator attaches to.
    pub(super) iter_udp: u32,
    sock_destroy: u32,
    ctx_udp_sk: i16,
    family: i16,
    daddr: i16,
    v6_daddr: i16,
    dport: i16,
}

impl Layout {
    fn from_btf(btf: &Btf) -> anyhow::Result<Self> {
        let off = |m| btf.member_offset("sock_common", m);
        Ok(Self {
            iter_udp: btf.func_id("bpf_iter_udp")?,
            sock_destroy: btf
                .func_id("bpf_sock_destroy")
                .context("bpf_sock_destroy needs Linux 6.5")?,
            ctx_udp_sk: btf.member_offset("bpf_iter__udp", "udp_sk")?,
            family: off("skc_family")?,
            daddr: off("skc_daddr")?,
            v6_daddr: off("skc_v6_daddr")?,
            dport: off("skc_dport")?,
        })
    }

    /// Read once per agent: the kernel does not change under it.
    pub fn running_kernel() -> anyhow::Result<Self> {
        static LAYOUT: OnceLock<Result<Layout, String>> = OnceLock::new();
        LAYOUT
            .get_or_init(|| {
                Btf::vmlinux()
                    .and_then(|b| Self::from_btf(&b))
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow!("{e}"))
    }
}

/// BPF instructions, with forward jumps patched once their label is known.
#[derive(Default)]
struct Asm {
    insns: Vec<u64>,
    /// (instruction index, label) of jumps to patch.
    fixups: Vec<(usize, &'static str)>,
    labels: Vec<(&'static str, usize)>,
}

impl Asm {
    fn raw(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        let mut b = [0u8; 8];
        b[0] = code;
        b[1] = (src << 4) | dst;
        b[2..4].copy_from_slice(&off.to_le_bytes());
        b[4..8].copy_from_slice(&imm.to_le_bytes());
        self.insns.push(u64::from_le_bytes(b));
    }
    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.insns.len()));
    }
    fn jump(&mut self, code: u8, dst: u8, imm: i32, to: &'static str) {
        self.fixups.push((self.insns.len(), to));
        self.raw(code, dst, 0, 0, imm);
    }
    /// A jump comparing two registers.
    fn jump_x(&mut self, code: u8, dst: u8, src: u8, to: &'static str) {
        self.fixups.push((self.insns.len(), to));
        self.raw(code, dst, src, 0, 0);
    }
    fn ld_map_fd(&mut self, dst: u8, fd: i32) {
        const PSEUDO_MAP_FD: u8 = 1;
        self.raw(0x18, dst, PSEUDO_MAP_FD, 0, fd);
        self.raw(0, 0, 0, 0, 0);
    }
    fn finish(mut self) -> Vec<u64> {
        for (at, to) in &self.fixups {
            let target = self.labels.iter().find(|(n, _)| n == to).expect("label").1;
            let off = (target as i64 - *at as i64 - 1) as i16;
            let mut b = self.insns[*at].to_le_bytes();
            b[2..4].copy_from_slice(&off.to_le_bytes());
            self.insns[*at] = u64::from_le_bytes(b);
        }
        self.insns
    }
}

// Opcodes (class | size/op | source).
const LDX_DW: u8 = 0x79;
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const STX_DW: u8 = 0x7b;
const STX_W: u8 = 0x63;
const STX_H: u8 = 0x6b;
const ST_W: u8 = 0x62;
const ST_H: u8 = 0x6a;
const MOV_K: u8 = 0xb7;
const MOV_X: u8 = 0xbf;
const ADD_K: u8 = 0x07;
const JA: u8 = 0x05;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const PSEUDO_KFUNC_CALL: u8 = 2;
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R8: u8 = 8;
const FP: u8 = 10;

/// The iterator program. Stack: the peer (address at fp-24, port at fp-8),
/// a `SockRevKey` around it (cookie at fp-32) for the older map, the
/// `SockDoomedKey` at fp-56 (frontend id, peer port, peer address). The
/// frontend id comes from the socket's own storage (its connect slot,
/// when that names the peer), else from the older map. The doomed entry's
/// value counts the sockets destroyed.
pub(super) fn program(l: &Layout, maps: (i32, i32), doomed_map: i32) -> Vec<u64> {
    let (nat_map, rev_map) = maps;
    let mut a = Asm::default();
    a.raw(LDX_DW, R6, R1, l.ctx_udp_sk, 0);
    a.jump(JEQ_K, R6, 0, "out");
    a.raw(MOV_K, R1, 0, 0, 0);
    for off in [-32, -24, -16, -8] {
        a.raw(STX_DW, FP, R1, off, 0);
    }
    a.raw(LDX_H, R2, R6, l.family, 0);
    a.jump(JEQ_K, R2, AF_INET6, "v6");
    a.jump(JNE_K, R2, AF_INET, "out");
    // An IPv4 peer in the IPv4-mapped form `NetAddr` keys use.
    a.raw(ST_W, FP, 0, -16, lb_common::addr::V4_MAPPED_WORD as i32);
    a.raw(LDX_W, R3, R6, l.daddr, 0);
    a.raw(STX_W, FP, R3, -12, 0);
    a.jump(JA, 0, 0, "port");
    a.label("v6");
    for i in 0..4i16 {
        a.raw(LDX_W, R3, R6, l.v6_daddr + 4 * i, 0);
        a.raw(STX_W, FP, R3, -24 + 4 * i, 0);
    }
    a.label("port");
    a.raw(LDX_H, R3, R6, l.dport, 0);
    a.raw(STX_H, FP, R3, -8, 0);
    // The socket's own storage: slot 0 (`SockNatEntry`) when it names the peer.
    a.ld_map_fd(R1, nat_map);
    a.raw(MOV_X, R2, R6, 0, 0);
    a.raw(MOV_K, R3, 0, 0, 0);
    a.raw(MOV_K, R4, 0, 0, 0);
    a.raw(CALL, 0, 0, 0, HELPER_SK_STORAGE_GET);
    a.jump(JEQ_K, R0, 0, "older");
    for i in 0..4i16 {
        a.raw(LDX_W, R1, R0, 4 * i, 0);
        a.raw(LDX_W, R2, FP, -24 + 4 * i, 0);
        a.jump_x(JNE_X, R1, R2, "older");
    }
    a.raw(LDX_H, R1, R0, 16, 0);
    a.raw(LDX_H, R2, FP, -8, 0);
    a.jump_x(JNE_X, R1, R2, "older");
    a.raw(LDX_W, R1, R0, 36, 0);
    a.jump(JA, 0, 0, "frontend");
    // The older, cookie-keyed map (`SockRevValue.service_id` at 20).
    a.label("older");
    a.raw(MOV_X, R1, R6, 0, 0);
    a.raw(CALL, 0, 0, 0, HELPER_GET_SOCKET_COOKIE);
    a.raw(STX_DW, FP, R0, -32, 0);
    a.ld_map_fd(R1, rev_map);
    a.raw(MOV_X, R2, FP, 0, 0);
    a.raw(ADD_K, R2, 0, 0, -32);
    a.raw(CALL, 0, 0, 0, HELPER_MAP_LOOKUP);
    a.jump(JEQ_K, R0, 0, "out");
    a.raw(LDX_W, R1, R0, 20, 0);
    a.label("frontend");
    a.raw(STX_W, FP, R1, -56, 0);
    a.raw(LDX_H, R1, FP, -8, 0);
    a.raw(STX_H, FP, R1, -52, 0);
    a.raw(ST_H, FP, 0, -50, 0);
    for i in 0..4i16 {
        a.raw(LDX_W, R1, FP, -24 + 4 * i, 0);
        a.raw(STX_W, FP, R1, -48 + 4 * i, 0);
    }
    a.ld_map_fd(R1, doomed_map);
    a.raw(MOV_X, R2, FP, 0, 0);
    a.raw(ADD_K, R2, 0, 0, -56);
    a.raw(CALL, 0, 0, 0, HELPER_MAP_LOOKUP);
    a.jump(JEQ_K, R0, 0, "out");
    a.raw(MOV_X, R8, R0, 0, 0);
    a.raw(MOV_X, R1, R6, 0, 0);
    a.raw(CALL, 0, PSEUDO_KFUNC_CALL, 0, l.sock_destroy as i32);
    a.jump(JNE_K, R0, 0, "out");
    a.raw(LDX_DW, R1, R8, 0, 0);
    a.raw(ADD_K, R1, 0, 0, 1);
    a.raw(STX_DW, R8, R1, 0, 0);
    a.label("out");
    a.raw(MOV_K, R0, 0, 0, 0);
    a.raw(EXIT, 0, 0, 0, 0);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_their_labels() {
        let l = Layout {
            iter_udp: 1,
            sock_destroy: 2,
            ctx_udp_sk: 8,
            family: 16,
            daddr: 0,
            v6_daddr: 56,
            dport: 12,
        };
        let p = program(&l, (3, 5), 4);
        let insn = |i: usize| p[i].to_le_bytes();
        let exit = p.len() - 1;
        assert_eq!(insn(exit)[0], EXIT);
        // The first jump (no socket) goes to `out`: `r0 = 0` before exit.
        let off = i16::from_le_bytes([insn(1)[2], insn(1)[3]]);
        assert_eq!(1 + 1 + off as usize, exit - 1);
        // Every jump stays inside the program.
        for (i, raw) in p.iter().enumerate() {
            let b = raw.to_le_bytes();
            if matches!(b[0], JA | JEQ_K | JNE_K | JNE_X) {
                let to = i as i64 + 1 + i16::from_le_bytes([b[2], b[3]]) as i64;
                assert!(to > i as i64 && to < p.len() as i64, "jump at {i} to {to}");
            }
        }
    }
}
