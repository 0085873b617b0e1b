//! The demo upstream used by `make run`: answers every request with JSON describing it,
//! `GET /healthz` with 200, `GET /products` with a JSON collection of 40 products and
//! `GET /products.xml` with the same catalog as XML (for the shaping and conversion demos),
//! `GET /products?ids=1,3` with those products only, and the JSON fixtures of the composite
//! demo: `/fixtures/orders/{id}`, `/fixtures/users/{id}`, `/fixtures/loyalty/{id}`.
//!
//! ```sh
//! cargo run --example echo -- 127.0.0.1:9001 users-a
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;

async fn handle(req: Request<Incoming>, name: String) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(doc) = fixture(req.uri().path()) {
        return Ok(typed("application/json", doc.to_string()));
    }
    match req.uri().path() {
        "/healthz" => return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n")))),
        "/products" => {
            let ids = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|p| p.strip_prefix("ids="))
                    .map(|v| v.split(',').filter_map(|i| i.parse().ok()).collect())
            });
            return Ok(typed("application/json", products_json(ids)));
        }
        "/products.xml" => return Ok(typed("application/xml", products_xml())),
        _ => {}
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let (method, uri) = (req.method().to_string(), req.uri().to_string());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let doc = serde_json::json!({ "upstream": name, "method": method, "uri": uri, "headers": headers, "body_bytes": body.len() });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn typed(content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert("content-type", http::HeaderValue::from_static(content_type));
    resp
}

const COLORS: [&str; 4] = ["red", "green", "blue", "black"];

/// The JSON documents of the composite demo (`/orders/{id}/view` in conf/postern.yaml).
fn fixture(path: &str) -> Option<serde_json::Value> {
    let rest = path.strip_prefix("/fixtures/")?;
    let (kind, id) = rest.split_once('/')?;
    let id: u32 = id.parse().ok()?;
    Some(match kind {
        "orders" => serde_json::json!({
            "id": id, "user_id": 100 + id % 3, "status": "shipped",
            "items": [ { "product_id": id % 40 + 1, "qty": 2 }, { "product_id": (id + 7) % 40 + 1, "qty": 1 } ],
            "internal_notes": "fragile",
        }),
        "users" => serde_json::json!({
            "id": id, "name": format!("Customer {id}"), "email": format!("customer{id}@example.com"),
            "password_hash": "$argon2id$v=19$not-for-clients",
        }),
        "loyalty" => {
            serde_json::json!({ "user_id": id, "points": id * 37 % 1000, "tier": "silver" })
        }
        _ => return None,
    })
}

fn products_json(ids: Option<Vec<u32>>) -> String {
    let items: Vec<serde_json::Value> = (1..=40u32)
        .filter(|i| ids.as_ref().is_none_or(|ids| ids.contains(i)))
        .map(|i| {
            serde_json::json!({
                "id": i,
                "name": format!("{} widget {i}", COLORS[(i % 4) as usize]),
                "price": f64::from(i * 37 % 100) + 0.5,
                "status": if i % 6 == 0 { "discontinued" } else { "active" },
                "stock": i * 13 % 50,
                "internal_cost": i * 11,
            })
        })
        .collect();
    serde_json::json!({ "data": { "items": items }, "source": "demo catalog" }).to_string()
}

fn products_xml() -> String {
    let mut x = String::from("<?xml version=\"1.0\"?>\n<catalog source=\"demo\">\n");
    for i in 1..=5u32 {
        x.push_str(&format!(
            "  <product id=\"{i}\"><name>{} widget {i}</name><price>{}.5</price><tag>new</tag><tag>demo</tag></product>\n",
            COLORS[(i % 4) as usize],
            i * 37 % 100
        ));
    }
    x.push_str("</catalog>\n");
    x
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let name = args.next().unwrap_or_else(|| addr.clone());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("echo upstream {name} listening on {addr}");
    loop {
        let (sock, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, name.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(sock), svc)
                .await;
        });
    }
}
