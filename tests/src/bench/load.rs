//! The bench's load: a server answering each request with a reply, and a
//! client that opens connections back to back (each closed with an RST, so
//! no TIME_WAIT limits the rate) or keeps one and sends requests on it.
//! Each prints one JSON line: counts and latency percentiles.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

const REQUEST: &[u8; 8] = b"request\n";
const REPLY: &[u8; 8] = b"replied\n";
const TIMEOUT: Duration = Duration::from_secs(1);

/// What one client run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    /// Connections (or requests) completed per second.
    pub rate: f64,
    pub ok: u64,
    pub failed: u64,
    /// Latency of connect() (or of a request), microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub first_error: Option<String>,
}

/// Serves on [::]:`port` (IPv4 too) until killed; says `ready` first.
pub fn serve(port: u16) -> anyhow::Result<()> {
    let l = TcpListener::bind(SocketAddr::from(([0u8; 4], port)))?;
    println!("ready");
    std::io::stdout().flush()?;
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let _ = c.set_nodelay(true);
        let _ = c.set_read_timeout(Some(TIMEOUT));
        let mut buf = [0u8; REQUEST.len()];
        while c.read_exact(&mut buf).is_ok() {
            if c.write_all(REPLY).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// Closing with SO_LINGER 0 sends an RST and leaves no TIME_WAIT socket,
/// so the client's ports come round at any rate.
#[expect(
    unsafe_code,
    reason = "SO_LINGER through setsockopt (std has no stable call)"
)]
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a linger struct that lives
    // on the stack for the call.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

fn exchange(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(REQUEST)?;
    let mut buf = [0u8; REPLY.len()];
    s.read_exact(&mut buf)?;
    if &buf != REPLY {
        return Err(std::io::Error::other("a reply that is not the server's"));
    }
    Ok(())
}

fn one_connection(target: SocketAddr) -> std::io::Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&target, TIMEOUT)?;
    let took = t.elapsed();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    exchange(&mut s)?;
    reset_on_close(&s);
    Ok(took)
}

/// New connections to `target` back to back for `secs`, one request each.
pub fn connections(target: SocketAddr, secs: f64) -> Measured {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut lat = Vec::new();
    let (mut failed, mut first_error) = (0, None);
    while Instant::now() < until {
        match one_connection(target) {
            Ok(d) => lat.push(d),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    summarize(lat, failed, first_error, start.elapsed())
}

/// One connection to `target`, requests back to back for `secs`.
pub fn requests(target: SocketAddr, secs: f64) -> Measured {
    let start = Instant::now();
    let mut s = match TcpStream::connect_timeout(&target, TIMEOUT) {
        Ok(s) => s,
        Err(e) => return summarize(vec![], 1, Some(e.to_string()), start.elapsed()),
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let until = start + Duration::from_secs_f64(secs);
    let mut lat = Vec::new();
    let (mut failed, mut first_error) = (0, None);
    while Instant::now() < until {
        let t = Instant::now();
        match exchange(&mut s) {
            Ok(()) => lat.push(t.elapsed()),
            Err(e) => {
                failed += 1;
                first_error = Some(e.to_string());
                break;
            }
        }
    }
    summarize(lat, failed, first_error, start.elapsed())
}

fn summarize(
    mut lat: Vec<Duration>,
    failed: u64,
    first_error: Option<String>,
    took: Duration,
) -> Measured {
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Measured {
        rate: lat.len() as f64 / took.as_secs_f64(),
        ok: lat.len() as u64,
        failed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        first_error,
    }
}
