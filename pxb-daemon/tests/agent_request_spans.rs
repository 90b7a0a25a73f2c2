//! The agent's read API serves each request in a `request` span (`request_id`, echoed in
//! `x-request-id`; `method`; `route`, the endpoint's fixed path) and logs neither the query
//! string, the raw path, the API token nor the `Authorization` header (JSON logs through
//! pxb-telemetry, as `PXB_LOG_FORMAT=json` writes them). This binary has this one test: its
//! subscriber is the process's only one.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use pxb_daemon::agent::api::{ApiState, REQUEST_ID, TOKEN_HEADER};
use pxb_daemon::agent::volumes::MemoryVolumes;
use pxb_daemon::agent::{AgentConfig, backups, locations};
use serde_json::json;

/// Log lines written into a shared buffer.
struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A raw GET (so the test controls every byte sent): status and the `x-request-id` it answered.
fn get(addr: std::net::SocketAddr, target: &str, headers: &str) -> (u16, Option<String>) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: agent\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let id = out
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(REQUEST_ID).then(|| v.trim().to_owned())
        });
    (code, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_api_requests_log_in_spans_without_secrets_or_queries() {
    let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
    let settings = pxb_telemetry::Settings {
        format: pxb_telemetry::LogFormat::Json,
        filter: "info,pxb_daemon=debug".into(),
        ..pxb_telemetry::Settings::default()
    };
    let sink = buf.clone();
    let subscriber = settings
        .subscriber(move || Sink(sink.clone()))
        .expect("subscriber");
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    // The API alone, over a kube client that is never called (nothing here reads the cluster).
    let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().expect("url")))
        .expect("client");
    let tmp = tempfile::tempdir().expect("tmp");
    let lctx = locations::Context::new(client, AgentConfig::default());
    let token = "agent-token-0123456789abcdef0123456789abcdef";
    let state = Arc::new(ApiState {
        backups: backups::Context::new(lctx, Arc::new(MemoryVolumes::new(tmp.path()))),
        ready: true.into(),
        token: Some(token.into()),
    });
    let (addr, server) = pxb_daemon::agent::api::bind("127.0.0.1:0".parse().expect("addr"), state)
        .await
        .expect("bind");

    let secret_query = "/v1/catalog?location=hush-location&namespace=hush-namespace";
    let auth = "Authorization: Bearer hush-bearer-token\r\n";
    let requests = [
        // No token: 401, logged with the route, not the query.
        (secret_query.to_owned(), auth.to_owned(), 401, "/v1/catalog"),
        // The token: the location is unknown (404), still the route only.
        (
            secret_query.to_owned(),
            format!("{TOKEN_HEADER}: {token}\r\n{auth}"),
            404,
            "/v1/catalog",
        ),
        ("/metrics".to_owned(), String::new(), 200, "/metrics"),
        ("/hush-path/x".to_owned(), String::new(), 404, "(unmatched)"),
    ];
    let mut answered = Vec::new();
    for (target, headers, code, route) in &requests {
        let (got, id) = tokio::task::spawn_blocking({
            let (target, headers) = (target.clone(), headers.clone());
            move || get(addr, &target, &headers)
        })
        .await
        .expect("request");
        assert_eq!(got, *code, "{target}");
        answered.push((
            id.unwrap_or_else(|| panic!("{target}: no {REQUEST_ID}")),
            *code,
            *route,
        ));
    }
    server.abort();

    let text = String::from_utf8(buf.lock().expect("logs").clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not a JSON line: {l}")))
        .collect();
    for (id, code, route) in &answered {
        let line = lines
            .iter()
            .find(|l| l["span"]["request_id"] == json!(id))
            .unwrap_or_else(|| panic!("no line of request {id} in:\n{text}"));
        assert_eq!(line["fields"]["message"], "request served", "{line}");
        assert_eq!(line["fields"]["status"], json!(code), "{line}");
        assert_eq!(
            (
                &line["span"]["name"],
                &line["span"]["method"],
                &line["span"]["route"]
            ),
            (&json!("request"), &json!("GET"), &json!(route)),
            "{line}"
        );
    }
    for secret in ["hush", token, "Bearer", "location="] {
        assert!(!text.contains(secret), "{secret:?} was logged:\n{text}");
    }
}
