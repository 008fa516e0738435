//! What the ingress counts, and its Prometheus text (exposition format 0.0.4).
//!
//! Every app has counters of its own, made when the app is set and dropped when it is
//! removed; a request adds to them with a few relaxed atomic additions and takes no lock. The
//! ingress-wide numbers (connections open, backends routed) are read when the text is made.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bounds of the latency histogram's buckets, in seconds (`+Inf` follows).
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in microseconds, for comparing without floating point on the hot path.
const BUCKET_MICROS: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Who gave the answer a request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The ingress itself: no route, no instance ready or reachable, a timeout, a refused
    /// request.
    Ingress,
    /// An instance.
    Upstream,
}

/// One app's counters.
#[derive(Debug, Default)]
pub(crate) struct AppMetrics {
    /// Requests answered, by status class: 1xx to 5xx (anything else counts as 5xx).
    by_class: [AtomicU64; 5],
    /// 5xx answers the ingress gave itself.
    ingress_5xx: AtomicU64,
    /// 5xx answers relayed from an instance.
    upstream_5xx: AtomicU64,
    /// Connections to instances that could not be made for a request.
    connect_errors: AtomicU64,
    /// Requests by latency bucket (not cumulative); the last is over the last bound.
    buckets: [AtomicU64; 14],
    /// The sum of the latencies, in microseconds.
    latency_micros: AtomicU64,
}

impl AppMetrics {
    /// Counts an answer with `status`, given by `source`, `latency` after its request's head
    /// was read.
    pub(crate) fn answered(&self, status: u16, source: Source, latency: Duration) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        if class == 4 {
            match source {
                Source::Ingress => &self.ingress_5xx,
                Source::Upstream => &self.upstream_5xx,
            }
            .fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKET_MICROS
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(BUCKET_MICROS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts a connection to an instance that could not be made (refused, reset, timed out).
    pub(crate) fn connect_error(&self) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The ingress-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Global {
    /// Client connections open now.
    pub(crate) open_connections: AtomicU64,
    /// Threads accepting client connections now.
    pub(crate) accepting: AtomicU64,
    /// Requests for a host no app is served at.
    pub(crate) unknown_host: AtomicU64,
}

/// One app as the text shows it.
pub(crate) struct AppView<'a> {
    pub(crate) id: &'a str,
    pub(crate) name: &'a str,
    pub(crate) metrics: &'a AppMetrics,
}

/// The ingress-wide numbers as the text shows them.
pub(crate) struct Totals {
    pub(crate) open_connections: u64,
    pub(crate) apps: u64,
    pub(crate) in_rotation: u64,
    pub(crate) out_of_rotation: u64,
    pub(crate) unknown_host: u64,
}

/// A label value as the text format wants it: backslash, double quote and line feed escaped.
pub(crate) fn escape_label(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `app="..",app_id=".."`.
fn app_labels(app: &AppView<'_>) -> String {
    let mut s = String::from("app=\"");
    escape_label(app.name, &mut s);
    s.push_str("\",app_id=\"");
    escape_label(app.id, &mut s);
    s.push('"');
    s
}

/// Seconds as the text format writes them.
fn seconds(micros: u64) -> String {
    let s = micros as f64 / 1e6;
    format!("{s}")
}

/// The Prometheus text for `apps` and `totals`.
pub(crate) fn render(apps: &[AppView<'_>], totals: &Totals) -> String {
    let mut out = String::with_capacity(1024 + apps.len() * 2048);
    let labels: Vec<String> = apps.iter().map(app_labels).collect();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    header(
        &mut out,
        "slipway_ingress_requests_total",
        "counter",
        "Requests answered for an app, by status class, whoever answered.",
    );
    for (app, l) in apps.iter().zip(&labels) {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let n = load(&app.metrics.by_class[i]);
            let _ = writeln!(
                out,
                "slipway_ingress_requests_total{{{l},code=\"{class}\"}} {n}"
            );
        }
    }
    header(
        &mut out,
        "slipway_ingress_responses_5xx_total",
        "counter",
        "5xx answers for an app: source=\"ingress\" when the ingress gave them itself (no instance ready or reachable, a timeout), source=\"upstream\" when an instance did.",
    );
    for (app, l) in apps.iter().zip(&labels) {
        let (own, up) = (
            load(&app.metrics.ingress_5xx),
            load(&app.metrics.upstream_5xx),
        );
        let _ = writeln!(
            out,
            "slipway_ingress_responses_5xx_total{{{l},source=\"ingress\"}} {own}"
        );
        let _ = writeln!(
            out,
            "slipway_ingress_responses_5xx_total{{{l},source=\"upstream\"}} {up}"
        );
    }
    header(
        &mut out,
        "slipway_ingress_upstream_connect_errors_total",
        "counter",
        "Connections to an app's instances that could not be made for a request (refused, reset, timed out).",
    );
    for (app, l) in apps.iter().zip(&labels) {
        let n = load(&app.metrics.connect_errors);
        let _ = writeln!(
            out,
            "slipway_ingress_upstream_connect_errors_total{{{l}}} {n}"
        );
    }
    header(
        &mut out,
        "slipway_ingress_request_duration_seconds",
        "histogram",
        "Seconds from a request's head being read to its answer's head being sent, for an app.",
    );
    for (app, l) in apps.iter().zip(&labels) {
        let counts: Vec<u64> = app.metrics.buckets.iter().map(load).collect();
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "slipway_ingress_request_duration_seconds_bucket{{{l},le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += counts[LATENCY_BUCKETS.len()];
        let _ = writeln!(
            out,
            "slipway_ingress_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "slipway_ingress_request_duration_seconds_sum{{{l}}} {}",
            seconds(load(&app.metrics.latency_micros))
        );
        let _ = writeln!(
            out,
            "slipway_ingress_request_duration_seconds_count{{{l}}} {cumulative}"
        );
    }
    let gauges = [
        (
            "slipway_ingress_open_connections",
            "gauge",
            "Client connections open now.",
            totals.open_connections,
        ),
        (
            "slipway_ingress_routed_apps",
            "gauge",
            "Apps the ingress serves now.",
            totals.apps,
        ),
        (
            "slipway_ingress_routed_backends",
            "gauge",
            "Instances in rotation now: ready, not draining, and not refusing connections.",
            totals.in_rotation,
        ),
        (
            "slipway_ingress_backends_out_of_rotation",
            "gauge",
            "Instances out of rotation now because connecting to them failed; each rejoins once a probe connects again.",
            totals.out_of_rotation,
        ),
        (
            "slipway_ingress_unknown_host_requests_total",
            "counter",
            "Requests for a host no app is served at (answered 404).",
            totals.unknown_host,
        ),
    ];
    for (name, kind, help, value) in gauges {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_buckets_are_cumulative() {
        let m = AppMetrics::default();
        m.answered(200, Source::Upstream, Duration::from_micros(900));
        m.answered(503, Source::Ingress, Duration::from_millis(3));
        m.answered(500, Source::Upstream, Duration::from_secs(11));
        let text = render(
            &[AppView {
                id: "i\"d",
                name: "a\\b\nc",
                metrics: &m,
            }],
            &Totals {
                open_connections: 1,
                apps: 1,
                in_rotation: 2,
                out_of_rotation: 0,
                unknown_host: 0,
            },
        );
        let l = r#"app="a\\b\nc",app_id="i\"d""#;
        for line in [
            format!("slipway_ingress_requests_total{{{l},code=\"5xx\"}} 2"),
            format!("slipway_ingress_responses_5xx_total{{{l},source=\"ingress\"}} 1"),
            format!("slipway_ingress_request_duration_seconds_bucket{{{l},le=\"0.001\"}} 1"),
            format!("slipway_ingress_request_duration_seconds_bucket{{{l},le=\"0.005\"}} 2"),
            format!("slipway_ingress_request_duration_seconds_bucket{{{l},le=\"10\"}} 2"),
            format!("slipway_ingress_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} 3"),
            format!("slipway_ingress_request_duration_seconds_sum{{{l}}} 11.0039"),
            format!("slipway_ingress_request_duration_seconds_count{{{l}}} 3"),
            "slipway_ingress_routed_backends 2".to_string(),
        ] {
            assert!(
                text.lines().any(|t| t == line),
                "{line} is missing:\n{text}"
            );
        }
    }
}
