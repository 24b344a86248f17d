//! The HTTP server under the health endpoint and the healthCheckNodePorts:
//! hyper, every connection a task of its own, so one slow or idle client
//! never keeps another waiting. It runs on a runtime thread of its own: the
//! agent's sync loop may write maps for seconds, and nothing else the
//! agent runs (its sources' watches) may keep `/livez` or a load
//! balancer's health check waiting (the kubelet would restart a busy
//! agent).

use std::{
    convert::Infallible,
    net::TcpListener as StdListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header::HeaderValue, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, runtime::Handle, sync::watch};

pub type Body = Full<Bytes>;

/// A client that has not sent its request head by then is dropped, so
/// idle connections cannot pile up without bound.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A response with a body and its content type.
pub fn response(code: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

/// The serving runtime, started on first use.
fn runtime() -> anyhow::Result<Handle> {
    static HANDLE: Mutex<Option<Handle>> = Mutex::new(None);
    let mut h = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = &*h {
        return Ok(h.clone());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("the HTTP servers' runtime")?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("lb-http".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .context("the HTTP servers' thread")?;
    *h = Some(handle.clone());
    Ok(handle)
}

/// Serves `listener` with `handler` (request path -> response) until
/// `stop`'s sender is dropped, or for good without one.
pub fn serve<F>(
    listener: StdListener,
    handler: F,
    stop: Option<watch::Receiver<()>>,
) -> anyhow::Result<()>
where
    F: Fn(&str) -> Response<Body> + Send + Sync + 'static,
{
    let rt = runtime()?;
    listener
        .set_nonblocking(true)
        .context("non-blocking listener")?;
    let listener = {
        let _in_rt = rt.enter();
        TcpListener::from_std(listener).context("listener on the HTTP runtime")?
    };
    rt.spawn(accept(listener, Arc::new(handler), stop));
    Ok(())
}

/// Until `stop` says so: never when there is none.
async fn stopped(stop: &mut Option<watch::Receiver<()>>) {
    match stop {
        // Err is the only outcome: nothing is ever sent, the sender drops.
        Some(rx) => while rx.changed().await.is_ok() {},
        None => std::future::pending().await,
    }
}

async fn accept<F>(listener: TcpListener, handler: Arc<F>, mut stop: Option<watch::Receiver<()>>)
where
    F: Fn(&str) -> Response<Body> + Send + Sync + 'static,
{
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            () = stopped(&mut stop) => return,
        };
        let stream = match conn {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, say: retrying at once would spin.
                tracing::warn!(addr = ?listener.local_addr().ok(), "HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (handler, mut stop) = (handler.clone(), stop.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = handler(req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            // Keep-alive off: clients (health probers, the tests) read
            // each answer to the end of the connection.
            let conn = http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!("HTTP connection: {e}");
                },
                () = stopped(&mut stop) => {}
            }
        });
    }
}
