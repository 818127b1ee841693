//! The graph API from the outside: link/unlink/relink moves traffic where the edges say,
//! sanity errors name what is wrong, and Graphviz accepts the dot export.

use std::io::Write;
use std::process::{Command, Stdio};

use butterfly_tests::require_tool;
use packetgraph::bricks::{Collect, Diode, Hub, Nop, PacketGen, Print, Queue};
use packetgraph::{Graph, GraphError, Pool, PoolConfig, Side};

fn pool() -> Pool {
    Pool::new(PoolConfig {
        frame_count: 1024,
        ..Default::default()
    })
    .unwrap()
}

fn sink_packets(g: &Graph, name: &str) -> u64 {
    let c = g.get::<Collect>(name).unwrap();
    c.packets(Side::West) + c.packets(Side::East)
}

#[test]
fn link_unlink_relink_moves_traffic_where_the_edges_say() {
    let pool = pool();
    let mut g = Graph::new("relink");
    g.add(
        "gen",
        PacketGen::new(pool.clone(), vec![vec![1; 60]], u64::MAX).with_burst_size(10),
    )
    .unwrap();
    g.add("nop", Nop::new()).unwrap();
    g.add("a", Collect::new()).unwrap();
    g.add("b", Collect::new()).unwrap();
    g.link_chain(&["gen", "nop", "a"]).unwrap();
    g.sanity_check().unwrap_err(); // "b" is not linked yet
    g.poll().unwrap();
    assert_eq!((sink_packets(&g, "a"), sink_packets(&g, "b")), (10, 0));

    // Move nop's EAST edge from a to b.
    g.unlink_edge("nop", "a").unwrap();
    assert!(matches!(
        g.unlink_edge("nop", "a"),
        Err(GraphError::NotLinked(ref w, ref e)) if w == "nop" && e == "a"
    ));
    g.link("nop", "b").unwrap();
    g.poll().unwrap();
    assert_eq!((sink_packets(&g, "a"), sink_packets(&g, "b")), (10, 10));
    assert_eq!(
        g.neighbours("nop", Side::East).unwrap(),
        vec![Some("b".to_string())]
    );

    // Unlinking nop entirely: the generator's bursts are dropped at its unlinked edge.
    g.unlink("nop").unwrap();
    g.poll().unwrap();
    assert_eq!((sink_packets(&g, "a"), sink_packets(&g, "b")), (10, 10));
    assert_eq!(g.stats("gen").unwrap().unlinked_drops, 10);
    assert!(
        g.neighbours("nop", Side::West)
            .unwrap()
            .iter()
            .all(Option::is_none)
    );

    // Relink the original chain: traffic reaches a again, nothing reaches b.
    g.link_chain(&["gen", "nop", "a"]).unwrap();
    g.poll().unwrap();
    assert_eq!((sink_packets(&g, "a"), sink_packets(&g, "b")), (20, 10));
    let nop = g.stats("nop").unwrap();
    assert_eq!(nop.west.rx_packets, 30);
    assert_eq!(nop.east.tx_packets, 30);
    assert_eq!(nop.east.tx_bytes, 30 * 60);

    // A removed brick takes its edges with it; its name can be reused.
    g.remove("a").unwrap();
    assert!(
        g.neighbours("nop", Side::East)
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
    g.add("a", Collect::new()).unwrap();
    g.link("nop", "a").unwrap();
    g.poll().unwrap();
    assert_eq!(sink_packets(&g, "a"), 10);
    assert_eq!(g.empty_bursts(), 0);
}

#[test]
fn linking_errors_name_the_brick_and_the_reason() {
    let pool = pool();
    let mut g = Graph::new("errors");
    g.add("gen", PacketGen::new(pool.clone(), vec![vec![1; 60]], 1))
        .unwrap();
    g.add("nop", Nop::new()).unwrap();
    g.add("x", Collect::new()).unwrap();
    g.add("y", Collect::new()).unwrap();

    let e = g.add("nop", Diode::default()).unwrap_err();
    assert!(matches!(e, GraphError::DuplicateName(ref n) if n == "nop"));
    assert!(e.to_string().contains("'nop' already exists"), "{e}");

    assert!(matches!(g.link("nop", "nop"), Err(GraphError::SelfLink(_))));
    assert!(matches!(g.link("nop", "ghost"), Err(GraphError::NoSuchBrick(ref n)) if n == "ghost"));

    g.link("nop", "x").unwrap();
    let e = g.link("nop", "y").unwrap_err();
    assert!(
        matches!(e, GraphError::EdgeFull { ref brick, side: Side::East, max: 1 } if brick == "nop"),
        "{e}"
    );
    // A monopole takes one edge in all, on either side.
    g.link("gen", "nop").unwrap();
    let e = g.link("y", "gen").unwrap_err();
    assert!(
        matches!(e, GraphError::EdgeFull { ref brick, .. } if brick == "gen"),
        "{e}"
    );
    let e = g.get::<Diode>("nop").unwrap_err();
    assert!(
        matches!(e, GraphError::WrongType { kind: "nop", .. }),
        "{e}"
    );
}

#[test]
fn sanity_check_reports_no_source_dangling_and_unreachable_bricks() {
    let pool = pool();

    let mut g = Graph::new("nosource");
    g.add("nop", Nop::new()).unwrap();
    g.add("x", Collect::new()).unwrap();
    g.link("nop", "x").unwrap();
    assert!(matches!(g.sanity_check(), Err(GraphError::NoSource)));

    let mut g = Graph::new("dangling");
    g.add("gen", PacketGen::new(pool.clone(), vec![], 0))
        .unwrap();
    g.add("nop", Nop::new()).unwrap();
    g.link("gen", "nop").unwrap();
    let e = g.sanity_check().unwrap_err();
    assert!(
        matches!(e, GraphError::Dangling { ref brick, side: Side::East } if brick == "nop"),
        "{e}"
    );
    assert!(
        e.to_string().contains("'nop'") && e.to_string().contains("east"),
        "{e}"
    );

    // Two islands: gen — nop — x, and hub — y with no source.
    let mut g = Graph::new("islands");
    g.add("gen", PacketGen::new(pool.clone(), vec![], 0))
        .unwrap();
    g.add("nop", Nop::new()).unwrap();
    g.add("x", Collect::new()).unwrap();
    g.add("hub", Hub::new()).unwrap();
    g.add("y", Collect::new()).unwrap();
    g.link_chain(&["gen", "nop", "x"]).unwrap();
    g.link("hub", "y").unwrap();
    match g.sanity_check() {
        Err(GraphError::Unreachable(mut names)) => {
            names.sort();
            assert_eq!(names, vec!["hub".to_string(), "y".to_string()]);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // A lone brick without any edge is dangling.
    g.add("lonely", Collect::new()).unwrap();
    assert!(matches!(
        g.sanity_check(),
        Err(GraphError::Dangling { ref brick, .. }) if brick == "lonely"
    ));
    g.remove("lonely").unwrap();
    g.link("nop", "hub").unwrap_err(); // nop's EAST is taken
    g.unlink_edge("nop", "x").unwrap();
    g.link("nop", "hub").unwrap();
    g.link("x", "hub").unwrap();
    g.sanity_check().unwrap();
}

#[test]
fn graphviz_accepts_the_dot_export() {
    require_tool("dot");
    let pool = pool();
    let (qa, qb) = Queue::pair(64).unwrap();
    let mut g = Graph::new("host \"graph\"");
    g.add("gen-0", PacketGen::new(pool.clone(), vec![vec![1; 60]], 5))
        .unwrap();
    g.add("print", Print::text(std::io::sink())).unwrap();
    g.add("hub", Hub::new()).unwrap();
    g.add("diode", Diode::default()).unwrap();
    g.add("q-a", qa).unwrap();
    g.add("q-b", qb).unwrap();
    g.add("sink", Collect::new()).unwrap();
    g.link_chain(&["gen-0", "print", "hub", "diode", "q-a"])
        .unwrap();
    g.link("hub", "sink").unwrap();
    g.link("q-b", "hub").unwrap();
    g.sanity_check().unwrap();
    g.poll().unwrap();
    let dot = g.to_dot();

    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dot");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dot.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let svg = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dot rejected:\n{dot}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(svg.contains("<svg"), "{svg}");
    for name in ["gen-0", "print", "hub", "diode", "q-a", "q-b", "sink"] {
        // Graphviz writes '-' as "&#45;" in SVG text.
        let svg_name = name.replace('-', "&#45;");
        assert!(
            svg.contains(&format!("<title>{svg_name}</title>"))
                && svg.contains(&format!(">{svg_name}<")),
            "node {name} missing from the SVG:\n{svg}"
        );
    }
    // One SVG edge per link.
    assert_eq!(svg.matches("class=\"edge\"").count(), 6, "{svg}");
}
