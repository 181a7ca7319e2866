//! The `/metrics` endpoint: a tokio runtime on a thread of its own, so a scrape never
//! waits for the record loop and the record loop never waits for a scrape (the metrics
//! are atomics the loop updates in place).

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener},
    sync::Arc,
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

/// The content type of `prometheus_client`'s text encoding.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr`. Called before anything is attached, so a port in use fails the run
/// before it starts.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).with_context(|| {
        format!(
            "cannot serve metrics on {addr} (is the port in use? choose another with --metrics)"
        )
    })?;
    l.set_nonblocking(true)
        .context("setting the metrics socket non-blocking")?;
    Ok(l)
}

/// A running `/metrics` server; stopped when dropped.
pub struct Server {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Server {
    /// Serves `registry` on `listener` until dropped.
    pub fn spawn(listener: TcpListener, registry: Arc<Registry>) -> Result<Server> {
        let addr = listener.local_addr().context("metrics socket address")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("starting the metrics runtime")?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || runtime.block_on(accept_loop(listener, registry, stopped)))
            .context("starting the metrics thread")?;
        Ok(Server {
            stop: Some(stop),
            thread: Some(thread),
            addr,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("redis-memtrace: warning: metrics server not started: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let registry = Arc::clone(&registry);
                tokio::spawn(async move {
                    let service = service_fn(move |req| respond(req, Arc::clone(&registry)));
                    // A client that goes away mid-request is its own business.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "only /metrics is served here\n",
        ));
    }
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &registry).is_err() {
        return Ok(plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding failed\n",
        ));
    }
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, OPENMETRICS)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "")))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}
