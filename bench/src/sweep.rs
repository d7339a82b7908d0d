//! `ws-load --sweep`: how latency and CPU grow with the rate and with the number of connections.
//!
//! One load step (with its own floor) per point: every rate of `--sweep-rates` at
//! `--connections`, then every count of `--sweep-connections` at `--rate`, always with the
//! conversation size of `--connections / --conversations`. The table goes to stdout and to
//! `<out>.md`; the chart, drawn here from the same numbers, to `<out>.svg`.

use std::fmt::Write as _;

use crate::{Args, Shape, cpu};

/// What one point of the sweep measured.
struct Point {
    shape: Shape,
    p50_ms: f64,
    p99_ms: f64,
    floor_p50_ms: f64,
    floor_p99_ms: f64,
    deliveries_per_sec: f64,
    expected: u64,
    received: u64,
    edge_micros: f64,
    stack_micros: f64,
    stack_cores: f64,
    load_tool_cores: f64,
}

pub async fn run(
    args: &Args,
    watched: &[cpu::Watched],
    base: Shape,
    run: &str,
) -> anyhow::Result<()> {
    let per_conversation = (base.connections / base.conversations).max(2);
    let shapes: Vec<Shape> = args
        .sweep_rates
        .iter()
        .map(|&rate| Shape { rate, ..base })
        .chain(args.sweep_connections.iter().map(|&connections| Shape {
            connections,
            conversations: (connections / per_conversation).max(1),
            ..base
        }))
        .collect();
    let mut points = Vec::new();
    for (i, shape) in shapes.into_iter().enumerate() {
        eprintln!(
            "sweep point {}: {} msg/s, {} connections",
            i + 1,
            shape.rate,
            shape.connections
        );
        // Users, conversations and temp ids of each point are its own.
        let tag = format!("{run}s{i}");
        let load = crate::load(args, shape, watched, &tag).await?;
        let floor = crate::floor(args, shape, &tag).await?;
        let ms = |h: &hdrhistogram::Histogram<u64>, q| h.value_at_quantile(q) as f64 / 1000.0;
        let point = Point {
            shape,
            p50_ms: ms(&load.latency, 0.5),
            p99_ms: ms(&load.latency, 0.99),
            floor_p50_ms: ms(&floor, 0.5),
            floor_p99_ms: ms(&floor, 0.99),
            deliveries_per_sec: load.deliveries_per_sec,
            expected: load.expected,
            received: load.received,
            edge_micros: load.micros_per_delivery("socket-edge"),
            stack_micros: load.stack_micros_per_delivery(),
            stack_cores: load.stack_share() / 100.0,
            load_tool_cores: load
                .cpu
                .iter()
                .find(|p| p.name == cpu::LOAD_TOOL)
                .map_or(0.0, |p| p.share / 100.0),
        };
        eprintln!("{}", row(&point));
        points.push(point);
        // Let the closed connections leave the edge before the next point opens its own.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    let table = table(&points, base);
    println!("\n{table}");
    std::fs::write(format!("{}.md", args.sweep_out), &table)?;
    let rates: Vec<&Point> = points.iter().take(args.sweep_rates.len()).collect();
    let counts: Vec<&Point> = points.iter().skip(args.sweep_rates.len()).collect();
    std::fs::write(
        format!("{}.svg", args.sweep_out),
        chart(&rates, &counts, base),
    )?;
    eprintln!("wrote {0}.md and {0}.svg", args.sweep_out);
    Ok(())
}

fn row(p: &Point) -> String {
    format!(
        "| {} | {} | {:.2} ({:.2}) | {:.1} ({:.1}) | {:.0} | {} / {} | {:.1} | {:.1} | {:.2} | {:.2} |",
        p.shape.rate,
        p.shape.connections,
        p.p50_ms,
        p.floor_p50_ms,
        p.p99_ms,
        p.floor_p99_ms,
        p.deliveries_per_sec,
        p.received,
        p.expected,
        p.edge_micros,
        p.stack_micros,
        p.stack_cores,
        p.load_tool_cores,
    )
}

fn table(points: &[Point], base: Shape) -> String {
    let mut out = format!(
        "Each point: {} s of warm-up, {} s measured; conversations of {} members.\n\n\
         | msg/s | connections | p50 ms (floor) | p99 ms (floor) | deliveries/s | received / expected | edge µs/delivery | stack µs/delivery | stack cores | ws-load cores |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        base.warmup,
        base.seconds,
        (base.connections / base.conversations).max(2),
    );
    for p in points {
        out.push_str(&row(p));
        out.push('\n');
    }
    out
}

/// A series of a panel: its name, colour and points.
type Series = (&'static str, &'static str, Vec<(f64, f64)>);

/// Four panels: latency and CPU per delivery, against the rate and against the connections.
fn chart(rates: &[&Point], counts: &[&Point], base: Shape) -> String {
    let (w, h) = (960.0, 640.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    let latency = |points: &[&Point]| -> Vec<Series> {
        let series = |f: fn(&Point) -> f64| points.iter().map(|p| (x_of(p), f(p))).collect();
        vec![
            ("p99", "#d62728", series(|p| p.p99_ms)),
            ("p50", "#1f77b4", series(|p| p.p50_ms)),
            ("floor p99", "#ff9896", series(|p| p.floor_p99_ms)),
            ("floor p50", "#aec7e8", series(|p| p.floor_p50_ms)),
        ]
    };
    let micros = |points: &[&Point]| -> Vec<Series> {
        let series = |f: fn(&Point) -> f64| points.iter().map(|p| (x_of(p), f(p))).collect();
        vec![
            ("whole stack", "#2ca02c", series(|p| p.stack_micros)),
            ("socket-edge", "#9467bd", series(|p| p.edge_micros)),
        ]
    };
    // The rate panels plot against the rate, the others against the connections.
    fn x_of(p: &Point) -> f64 {
        p.shape.rate as f64
    }
    let by_count: Vec<Point> = counts
        .iter()
        .map(|p| Point {
            shape: Shape {
                rate: p.shape.connections as u64,
                ..p.shape
            },
            ..**p
        })
        .collect();
    let by_count: Vec<&Point> = by_count.iter().collect();
    let connections = base.connections;
    let rate = base.rate;
    panel(
        &mut svg,
        (60.0, 40.0, 380.0, 220.0),
        &format!("send→deliver latency (ms, log scale), {connections} connections"),
        "messages/s",
        &latency(rates),
        true,
    );
    panel(
        &mut svg,
        (540.0, 40.0, 380.0, 220.0),
        &format!("CPU per delivery (µs), {connections} connections"),
        "messages/s",
        &micros(rates),
        false,
    );
    panel(
        &mut svg,
        (60.0, 360.0, 380.0, 220.0),
        &format!("send→deliver latency (ms, log scale), {rate} msg/s"),
        "connections",
        &latency(&by_count),
        true,
    );
    panel(
        &mut svg,
        (540.0, 360.0, 380.0, 220.0),
        &format!("CPU per delivery (µs), {rate} msg/s"),
        "connections",
        &micros(&by_count),
        false,
    );
    svg.push_str("</svg>\n");
    svg
}

/// One panel: x on a log scale (the sweeps double), y linear from 0 or logarithmic.
fn panel(
    svg: &mut String,
    (left, top, width, height): (f64, f64, f64, f64),
    title: &str,
    x_label: &str,
    series: &[Series],
    log_y: bool,
) {
    let all = || series.iter().flat_map(|s| s.2.iter().copied());
    if all().next().is_none() {
        return;
    }
    let (x_min, x_max) = all().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
        (lo.min(x), hi.max(x))
    });
    let y_max = all().map(|(_, y)| y).fold(0.0, f64::max).max(1e-3);
    let y_min = all().map(|(_, y)| y).fold(f64::MAX, f64::min).max(0.1);
    // Log y: whole decades around the data; linear: from 0 to a round top.
    let (lo, hi) = if log_y {
        (
            y_min.log10().floor(),
            y_max.log10().ceil().max(y_min.log10().floor() + 1.0),
        )
    } else {
        (0.0, nice_top(y_max))
    };
    let ty = |y: f64| {
        let v = if log_y { y.max(0.1).log10() } else { y };
        top + height - (v - lo) / (hi - lo) * height
    };
    let span = (x_max / x_min).ln().max(1e-9);
    let tx = |x: f64| left + (x / x_min).ln() / span * width;
    let _ = writeln!(
        svg,
        r##"<text x="{left}" y="{}" font-weight="bold">{title}</text>
<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#888"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"##,
        top - 12.0,
        left + width / 2.0,
        top + height + 36.0,
    );
    // Grid lines and their labels.
    let ticks: Vec<f64> = if log_y {
        (lo as i32..=hi as i32).map(|d| 10f64.powi(d)).collect()
    } else {
        (0..=4).map(|i| hi * f64::from(i) / 4.0).collect()
    };
    for y in ticks {
        let (right, at, label_x) = (left + width, ty(y), left - 6.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{right}" y1="{at:.1}" y2="{at:.1}" stroke="#eee"/><text x="{label_x}" y="{:.1}" text-anchor="end">{}</text>"##,
            at + 4.0,
            trim(y),
        );
    }
    let mut xs: Vec<f64> = all().map(|(x, _)| x).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{top}" y2="{1}" stroke="#eee"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            tx(x),
            top + height,
            top + height + 16.0,
            trim(x),
        );
    }
    for (i, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", tx(x), ty(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for &(x, y) in points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                tx(x),
                ty(y)
            );
        }
        let ly = top + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{0}" x2="{1}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{2}" y="{3}">{name}</text>"#,
            left + 8.0,
            left + 24.0,
            left + 28.0,
            ly + 4.0,
        );
    }
}

/// A round upper bound for a linear axis: 1, 2 or 5 times a power of ten.
fn nice_top(max: f64) -> f64 {
    let decade = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|&top| top >= max * 1.05)
        .unwrap_or(10.0 * decade)
}

/// A number as an axis label: no trailing zeros.
fn trim(v: f64) -> String {
    if v >= 1.0 && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}
