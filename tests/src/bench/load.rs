//! The bench's load: a server answering each request with a reply, and a
//! client that opens connections back to back (each closed with an RST, so
//! no TIME_WAIT limits the rate) or keeps one and sends requests on it.
//! Each prints `FIRST_OK` on a line when its first connection (or request)
//! completes, so a test can wait for the load to be running, and one JSON
//! line at the end: counts and latency percentiles.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

const REQUEST: &[u8; 8] = b"request\n";
const REPLY: &[u8; 8] = b"replied\n";
const TIMEOUT: Duration = Duration::from_secs(1);

/// The line a client prints when its first connection (or request) is done.
pub const FIRST_OK: &str = "first ok";

fn announce_first_ok(done: &mut bool) {
    if !*done {
        *done = true;
        println!("{FIRST_OK}");
        // Read through a pipe, so stdout is block-buffered.
        let _ = std::io::stdout().flush();
    }
}

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

/// Serves on 0.0.0.0:`port` until killed; says `ready` first.
pub fn serve(port: u16) -> anyhow::Result<()> {
    let l = TcpListener::bind(SocketAddr::from(([0u8; 4], port)))?;
    println!("ready");
    std::io::stdout().flush()?;
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        // A thread each: a held connection must not keep others waiting.
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            let mut buf = [0u8; REQUEST.len()];
            while c.read_exact(&mut buf).is_ok() {
                if c.write_all(REPLY).is_err() {
                    break;
                }
            }
        });
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

/// connect() from `src` when given (bound first), within TIMEOUT.
#[expect(unsafe_code, reason = "bind before connect: std has no call for it")]
fn connect(src: Option<Ipv4Addr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let (Some(src), SocketAddr::V4(to)) = (src, to) else {
        return TcpStream::connect_timeout(&to, TIMEOUT);
    };
    let sin = |a: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: a fresh socket owned at once; the sockaddr and timeval live
    // on the stack for each call; connect() honours SO_SNDTIMEO.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let tv = libc::timeval {
            tv_sec: TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let local = sin(src, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sin(*to.ip(), to.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TcpStream::from(owned))
    }
}

fn one_connection(src: Option<Ipv4Addr>, target: SocketAddr) -> std::io::Result<Duration> {
    let t = Instant::now();
    let mut s = connect(src, target)?;
    let took = t.elapsed();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    exchange(&mut s)?;
    reset_on_close(&s);
    Ok(took)
}

/// New connections to `target` back to back for `secs`, one request each,
/// from `src` when given.
pub fn connections(src: Option<Ipv4Addr>, target: SocketAddr, secs: f64) -> Measured {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut lat = Vec::new();
    let (mut failed, mut first_error) = (0, None);
    let mut announced = false;
    while Instant::now() < until {
        match one_connection(src, target) {
            Ok(d) => {
                lat.push(d);
                announce_first_ok(&mut announced);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    summarize(lat, failed, first_error, start.elapsed())
}

/// One connection to `target` (from `src` when given), requests back to
/// back for `secs`.
pub fn requests(src: Option<Ipv4Addr>, target: SocketAddr, secs: f64) -> Measured {
    let start = Instant::now();
    let mut s = match connect(src, target) {
        Ok(s) => s,
        Err(e) => return summarize(vec![], 1, Some(e.to_string()), start.elapsed()),
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let until = start + Duration::from_secs_f64(secs);
    let mut lat = Vec::new();
    let (mut failed, mut first_error) = (0, None);
    let mut announced = false;
    while Instant::now() < until {
        let t = Instant::now();
        match exchange(&mut s) {
            Ok(()) => {
                lat.push(t.elapsed());
                announce_first_ok(&mut announced);
            }
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
