//! Connected UDP sockets of a backend that left a Service are destroyed, so
//! their applications see an error and connect again (to a live backend):
//! the socket hooks rewrote the destination once, at connect time, and
//! nothing else would ever move them. kube-proxy flushes UDP conntrack for
//! the same reason.
//!
//! A `bpf_iter/udp` program walks every UDP socket of a network namespace;
//! one whose reverse translation (its socket-local storage, or the older
//! cookie-keyed map) names a frontend and backend pair listed in a per-pass
//! "doomed" map is handed to the
//! `bpf_sock_destroy` kfunc. aya 0.14 cannot load a program that calls a
//! kfunc, so the program (a few dozen instructions) is built against the
//! running kernel's BTF (`program`) and loaded with the raw syscalls of
//! `sys`.
//! Socket iterators see the network namespace of whoever opens them: one
//! pass per namespace of the processes under the agent's cgroup.

use std::{
    collections::HashSet,
    io::Read as _,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use lb_common::SockDoomedKey;

use crate::datapath::sys;

mod program;

use program::{Layout, program};

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_ITER: u32 = 28;

/// The maps the iterator reads: the sockets' own reverse translations,
/// and the cookie-keyed map of sockets connected before those existed.
pub struct SockMaps<'a> {
    pub nat: BorrowedFd<'a>,
    pub rev: BorrowedFd<'a>,
}

fn key_bytes(k: &SockDoomedKey) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0..4].copy_from_slice(&k.service_id.to_ne_bytes());
    b[4..6].copy_from_slice(&k.port.0.to_ne_bytes());
    b[8..24].copy_from_slice(&k.addr.octets());
    b
}

/// The network namespaces of the processes under `cgroup` (and its
/// descendants), one `/proc/PID/ns/net` path each.
fn netns_under(cgroup: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
                // A process may be gone by now: nothing of it to destroy.
                if let Ok(m) = std::fs::metadata(&ns)
                    && seen.insert((m.dev(), m.ino()))
                {
                    out.push(ns);
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            dirs.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Runs the iterator over the network namespace at `ns` from a thread of
/// its own (setns changes only the calling thread, which then ends).
fn iterate_in(ns: &Path, link: BorrowedFd<'_>) -> anyhow::Result<()> {
    let f = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<()> {
            crate::datapath::host::enter_netns(f.as_fd())
                .with_context(|| format!("entering {}", ns.display()))?;
            let it = sys::iter_create(link).context("creating the socket iterator")?;
            // Reading runs the program over every socket; it prints nothing.
            let mut file = std::fs::File::from(it);
            let mut sink = [0u8; 256];
            while file
                .read(&mut sink)
                .context("running the socket iterator")?
                > 0
            {}
            Ok(())
        })
        .join()
        .map_err(|_| anyhow!("the socket iterator thread panicked"))?
    })
}

/// Destroys the connected UDP sockets, of every process under `cgroup`,
/// that reach a backend listed in `doomed` through its frontend; returns
/// how many.
pub fn destroy_udp(
    maps: &SockMaps<'_>,
    doomed: &[SockDoomedKey],
    cgroup: &Path,
) -> anyhow::Result<u64> {
    if doomed.is_empty() {
        return Ok(0);
    }
    destroy_udp_in(maps, doomed, &netns_under(cgroup))
}

/// `destroy_udp` over the network namespaces at `namespaces`.
fn destroy_udp_in(
    maps: &SockMaps<'_>,
    doomed: &[SockDoomedKey],
    namespaces: &[PathBuf],
) -> anyhow::Result<u64> {
    if doomed.is_empty() {
        return Ok(0);
    }
    let layout = Layout::running_kernel()?;
    let map = sys::map_create(BPF_MAP_TYPE_HASH, 24, 8, doomed.len() as u32)
        .context("creating the map of removed backends")?;
    let keys: Vec<[u8; 24]> = doomed.iter().map(key_bytes).collect();
    for k in &keys {
        sys::map_update(map.as_fd(), k, &0u64.to_ne_bytes())
            .context("writing the map of removed backends")?;
    }
    let insns = program(
        &layout,
        (maps.nat.as_raw_fd(), maps.rev.as_raw_fd()),
        map.as_raw_fd(),
    );
    let prog = sys::prog_load(&sys::ProgLoad {
        prog_type: BPF_PROG_TYPE_TRACING,
        expected_attach_type: BPF_TRACE_ITER,
        attach_btf_id: layout.iter_udp,
        insns: &insns,
        name: "lb_udp_destroy",
    })
    .context("loading the UDP socket iterator")?;
    let link = sys::iter_link_create(prog.as_fd(), BPF_TRACE_ITER)
        .context("linking the UDP socket iterator")?;
    for ns in namespaces {
        if let Err(e) = iterate_in(ns, link.as_fd()) {
            // One namespace gone mid-pass must not spare the others.
            tracing::debug!("UDP socket pass in {}: {e:#}", ns.display());
        }
    }
    let mut destroyed = 0;
    for k in &keys {
        destroyed += sys::map_lookup_u64(map.as_fd(), k).unwrap_or(0);
    }
    Ok(destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{BeU16, NetAddr, SockRevKey, SockRevValue};
    use std::net::UdpSocket;

    fn cookie(s: &UdpSocket) -> u64 {
        use std::os::fd::AsRawFd as _;
        const SO_COOKIE: libc::c_int = 57;
        let mut c = 0u64;
        let mut len = 8 as libc::socklen_t;
        #[expect(unsafe_code, reason = "getsockopt into a local u64")]
        // SAFETY: getsockopt writes at most `len` (8) bytes into `c`.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_COOKIE,
                (&mut c as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "SO_COOKIE");
        c
    }

    fn pod_bytes<T: Copy>(v: &T) -> Vec<u8> {
        #[expect(unsafe_code, reason = "viewing a repr(C) map key as its bytes")]
        // SAFETY: lb-common's map types are repr(C) integers with explicit
        // padding: every byte is initialised.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    /// Three connected UDP sockets in a namespace of their own: one reached
    /// its backend through frontend 7 whose backend left (destroyed), one
    /// through frontend 7 to a backend still there, one with no reverse
    /// entry (connected straight to the address, not through a Service).
    #[test]
    fn destroys_exactly_the_sockets_whose_backend_left_their_frontend() {
        assert!(
            crate::datapath::host::is_root(),
            "this test loads a BPF iterator and makes a network namespace: run it as root"
        );
        std::thread::spawn(|| {
            #[expect(
                unsafe_code,
                reason = "unshare of this test thread's network namespace"
            )]
            // SAFETY: only this thread moves; it owns everything it then opens.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare(CLONE_NEWNET)");
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("ip");
            assert!(up.success());
            let dir = PathBuf::from(format!("/sys/fs/bpf/lbt{}-sockd", std::process::id()));
            crate::datapath::host::ensure_pin_dir(&dir).expect("bpffs");
            struct Cleanup(PathBuf);
            impl Drop for Cleanup {
                fn drop(&mut self) {
                    let _ = crate::datapath::reset(&self.0);
                }
            }
            let _cleanup = Cleanup(dir.clone());
            let ebpf = aya::EbpfLoader::new()
                .default_map_pin_directory(&dir)
                .load(crate::datapath::OBJECT)
                .expect("load");
            let Some(aya::maps::Map::SkStorage(nat)) = ebpf.map(lb_common::MAP_SOCK_NAT) else {
                panic!("no socket storage map");
            };
            let Some(aya::maps::Map::LruHashMap(rev)) = ebpf.map(lb_common::MAP_SOCK_REV) else {
                panic!("no socket reverse map");
            };
            let maps = SockMaps {
                nat: nat.fd().as_fd(),
                rev: rev.fd().as_fd(),
            };
            let connect = |port: u16| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.connect(("127.0.0.1", port)).unwrap();
                s
            };
            let (gone, kept, direct) = (connect(5353), connect(5354), connect(5353));
            let gone6 = UdpSocket::bind("[::1]:0").unwrap();
            gone6.connect(("::1", 5353)).unwrap();
            let lo = NetAddr::from_v4_raw(u32::from_ne_bytes([127, 0, 0, 1]));
            let lo6 = NetAddr::from_octets(std::net::Ipv6Addr::LOCALHOST.octets());
            let front = NetAddr::from_v4_raw(u32::from_ne_bytes([10, 96, 0, 10]));
            // `gone` and `kept` as this agent's socket hooks leave them: in
            // the socket's own storage.
            for (s, port) in [(&gone, 5353), (&kept, 5354)] {
                let mut v = lb_common::SockNat::default();
                v.entries[0] = lb_common::SockNatEntry {
                    backend: lo,
                    backend_port: BeU16::from_host(port),
                    front_port: BeU16::from_host(53),
                    front,
                    service_id: 7,
                };
                use std::os::fd::AsRawFd as _;
                let key = s.as_raw_fd().to_ne_bytes();
                sys::map_update(maps.nat, &key, &pod_bytes(&v)).expect("socket storage");
            }
            // `gone6` as an earlier agent left it: in the cookie-keyed map.
            let k = SockRevKey {
                cookie: cookie(&gone6),
                addr: lo6,
                port: BeU16::from_host(5353),
                _pad: [0; 6],
            };
            let v = SockRevValue {
                addr: front,
                port: BeU16::from_host(53),
                _pad: [0; 2],
                service_id: 7,
            };
            sys::map_update(maps.rev, &pod_bytes(&k), &pod_bytes(&v)).unwrap();
            let doomed = [lo, lo6].map(|addr| SockDoomedKey {
                service_id: 7,
                port: BeU16::from_host(5353),
                _pad: 0,
                addr,
            });
            let here = PathBuf::from("/proc/thread-self/ns/net");
            let n = destroy_udp_in(&maps, &doomed, &[here]).expect("the pass runs");
            assert_eq!(n, 2, "exactly the two doomed sockets destroyed");
            for s in [&gone, &gone6] {
                let err = s.take_error().unwrap().map(|e| e.raw_os_error());
                assert_eq!(
                    err,
                    Some(Some(libc::ECONNABORTED)),
                    "a doomed socket sees an error"
                );
            }
            assert!(
                kept.take_error().unwrap().is_none(),
                "a live backend's socket stays"
            );
            assert!(
                direct.take_error().unwrap().is_none(),
                "a direct socket stays"
            );
            assert!(
                gone.send(b"x").is_err(),
                "the doomed socket is no longer connected"
            );
            kept.send(b"x").expect("the kept socket still sends");
        })
        .join()
        .expect("test thread");
    }
}
