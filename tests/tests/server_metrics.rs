//! `pxb-server`'s `/metrics` beyond the basics (issue 17): API requests by route and code with
//! their latency, clusters per org, discovery cycles, kubeconfig issuance, renewal and refusal.
//! A real server on the simulated garden (as in `server.rs`); the Prometheus text goes through
//! promtool, the OpenMetrics text through a strict structural check ([`check_openmetrics`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pxb_core::api::rest::{CreateDiscovery, CreateOrg};
use pxb_core::catalog::records::{Mode, Role, RoleBinding};
use pxb_daemon::server::config::GardenCredential;
use pxb_tests::control::{ControlPlane, wait_for};
use pxb_tests::sim::{Fault, Fleet, FleetConfig, ProjectRole};
use reqwest::Method;

/// What Prometheus sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,\
    application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// `/metrics` as the provider admin with `accept` (none: the Prometheus text format): content
/// type and body.
async fn scrape(cp: &ControlPlane, accept: Option<&str>) -> (String, String) {
    scrape_as(cp, Some(&cp.admin_token()), accept).await
}

/// `/metrics` with `token` (none: anonymously) and `accept`: content type and body.
async fn scrape_as(cp: &ControlPlane, token: Option<&str>, accept: Option<&str>) -> (String, String) {
    let mut req = reqwest::Client::new().get(format!("{}/metrics", cp.url));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (ct, resp.text().await.expect("metrics text"))
}

/// The value of the sample `series` (name and labels exactly as exposed), if it is there.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{series}: {v:?}: {e}")))
}

/// As [`value`], for a sample that must be there.
#[track_caller]
fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("{series} is not exposed:\n{text}"))
}

#[track_caller]
fn assert_line(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
}

/// Parses OpenMetrics labels `{a="x",b="y"}` (the braces excluded).
fn labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {name:?} in {s:?}"));
        }
        if chars.next() != Some('"') {
            return Err(format!("label {name} has no quoted value in {s:?}"));
        }
        let mut v = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => v.push('\\'),
                    Some('"') => v.push('"'),
                    Some('n') => v.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some('"') => break,
                Some('\n') | None => return Err(format!("unterminated value in {s:?}")),
                Some(c) => v.push(c),
            }
        }
        out.push((name, v));
        match chars.next() {
            Some(',') | None => {}
            Some(c) => return Err(format!("unexpected {c:?} after a label in {s:?}")),
        }
    }
    Ok(out)
}

/// A series of a family: its name and labels.
type Series = (String, Vec<(String, String)>);

/// A strict check of OpenMetrics 1.0 text: metadata lines before their family's samples, each
/// family once and contiguous, sample names the family's plus a suffix its type allows, a
/// `# UNIT` matching the name's suffix, parseable labels and values, histograms with cumulative
/// buckets ending at `+Inf` equal to their `_count`, and `# EOF` last. Returns the families'
/// types.
fn check_openmetrics(text: &str) -> Result<BTreeMap<String, String>, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the text does not end with `# EOF`")?;
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    // Histogram buckets by (family, labels without le): (le, count) in order, then _count.
    let mut buckets: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<Series, f64> = BTreeMap::new();
    for line in body.lines() {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name, rest) = (
                parts.next().unwrap_or_default(),
                parts.next().ok_or(format!("bad metadata line {line:?}"))?,
                parts.next().unwrap_or_default(),
            );
            if current.as_deref() != Some(name) {
                if let Some(c) = current.take() {
                    done.insert(c);
                }
                if done.contains(name) {
                    return Err(format!("family {name} appears twice"));
                }
                current = Some(name.to_owned());
            }
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let allowed = [
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "unknown",
                        "stateset",
                        "summary",
                        "gaugehistogram",
                    ];
                    if !allowed.contains(&rest) {
                        return Err(format!("{name}: unknown type {rest:?}"));
                    }
                    if types.insert(name.to_owned(), rest.to_owned()).is_some() {
                        return Err(format!("{name} has two types"));
                    }
                }
                "UNIT" => {
                    if !name.ends_with(&format!("_{rest}")) {
                        return Err(format!("{name}: the unit {rest} is not its suffix"));
                    }
                }
                _ => return Err(format!("unknown metadata {line:?}")),
            }
            continue;
        }
        let (series, val) = line.rsplit_once(' ').ok_or(format!("no value in {line:?}"))?;
        let v: f64 = match val {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|e| format!("{line:?}: value {v:?}: {e}"))?,
        };
        let (name, labs) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                labels(
                    l.strip_suffix('}')
                        .ok_or(format!("unclosed labels in {line:?}"))?,
                )?,
            ),
            None => (series, Vec::new()),
        };
        let family = current
            .as_deref()
            .ok_or(format!("sample before any metadata: {line:?}"))?;
        let ty = types
            .get(family)
            .ok_or(format!("{family} has no TYPE before {line:?}"))?;
        let suffix = name
            .strip_prefix(family)
            .ok_or(format!("{line:?} is not of family {family} (interleaved?)"))?;
        let allowed: &[&str] = match ty.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(format!("{name}: suffix {suffix:?} not allowed for a {ty}"));
        }
        if ty == "histogram" {
            let rest: Vec<_> = labs.iter().filter(|(k, _)| k != "le").cloned().collect();
            let key = (family.to_owned(), rest);
            match suffix {
                "_bucket" => {
                    let le = labs
                        .iter()
                        .find(|(k, _)| k == "le")
                        .ok_or(format!("bucket without le: {line:?}"))?;
                    let le: f64 = match le.1.as_str() {
                        "+Inf" => f64::INFINITY,
                        s => s.parse().map_err(|e| format!("le {s:?}: {e}"))?,
                    };
                    let b = buckets.entry(key).or_default();
                    if let Some(&(ple, pv)) = b.last()
                        && (le <= ple || v < pv)
                    {
                        return Err(format!("buckets not increasing or not cumulative at {line:?}"));
                    }
                    b.push((le, v));
                }
                "_count" => {
                    counts.insert(key, v);
                }
                _ => {}
            }
        }
    }
    for (key, b) in &buckets {
        let last = b.last().copied().unwrap_or_default();
        if last.0 != f64::INFINITY || counts.get(key) != Some(&last.1) {
            return Err(format!(
                "{key:?}: the +Inf bucket {last:?} is not the _count {:?}",
                counts.get(key)
            ));
        }
    }
    Ok(types)
}

/// The checker finds what it must: it is not a check that passes everything.
#[test]
fn the_openmetrics_check_refuses_broken_texts() {
    let good = "# HELP a_seconds A.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
        a_seconds_bucket{r=\"x\",le=\"1.0\"} 1\na_seconds_bucket{r=\"x\",le=\"+Inf\"} 2\n\
        a_seconds_count{r=\"x\"} 2\na_seconds_sum{r=\"x\"} 3.5\n# TYPE b counter\nb_total 1\n# EOF\n";
    let types = check_openmetrics(good).expect("a good text");
    assert_eq!(types.get("a_seconds").map(String::as_str), Some("histogram"));
    for (bad, why) in [
        (good.replace("# EOF\n", ""), "no EOF"),
        (good.replace("b_total", "b"), "a counter without _total"),
        (
            good.replace("a_seconds_count{r=\"x\"} 2", "a_seconds_count{r=\"x\"} 3"),
            "+Inf is not the count",
        ),
        (
            good.replace("le=\"1.0\"} 1", "le=\"1.0\"} 5"),
            "buckets not cumulative",
        ),
        (
            good.replace("# UNIT a_seconds seconds", "# UNIT a_seconds bytes"),
            "a wrong unit",
        ),
        (
            good.replace("r=\"x\",le=\"1.0\"", "r=\"x,le=\"1.0\""),
            "broken labels",
        ),
        (
            good.replace("b_total 1\n", "b_total 1\n# TYPE c gauge\nc 1\nb_total 2\n"),
            "an interleaved family",
        ),
        (
            good.replace("b_total 1\n", "b_total 1\n# TYPE a_seconds gauge\n"),
            "a family declared twice",
        ),
    ] {
        assert!(check_openmetrics(&bad).is_err(), "{why}: accepted:\n{bad}");
    }
}

/// Requests are counted by method, route template and code, with their latency per route;
/// unknown paths and methods add no label values; both formats parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_are_counted_by_route_and_code_and_timed() {
    let cp = ControlPlane::start("acme", 0, |_| {})
        .await
        .expect("control plane");
    let admin = cp.admin_token();
    let call = |method: Method, path: &'static str, token: String| {
        let cp = &cp;
        async move { cp.call(method, path, &token, None).await.expect("call").0 }
    };
    assert_eq!(call(Method::GET, "/v1/orgs", admin.clone()).await, 200);
    assert_eq!(call(Method::GET, "/v1/orgs", admin.clone()).await, 200);
    assert_eq!(call(Method::GET, "/v1/orgs", "not-a-token".into()).await, 401);
    let missing = call(Method::GET, "/v1/orgs/no-such-org", admin.clone()).await;
    assert_eq!(missing, 404, "a known route, an unknown org");
    assert_eq!(
        call(Method::GET, "/v1/no/such/path-xyz", admin.clone()).await,
        404
    );
    let brew = Method::from_bytes(b"BREW").expect("method");
    let odd = call(brew, "/v1/what-xyz", admin.clone()).await;

    let (ct, text) = scrape(&cp, None).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    for line in [
        "# TYPE pxb_server_api_requests_total counter",
        "pxb_server_api_requests_total{method=\"GET\",route=\"/v1/orgs\",code=\"200\"} 2",
        "pxb_server_api_requests_total{method=\"GET\",route=\"/v1/orgs\",code=\"401\"} 1",
        "pxb_server_api_requests_total{method=\"GET\",route=\"/v1/orgs/{org}\",code=\"404\"} 1",
        "pxb_server_api_requests_total{method=\"GET\",route=\"unmatched\",code=\"404\"} 1",
        "# TYPE pxb_server_api_request_duration_seconds histogram",
        "pxb_server_api_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/orgs\",le=\"+Inf\"} 3",
        "pxb_server_api_request_duration_seconds_count{method=\"GET\",route=\"/v1/orgs\"} 3",
        "pxb_server_api_request_duration_seconds_count{method=\"GET\",route=\"/v1/orgs/{org}\"} 1",
        "pxb_server_api_request_duration_seconds_count{method=\"GET\",route=\"unmatched\"} 1",
    ] {
        assert_line(&text, line);
    }
    let odd_line =
        format!("pxb_server_api_requests_total{{method=\"other\",route=\"unmatched\",code=\"{odd}\"}} 1");
    assert_line(&text, &odd_line);
    // The API's buckets, 5 ms to 10 s.
    let le = |b: &str| {
        format!(
            "pxb_server_api_request_duration_seconds_bucket{{method=\"GET\",route=\"/v1/orgs\",le=\"{b}\"}}"
        )
    };
    for b in ["0.005", "0.1", "1", "10"] {
        let n = must(&text, &le(b));
        assert!((0.0..=3.0).contains(&n), "{b}: {n}");
    }
    assert!(value(&text, &le("20")).is_none(), "no bucket above 10 s:\n{text}");
    let sum = must(
        &text,
        "pxb_server_api_request_duration_seconds_sum{method=\"GET\",route=\"/v1/orgs\"}",
    );
    assert!(sum > 0.0 && sum < 30.0, "{sum}");
    // Raw paths and methods never become label values.
    for raw in ["no-such-org", "/v1/no/such", "what-xyz", "BREW"] {
        assert!(!text.contains(raw), "{raw} leaked into a label:\n{text}");
    }
    pxb_tests::promtool_check_metrics(&text).expect("promtool accepts the Prometheus text");

    // Counted across scrapes: the scrape itself is a request of /metrics.
    let (_, again) = scrape(&cp, None).await;
    assert_line(
        &again,
        "pxb_server_api_requests_total{method=\"GET\",route=\"/metrics\",code=\"200\"} 1",
    );
    assert_line(
        &again,
        "pxb_server_api_requests_total{method=\"GET\",route=\"/v1/orgs\",code=\"200\"} 2",
    );

    let (ct, om) = scrape(&cp, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(ct, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let types = check_openmetrics(&om).unwrap_or_else(|e| panic!("{e}:\n{om}"));
    for (family, ty) in [
        ("pxb_server_api_requests", "counter"),
        ("pxb_server_api_request_duration_seconds", "histogram"),
        ("pxb_server_visit_duration_seconds", "histogram"),
        ("pxb_server_discovery_runs", "counter"),
        ("pxb_server_kubeconfigs_issued", "counter"),
        ("pxb_server_kubeconfigs_renewed", "counter"),
        ("pxb_server_kubeconfigs_refused", "counter"),
        ("pxb_server_visits", "counter"),
        ("pxb_server_clusters", "gauge"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(ty), "{family}:\n{om}");
    }
    assert_line(&om, "# UNIT pxb_server_api_request_duration_seconds seconds");
    assert_line(
        &om,
        "pxb_server_api_requests_total{method=\"GET\",route=\"/v1/orgs\",code=\"200\"} 2",
    );
    cp.shutdown().await;
}

/// The catalog's latency, by operation and record kind: a request that writes the catalog (an
/// org created through the API: one `put` of an `org` record) adds an observation to that
/// series, and only to the read and write series it made; both formats carry it as a histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_operations_are_timed_by_operation_and_kind() {
    let cp = ControlPlane::start("acme", 0, |_| {})
        .await
        .expect("control plane");
    let count = |text: &str, op: &str, kind: &str| {
        value(
            text,
            &format!(
                "pxb_server_catalog_operation_duration_seconds_count{{operation=\"{op}\",kind=\"{kind}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    let (_, before) = scrape(&cp, None).await;
    assert_line(
        &before,
        "# TYPE pxb_server_catalog_operation_duration_seconds histogram",
    );
    let puts_before = count(&before, "put", "org");
    let location_puts_before = count(&before, "put", "location");

    cp.admin_client()
        .create_org(&CreateOrg {
            id: "latency".into(),
            display_name: "Org latency".into(),
            mode: Mode::default(),
            access: vec![binding(Role::Admin, "latency-admins")],
        })
        .await
        .expect("create org");

    let (_, after) = scrape(&cp, None).await;
    assert_eq!(
        count(&after, "put", "org"),
        puts_before + 1.0,
        "one put of an org record is timed:\n{after}"
    );
    assert_eq!(
        count(&after, "put", "location"),
        location_puts_before,
        "no location was written:\n{after}"
    );
    let bucket = |le: &str| {
        format!(
            "pxb_server_catalog_operation_duration_seconds_bucket{{operation=\"put\",kind=\"org\",le=\"{le}\"}}"
        )
    };
    let inf = must(&after, &bucket("+Inf"));
    assert_eq!(inf, puts_before + 1.0, "{after}");
    let sum = must(
        &after,
        "pxb_server_catalog_operation_duration_seconds_sum{operation=\"put\",kind=\"org\"}",
    );
    assert!(sum > 0.0 && sum < 30.0, "{sum}:\n{after}");
    // The buckets: 100 µs to about 6.5 s (×4), cumulative, none above.
    let mut last = 0.0;
    for le in [
        "0.0001", "0.0004", "0.0016", "0.0064", "0.1024", "1.6384", "6.5536",
    ] {
        let n = must(&after, &bucket(le));
        assert!((last..=inf).contains(&n), "le {le}: {n}:\n{after}");
        last = n;
    }
    assert!(value(&after, &bucket("26.2144")).is_none(), "{after}");
    pxb_tests::promtool_check_metrics(&after).expect("promtool");

    // A second write of the same kind counts again.
    let (status, body) = cp
        .call(
            Method::PUT,
            "/v1/orgs/latency",
            &cp.admin_token(),
            Some(serde_json::json!({"displayName": "Org latency, renamed"})),
        )
        .await
        .expect("update org");
    assert_eq!(status, 200, "{body}");
    let (_, again) = scrape(&cp, None).await;
    assert_eq!(
        count(&again, "put", "org"),
        puts_before + 2.0,
        "the update's put is timed:\n{again}"
    );
    let (_, om) = scrape(&cp, Some(PROMETHEUS_ACCEPT)).await;
    let types = check_openmetrics(&om).unwrap_or_else(|e| panic!("{e}:\n{om}"));
    assert_eq!(
        types
            .get("pxb_server_catalog_operation_duration_seconds")
            .map(String::as_str),
        Some("histogram"),
        "{om}"
    );
    assert_line(
        &om,
        "# UNIT pxb_server_catalog_operation_duration_seconds seconds",
    );
    assert_line(
        &om,
        &format!(
            "pxb_server_catalog_operation_duration_seconds_count{{operation=\"put\",kind=\"org\"}} {}",
            puts_before + 2.0
        ),
    );
    cp.shutdown().await;
}

/// `role` for members of `group`.
fn binding(role: Role, group: &str) -> RoleBinding {
    RoleBinding {
        role,
        groups: vec![group.to_owned()],
        app_roles: Vec::new(),
    }
}

/// Org `id` (admins: group `<id>-admins`) discovering `project` with the credential of that name;
/// returns an admin's token.
async fn org_discovering(cp: &ControlPlane, id: &str, project: &str) -> String {
    cp.admin_client()
        .create_org(&CreateOrg {
            id: id.into(),
            display_name: format!("Org {id}"),
            mode: Mode::default(),
            access: vec![binding(Role::Admin, &format!("{id}-admins"))],
        })
        .await
        .expect("create org");
    let token = cp.token(&format!("{id}-admin"), &[&format!("{id}-admins")]);
    cp.client(&token)
        .create_discovery(
            id,
            &CreateDiscovery {
                id: "dev".into(),
                project: project.into(),
                credential: project.into(),
                interval_secs: Some(5),
            },
        )
        .await
        .expect("discovery");
    token
}

/// The clusters of `org` in `state` as exposed.
fn org_clusters(text: &str, org: &str, state: &str) -> Option<f64> {
    value(
        text,
        &format!("pxb_server_org_clusters{{org=\"{org}\",state=\"{state}\"}}"),
    )
}

/// Two orgs: `acme` discovers project `acme` (3 shoots, a project admin's credential), `globex`
/// project `globex` (2 shoots, a viewer's credential: the garden refuses its kubeconfig
/// requests). Clusters per org, discovery cycles, kubeconfigs issued, failed and refused; and
/// counters that do not go down when a discovery is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_discovery_and_kubeconfig_series_per_org() {
    let fleet = Fleet::start(FleetConfig::default()).expect("fleet");
    fleet.add_project("acme").expect("project");
    fleet.add_shoots("acme", "shoot", 3).expect("shoots");
    fleet.add_project("globex").expect("project");
    fleet.add_shoots("globex", "gx", 2).expect("shoots");
    let viewer = fleet
        .add_service_account("globex", "pxb", ProjectRole::Viewer)
        .expect("service account");
    let dir = tempfile::tempdir().expect("dir");
    let globex_kubeconfig = dir.path().join("garden-globex.yaml");
    std::fs::write(&globex_kubeconfig, fleet.garden_kubeconfig(&viewer)).expect("kubeconfig");
    let path = globex_kubeconfig.display().to_string();
    let cp = ControlPlane::start_on(fleet, "acme", move |c| {
        c.garden_credentials.insert(
            "globex".into(),
            GardenCredential::new(path)
                .for_orgs(["globex"])
                .for_projects(["globex"]),
        );
    })
    .await
    .expect("control plane");
    org_discovering(&cp, "acme", "acme").await;
    let globex = org_discovering(&cp, "globex", "globex").await;

    let text = wait_for(
        "acme 3 AgentMissing (reached, no agent), globex 2 Unreachable",
        Duration::from_secs(60),
        || async {
            let (_, t) = scrape(&cp, None).await;
            let seen = (
                org_clusters(&t, "acme", "AgentMissing"),
                org_clusters(&t, "globex", "Unreachable"),
            );
            if seen == (Some(3.0), Some(2.0)) {
                Ok(Some(t))
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await
    .expect("the fleet settles");
    // Per org, every state, zeros included; the fleet-wide series stays.
    for (org, state, n) in [
        ("acme", "AgentMissing", 3.0),
        ("acme", "Ready", 0.0),
        ("acme", "Unreachable", 0.0),
        ("globex", "Unreachable", 2.0),
        ("globex", "Ready", 0.0),
    ] {
        assert_eq!(org_clusters(&text, org, state), Some(n), "{org} {state}:\n{text}");
    }
    assert_line(&text, "pxb_server_clusters{state=\"AgentMissing\"} 3");
    assert_line(&text, "pxb_server_clusters{state=\"Unreachable\"} 2");

    // Tenant names are not for everyone who reaches the port: without a token the scrape has the
    // fleet-wide series and no org, discovery or shoot name; an org's member sees its own org's
    // series and nothing of another org; a token the server does not accept gets 401.
    let (_, anonymous) = scrape_as(&cp, None, None).await;
    assert_line(&anonymous, "pxb_server_clusters{state=\"AgentMissing\"} 3");
    for name in ["acme", "globex", "shoot-0000", "gx-0000", "discovery=\""] {
        assert!(!anonymous.contains(name), "{name} anonymously:\n{anonymous}");
    }
    pxb_tests::promtool_check_metrics(&anonymous).expect("promtool");
    let (_, tenant) = scrape_as(&cp, Some(&globex), None).await;
    assert_eq!(
        org_clusters(&tenant, "globex", "Unreachable"),
        Some(2.0),
        "{tenant}"
    );
    assert_line(
        &tenant,
        "pxb_server_discovery_shoots{org=\"globex\",discovery=\"dev\"} 2",
    );
    assert!(!tenant.contains("acme"), "acme to globex's member:\n{tenant}");
    let outsider = cp.token("outsider", &["no-such-group"]);
    let (_, none) = scrape_as(&cp, Some(&outsider), None).await;
    assert!(
        !none.contains("acme") && !none.contains("globex"),
        "to a member of no org:\n{none}"
    );
    let refused = reqwest::Client::new()
        .get(format!("{}/metrics", cp.url))
        .bearer_auth("not-a-token")
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(refused.status().as_u16(), 401);
    // One kubeconfig per acme shoot, none renewed (they last an hour); globex's are refused by
    // the garden, at least once per shoot.
    assert_line(&text, "pxb_server_kubeconfigs_issued_total{result=\"ok\"} 3");
    assert_line(&text, "pxb_server_kubeconfigs_renewed_total{result=\"ok\"} 0");
    assert_line(&text, "pxb_server_kubeconfigs_renewed_total{result=\"failed\"} 0");
    assert_line(&text, "pxb_server_kubeconfigs_refused_total 0");
    let failed = must(&text, "pxb_server_kubeconfigs_issued_total{result=\"failed\"}");
    assert!(failed >= 2.0, "{failed}:\n{text}");
    // Both discoveries listed their project at least once, and know their shoots.
    let runs = must(&text, "pxb_server_discovery_runs_total{result=\"ok\"}");
    assert!(runs >= 2.0, "{runs}:\n{text}");
    assert_line(&text, "pxb_server_discovery_runs_total{result=\"failed\"} 0");
    assert_line(
        &text,
        "pxb_server_discovery_shoots{org=\"acme\",discovery=\"dev\"} 3",
    );
    assert_line(
        &text,
        "pxb_server_discovery_shoots{org=\"globex\",discovery=\"dev\"} 2",
    );
    // Visits are timed.
    let visits = must(&text, "pxb_server_visits_total{result=\"ok\"}")
        + must(&text, "pxb_server_visits_total{result=\"failed\"}");
    let timed = must(&text, "pxb_server_visit_duration_seconds_count");
    assert!(
        timed >= 5.0 && timed <= visits + 1.0,
        "{timed} of {visits}:\n{text}"
    );
    assert_eq!(
        must(&text, "pxb_server_visit_duration_seconds_bucket{le=\"+Inf\"}"),
        timed
    );
    pxb_tests::promtool_check_metrics(&text).expect("promtool");

    // A cluster that refuses its kubeconfig (401): counted, and the next visit gets a new one.
    cp.fleet
        .set_fault("acme", "shoot-00000", Fault::HttpError(401))
        .expect("fault");
    let text = wait_for(
        "a refusal and a new kubeconfig",
        Duration::from_secs(60),
        || async {
            let (_, t) = scrape(&cp, None).await;
            let refused = value(&t, "pxb_server_kubeconfigs_refused_total").unwrap_or(0.0);
            let issued = value(&t, "pxb_server_kubeconfigs_issued_total{result=\"ok\"}").unwrap_or(0.0);
            if refused >= 1.0 && issued >= 4.0 {
                Ok(Some(t))
            } else {
                Err(format!("refused {refused}, issued {issued}"))
            }
        },
    )
    .await
    .expect("the refusal is counted");
    assert_line(&text, "pxb_server_kubeconfigs_renewed_total{result=\"ok\"} 0");

    // Removing globex's discovery does not take its counts away.
    let before = must(&text, "pxb_server_kubeconfigs_issued_total{result=\"failed\"}");
    let runs_before = must(&text, "pxb_server_discovery_runs_total{result=\"ok\"}");
    let (status, body) = cp
        .call(Method::DELETE, "/v1/orgs/globex/discoveries/dev", &globex, None)
        .await
        .expect("delete");
    assert!((200..300).contains(&status), "{status} {body}");
    let (_, after) = scrape(&cp, None).await;
    assert!(
        !after.contains("pxb_server_discovery_shoots{org=\"globex\""),
        "{after}"
    );
    let failed_after = must(&after, "pxb_server_kubeconfigs_issued_total{result=\"failed\"}");
    assert!(failed_after >= before, "{failed_after} < {before}:\n{after}");
    let runs_after = must(&after, "pxb_server_discovery_runs_total{result=\"ok\"}");
    assert!(
        runs_after >= runs_before,
        "{runs_after} < {runs_before}:\n{after}"
    );
    pxb_tests::promtool_check_metrics(&after).expect("promtool");
    let (_, om) = scrape(&cp, Some(PROMETHEUS_ACCEPT)).await;
    let types = check_openmetrics(&om).unwrap_or_else(|e| panic!("{e}:\n{om}"));
    for (family, ty) in [
        ("pxb_server_org_clusters", "gauge"),
        ("pxb_server_discovery_shoots", "gauge"),
        ("pxb_server_visit_duration_seconds", "histogram"),
        ("pxb_server_kubeconfigs_issued", "counter"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(ty), "{family}:\n{om}");
    }
    assert_line(&om, "pxb_server_org_clusters{org=\"acme\",state=\"Retired\"} 0");
    cp.shutdown().await;
}

/// Kubeconfigs that live 12 s are renewed (at 50–90 % of their life) and counted as renewals,
/// not as new issuances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_are_counted_apart_from_issuance() {
    let fleet = Fleet::start(FleetConfig {
        kubeconfig_min_seconds: 10,
        ..FleetConfig::default()
    })
    .expect("fleet");
    fleet.add_project("acme").expect("project");
    fleet.add_shoots("acme", "shoot", 1).expect("shoot");
    let cp = ControlPlane::start_on(fleet, "acme", |c| c.fleet.kubeconfig_lifetime_secs = 12)
        .await
        .expect("control plane");
    org_discovering(&cp, "acme", "acme").await;
    let text = wait_for("a renewal", Duration::from_secs(40), || async {
        let (_, t) = scrape(&cp, None).await;
        match value(&t, "pxb_server_kubeconfigs_renewed_total{result=\"ok\"}") {
            Some(n) if n >= 1.0 => Ok(Some(t)),
            other => Err(format!("renewed {other:?}")),
        }
    })
    .await
    .expect("renewed");
    assert_line(&text, "pxb_server_kubeconfigs_issued_total{result=\"ok\"} 1");
    assert_line(&text, "pxb_server_kubeconfigs_issued_total{result=\"failed\"} 0");
    assert_line(&text, "pxb_server_kubeconfigs_renewed_total{result=\"failed\"} 0");
    cp.shutdown().await;
}
