//! Mock upstreams on 127.0.0.1:0: an HTTP/1.1 + h2c echo server whose health and status can be
//! changed at run time, a WebSocket echo and a gRPC-like h2c server with trailers.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct State {
    pub hits: AtomicUsize,
    pub health_hits: AtomicUsize,
    pub health_status: AtomicU16,
    pub status: AtomicU16,
    pub delay_ms: AtomicU64,
}

/// An echo upstream: answers JSON describing the request it received.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub state: Arc<State>,
    task: JoinHandle<()>,
    kill: tokio::sync::watch::Sender<bool>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, name).await
    }

    /// Serves on an address a previous upstream used (to test recovery).
    pub async fn start_on(addr: SocketAddr, name: &str) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, name).await
    }

    async fn serve(listener: TcpListener, name: &str) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        state.health_status.store(200, SeqCst);
        state.status.store(200, SeqCst);
        let (st, nm) = (state.clone(), name.to_string());
        let (kill, killed) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let (st, nm, mut killed) = (st.clone(), nm.clone(), killed.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, st.clone(), nm.clone()));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(sock), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            state,
            task,
            kill,
        }
    }

    /// Dies like a killed process: the listener and every open connection close at once,
    /// requests in flight included.
    pub fn kill(&self) {
        self.task.abort();
        self.kill.send_replace(true);
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(SeqCst)
    }

    /// Stops accepting and closes the listener.
    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<State>,
    name: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        st.health_hits.fetch_add(1, SeqCst);
        let code = st.health_status.load(SeqCst);
        return Ok(Response::builder()
            .status(code)
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap());
    }
    st.hits.fetch_add(1, SeqCst);
    let delay = st.delay_ms.load(SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v = serde_json::json!({ "upstream": name, "method": method, "uri": uri, "version": version, "headers": headers, "body_len": body.len() });
    let status = st.status.load(SeqCst);
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("connection", "x-hop")
        .header("x-hop", "must-be-removed")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap())
}

/// A WebSocket echo server.
pub async fn websocket_echo() -> (SocketAddr, JoinHandle<()>) {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

type GrpcBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A gRPC unary server over h2c: answers every call with the request message reversed, a
/// `grpc-status: 0` trailer and a custom trailer.
pub async fn grpc_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let ct = req.headers().get("content-type").cloned();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let msg: Vec<u8> = body
                        .get(5..)
                        .unwrap_or_default()
                        .iter()
                        .rev()
                        .copied()
                        .collect();
                    let mut framed = vec![0u8];
                    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
                    framed.extend_from_slice(&msg);
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("x-trailer", "kept".parse().unwrap());
                    let frames = vec![
                        Ok(Frame::data(Bytes::from(framed))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body: GrpcBody = StreamBody::new(futures_util::stream::iter(frames));
                    let mut resp = Response::new(body);
                    resp.headers_mut().insert(
                        "content-type",
                        ct.unwrap_or_else(|| "application/grpc".parse().unwrap()),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// An HTTPS echo upstream (HTTP/1.1 over TLS with the given PEM certificate and key).
pub async fn tls_upstream(
    cert_pem: &str,
    key_pem: &str,
    name: &str,
) -> (SocketAddr, JoinHandle<()>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State::default());
    state.status.store(200, SeqCst);
    let name = name.to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, st, nm) = (acceptor.clone(), state.clone(), name.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let svc = service_fn(move |req| handle(req, st.clone(), nm.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// Serves one document (status and body, changeable at run time) on every path; counts hits.
/// Stands in for a JWKS endpoint.
pub struct DocServer {
    pub addr: SocketAddr,
    pub doc: Arc<parking_lot::Mutex<(u16, String)>>,
    server: FnServer,
}

impl DocServer {
    pub async fn start(status: u16, body: &str) -> DocServer {
        let doc = Arc::new(parking_lot::Mutex::new((status, body.to_string())));
        let d = doc.clone();
        let server = FnServer::start(move |_| {
            let (status, body) = d.lock().clone();
            (
                status,
                vec![("content-type", "application/json".into())],
                body,
            )
        })
        .await;
        DocServer {
            addr: server.addr,
            doc,
            server,
        }
    }

    pub fn set(&self, status: u16, body: &str) {
        *self.doc.lock() = (status, body.to_string());
    }

    pub fn hits(&self) -> usize {
        self.server.hits()
    }
}

/// What a [`FnServer`] handler sees: method, URI, headers and the body as text.
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

type Handler = dyn Fn(&Seen) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync;

/// When each request arrived and its answer was sent (URI, start, end).
pub type Timeline = Arc<parking_lot::Mutex<Vec<(String, std::time::Instant, std::time::Instant)>>>;

/// A server whose answers come from a closure (authorization services, introspection
/// endpoints); counts requests and records when each arrived and was answered. An answer with
/// the field `x-test-delay-ms` is sent that long after the request arrived (without the field).
pub struct FnServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub timeline: Timeline,
    task: JoinHandle<()>,
    kill: tokio::sync::watch::Sender<bool>,
}

impl FnServer {
    pub async fn start(
        f: impl Fn(&Seen) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync + 'static,
    ) -> FnServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let f: Arc<Handler> = Arc::new(f);
        let h = hits.clone();
        let timeline = Timeline::default();
        let tl = timeline.clone();
        let (kill, killed) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let (f, h, tl, mut killed) = (f.clone(), h.clone(), tl.clone(), killed.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (f, h, tl) = (f.clone(), h.clone(), tl.clone());
                        async move {
                            let start = std::time::Instant::now();
                            h.fetch_add(1, SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            let (status, headers, body) = f(&seen);
                            let mut b = Response::builder().status(status);
                            for (k, v) in headers {
                                if k == "x-test-delay-ms" {
                                    let ms = v.parse().unwrap_or(0);
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                    continue;
                                }
                                b = b.header(k, v);
                            }
                            tl.lock()
                                .push((seen.uri.clone(), start, std::time::Instant::now()));
                            Ok::<_, Infallible>(b.body(Full::new(Bytes::from(body))).unwrap())
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(sock), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        FnServer {
            addr,
            hits,
            timeline,
            task,
            kill,
        }
    }

    /// Dies like a killed process: the listener and every open connection close at once.
    pub fn kill(&self) {
        self.task.abort();
        self.kill.send_replace(true);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }
}

impl Drop for FnServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
