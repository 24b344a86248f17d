//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to build a
//! program by hand: the type id of a function and the byte offset of a
//! struct member. aya 0.14 keeps its BTF walker's members private.

use anyhow::{Context as _, bail};

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type record: where its kind-specific tail starts in `types`.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    tail: usize,
}

impl Type {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

pub struct Btf {
    types_raw: Vec<u8>,
    strings: Vec<u8>,
    /// Index = type id - 1.
    types: Vec<Type>,
}

fn u32_at(b: &[u8], off: usize) -> anyhow::Result<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .with_context(|| format!("BTF truncated at byte {off}"))
}

impl Btf {
    pub fn vmlinux() -> anyhow::Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path)
            .with_context(|| format!("reading {path} (the kernel needs CONFIG_DEBUG_INFO_BTF)"))?;
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    pub fn parse(data: &[u8]) -> anyhow::Result<Self> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            bail!("not little-endian BTF");
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .map(<[u8]>::to_vec)
                .context("BTF section out of bounds")
        };
        let types_raw = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut types = Vec::new();
        let mut at = 0;
        while at < types_raw.len() {
            let t = Type {
                name_off: u32_at(&types_raw, at)?,
                info: u32_at(&types_raw, at + 4)?,
                size_or_type: u32_at(&types_raw, at + 8)?,
                tail: at + 12,
            };
            let tail = match t.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * t.vlen(),
                KIND_ENUM | KIND_FUNC_PROTO => 8 * t.vlen(),
                _ => 0,
            };
            types.push(t);
            at += 12 + tail;
        }
        Ok(Self {
            types_raw,
            strings,
            types,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        &s[..s.iter().position(|b| *b == 0).unwrap_or(s.len())]
    }

    fn find(&self, kind: u32, name: &str) -> Option<(u32, Type)> {
        self.types
            .iter()
            .enumerate()
            .find(|(_, t)| t.kind() == kind && self.name(t.name_off) == name.as_bytes())
            .map(|(i, t)| (i as u32 + 1, *t))
    }

    /// The type id of kernel function `name` (a kfunc, an iterator target).
    pub fn func_id(&self, name: &str) -> anyhow::Result<u32> {
        self.find(KIND_FUNC, name)
            .map(|(id, _)| id)
            .with_context(|| format!("the kernel has no function {name} in its BTF"))
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = *self.types.get((id as usize).checked_sub(1)?)?;
            match t.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of `member` within struct or union `t`, looking through
    /// anonymous struct and union members as C does.
    fn member_bits(&self, t: Type, member: &str) -> Option<u32> {
        for i in 0..t.vlen() {
            let m = t.tail + 12 * i;
            let name_off = u32_at(&self.types_raw, m).ok()?;
            let ty = u32_at(&self.types_raw, m + 4).ok()?;
            let raw = u32_at(&self.types_raw, m + 8).ok()?;
            let bits = if t.kind_flag() { raw & 0xff_ffff } else { raw };
            let name = self.name(name_off);
            if name == member.as_bytes() {
                return Some(bits);
            }
            if name.is_empty() {
                let inner = self.resolve(ty)?;
                if matches!(inner.kind(), KIND_STRUCT | KIND_UNION)
                    && let Some(b) = self.member_bits(inner, member)
                {
                    return Some(bits + b);
                }
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name`.
    pub fn member_offset(&self, name: &str, member: &str) -> anyhow::Result<i16> {
        let (_, t) = self
            .find(KIND_STRUCT, name)
            .with_context(|| format!("the kernel's BTF has no struct {name}"))?;
        let bits = self
            .member_bits(t, member)
            .with_context(|| format!("struct {name} has no member {member}"))?;
        if bits % 8 != 0 {
            bail!("{name}.{member} is a bit field");
        }
        i16::try_from(bits / 8).with_context(|| format!("{name}.{member} lies too far in"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sock_common_members_and_iterator_targets_in_the_running_kernel() {
        let btf = Btf::vmlinux().expect("this kernel's BTF (CONFIG_DEBUG_INFO_BTF)");
        // Fixed by the UAPI-facing layout of struct sock_common.
        assert_eq!(btf.member_offset("sock_common", "skc_daddr").unwrap(), 0);
        assert_eq!(
            btf.member_offset("sock_common", "skc_rcv_saddr").unwrap(),
            4
        );
        assert_eq!(btf.member_offset("sock_common", "skc_dport").unwrap(), 12);
        assert_eq!(btf.member_offset("sock_common", "skc_num").unwrap(), 14);
        assert_eq!(btf.member_offset("sock_common", "skc_family").unwrap(), 16);
        let v6 = btf.member_offset("sock_common", "skc_v6_daddr").unwrap();
        assert!(v6 > 16 && v6 % 4 == 0, "skc_v6_daddr at {v6}");
        assert_eq!(btf.member_offset("bpf_iter__udp", "udp_sk").unwrap(), 8);
        assert!(btf.func_id("bpf_iter_udp").unwrap() > 0);
        assert!(btf.func_id("bpf_sock_destroy").unwrap() > 0);
        assert!(btf.func_id("no_such_function_here").is_err());
        assert!(btf.member_offset("sock_common", "no_such_member").is_err());
    }
}
