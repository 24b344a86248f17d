//! Verifier headroom: every program of the object, loaded, keeps its
//! deepest call chain's stack at least `HEADROOM` bytes under the
//! verifier's 512-byte limit, so a toolchain bump that grows a frame fails
//! here and not in an agent that cannot start.
//!
//! aya 0.14 keeps the verifier's log only when a load fails, so the depth
//! is read from what the verifier left: the program's translated
//! instructions (its stack accesses per function and the calls between
//! them), counted the way the verifier counts them.

use aya::{
    EbpfLoader,
    programs::{CgroupSockAddr, SchedClassifier, Xdp},
};

use std::os::fd::AsFd as _;

use super::{OBJECT, POD_PROGRAMS, SOCK_PROGRAMS, TC_PROGRAMS};

/// The verifier's limit on a call chain's combined stack (MAX_BPF_STACK).
const STACK_LIMIT: u32 = 512;
const HEADROOM: u32 = 64;

#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

fn decode(raw: u64) -> Insn {
    let b = raw.to_le_bytes();
    Insn {
        code: b[0],
        dst: b[1] & 0xf,
        src: b[1] >> 4,
        off: i16::from_le_bytes([b[2], b[3]]),
        imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    }
}

const FP: u8 = 10;
const CALL: u8 = 0x85;
const GOTO: u8 = 0x05;
const EXIT: u8 = 0x95;
const PSEUDO_CALL: u8 = 1;
const LD_IMM64: u8 = 0x18;

/// Per function (by first instruction): the deepest frame-pointer offset it
/// touches, directly or through a register holding `fp + k`.
fn frame_depths(insns: &[Insn], starts: &[usize]) -> Vec<u32> {
    let mut depths = Vec::new();
    for (n, start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(insns.len());
        // Registers known to hold fp + offset on the straight-line path.
        let mut fp_off: [Option<i64>; 11] = [None; 11];
        fp_off[FP as usize] = Some(0);
        let mut deepest = 0i64;
        let mut i = *start;
        while i < end {
            let x = insns[i];
            let class = x.code & 7;
            let (dst, src) = (x.dst as usize & 0xf, x.src as usize & 0xf);
            let mut note = |base: Option<i64>, off: i16| {
                if let Some(b) = base {
                    deepest = deepest.max(-(b + off as i64));
                }
            };
            match class {
                // LDX: loads through src.
                1 => {
                    note(fp_off[src], x.off);
                    fp_off[dst.min(9)] = None;
                }
                // ST, STX: stores through dst.
                2 | 3 => note(fp_off[dst], x.off),
                // ALU64: track `mov rX, r10` and `add rX, k`.
                7 => {
                    let op = x.code & 0xf0;
                    let by_reg = x.code & 8 != 0;
                    if dst < 10 {
                        fp_off[dst] = match (op, by_reg) {
                            (0xb0, true) => fp_off[src],
                            (0x00, false) => fp_off[dst].map(|o| o + x.imm as i64),
                            _ => None,
                        };
                        note(fp_off[dst], 0);
                    }
                }
                // Calls clobber r0-r5.
                5 if x.code == CALL => {
                    for r in fp_off.iter_mut().take(6) {
                        *r = None;
                    }
                }
                // What follows a goto or an exit is reached only by a
                // jump: nothing the straight line knew holds there.
                5 if x.code == GOTO || x.code == EXIT => {
                    for r in fp_off.iter_mut().take(FP as usize) {
                        *r = None;
                    }
                }
                0 if x.code == LD_IMM64 => {
                    fp_off[dst.min(9)] = None;
                    i += 1;
                }
                0 | 4 | 6 if dst < 10 => fp_off[dst] = None,
                _ => {}
            }
            i += 1;
        }
        // Frames are rounded up to 16 bytes for JIT'd programs.
        depths.push((deepest.max(0) as u32).div_ceil(16) * 16);
    }
    depths
}

/// The deepest call chain's combined stack, and each function's frame.
fn max_chain(raw: &[u64]) -> (u32, Vec<u32>) {
    let insns: Vec<Insn> = raw.iter().map(|r| decode(*r)).collect();
    let is_call = |x: &Insn| x.code == CALL && x.src == PSEUDO_CALL;
    // In translated code a call's target is in `off` (`imm` holds the
    // callee's function index).
    let target = |i: usize, x: &Insn| (i as i64 + 1 + x.off as i64) as usize;
    let mut starts: Vec<usize> = vec![0];
    for (i, x) in insns.iter().enumerate() {
        if is_call(x) {
            starts.push(target(i, x));
        }
    }
    starts.sort_unstable();
    starts.dedup();

    let depths = frame_depths(&insns, &starts);
    let func_of = |i: usize| starts.partition_point(|s| *s <= i) - 1;
    // Callees sit after their callers' calls in no fixed order: settle by
    // repeating until nothing grows (the verifier forbids recursion).
    let mut chain = depths.clone();
    for _ in 0..starts.len() {
        let mut grew = false;
        for (i, x) in insns.iter().enumerate() {
            if is_call(x) {
                let (f, g) = (func_of(i), func_of(target(i, x)));
                if depths[f] + chain[g] > chain[f] {
                    chain[f] = depths[f] + chain[g];
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }
    if std::env::var_os("LB_STACK_CHAIN").is_some() {
        // The deepest chain, function by function (index: frame).
        let mut path = vec![0usize];
        loop {
            let f = *path.last().expect("non-empty");
            let next = insns.iter().enumerate().find_map(|(i, x)| {
                let g = func_of(target(i, x));
                (is_call(x) && func_of(i) == f && chain[f] == depths[f] + chain[g]).then_some(g)
            });
            match next {
                Some(g) if g != f && chain[g] > 0 => path.push(g),
                _ => break,
            }
        }
        let shown: Vec<String> = path
            .iter()
            .map(|f| format!("#{f}:{}", depths[*f]))
            .collect();
        eprintln!("deepest chain {}", shown.join(" > "));
    }
    (chain[0], depths)
}

/// Each function's frame as the x86-64 JIT reserves it (`sub rsp, imm32`
/// in its prologue: the verifier's depth rounded to 8), rounded to 16 as
/// the verifier counts it: a check on the scan above.
#[cfg(target_arch = "x86_64")]
fn jit_frames(fd: std::os::fd::BorrowedFd<'_>) -> Vec<u32> {
    let (image, lens) = super::sys::prog_jited(fd).expect("the JIT image (is the JIT on?)");
    let mut at = 0;
    let mut frames = Vec::new();
    for len in lens {
        let f = &image[at..at + len as usize];
        let sub_rsp = f.windows(3).take(32).position(|w| w == [0x48, 0x81, 0xec]);
        let bytes = sub_rsp.map_or(0, |p| {
            u32::from_le_bytes(f[p + 3..p + 7].try_into().expect("4 bytes"))
        });
        frames.push(bytes.div_ceil(16) * 16);
        at += len as usize;
    }
    frames
}

/// One instruction, encoded.
fn enc(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | dst;
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    u64::from_le_bytes(b)
}

#[test]
fn the_scan_counts_frames_through_registers_and_calls() {
    let prog = [
        enc(0x7b, FP, 1, -8, 0),         // *(u64 *)(fp - 8) = r1
        enc(CALL, 0, PSEUDO_CALL, 1, 1), // call the function at 3
        enc(0x95, 0, 0, 0, 0),           // exit
        enc(0xbf, 2, FP, 0, 0),          // r2 = fp
        enc(0x07, 2, 0, 0, -100),        // r2 += -100
        enc(0x62, 2, 0, 4, 0),           // *(u32 *)(r2 + 4) = 0: fp - 96
        enc(0x95, 0, 0, 0, 0),           // exit
    ];
    let (chain, frames) = max_chain(&prog);
    assert_eq!(frames, [16, 112]);
    assert_eq!(chain, 128);
}

#[test]
fn a_register_is_not_followed_past_a_goto_or_an_exit() {
    for end in [GOTO, EXIT] {
        let prog = [
            enc(0xbf, 2, FP, 0, 0),         // r2 = fp
            enc(0x07, 2, 0, 0, -8),         // r2 += -8
            enc(0x7b, 2, 1, 0, 0),          // *(u64 *)(r2 + 0) = r1
            enc(end, 0, 0, 2, 0),           // goto +2 (or exit)
            enc(0x07, 2, 0, 0, -1_000_000), // reached by a jump: r2 is a number here
            enc(0x7b, 6, 2, 0, 0),          // *(u64 *)(r6 + 0) = r2
            enc(0x95, 0, 0, 0, 0),          // exit
        ];
        assert_eq!(max_chain(&prog), (16, vec![16]), "ended by {end:#x}");
    }
}

#[test]
fn every_program_keeps_verifier_stack_headroom() {
    assert!(
        crate::datapath::host::is_root(),
        "loading the programs needs root: run through `cargo xtask test`"
    );
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/lbt{}-stack", std::process::id()));
    crate::datapath::host::ensure_pin_dir(&dir).expect("bpffs");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = super::reset(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .load(OBJECT)
        .expect("load");
    let mut report = Vec::new();
    let mut check = |name: &str, fd: std::os::fd::BorrowedFd<'_>| {
        let insns = super::sys::prog_xlated(fd).expect("translated instructions");
        let (chain, frames) = max_chain(&insns);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            frames,
            jit_frames(fd),
            "{name}: the scan disagrees with the frames the JIT reserved"
        );
        report.push(format!("{name}: {chain} bytes (frames {frames:?})"));
        chain
    };
    let mut worst = Vec::new();
    for (name, _) in TC_PROGRAMS.iter().chain(POD_PROGRAMS) {
        let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let chain = check(name, p.fd().unwrap().as_fd());
        worst.push((chain, name.to_string()));
    }
    for (name, _) in SOCK_PROGRAMS {
        let p: &mut CgroupSockAddr = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let chain = check(name, p.fd().unwrap().as_fd());
        worst.push((chain, name.to_string()));
    }
    let x: &mut Xdp = ebpf.program_mut("lb_xdp").unwrap().try_into().unwrap();
    x.load().unwrap_or_else(|e| panic!("lb_xdp: {e:?}"));
    let chain = check("lb_xdp", x.fd().unwrap().as_fd());
    worst.push((chain, "lb_xdp".into()));
    let report = report.join("\n");
    println!("{report}");
    assert!(
        worst.iter().all(|(c, _)| *c > 0),
        "no stack seen: the scan is broken\n{report}"
    );
    for (chain, name) in worst {
        assert!(
            chain + HEADROOM <= STACK_LIMIT,
            "{name} uses {chain} of the verifier's {STACK_LIMIT} stack bytes: less than {HEADROOM} left\n{report}"
        );
    }
}
