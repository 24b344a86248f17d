//! The few bpf(2) commands aya 0.14 does not expose: opening a pin as a raw
//! fd, reading a link's attach target, swapping a link's program, writing
//! many entries in one call, and loading a hand-built iterator program.
#![expect(unsafe_code, reason = "raw bpf(2) syscalls aya does not wrap")]

mod batch;
pub use batch::{
    BatchWalk, CHUNK, Raw, delete_batch, lookup_batch_into, percpu_u64_sums, update_batch,
    update_batch_raw,
};

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `union bpf_attr` is 144 bytes in 6.x kernels; zero tails are accepted.
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Self([0; 144])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-initialised buffer as large as the
    // kernel's bpf_attr; every pointer stored in it outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// BPF_OBJ_GET: an fd for whatever is pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut a = Attr::new();
    a.put_u64(0, c.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut a)?;
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What a cgroup link is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    pub link_type: u32,
    pub prog_id: u32,
    pub cgroup_id: u64,
    pub attach_type: u32,
}

pub const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// BPF_OBJ_GET_INFO_BY_FD: the first 256 bytes of the object's info.
fn obj_info(fd: BorrowedFd<'_>) -> io::Result<[u64; 32]> {
    let mut info = [0u64; 32];
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u32(4, std::mem::size_of_val(&info) as u32);
    a.put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    Ok(info)
}

pub fn cgroup_link_info(fd: BorrowedFd<'_>) -> io::Result<CgroupLinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then a union at offset 16
    // whose cgroup member is { __u64 cgroup_id; __u32 attach_type; }.
    let info = obj_info(fd)?;
    Ok(CgroupLinkInfo {
        link_type: info[0] as u32,
        prog_id: info[1] as u32,
        cgroup_id: info[2],
        attach_type: info[3] as u32,
    })
}

/// The name a loaded program was given (struct bpf_prog_info: name at
/// byte 64, 16 bytes, NUL-padded), found by its id.
pub fn prog_name_by_id(id: u32) -> io::Result<String> {
    let mut a = Attr::new();
    a.put_u32(0, id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut a)?;
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let info = obj_info(fd.as_fd())?;
    let name: Vec<u8> = info[8..10].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The instructions of a loaded program as the verifier left them
/// (struct bpf_prog_info: xlated_prog_len at 20, xlated_prog_insns at 32).
#[cfg(test)]
pub fn prog_xlated(fd: BorrowedFd<'_>) -> io::Result<Vec<u64>> {
    let info_len = |a: &mut Attr, info: &mut [u64; 32]| {
        a.put_u32(0, fd.as_raw_fd() as u32);
        a.put_u32(4, std::mem::size_of_val(info) as u32);
        a.put_u64(8, info.as_mut_ptr() as u64);
    };
    let mut info = [0u64; 32];
    let mut a = Attr::new();
    info_len(&mut a, &mut info);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let len = (info[2] >> 32) as usize;
    let mut insns = vec![0u64; len / 8];
    let mut info = [0u64; 32];
    info[2] = (len as u64) << 32;
    info[4] = insns.as_mut_ptr() as u64;
    let mut a = Attr::new();
    info_len(&mut a, &mut info);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    Ok(insns)
}

/// A loaded program's JIT image and the length of each function in it
/// (bpf_prog_info: jited_prog_len at 16, jited_prog_insns at 24,
/// nr_jited_func_lens at 108, jited_func_lens at 120).
#[cfg(test)]
pub fn prog_jited(fd: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Vec<u32>)> {
    let get = |info: &mut [u64; 32]| {
        let mut a = Attr::new();
        a.put_u32(0, fd.as_raw_fd() as u32);
        a.put_u32(4, std::mem::size_of_val(info) as u32);
        a.put_u64(8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).map(drop)
    };
    let mut info = [0u64; 32];
    get(&mut info)?;
    let len = info[2] & 0xffff_ffff;
    let nfuncs = info[13] >> 32;
    let mut image = vec![0u8; len as usize];
    let mut lens = vec![0u32; nfuncs as usize];
    let mut info = [0u64; 32];
    info[2] = len;
    info[3] = image.as_mut_ptr() as u64;
    info[13] = nfuncs << 32;
    info[15] = lens.as_mut_ptr() as u64;
    get(&mut info)?;
    Ok((image, lens))
}

/// What one BPF_PROG_TEST_RUN returned.
pub struct TestRunOut {
    pub verdict: u32,
    /// The packet as the program left it (after the last repeat).
    pub data: Vec<u8>,
    /// The kernel's mean time per repeat.
    pub ns_per_run: u32,
}

/// BPF_PROG_TEST_RUN of `data`, `repeat` times, with `flags` (aya's
/// TestRunOptions has no flags).
pub fn prog_test_run_repeat(
    prog: BorrowedFd<'_>,
    data: &[u8],
    flags: u32,
    repeat: u32,
) -> io::Result<TestRunOut> {
    let mut out = vec![0u8; data.len() + 256];
    let mut a = Attr::new();
    a.put_u32(0, prog.as_raw_fd() as u32);
    a.put_u32(8, data.len() as u32);
    a.put_u32(12, out.len() as u32);
    a.put_u64(16, data.as_ptr() as u64);
    a.put_u64(24, out.as_mut_ptr() as u64);
    a.put_u32(32, repeat.max(1));
    a.put_u32(64, flags);
    bpf(BPF_PROG_TEST_RUN, &mut a)?;
    let word = |off: usize| u32::from_ne_bytes(a.0[off..off + 4].try_into().expect("4 bytes"));
    out.truncate(word(12) as usize);
    Ok(TestRunOut {
        verdict: word(4),
        data: out,
        ns_per_run: word(36),
    })
}

/// One BPF_PROG_TEST_RUN of `data` with `flags`: the verdict and the
/// packet as the program left it.
#[cfg(test)]
pub fn prog_test_run(prog: BorrowedFd<'_>, data: &[u8], flags: u32) -> io::Result<(u32, Vec<u8>)> {
    prog_test_run_repeat(prog, data, flags, 1).map(|o| (o.verdict, o.data))
}

/// BPF_LINK_UPDATE: the link runs `prog` from now on, atomically.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, link.as_raw_fd() as u32);
    a.put_u32(4, prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut a).map(drop)
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE,
/// Linux 5.14+), the value `bpf_get_netns_cookie` gives its sockets.
pub fn netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a fresh socket fd, owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a valid, open descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// BPF_MAP_CREATE of a plain map nobody pins (its fd is its life).
pub fn map_create(map_type: u32, key_size: u32, value_size: u32, max: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, map_type);
    a.put_u32(4, key_size);
    a.put_u32(8, value_size);
    a.put_u32(12, max);
    bpf(BPF_MAP_CREATE, &mut a).map(owned)
}

/// BPF_MAP_UPDATE_ELEM with `key` and `value` as the map's raw bytes.
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    map_update_flags(map, key, value, 0)
}

/// BPF_NOEXIST: an update that never replaces an entry.
pub const BPF_NOEXIST: u64 = 1;

/// BPF_MAP_UPDATE_ELEM with update flags (BPF_ANY, BPF_NOEXIST).
pub fn map_update_flags(
    map: BorrowedFd<'_>,
    key: &[u8],
    value: &[u8],
    flags: u64,
) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    a.put_u64(16, value.as_ptr() as u64);
    a.put_u64(24, flags);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// BPF_MAP_DELETE_ELEM of `key`; false when it was not there.
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// BPF_MAP_LOOKUP_ELEM into `value` (the map's value size); false when the
/// key is gone.
pub fn map_lookup_raw(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    a.put_u64(16, value.as_mut_ptr() as u64);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// BPF_MAP_GET_NEXT_KEY: the key after `key` (the first for None) into
/// `next`; false at the end.
pub fn map_next_key(map: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32);
    a.put_u64(8, key.map_or(0, |k| k.as_ptr() as u64));
    a.put_u64(16, next.as_mut_ptr() as u64);
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// BPF_MAP_LOOKUP_ELEM of a map whose values are one u64.
pub fn map_lookup_u64(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<u64> {
    let mut v = 0u64;
    let mut a = Attr::new();
    a.put_u32(0, map.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    a.put_u64(16, (&mut v as *mut u64) as u64);
    bpf(BPF_MAP_LOOKUP_ELEM, &mut a)?;
    Ok(v)
}

/// What BPF_PROG_LOAD needs for a program built outside an object file.
pub struct ProgLoad<'a> {
    pub prog_type: u32,
    pub expected_attach_type: u32,
    pub attach_btf_id: u32,
    pub insns: &'a [u64],
    pub name: &'a str,
}

/// BPF_PROG_LOAD; on failure the error carries the verifier's log.
pub fn prog_load(p: &ProgLoad<'_>) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut a = Attr::new();
    a.put_u32(0, p.prog_type);
    a.put_u32(4, p.insns.len() as u32);
    a.put_u64(8, p.insns.as_ptr() as u64);
    a.put_u64(16, license.as_ptr() as u64);
    a.put_u32(24, 1);
    a.put_u32(28, log.len() as u32);
    a.put_u64(32, log.as_mut_ptr() as u64);
    let name = p.name.as_bytes();
    let n = name.len().min(15);
    a.0[48..48 + n].copy_from_slice(&name[..n]);
    a.put_u32(68, p.expected_attach_type);
    a.put_u32(108, p.attach_btf_id);
    bpf(BPF_PROG_LOAD, &mut a).map(owned).map_err(|e| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        io::Error::new(e.kind(), format!("{e}; verifier: {}", text.trim()))
    })
}

/// BPF_LINK_CREATE of an iterator link (no target, no iterator options).
pub fn iter_link_create(prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, prog.as_raw_fd() as u32);
    a.put_u32(8, attach_type);
    bpf(BPF_LINK_CREATE, &mut a).map(owned)
}

/// BPF_ITER_CREATE: an fd whose reads run the iterator, over the calling
/// thread's network namespace for socket iterators.
pub fn iter_create(link: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, link.as_raw_fd() as u32);
    bpf(BPF_ITER_CREATE, &mut a).map(owned)
}

/// The kernel lays an array map's values out `round_up(value_size, 8)`
/// bytes apart, in mapped memory as in its own.
const ARRAY_ELEM_ALIGN: usize = 8;

/// Writes `values` as the first entries of a BPF_F_MMAPABLE array map of
/// u32 values through a shared mapping: one pass over memory, where a
/// batch update costs the kernel a copy and an update call per entry.
pub fn map_mmap_write_u32(map: BorrowedFd<'_>, values: &[u32]) -> io::Result<()> {
    let len = values.len() * ARRAY_ELEM_ALIGN;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a fresh shared mapping of `len` bytes of the map's value
    // area (the kernel refuses a length beyond it), written within its
    // bounds (value i at i * 8, aligned for a u32) and unmapped before
    // returning; nothing else in this process aliases it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = p.cast::<u8>();
        // Volatile: the programs read these entries while they change.
        for (i, v) in values.iter().enumerate() {
            base.add(i * ARRAY_ELEM_ALIGN)
                .cast::<u32>()
                .write_volatile(*v);
        }
        if libc::munmap(p, len) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
