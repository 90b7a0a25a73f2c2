//! Prometheus metrics through [`prometheus_client`]: encoding a
//! [`Registry`] as the exposition a scraper asks for ([`encode`]).
//!
//! Two formats, chosen from the request's `Accept` header ([`wants_openmetrics`]):
//!
//! - **OpenMetrics 1.0** ([`OPENMETRICS_CONTENT_TYPE`]) when the scraper prefers it, as
//!   Prometheus does. Counters are declared without their `_total` suffix (`# TYPE x counter`,
//!   sample `x_total`), info metrics as `# TYPE x info` with sample `x_info`, and the text ends
//!   with `# EOF`.
//! - **Prometheus text 0.0.4** ([`PROMETHEUS_TEXT_CONTENT_TYPE`]) otherwise (no `Accept`, `*/*`,
//!   `text/plain`): what curl shows and what `promtool check metrics` reads (it has no
//!   OpenMetrics parser). The same series, declared by their sample names (`x_total`
//!   `counter`, `x_info` `gauge`).
//!
//! Names: register counters without `_total` and info metrics without `_info`; the encoders add
//! the suffix (and `prometheus-client` panics in debug builds on a counter named `…_total`).
//! Help texts are registered without a final period; the registry adds one.

use prometheus_client::registry::Registry;

/// The `Content-Type` of OpenMetrics text 1.0, as `prometheus-client`'s text encoder writes it.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// An encoded registry: the body of a `/metrics` answer and its `Content-Type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposition {
    /// [`OPENMETRICS_CONTENT_TYPE`] or [`PROMETHEUS_TEXT_CONTENT_TYPE`].
    pub content_type: &'static str,
    /// The exposition text.
    pub body: String,
}

/// Whether a request with this `Accept` header gets OpenMetrics: it names
/// `application/openmetrics-text` with a quality above zero and at least that of the best
/// match for `text/plain` (`text/plain`, `text/*`, `*/*`). Prometheus' default header prefers
/// OpenMetrics; no header, `*/*` or `text/plain` get the Prometheus text format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// `registry` in the format that a request with this `Accept` header gets ([`wants_openmetrics`]).
pub fn encode(registry: &Registry, accept: Option<&str>) -> Exposition {
    if wants_openmetrics(accept) {
        encode_openmetrics(registry)
    } else {
        encode_prometheus_text(registry)
    }
}

/// `registry` as OpenMetrics text 1.0.
pub fn encode_openmetrics(registry: &Registry) -> Exposition {
    let mut body = String::new();
    // Writing into a String fails only if a metric's own encoding does; pxb's never do.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::error!("encoding the metrics as OpenMetrics: {e}");
    }
    Exposition {
        content_type: OPENMETRICS_CONTENT_TYPE,
        body,
    }
}

/// `registry` as Prometheus text 0.0.4.
pub fn encode_prometheus_text(registry: &Registry) -> Exposition {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
        tracing::error!("encoding the metrics as Prometheus text: {e}");
    }
    Exposition {
        content_type: PROMETHEUS_TEXT_CONTENT_TYPE,
        body,
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::info::Info;

    use super::*;

    fn registry() -> Registry {
        let mut r = Registry::default();
        r.register("pxb_test", "The version", Info::new(vec![("version", "1.2.3")]));
        let visits = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        visits.get_or_create(&vec![("result", "ok")]).inc_by(3);
        r.register("pxb_test_visits", "Visits by result", visits);
        let backups = Family::<Vec<(&'static str, String)>, Gauge>::default();
        backups
            .get_or_create(&vec![("location", "a \"quoted\\ name\n".into())])
            .set(2);
        r.register("pxb_test_catalog_backups", "Backups found", backups);
        r
    }

    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,\
        application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

    #[test]
    fn negotiation_follows_the_accept_header() {
        assert!(wants_openmetrics(Some(PROMETHEUS_ACCEPT)));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        for accept in [
            None,
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0, */*"),
            Some("application/json"),
        ] {
            assert!(!wants_openmetrics(accept), "{accept:?}");
        }
    }

    #[test]
    fn the_prometheus_text_declares_sample_names_and_passes_promtool() {
        let e = encode(&registry(), None);
        assert_eq!(e.content_type, "text/plain; version=0.0.4; charset=utf-8");
        let body = &e.body;
        for line in [
            "# HELP pxb_test_info The version.",
            "# TYPE pxb_test_info gauge",
            "pxb_test_info{version=\"1.2.3\"} 1",
            "# TYPE pxb_test_visits_total counter",
            "pxb_test_visits_total{result=\"ok\"} 3",
            "# TYPE pxb_test_catalog_backups gauge",
            "pxb_test_catalog_backups{location=\"a \\\"quoted\\\\ name\\n\"} 2",
        ] {
            assert!(body.lines().any(|l| l == line), "{line:?} not in:\n{body}");
        }
        assert!(!body.contains("# EOF"), "{body}");
        pxb_harness::promtool_check_metrics(body).expect("promtool accepts the Prometheus text");
    }

    #[test]
    fn openmetrics_is_what_prometheus_gets() {
        let e = encode(&registry(), Some(PROMETHEUS_ACCEPT));
        assert_eq!(
            e.content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let body = &e.body;
        for line in [
            "# TYPE pxb_test info",
            "pxb_test_info{version=\"1.2.3\"} 1",
            "# TYPE pxb_test_visits counter",
            "pxb_test_visits_total{result=\"ok\"} 3",
        ] {
            assert!(body.lines().any(|l| l == line), "{line:?} not in:\n{body}");
        }
        assert!(body.ends_with("# EOF\n"), "{body}");
        // promtool reads only the Prometheus text format: the OpenMetrics declarations are not
        // for it (which is why plain requests get that format).
        assert!(pxb_harness::promtool_check_metrics(body).is_err());
    }
}
