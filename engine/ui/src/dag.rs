//! The Job page's drawing of the DStream graph: sources on the left,
//! outputs on the right, every stream in between as a box, an arrow per
//! parent. Drawn on the server as SVG (nothing loaded from elsewhere).
//!
//! Layout is a plain layered one: a stream's column is one more than its
//! deepest parent's (so every arrow points right), outputs take the column
//! after the deepest stream, and within a column boxes are ordered by the
//! mean row of their parents (one sweep of the barycenter heuristic, enough
//! to untangle the fan-ins of joins and unions). Graphs beyond
//! [`MAX_NODES`] are not drawn: the stream table below says it all.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::event::JobInfo;
use crate::pages::esc;

/// Beyond this many boxes the drawing is unreadable (and costs more than
/// a status page should): the page shows the tables only.
pub const MAX_NODES: usize = 400;

const BOX_W: f64 = 190.0;
const BOX_H: f64 = 40.0;
const COL_GAP: f64 = 60.0;
const ROW_GAP: f64 = 14.0;
const MARGIN: f64 = 12.0;
/// Characters of a label shown in a box (the full text is its tooltip).
const LABEL_CHARS: usize = 28;

/// One box of the drawing.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// `stream-<id>` or `output-<index>`.
    pub key: String,
    /// Drives the colour: `source`, `window`, `state`, `shuffle`, `output`, ...
    pub kind: String,
    /// The first line (the operation or output).
    pub title: String,
    /// The second line (stream name, detail).
    pub detail: String,
    pub column: usize,
    pub row: usize,
}

/// The laid-out graph: boxes and arrows (indices into `nodes`, parent first).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub nodes: Vec<Node>,
    pub edges: Vec<(usize, usize)>,
}

/// Lays out the job's streams and outputs; `None` when there are more than
/// [`MAX_NODES`] boxes.
pub fn layout(job: &JobInfo) -> Option<Layout> {
    if job.streams.len() + job.outputs.len() > MAX_NODES {
        return None;
    }
    let index: BTreeMap<u32, usize> = job.streams.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    // Columns by longest path from the sources, iteratively (the graph is
    // acyclic by construction; a malformed one is cut off after n rounds).
    let mut column = vec![0usize; job.streams.len()];
    for _ in 0..job.streams.len() {
        let mut changed = false;
        for (i, s) in job.streams.iter().enumerate() {
            let c = s.parents.iter().filter_map(|p| index.get(p)).map(|&p| column[p] + 1).max().unwrap_or(0);
            if c > column[i] {
                column[i] = c;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut l = Layout::default();
    for (i, s) in job.streams.iter().enumerate() {
        let (title, detail) = if s.kind == "source" {
            let src = job.sources.iter().find(|x| s.detail == format!("source {}", x.id));
            let what = src.map(|x| format!("{} {}", x.kind, x.description)).unwrap_or_else(|| s.detail.clone());
            (s.label.clone(), what)
        } else {
            (s.label.clone(), format!("#{} {}{}", s.id, s.detail, if s.stateful { " · state" } else { "" }))
        };
        let kind = if s.stateful && s.kind != "window" { "state".to_string() } else { s.kind.clone() };
        l.nodes.push(Node { key: format!("stream-{}", s.id), kind, title, detail, column: column[i], row: 0 });
        for p in &s.parents {
            if let Some(&pi) = index.get(p) {
                l.edges.push((pi, i));
            }
        }
    }
    let last = column.iter().copied().max().map_or(0, |c| c + 1);
    for o in &job.outputs {
        let n = l.nodes.len();
        l.nodes.push(Node {
            key: format!("output-{}", o.index),
            kind: "output".into(),
            title: format!("output {}", o.index),
            detail: o.description.clone(),
            column: last,
            row: 0,
        });
        if let Some(&si) = index.get(&o.stream) {
            l.edges.push((si, n));
        }
    }
    assign_rows(&mut l);
    Some(l)
}

/// Rows within each column: the first column in the graph's order, every
/// later one by the mean row of its boxes' parents.
fn assign_rows(l: &mut Layout) {
    let columns = l.nodes.iter().map(|n| n.column + 1).max().unwrap_or(0);
    for c in 0..columns {
        let mut members: Vec<(f64, usize)> = l
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.column == c)
            .map(|(i, _)| {
                let rows: Vec<f64> =
                    l.edges.iter().filter(|(_, to)| *to == i).map(|(from, _)| l.nodes[*from].row as f64).collect();
                let key = if rows.is_empty() { i as f64 } else { rows.iter().sum::<f64>() / rows.len() as f64 };
                (key, i)
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (row, (_, i)) in members.into_iter().enumerate() {
            l.nodes[i].row = row;
        }
    }
}

fn x(column: usize) -> f64 {
    MARGIN + column as f64 * (BOX_W + COL_GAP)
}

fn y(row: usize) -> f64 {
    MARGIN + row as f64 * (BOX_H + ROW_GAP)
}

fn fill(kind: &str) -> &'static str {
    match kind {
        "source" => "#d6eaf8",
        "window" => "#fdebd0",
        "state" => "#f5cba7",
        "shuffle" => "#e8daef",
        "output" => "#d5f5e3",
        _ => "#ffffff",
    }
}

fn cut(s: &str) -> String {
    if s.chars().count() <= LABEL_CHARS {
        return s.to_string();
    }
    let mut t: String = s.chars().take(LABEL_CHARS - 1).collect();
    t.push('…');
    t
}

/// The drawing as an inline SVG element (`id="dag"`): one `<g class="node">`
/// per box with its full text as a tooltip, one `<path class="edge">` per
/// arrow.
pub fn svg(l: &Layout) -> String {
    let cols = l.nodes.iter().map(|n| n.column + 1).max().unwrap_or(1);
    let rows = l.nodes.iter().map(|n| n.row + 1).max().unwrap_or(1);
    let w = 2.0 * MARGIN + cols as f64 * BOX_W + (cols.saturating_sub(1)) as f64 * COL_GAP;
    let h = 2.0 * MARGIN + rows as f64 * BOX_H + (rows.saturating_sub(1)) as f64 * ROW_GAP;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg id=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\">\
<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\
<path d=\"M0,0 L10,5 L0,10 z\" fill=\"#555\"/></marker></defs>"
    );
    for &(from, to) in &l.edges {
        let (a, b) = (&l.nodes[from], &l.nodes[to]);
        let (x1, y1) = (x(a.column) + BOX_W, y(a.row) + BOX_H / 2.0);
        let (x2, y2) = (x(b.column), y(b.row) + BOX_H / 2.0);
        let mid = (x1 + x2) / 2.0;
        let _ = write!(
            s,
            "<path class=\"edge\" d=\"M{x1:.1},{y1:.1} C{mid:.1},{y1:.1} {mid:.1},{y2:.1} {x2:.1},{y2:.1}\" \
fill=\"none\" stroke=\"#555\" stroke-width=\"1.2\" marker-end=\"url(#arrow)\"/>"
        );
    }
    for n in &l.nodes {
        let (nx, ny) = (x(n.column), y(n.row));
        let _ = write!(
            s,
            "<g class=\"node\" data-key=\"{key}\"><title>{title}\n{detail}</title>\
<rect x=\"{nx:.1}\" y=\"{ny:.1}\" width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"4\" fill=\"{fill}\" stroke=\"#888\"/>\
<text x=\"{tx:.1}\" y=\"{t1:.1}\" font-size=\"12\" font-weight=\"bold\">{t}</text>\
<text x=\"{tx:.1}\" y=\"{t2:.1}\" font-size=\"11\" fill=\"#555\">{d}</text></g>",
            key = esc(&n.key),
            title = esc(&n.title),
            detail = esc(&n.detail),
            fill = fill(&n.kind),
            tx = nx + 6.0,
            t1 = ny + 16.0,
            t2 = ny + 32.0,
            t = esc(&cut(&n.title)),
            d = esc(&cut(&n.detail)),
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{OutputSpecInfo, SourceInfo, StreamInfo};

    fn stream(id: u32, kind: &str, label: &str, parents: &[u32]) -> StreamInfo {
        StreamInfo {
            id,
            label: label.into(),
            kind: kind.into(),
            detail: if kind == "source" { "source 0".into() } else { String::new() },
            parents: parents.to_vec(),
            slide_ms: 1000,
            stateful: kind == "state",
            checkpoint_ms: None,
        }
    }

    fn job(streams: Vec<StreamInfo>, outputs: Vec<OutputSpecInfo>) -> JobInfo {
        JobInfo {
            name: "t".into(),
            weir_version: String::new(),
            master: String::new(),
            clock: String::new(),
            batch_interval_ms: 1000,
            parallelism: 2,
            sources: vec![SourceInfo { id: 0, kind: "socket".into(), description: "h:1".into(), receiver: true }],
            streams,
            outputs,
            modules: Default::default(),
            limits: Default::default(),
        }
    }

    /// A join of two branches of one source, then state, two outputs.
    fn diamond() -> JobInfo {
        job(
            vec![
                stream(0, "source", "lines", &[]),
                stream(1, "narrow", "words", &[0]),
                stream(2, "narrow", "pairs", &[1]),
                stream(3, "narrow", "lengths", &[0]),
                stream(4, "shuffle", "joined", &[2, 3]),
                stream(5, "state", "totals", &[4]),
            ],
            vec![
                OutputSpecInfo { index: 0, stream: 5, description: "print".into(), kind: "print".into() },
                OutputSpecInfo {
                    index: 1,
                    stream: 4,
                    description: "save_as_text_files out/j".into(),
                    kind: String::new(),
                },
            ],
        )
    }

    #[test]
    fn every_arrow_points_right_and_every_box_has_its_own_place() {
        let l = layout(&diamond()).unwrap();
        assert_eq!(l.nodes.len(), 8);
        assert_eq!(l.edges.len(), 8, "six parent links and two outputs");
        for &(a, b) in &l.edges {
            assert!(l.nodes[a].column < l.nodes[b].column, "{:?} -> {:?}", l.nodes[a], l.nodes[b]);
        }
        let mut places: Vec<(usize, usize)> = l.nodes.iter().map(|n| (n.column, n.row)).collect();
        places.sort();
        places.dedup();
        assert_eq!(places.len(), l.nodes.len(), "two boxes on one spot");
        // The join is after its deepest parent (pairs, column 2).
        let col = |k: &str| l.nodes.iter().find(|n| n.key == k).unwrap().column;
        assert_eq!((col("stream-0"), col("stream-2"), col("stream-4"), col("stream-5")), (0, 2, 3, 4));
        assert_eq!((col("output-0"), col("output-1")), (5, 5), "outputs share the last column");
    }

    #[test]
    fn the_svg_has_a_box_per_stream_and_output_and_an_arrow_per_link() {
        let l = layout(&diamond()).unwrap();
        let s = svg(&l);
        assert_eq!(s.matches("<g class=\"node\"").count(), 8);
        assert_eq!(s.matches("<path class=\"edge\"").count(), 8);
        assert!(s.contains("socket h:1"), "a source box names what it reads");
        assert!(s.contains("fill=\"#f5cba7\""), "the stateful stream is coloured as state");
        assert!(!s.contains("href"), "nothing linked from elsewhere");
    }

    #[test]
    fn labels_are_escaped_and_cut_with_the_full_text_as_tooltip() {
        let mut j = diamond();
        j.streams[1].label = "<b>".to_string() + &"w".repeat(60);
        let s = svg(&layout(&j).unwrap());
        assert!(!s.contains("<b>"), "markup from a label is escaped");
        assert!(s.contains(&"w".repeat(60)), "the tooltip has the full label");
        assert!(s.contains('…'));
    }

    #[test]
    fn a_huge_graph_is_not_drawn() {
        let streams = (0..MAX_NODES as u32 + 1).map(|i| stream(i, "narrow", "s", &[])).collect();
        assert!(layout(&job(streams, vec![])).is_none());
    }

    #[test]
    fn a_cycle_from_a_malformed_event_log_ends() {
        let j = job(vec![stream(0, "narrow", "a", &[1]), stream(1, "narrow", "b", &[0])], vec![]);
        let l = layout(&j).unwrap();
        assert_eq!(l.nodes.len(), 2);
    }
}
