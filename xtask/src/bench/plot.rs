//! benchmarks-overhead.svg: overhead per operation against policy size.

use plotters::prelude::*;
use serde_json::Value;

use crate::workspace_root;

pub(super) fn overhead_vs_rules(rows: &[Value]) -> anyhow::Result<()> {
    let path = workspace_root().join("benchmarks-overhead.svg");
    let root = SVGBackend::new(&path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let series: Vec<(&str, &str, &str, RGBColor)> = vec![
        ("portguard, W1 UDP connect", "w1", "Portguard", RGBColor(31, 119, 180)),
        ("portguard, W2 UDP sendto", "w2", "Portguard", RGBColor(44, 160, 44)),
        ("nftables list, W2 UDP sendto", "w2", "NftList", RGBColor(214, 39, 40)),
        ("nftables set, W2 UDP sendto", "w2", "NftSet", RGBColor(255, 127, 14)),
    ];
    let points = |w: &str, kind: &str| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r["workload"] == w && r["allowed"] == true && r["kind"] == kind)
            .filter_map(|r| Some(((r["rules"].as_f64()?).log10(), r["overhead_ns"].as_f64()?)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let max_y = series.iter().flat_map(|s| points(s.1, s.2)).map(|p| p.1).fold(100.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Overhead per operation over nothing attached (C0), allowed variant", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..5.5f64, 0f64..max_y)?;
    chart
        .configure_mesh()
        .x_desc("rules (log10)")
        .y_desc("ns per operation")
        .x_label_formatter(&|x| format!("{:.0}", 10f64.powf(*x)))
        .draw()?;
    for (label, w, kind, color) in series {
        let pts = points(w, kind);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    root.present()?;
    Ok(())
}
