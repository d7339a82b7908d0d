//! Where a send's time goes inside the edge: the histograms the edge records for each send's
//! stages, read from its `/metrics` before and after the measured window, and the median of
//! what was recorded between the two. The rest of send→deliver is outside these stages: the
//! sender's frame reaching the edge, the outboxes' writes and the clients' reads.

/// Each stage's name and histogram, in the order a send passes them.
pub const STAGES: [(&str, &str); 3] = [
    ("claim (Redis round trip)", "chat_ws_send_claim_seconds"),
    ("append (until Kafka acknowledges)", "chat_append_seconds"),
    (
        "frame → fanned out from the log",
        "chat_ws_send_to_fanout_seconds",
    ),
];

/// The text of a Prometheus endpoint (`http://host:port/path`).
pub async fn scrape(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("not an http:// URL: {url}"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    crate::http_get(authority, &format!("/{path}")).await
}

/// The cumulative buckets of histogram `name` (upper bound in seconds, count), in order.
fn buckets(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter_map(|line| {
            let labels = line.strip_prefix(&prefix)?;
            let (labels, count) = labels.rsplit_once("} ")?;
            let le = labels.split(',').find_map(|l| l.strip_prefix("le=\""))?;
            let le = le.trim_end_matches('"');
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The median, in seconds, of what histogram `name` recorded between two scrapes, and how
/// many samples it recorded: linear within the bucket that holds it.
pub fn median_between(before: &str, after: &str, name: &str) -> Option<(f64, u64)> {
    let before = buckets(before, name);
    let after = buckets(after, name);
    let counted = |le: f64| {
        before
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0, |(_, count)| *count)
    };
    let window: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, count)| (le, count.saturating_sub(counted(le))))
        .collect();
    let total = window.last()?.1;
    if total == 0 {
        return None;
    }
    let half = total as f64 / 2.0;
    let (mut lower, mut below) = (0.0, 0u64);
    for (le, count) in window {
        if count as f64 >= half {
            if le.is_infinite() {
                return Some((lower, total));
            }
            let share = (half - below as f64) / (count - below).max(1) as f64;
            return Some((lower + (le - lower) * share, total));
        }
        (lower, below) = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE chat_append_seconds histogram
chat_append_seconds_bucket{le=\"0.0005\"} 10
chat_append_seconds_bucket{le=\"0.001\"} 10
chat_append_seconds_bucket{le=\"+Inf\"} 10
";

    const AFTER: &str = "\
chat_append_seconds_bucket{le=\"0.0005\"} 10
chat_append_seconds_bucket{le=\"0.001\"} 110
chat_append_seconds_bucket{le=\"+Inf\"} 110
chat_append_seconds_sum 0.1
";

    #[test]
    fn the_median_is_of_the_samples_between_the_scrapes() {
        let (median, samples) = median_between(BEFORE, AFTER, "chat_append_seconds").unwrap();
        assert_eq!(samples, 100);
        assert!((median - 0.00075).abs() < 1e-9, "{median}");
        assert_eq!(median_between(AFTER, AFTER, "chat_append_seconds"), None);
        assert_eq!(median_between(BEFORE, AFTER, "chat_other_seconds"), None);
    }
}
