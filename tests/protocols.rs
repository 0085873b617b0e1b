//! TLS with SNI, HTTP/2 (TLS ALPN and h2c), WebSocket and gRPC through the gateway.

use crate::util::upstream::{grpc_server, tls_upstream, websocket_echo, Upstream};
use crate::util::{free_port, upstream_yaml, Gateway};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::Path;
use std::sync::Arc;

struct Pki {
    ca_pem: String,
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

/// A CA and one leaf certificate per name, written as `<name>.pem` / `<name>.key` in `dir`.
fn pki(dir: &Path, names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Postern Test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    for n in names {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![n.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join(format!("{n}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{n}.key")), key.serialize_pem()).unwrap();
    }
    Pki { ca_pem: ca.pem() }
}

fn tls_listener(dir: &Path, port: u16, names: &[&str]) -> String {
    let certs: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                "{{ cert: \"{d}/{n}.pem\", key: \"{d}/{n}.key\" }}",
                d = dir.display()
            )
        })
        .collect();
    format!("  - {{ name: tls, addr: \"127.0.0.1:{port}\", tls: {{ certificates: [ {} ], http2: true }} }}\n", certs.join(", "))
}

/// Connects with SNI `name` trusting only the test CA; returns the names in the served leaf.
async fn served_names(port: u16, name: &str, ca_pem: &str) -> Vec<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let sni = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = connector
        .connect(sni, tcp)
        .await
        .expect("handshake verifies against the requested name");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sni_chooses_the_certificate_and_alpn_gives_http2() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), &["a.test", "b.test"]);
    let tls_port = free_port();
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n",
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = Gateway::start_with(
        &body,
        &tls_listener(dir.path(), tls_port, &["a.test", "b.test"]),
    );
    assert_eq!(
        served_names(tls_port, "a.test", &pki.ca_pem).await,
        vec!["DNSName(a.test)"]
    );
    assert_eq!(
        served_names(tls_port, "b.test", &pki.ca_pem).await,
        vec!["DNSName(b.test)"]
    );

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
        .resolve(
            "b.test",
            std::net::SocketAddr::from(([127, 0, 0, 1], tls_port)),
        )
        .build()
        .unwrap();
    let r = client
        .get(format!("https://b.test:{tls_port}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    assert_eq!(v["headers"]["host"], format!("b.test:{tls_port}"));
    assert_eq!(v["version"], "HTTP/1.1", "HTTP/1.1 to the upstream");
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_prior_knowledge() {
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n",
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = Gateway::start(&body);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c.get(gw.url("/h2")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["host"], format!("127.0.0.1:{}", gw.port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_echoes_through_the_gateway() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (ws_addr, _task) = websocket_echo().await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /ws }}, upstream: ws }}\n",
        upstream_yaml("ws", &[ws_addr], "")
    );
    let gw = Gateway::start(&body);
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", gw.port))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}").into()))
            .await
            .unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.send(Message::Binary(Bytes::from_static(&[1, 2, 3])))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &[1, 2, 3]
    );
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_call_with_trailers_over_h2c() {
    let (grpc_addr, _task) = grpc_server().await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /echo.Echo/*, headers: {{ content-type: \"~^application/grpc\" }} }}, upstream: grpc }}\n",
        upstream_yaml("grpc", &[grpc_addr], "    protocol: http2\n")
    );
    let gw = Gateway::start(&body);
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let msg = b"postern";
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(msg);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{}/echo.Echo/Reverse", gw.port))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(framed)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers preserved");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-trailer"], "kept");
    let data = collected.to_bytes();
    assert_eq!(&data[5..], b"nretsop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_upstream_verifies_sni_and_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), &["backend.test"]);
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let (addr, _task) = tls_upstream(
        &read(dir.path(), "backend.test.pem"),
        &read(dir.path(), "backend.test.key"),
        "secure",
    )
    .await;
    let other = pki_other(dir.path());
    let body = format!(
        r#"upstreams:
  good:
    targets: [ {{ addr: "{addr}" }} ]
    tls: {{ sni: backend.test, ca: "{d}/ca.pem" }}
  wrong-name:
    targets: [ {{ addr: "{addr}" }} ]
    tls: {{ sni: other.test, ca: "{d}/ca.pem" }}
    retry: {{ attempts: 1 }}
  wrong-ca:
    targets: [ {{ addr: "{addr}" }} ]
    tls: {{ sni: backend.test, ca: "{other}" }}
    retry: {{ attempts: 1 }}
  unverified:
    targets: [ {{ addr: "{addr}" }} ]
    tls: {{ sni: whatever.test, verify: false }}
routes:
  - {{ match: {{ path: /good }}, upstream: good }}
  - {{ match: {{ path: /wrong-name }}, upstream: wrong-name }}
  - {{ match: {{ path: /wrong-ca }}, upstream: wrong-ca }}
  - {{ match: {{ path: /unverified }}, upstream: unverified }}
"#,
        d = dir.path().display()
    );
    let gw = Gateway::start(&body);
    let c = crate::util::client();
    let r = c.get(gw.url("/good")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["upstream"], "secure");
    assert_eq!(
        c.get(gw.url("/wrong-name")).send().await.unwrap().status(),
        502
    );
    assert_eq!(
        c.get(gw.url("/wrong-ca")).send().await.unwrap().status(),
        502
    );
    assert_eq!(
        c.get(gw.url("/unverified")).send().await.unwrap().status(),
        200
    );
}

/// A second, unrelated CA (for the negative case); returns its PEM path.
fn pki_other(dir: &Path) -> String {
    let sub = dir.join("other");
    std::fs::create_dir_all(&sub).unwrap();
    let other = pki(&sub, &[]);
    let path = sub.join("ca.pem");
    std::fs::write(&path, other.ca_pem).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_targets_are_resolved_off_the_request_path() {
    let up = Upstream::start("named").await;
    let body = format!(
        r#"upstreams:
  named:
    targets: [ {{ addr: "localhost:{}" }} ]
    resolve_interval: 100ms
    retry: {{ attempts: 3, on: [connect_error] }}
routes:
  - {{ match: {{ path: /* }}, upstream: named }}
"#,
        up.addr.port()
    );
    let gw = Gateway::start(&body);
    let c = crate::util::client();
    for _ in 0..5 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    let ups = gw.upstreams();
    let targets = ups["upstreams"]["named"]["targets"].as_array().unwrap();
    assert!(
        targets
            .iter()
            .any(|t| t["addr"] == up.addr.to_string() && t["host"] == "localhost"),
        "{ups}"
    );
}

/// A CA issuing a server certificate (`server.test`) and client certificates.
struct MtlsPki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl MtlsPki {
    fn new(dir: &Path) -> MtlsPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Clients CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["server.test".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        MtlsPki { ca }
    }

    /// A client certificate with this CN and DNS SAN: (cert + key PEM, SHA-256 hex).
    fn client(&self, cn: &str, san: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![san.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.ca).unwrap();
        use sha2::Digest;
        let fp = sha2::Sha256::digest(cert.der())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (format!("{}{}", cert.pem(), key.serialize_pem()), fp)
    }
}

fn mtls_client(port: u16, ca_pem: &str, identity: Option<&str>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .resolve(
            "server.test",
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        );
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_verifies_client_certificates_and_maps_consumers() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = MtlsPki::new(dir.path());
    let other = MtlsPki::new(tempfile::tempdir().unwrap().path());
    let (alice, alice_fp) = pki.client("alice-laptop", "alice.clients.test");
    let (billing, _) = pki.client("billing", "billing.internal");
    let (stranger, _) = pki.client("stranger", "stranger.test");
    let (forged, _) = other.client("alice-laptop", "alice.clients.test");
    let (opt_port, req_port) = (free_port(), free_port());
    let d = dir.path().display();
    let listeners = format!(
        r#"  - {{ name: opt, addr: "127.0.0.1:{opt_port}", tls: {{ certificates: [ {{ cert: "{d}/server.pem", key: "{d}/server.key" }} ], client_auth: optional, client_ca: "{d}/ca.pem" }} }}
  - {{ name: req, addr: "127.0.0.1:{req_port}", tls: {{ certificates: [ {{ cert: "{d}/server.pem", key: "{d}/server.key" }} ], client_auth: required, client_ca: "{d}/ca.pem" }} }}
"#
    );
    let body = format!(
        r#"consumers:
  - {{ name: alice, groups: [staff], certificates: [ {{ sha256: "{alice_fp}" }} ] }}
  - {{ name: billing-svc, certificates: [ {{ san: billing.internal }} ] }}
upstreams:
{}routes:
  - name: svc
    match: {{ path: /svc/* }}
    upstream: u
    plugins:
      - mtls: {{ consumer_required: true, forward: {{ cn: x-client-cn, sha256: x-client-fp }} }}
  - name: open
    match: {{ path: /open/* }}
    upstream: u
"#,
        upstream_yaml("u", &[up.addr], "")
    );
    let _gw = Gateway::start_with(&body, &listeners);
    let url = |port: u16, p: &str| format!("https://server.test:{port}{p}");
    let ca = pki.ca.pem();

    // Optional listener: no certificate is fine for routes without mtls, 401 on mtls routes.
    let anon = mtls_client(opt_port, &ca, None);
    assert_eq!(
        anon.get(url(opt_port, "/open/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = anon.get(url(opt_port, "/svc/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // By fingerprint and by SAN; facts forwarded, client-sent copies replaced.
    let r = mtls_client(opt_port, &ca, Some(&alice))
        .get(url(opt_port, "/svc/x"))
        .header("x-client-cn", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-client-cn"], "alice-laptop");
    assert_eq!(v["headers"]["x-client-fp"], alice_fp);
    let r = mtls_client(opt_port, &ca, Some(&billing))
        .get(url(opt_port, "/svc/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Verified but unknown: refused by consumer_required.
    let r = mtls_client(opt_port, &ca, Some(&stranger))
        .get(url(opt_port, "/svc/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A certificate from another CA fails the handshake even where certificates are optional.
    assert!(mtls_client(opt_port, &ca, Some(&forged))
        .get(url(opt_port, "/open/x"))
        .send()
        .await
        .is_err());
    // Required listener: no certificate, no connection.
    assert!(anon.get(url(req_port, "/open/x")).send().await.is_err());
    let r = mtls_client(req_port, &ca, Some(&alice))
        .get(url(req_port, "/svc/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
