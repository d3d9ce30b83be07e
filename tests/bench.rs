//! `creature bench tick` end to end, briefly: the report's figures are measured (ticks
//! counted, faces fed), and the observer load (`--http-rps`, `--viewers`) really reaches the
//! brain's snapshot route and its event stream.

use clap::Parser;
use creature::bench::{TickBenchArgs, run_tick};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    tick: TickBenchArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_tick_bench_under_observer_load_measures_ticks_requests_and_events() {
    let args = Cli::parse_from([
        "bench",
        "--seconds",
        "2",
        "--faces",
        "3",
        "--slow-plans",
        "4",
        "--plan-ms",
        "200",
        "--http-rps",
        "200",
        "--viewers",
        "3",
    ])
    .tick;
    let report = run_tick(&args).await.expect("the bench runs");
    assert!(report.ticks >= 20, "ticks counted: {}", report.ticks);
    assert!(
        report.face_msgs_per_sec_mean > 5.0,
        "faces fed: {}",
        report.face_msgs_per_sec_mean
    );
    let o = report.observers.expect("an observer report");
    // The generator keeps its rate for the warm-up and the window (5 s): most requests are
    // answered even on a busy 2-core machine.
    assert!(o.requests_ok >= 400, "snapshot requests answered: {o:?}");
    assert_eq!(o.requests_failed, 0, "{o:?}");
    assert!(o.request_ms.count >= 400, "{o:?}");
    assert_eq!(o.viewer_error, None, "{o:?}");
    assert!(o.viewers_connected >= 3, "{o:?}");
    // Loop figures alone come once a second per viewer.
    assert!(o.events_received >= 3 * 3, "events read: {o:?}");
}
