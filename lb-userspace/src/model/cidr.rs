//! CIDR blocks (`10.0.0.0/8`, `fd00::/64`), as `--nodeport-addresses` takes.

use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a CIDR (ADDRESS/LENGTH)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}`: `{a}` is not an IP address"))?;
        let len: u8 = l
            .parse()
            .map_err(|_| format!("`{s}`: `{l}` is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("`{s}`: prefix length {len} is over {max}"));
        }
        Ok(Self { addr, len })
    }
}

impl Cidr {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len)
                };
                u32::from(n) & mask == u32::from(*a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len)
                };
                u128::from(n) & mask == u128::from(*a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches_both_families() {
        let c: Cidr = " 10.100.0.0/24".parse().unwrap();
        assert!(c.contains(&"10.100.0.7".parse().unwrap()));
        assert!(!c.contains(&"10.100.1.7".parse().unwrap()));
        assert!(!c.contains(&"fd00::1".parse().unwrap()));
        let c: Cidr = "fd00:100::/64".parse().unwrap();
        assert!(c.contains(&"fd00:100::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&"1.2.3.4".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
    }
}
