//! Addresses and ports in network byte order, as types.

/// A 16-bit value held in network byte order (the raw bytes the kernel uses).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BeU16(pub u16);

impl BeU16 {
    pub const fn from_host(v: u16) -> Self {
        Self(v.to_be())
    }
    pub const fn to_host(self) -> u16 {
        u16::from_be(self.0)
    }
}

/// The IPv4-mapped prefix word (`::ffff:0:0/96`, bytes 8..12) as it lies in memory.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// An IPv6 address, or an IPv4 address in its IPv4-mapped form, as four
/// 32-bit words in network byte order (the layout of `in6_addr.s6_addr32`
/// and of `bpf_sock_addr.user_ip6`). One key type serves both families, and
/// an IPv4-mapped destination on an IPv6 socket finds the IPv4 entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetAddr(pub [u32; 4]);

impl NetAddr {
    /// From `bpf_sock_addr.user_ip4` (network order in a native u32).
    pub const fn from_v4_raw(ip4: u32) -> Self {
        Self([0, 0, V4_MAPPED_WORD, ip4])
    }
    pub const fn is_v4(&self) -> bool {
        self.0[0] == 0 && self.0[1] == 0 && self.0[2] == V4_MAPPED_WORD
    }
    /// 127.0.0.0/8 (IPv4-mapped) or ::1.
    pub const fn is_loopback(&self) -> bool {
        if self.is_v4() {
            return self.0[3].to_ne_bytes()[0] == 127;
        }
        self.0[0] == 0
            && self.0[1] == 0
            && self.0[2] == 0
            && self.0[3] == u32::from_ne_bytes([0, 0, 0, 1])
    }
    /// The IPv4 address in `user_ip4` form; meaningful only when `is_v4`.
    pub const fn v4_raw(&self) -> u32 {
        self.0[3]
    }
    pub const fn from_octets(o: [u8; 16]) -> Self {
        Self([
            u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
            u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
            u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
            u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
        ])
    }
    pub fn octets(&self) -> [u8; 16] {
        let mut o = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = self.0[i].to_ne_bytes();
            o[i * 4] = b[0];
            o[i * 4 + 1] = b[1];
            o[i * 4 + 2] = b[2];
            o[i * 4 + 3] = b[3];
            i += 1;
        }
        o
    }
}
