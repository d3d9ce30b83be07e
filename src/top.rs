//! `creature top`: a terminal view of a running brain, fed by its event stream
//! (`GET /api/events`): the supervision tree with each actor's status, restarts, message
//! rate, mailbox and message latency; the fast loop's figures; the last restarts, phrases
//! (with their intents) and tasks. It redraws every second, works over ssh (plain
//! crossterm, no mouse), and quits on `q`. `--once` prints one frame to stdout for scripts.
//! `creature actors` prints the same tree from `GET /api/actors`.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use creature_actors::events::{Event, LoopFigures, PhraseEvent, TaskEvent};
use creature_actors::slot::{ActorFigures, ActorStatus};
use creature_actors::text::printable;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use serde::Deserialize;
use serde_json::Value;

/// The actors in tree order: the root, then its children as the API lists them.
pub const TREE: [&str; 7] = [
    "brain",
    "voice",
    "monologue",
    "reasoner",
    "tasks",
    "affect",
    "face",
];

/// How many recent restarts, phrases and tasks the view keeps.
const RECENT: usize = 6;
/// Size of the frame `--once` prints.
const ONCE_SIZE: (u16, u16) = (110, 36);

/// One event as the stream carries it: the envelope and the event.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    t_ms: Option<u64>,
    #[serde(flatten)]
    event: Event,
}

/// One row of the tree: what `GET /api/actors` and the `actors` event both say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActorRow {
    pub name: String,
    pub status: String,
    pub restarts: u64,
    pub messages_per_sec: f64,
    pub mailbox: u64,
    pub mailbox_peak: u64,
    pub latency_p99_ms: f64,
    pub uptime_ms: u64,
    pub last_error: Option<String>,
}

impl ActorRow {
    /// From one element of `GET /api/actors`.
    pub fn from_api(v: &Value) -> ActorRow {
        ActorRow {
            name: v["name"].as_str().unwrap_or("?").to_string(),
            status: v["status"].as_str().unwrap_or("?").to_string(),
            restarts: v["restarts"].as_u64().unwrap_or(0),
            messages_per_sec: v["messages_per_sec"].as_f64().unwrap_or(0.0),
            mailbox: v["mailbox"].as_u64().unwrap_or(0),
            mailbox_peak: v["mailbox_peak"].as_u64().unwrap_or(0),
            latency_p99_ms: v["latency_ms"]["p99_ms"].as_f64().unwrap_or(0.0),
            uptime_ms: v["uptime_ms"].as_u64().unwrap_or(0),
            last_error: v["last_error"].as_str().map(str::to_string),
        }
    }

    fn from_figures(f: &ActorFigures, last_error: Option<String>) -> ActorRow {
        ActorRow {
            name: f.name.clone(),
            status: f.status.as_str().to_string(),
            restarts: u64::from(f.restarts),
            messages_per_sec: f.messages_per_sec,
            mailbox: f.mailbox,
            mailbox_peak: f.mailbox_peak,
            latency_p99_ms: f.latency_p99_ms,
            uptime_ms: f.uptime_ms,
            last_error,
        }
    }
}

/// A time span as `5s`, `2m05s` or `3h04m`.
pub(crate) fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The tree as text lines: the root, then `├──`/`└──` for its children, in [`TREE`]
/// order (an actor the rows do not name is left out). Every cell is [`printable`].
pub fn tree_lines(rows: &[ActorRow]) -> Vec<String> {
    let mut out = vec![format!(
        "{:<14} {:<10} {:>8} {:>8} {:>12} {:>11} {:>8}  LAST ERROR",
        "ACTOR", "STATUS", "RESTARTS", "MSG/S", "MAILBOX/PEAK", "LATENCY p99", "UPTIME"
    )];
    let ordered: Vec<&ActorRow> = TREE
        .iter()
        .filter_map(|n| rows.iter().find(|r| r.name == *n))
        .collect();
    let children = ordered.len().saturating_sub(1);
    for (i, row) in ordered.iter().enumerate() {
        let branch = match i {
            0 => String::new(),
            n if n == children => "└─ ".into(),
            _ => "├─ ".into(),
        };
        let name = format!("{branch}{}", printable(&row.name));
        out.push(format!(
            "{:<14} {:<10} {:>8} {:>8.1} {:>12} {:>11} {:>8}  {}",
            name,
            printable(&row.status),
            row.restarts,
            row.messages_per_sec,
            format!("{}/{}", row.mailbox, row.mailbox_peak),
            format!("{:.2} ms", row.latency_p99_ms),
            duration(row.uptime_ms),
            row.last_error
                .as_deref()
                .map(|e| printable(e).chars().take(60).collect::<String>())
                .unwrap_or_else(|| "-".into()),
        ));
    }
    out
}

/// What the view knows, built from the events.
#[derive(Debug, Default)]
pub struct TopModel {
    actors: BTreeMap<String, ActorFigures>,
    last_errors: BTreeMap<String, String>,
    looped: Option<LoopFigures>,
    restarts: VecDeque<(u64, String, String)>,
    phrases: VecDeque<PhraseEvent>,
    /// Newest last; one entry per task id.
    tasks: VecDeque<TaskEvent>,
    affect: Option<(String, f32, f32)>,
    skipped: u64,
    events: u64,
}

impl TopModel {
    /// Take in one event's JSON (events of unknown kinds are counted and ignored).
    pub fn apply_json(&mut self, data: &str) {
        self.events += 1;
        let Ok(env) = serde_json::from_str::<Envelope>(data) else {
            return;
        };
        match env.event {
            Event::Actors { actors } => {
                for a in actors {
                    self.actors.insert(a.name.clone(), a);
                }
            }
            Event::ActorStatus {
                actor,
                status,
                restarts,
            } => {
                if let Some(a) = self.actors.get_mut(&actor) {
                    a.status = status;
                    a.restarts = restarts;
                }
            }
            Event::ActorFailed {
                actor,
                reason,
                restarts,
                restarting,
            } => {
                if let Some(a) = self.actors.get_mut(&actor) {
                    a.restarts = restarts;
                    a.status = if restarting {
                        ActorStatus::Restarting
                    } else {
                        ActorStatus::Failed
                    };
                }
                self.last_errors.insert(actor.clone(), reason.clone());
                push(&mut self.restarts, (env.t_ms.unwrap_or(0), actor, reason));
            }
            Event::Phrase(p) => push(&mut self.phrases, p),
            Event::Task(t) => {
                self.tasks.retain(|old| old.id != t.id);
                push(&mut self.tasks, t);
            }
            Event::Loop(l) => self.looped = Some(l),
            Event::Affect {
                emotion,
                valence,
                arousal,
            } => self.affect = Some((emotion, valence, arousal)),
            Event::Lagged { skipped } => self.skipped += skipped,
            Event::Piece { .. } | Event::Turn { .. } => {}
        }
    }

    /// Whether the view has what a frame needs: the tree and the loop's figures.
    pub fn ready(&self) -> bool {
        self.looped.is_some() && !self.actors.is_empty()
    }

    fn rows(&self) -> Vec<ActorRow> {
        self.actors
            .values()
            .map(|f| ActorRow::from_figures(f, self.last_errors.get(&f.name).cloned()))
            .collect()
    }

    /// Draw the whole view into `frame`.
    pub fn draw(&self, frame: &mut ratatui::Frame, source: &str) {
        let [head, tree, figures, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(10),
            Constraint::Length(4),
            Constraint::Min(6),
        ])
        .areas(frame.area());
        let [restarts_area, phrases_area, tasks_area] = Layout::vertical([
            Constraint::Ratio(1, 3),
            Constraint::Ratio(1, 3),
            Constraint::Ratio(1, 3),
        ])
        .areas(bottom);

        let mut title = format!(
            "creature top · {} · {} events",
            printable(source),
            self.events
        );
        if self.skipped > 0 {
            title.push_str(&format!(" · {} skipped (slow terminal)", self.skipped));
        }
        title.push_str(" · q quits");
        frame.render_widget(
            Paragraph::new(title).style(Style::default().add_modifier(Modifier::BOLD)),
            head,
        );

        let tree_text: Vec<Line> = tree_lines(&self.rows())
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let style = if i == 0 {
                    Style::default().add_modifier(Modifier::DIM)
                } else if l.contains(" running ") {
                    Style::default().fg(Color::Green)
                } else if l.contains(" restarting ") || l.contains(" starting ") {
                    Style::default().fg(Color::Yellow)
                } else {
                    Style::default().fg(Color::Red)
                };
                Line::styled(l, style)
            })
            .collect();
        frame.render_widget(
            Paragraph::new(tree_text).block(boxed("supervision tree")),
            tree,
        );

        let loop_text = match &self.looped {
            Some(l) => vec![
                Line::from(format!(
                    "ticks {}  {:.1}/s  overruns {}  missed {}  dropped frames {}  {}",
                    l.ticks,
                    l.ticks_per_sec,
                    l.overruns,
                    l.missed_ticks,
                    l.dropped_frames,
                    if l.speaking { "speaking" } else { "quiet" },
                )),
                Line::from(format!(
                    "jitter p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms   compute p50 {:.2} ms  p99 {:.2} ms{}",
                    l.jitter_p50_ms,
                    l.jitter_p99_ms,
                    l.jitter_max_ms,
                    l.compute_p50_ms,
                    l.compute_p99_ms,
                    match &self.affect {
                        Some((e, v, a)) => format!("   affect {} ({v:+.2}, {a:+.2})", printable(e)),
                        None => String::new(),
                    }
                )),
            ],
            None => vec![Line::from("waiting for the loop's figures…")],
        };
        frame.render_widget(
            Paragraph::new(loop_text).block(boxed("fast loop (last second)")),
            figures,
        );

        let restarts: Vec<Line> = self
            .restarts
            .iter()
            .rev()
            .map(|(t, actor, reason)| {
                Line::from(format!(
                    "{} {:<10} {}",
                    clock(*t),
                    printable(actor),
                    printable(reason)
                ))
            })
            .collect();
        frame.render_widget(
            Paragraph::new(or_none(restarts, "no restarts")).block(boxed("restarts")),
            restarts_area,
        );

        let phrases: Vec<Line> = self
            .phrases
            .iter()
            .rev()
            .map(|p| {
                let mut spans = vec![Span::raw(format!("\"{}\"", printable(&p.text)))];
                if let Some(i) = &p.intent {
                    let label = format!(
                        "  → {} {}{}{}",
                        printable(&i.action),
                        printable(&i.object),
                        i.destination
                            .as_deref()
                            .map(|d| format!(" → {}", printable(d)))
                            .unwrap_or_default(),
                        if i.repeat {
                            " (repeat)"
                        } else if i.detector == "vetoed" {
                            " (vetoed)"
                        } else {
                            ""
                        }
                    );
                    spans.push(Span::styled(label, Style::default().fg(Color::Cyan)));
                }
                Line::from(spans)
            })
            .collect();
        frame.render_widget(
            Paragraph::new(or_none(phrases, "no phrases yet")).block(boxed("monologue phrases")),
            phrases_area,
        );

        let tasks: Vec<Line> = self
            .tasks
            .iter()
            .rev()
            .map(|t| {
                Line::from(format!(
                    "{:<10} {:<10} {:<9} {} {}{}",
                    printable(&t.id),
                    printable(&t.state),
                    printable(&t.source),
                    printable(&t.action),
                    printable(&t.object),
                    t.destination
                        .as_deref()
                        .map(|d| format!(" → {}", printable(d)))
                        .unwrap_or_default()
                ))
            })
            .collect();
        frame.render_widget(
            Paragraph::new(or_none(tasks, "no tasks yet")).block(boxed("tasks")),
            tasks_area,
        );
    }
}

fn push<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() == RECENT {
        list.pop_front();
    }
    list.push_back(item);
}

fn boxed(title: &str) -> Block<'_> {
    Block::default().borders(Borders::ALL).title(title)
}

fn or_none<'a>(lines: Vec<Line<'a>>, none: &'a str) -> Vec<Line<'a>> {
    if lines.is_empty() {
        vec![Line::styled(
            none,
            Style::default().add_modifier(Modifier::DIM),
        )]
    } else {
        lines
    }
}

/// `HH:MM:SS` (UTC) of a time in ms since the epoch.
fn clock(t_ms: u64) -> String {
    let s = t_ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// The text of one frame drawn on a `width` x `height` buffer, lines trimmed.
pub fn frame_text(model: &TopModel, source: &str, (width, height): (u16, u16)) -> String {
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(t) => t,
        Err(e) => return format!("cannot draw: {e}"),
    };
    if let Err(e) = terminal.draw(|f| model.draw(f, source)) {
        return format!("cannot draw: {e}");
    }
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..height {
        let mut line = String::new();
        for x in 0..width {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A reader of the event stream's server-sent events.
struct EventReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl EventReader {
    async fn open(http: &reqwest::Client, base: &str) -> anyhow::Result<EventReader> {
        let resp = http
            .get(format!("{base}/api/events"))
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    anyhow::anyhow!(
                        "cannot reach the brain at {base}: is `creature serve` running?"
                    )
                } else {
                    anyhow::anyhow!("request to {base} failed: {e}")
                }
            })?;
        let status = resp.status();
        if !status.is_success() {
            let body: Value = resp.json().await.unwrap_or_default();
            bail!(
                "{status}: {}: {}",
                printable(body["error"].as_str().unwrap_or("error")),
                printable(body["detail"].as_str().unwrap_or(""))
            );
        }
        Ok(EventReader {
            resp,
            buf: Vec::new(),
        })
    }

    /// The next event's data; `None` when the stream ended.
    async fn next(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&block);
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    return Ok(Some(data.join("\n")));
                }
                continue;
            }
            match self.resp.chunk().await.context("the event stream broke")? {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}

/// `creature top --once`: read the replay (and at most a couple of seconds of live
/// events) until the view has the tree and the loop's figures, then print one frame.
#[allow(clippy::print_stdout)]
pub async fn once(http: reqwest::Client, base: &str) -> anyhow::Result<()> {
    let mut reader = EventReader::open(&http, base).await?;
    let mut model = TopModel::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Once ready, a short quiet spell means the replay is over.
        let wait = if model.ready() {
            Duration::from_millis(200)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(wait, reader.next()).await {
            Ok(Ok(Some(data))) => model.apply_json(&data),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    if !model.ready() {
        bail!("the brain at {base} sent no figures within 5 s; is it running?");
    }
    print!("{}", frame_text(&model, base, ONCE_SIZE));
    Ok(())
}

/// `creature top`: the live view until `q` (or Esc, or Ctrl-C).
pub async fn live(http: reqwest::Client, base: &str) -> anyhow::Result<()> {
    let mut reader = EventReader::open(&http, base).await?;
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<()>(1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_keys = std::sync::Arc::clone(&stop);
    // crossterm's key reading blocks: it gets a thread of its own, ended with the view.
    let key_thread = std::thread::Builder::new()
        .name("top-keys".into())
        .spawn(move || read_keys(keys_tx, stop_keys))
        .context("cannot start the key reader")?;
    let mut terminal = ratatui::init();
    let mut model = TopModel::default();
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            _ = keys.recv() => break Ok(()),
            _ = redraw.tick() => {
                if let Err(e) = terminal.draw(|f| model.draw(f, base)) {
                    break Err(anyhow::Error::from(e).context("cannot draw"));
                }
            }
            next = reader.next() => match next {
                Ok(Some(data)) => model.apply_json(&data),
                Ok(None) => break Err(anyhow::anyhow!("the brain closed the event stream (it stopped?)")),
                Err(e) => break Err(e),
            },
        }
    };
    ratatui::restore();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = key_thread.join();
    let _ = std::io::stdout().flush();
    result
}

/// Send once on `quit` when `q`, Esc or Ctrl-C is pressed; end when `stop` is set.
fn read_keys(
    quit: tokio::sync::mpsc::Sender<()>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use ratatui::crossterm::event::{self, Event as Term, KeyCode, KeyEventKind, KeyModifiers};
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match event::poll(Duration::from_millis(100)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => break,
        }
        let Ok(Term::Key(key)) = event::read() else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
            let _ = quit.try_send(());
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(name: &str, status: ActorStatus) -> serde_json::Value {
        serde_json::json!({"name": name, "status": status, "restarts": 0, "handled": 10,
            "mailbox": 1, "mailbox_peak": 4, "mailbox_recent_peak": 2, "messages_per_sec": 12.5,
            "latency_p50_ms": 0.1, "latency_p99_ms": 0.4, "latency_max_ms": 1.0,
            "uptime_ms": 65_000, "undelivered": 0})
    }

    fn model() -> TopModel {
        let mut m = TopModel::default();
        let actors: Vec<_> = TREE
            .iter()
            .map(|n| figures(n, ActorStatus::Running))
            .collect();
        m.apply_json(
            &serde_json::json!({"seq": 1, "t_ms": 0, "kind": "actors", "actors": actors})
                .to_string(),
        );
        m.apply_json(
            &serde_json::json!({"seq": 2, "t_ms": 0, "kind": "loop", "ticks": 100,
            "overruns": 0, "missed_ticks": 0, "dropped_frames": 0, "text_pieces": 3,
            "speaking": false, "user_active": false, "ticks_per_sec": 12.5,
            "jitter_p50_ms": 0.05, "jitter_p99_ms": 0.3, "jitter_max_ms": 0.5,
            "compute_p50_ms": 0.1, "compute_p99_ms": 0.2})
            .to_string(),
        );
        m
    }

    #[test]
    fn a_frame_shows_the_tree_the_loop_and_what_was_said() {
        let mut m = model();
        m.apply_json(
            &serde_json::json!({"seq": 3, "t_ms": 3_600_000, "kind": "actor_failed",
            "actor": "tasks", "reason": "fault injected: test", "restarting": true, "restarts": 1})
            .to_string(),
        );
        m.apply_json(
            &serde_json::json!({"seq": 4, "t_ms": 0, "kind": "phrase",
            "text": "I'll bring you the cup.", "tick": 9, "closed_by": "punctuation",
            "intent": {"action": "bring", "object": "cup", "destination": null, "confidence": 0.9,
                       "detector": "rules+classifier", "score": 0.9, "repeat": false}})
            .to_string(),
        );
        m.apply_json(
            &serde_json::json!({"seq": 5, "t_ms": 0, "kind": "task", "id": "task-7",
            "state": "pending", "previous": null, "action": "bring", "object": "cup",
            "destination": null, "utterance": "I'll bring you the cup.", "source": "monologue",
            "plan": null, "created_ms": 0})
            .to_string(),
        );
        assert!(m.ready());
        let text = frame_text(&m, "http://brain", (110, 36));
        assert!(text.contains("brain "), "{text}");
        assert!(text.contains("├─ voice"), "{text}");
        assert!(text.contains("└─ face"), "{text}");
        assert!(text.contains("restarting"), "the failed child: {text}");
        assert!(
            text.contains("01:00:00 tasks"),
            "the restart timeline: {text}"
        );
        assert!(text.contains("→ bring cup"), "the phrase's intent: {text}");
        assert!(text.contains("task-7"), "{text}");
        assert!(text.contains("12.5/s"), "{text}");
    }

    #[test]
    fn text_from_the_network_cannot_drive_the_terminal() {
        let mut m = model();
        m.apply_json(
            &serde_json::json!({"seq": 3, "t_ms": 0, "kind": "phrase",
            "text": "evil\u{1b}[2Jtext", "tick": 9, "closed_by": "pause", "intent": null})
            .to_string(),
        );
        let text = frame_text(&m, "x", (110, 36));
        assert!(!text.contains('\u{1b}'));
        assert!(text.contains("evil\\u{1b}[2Jtext"), "{text}");
    }

    #[test]
    fn the_tree_lists_the_root_then_its_children() {
        let rows: Vec<ActorRow> = TREE
            .iter()
            .map(|n| ActorRow {
                name: n.to_string(),
                status: "running".into(),
                ..ActorRow::default()
            })
            .collect();
        let lines = tree_lines(&rows);
        assert_eq!(lines.len(), 8);
        assert!(lines[1].starts_with("brain"));
        assert!(lines[2].starts_with("├─ voice"));
        assert!(lines[7].starts_with("└─ face"));
    }
}
