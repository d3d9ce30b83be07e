//! `creature body-sim`: a reference robot body. It connects to the brain's `WS /ws/body`,
//! carries out each `do_physical_task` with believable timing (accepted, running, progress,
//! then succeeded or, at the configured rate, failed), refuses what no robot can reach,
//! stops on `cancel`, and reconnects with backoff when the brain goes away. It remembers
//! tasks by id, so a task delivered again (after a reconnect or a brain restart) is not
//! done twice: the body just reports where it is with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use creature_actors::ports::{Action, BodyReport, BodyState, PhysicalTask};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::config::DEV_BODY_TOKEN;

#[derive(Debug, Clone, clap::Args)]
pub struct BodySimArgs {
    /// The brain's body socket.
    #[arg(
        long,
        env = "CREATURE_BODY_URL",
        default_value = "ws://127.0.0.1:8080/ws/body"
    )]
    pub url: String,
    /// The brain's body token ([body] token in its config).
    #[arg(long, env = "CREATURE_BODY_TOKEN", default_value = DEV_BODY_TOKEN)]
    pub token: String,
    /// Fraction of tasks that fail (0..1).
    #[arg(long, default_value_t = 0.1)]
    pub failure_rate: f64,
    /// How fast the body works: 2 finishes tasks twice as fast.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Seed of the failure draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Things no creature's arm reaches.
const UNREACHABLE: &[&str] = &[
    "sun", "moon", "stars", "star", "sky", "horizon", "rainbow", "cloud", "clouds",
];

/// How long each action takes at speed 1: a glance is quick, switching a device is a reach
/// and a press, a throw a swing, a pour slow so nothing spills, going somewhere and
/// fetching something mean travel, and cleaning is the longest job.
fn duration_of(action: Action) -> Duration {
    Duration::from_millis(match action {
        Action::LookAt => 1_000,
        Action::SwitchOn | Action::SwitchOff => 1_500,
        Action::PutDown | Action::Open | Action::Close => 2_000,
        Action::Throw => 2_500,
        Action::PickUp | Action::Give | Action::Pull | Action::Push => 3_000,
        Action::Place | Action::Move => 4_000,
        Action::Pour => 4_500,
        Action::GoTo => 5_000,
        Action::Bring => 6_000,
        Action::Clean => 8_000,
    })
}

fn past_tense(action: Action) -> &'static str {
    match action {
        Action::Bring => "brought",
        Action::PickUp => "picked up",
        Action::PutDown => "put down",
        Action::Place => "placed",
        Action::Give => "handed over",
        Action::Move => "moved",
        Action::Open => "opened",
        Action::Close => "closed",
        Action::SwitchOn => "switched on",
        Action::SwitchOff => "switched off",
        Action::GoTo => "went to",
        Action::Pour => "poured",
        Action::Clean => "cleaned",
        Action::Throw => "threw",
        Action::LookAt => "looked at",
        Action::Pull => "pulled",
        Action::Push => "pushed",
    }
}

/// What the body says it is doing once it starts.
fn running_detail(task: &PhysicalTask) -> String {
    match (task.action, task.destination.as_deref()) {
        (Action::GoTo, Some(place)) => format!("heading to the {place}"),
        (Action::LookAt, _) => format!("turning towards the {}", task.object),
        (Action::Pour, Some(into)) => format!("pouring the {} into the {into}", task.object),
        _ => format!("going for the {}", task.object),
    }
}

/// What the body says when it is done.
fn done_detail(task: &PhysicalTask) -> String {
    match (task.action, task.destination.as_deref()) {
        (Action::GoTo, Some(place)) => format!("went to the {place}"),
        (Action::Pour, Some(into)) => format!("poured the {} into the {into}", task.object),
        (action, _) => format!("{} the {}", past_tense(action), task.object),
    }
}

/// What the body knows of one task.
#[derive(Debug, Clone)]
struct Known {
    /// The last report it made (repeated when the brain delivers the task again).
    last: BodyReport,
    cancelled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FromBrain {
    Hello {
        session: u64,
    },
    ToolCall {
        id: String,
        name: String,
        arguments: PhysicalTask,
    },
    Cancel {
        id: String,
    },
    Error {
        error: String,
        detail: String,
    },
}

/// A small deterministic generator for the failure draws.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }
}

type Memory = Arc<Mutex<HashMap<String, Known>>>;

#[allow(clippy::print_stdout)]
fn say(line: &str) {
    // Task objects and error details come from the network: escaped, one line each.
    println!("body-sim: {}", creature_actors::text::printable(line));
}

/// Run until interrupted, reconnecting whenever the brain is away.
pub async fn run(args: BodySimArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.failure_rate),
        "--failure-rate must be within 0..1"
    );
    anyhow::ensure!(
        args.speed > 0.0 && args.speed.is_finite(),
        "--speed must be positive"
    );
    let memory: Memory = Arc::default();
    let draws = Arc::new(Mutex::new(Draws(args.seed)));
    // Reports outlive a connection: work goes on while the brain is away.
    // Unbounded, so no report is ever dropped: when the brain paces a fast body, reports
    // wait here (a few per task) and leave at the pace it reads them.
    let (reports_tx, mut reports_rx) = mpsc::unbounded_channel::<BodyReport>();
    let mut work = JoinSet::new();
    let mut backoff = Duration::from_millis(250);
    loop {
        match session(
            &args,
            &memory,
            &draws,
            &reports_tx,
            &mut reports_rx,
            &mut work,
        )
        .await
        {
            Ok(()) => {
                say("the brain closed the connection");
                backoff = Duration::from_millis(250);
            }
            Err(e) => say(&format!(
                "{e:#}; retrying in {:.1} s",
                backoff.as_secs_f64()
            )),
        }
        while work.try_join_next().is_some() {}
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    args: &BodySimArgs,
    memory: &Memory,
    draws: &Arc<Mutex<Draws>>,
    reports_tx: &mpsc::UnboundedSender<BodyReport>,
    reports_rx: &mut mpsc::UnboundedReceiver<BodyReport>,
    work: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let mut request = args
        .url
        .as_str()
        .into_client_request()
        .context("bad --url")?;
    let bearer = format!("Bearer {}", args.token)
        .parse()
        .context("the token is not a valid header value")?;
    request.headers_mut().insert("Authorization", bearer);
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("cannot connect to {}", args.url))?;
    let (mut sink, mut stream) = socket.split();
    sink.send(Message::text(
        serde_json::json!({"type": "hello", "name": "body-sim"}).to_string(),
    ))
    .await?;
    loop {
        tokio::select! {
            report = reports_rx.recv() => {
                let Some(report) = report else { return Ok(()) };
                let mut msg = serde_json::to_value(&report)?;
                msg["type"] = "status".into();
                sink.send(Message::text(msg.to_string())).await?;
            }
            incoming = stream.next() => {
                let text = match incoming {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<FromBrain>(&text) {
                    Ok(FromBrain::Hello { session }) => say(&format!("connected to {} (session {session})", args.url)),
                    Ok(FromBrain::ToolCall { id, name, arguments }) => {
                        if name != "do_physical_task" {
                            let _ = reports_tx.send(BodyReport { id, state: BodyState::Rejected, detail: Some(format!("unknown tool {name}")), progress: None });
                            continue;
                        }
                        let known = memory.lock().ok().and_then(|m| m.get(&id).cloned());
                        match known {
                            // Delivered again: say where we are with it; do not start over.
                            Some(k) => { let _ = reports_tx.send(k.last); }
                            None => {
                                let fails = draws.lock().map(|mut d| d.next() < args.failure_rate).unwrap_or(false);
                                // Remembered before the work starts, so a quick second delivery
                                // cannot start it twice.
                                if let Ok(mut m) = memory.lock() {
                                    let last = BodyReport { id: id.clone(), state: BodyState::Accepted, detail: None, progress: None };
                                    m.insert(id.clone(), Known { last, cancelled: false });
                                }
                                say(&format!("{id}: {} the {}", arguments.action.as_str(), arguments.object));
                                work.spawn(carry_out(id, arguments, fails, args.speed, Arc::clone(memory), reports_tx.clone()));
                            }
                        }
                    }
                    Ok(FromBrain::Cancel { id }) => {
                        if let Ok(mut m) = memory.lock() {
                            if let Some(k) = m.get_mut(&id) {
                                k.cancelled = true;
                            }
                        }
                        say(&format!("{id}: cancelled"));
                    }
                    Ok(FromBrain::Error { error, detail }) => say(&format!("the brain refused a message: {error}: {detail}")),
                    Err(e) => say(&format!("ignoring a message it does not understand ({e})")),
                }
            }
        }
    }
}

/// Do one task, reporting as it goes.
async fn carry_out(
    id: String,
    task: PhysicalTask,
    fails: bool,
    speed: f64,
    memory: Memory,
    reports: mpsc::UnboundedSender<BodyReport>,
) {
    let scaled = |d: Duration| d.div_f64(speed);
    let report = |state: BodyState, detail: Option<String>, progress: Option<f32>| {
        let r = BodyReport {
            id: id.clone(),
            state,
            detail,
            progress,
        };
        let cancelled = match memory.lock() {
            Ok(mut m) => {
                let entry = m.entry(id.clone()).or_insert(Known {
                    last: r.clone(),
                    cancelled: false,
                });
                entry.last = r.clone();
                entry.cancelled
            }
            Err(_) => false,
        };
        if !cancelled {
            let _ = reports.send(r);
        }
        cancelled
    };
    let object = task.object.to_lowercase();
    if UNREACHABLE
        .iter()
        .any(|u| object.split_whitespace().any(|w| w == *u))
    {
        report(
            BodyState::Rejected,
            Some(format!("the {} is out of reach", task.object)),
            None,
        );
        say(&format!(
            "{id}: rejected, the {} is out of reach",
            task.object
        ));
        return;
    }
    if report(BodyState::Accepted, None, None) {
        return;
    }
    tokio::time::sleep(scaled(Duration::from_millis(200))).await;
    if report(BodyState::Running, Some(running_detail(&task)), Some(0.0)) {
        return;
    }
    let total = scaled(duration_of(task.action));
    let steps = 4u32;
    for step in 1..steps {
        tokio::time::sleep(total / steps).await;
        let fraction = step as f32 / steps as f32;
        if fails && step == steps - 1 {
            report(
                BodyState::Failed,
                Some(format!("dropped the {}", task.object)),
                None,
            );
            say(&format!("{id}: failed"));
            return;
        }
        if report(BodyState::Progress, None, Some(fraction)) {
            return;
        }
    }
    tokio::time::sleep(total / steps).await;
    let done = done_detail(&task);
    if !report(BodyState::Succeeded, Some(done.clone()), Some(1.0)) {
        say(&format!("{id}: {done}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(action: Action, object: &str, destination: Option<&str>) -> PhysicalTask {
        PhysicalTask {
            action,
            object: object.into(),
            destination: destination.map(str::to_string),
            utterance: String::new(),
            confidence: 0.9,
        }
    }

    #[test]
    fn every_action_takes_a_believable_time() {
        for action in Action::ALL {
            let d = duration_of(action);
            assert!(
                (Duration::from_millis(500)..=Duration::from_secs(10)).contains(&d),
                "{action:?} takes {d:?}"
            );
            assert!(!past_tense(action).is_empty());
        }
        // A glance is the quickest thing a body does; cleaning the longest.
        assert!(
            Action::ALL
                .iter()
                .all(|&a| duration_of(a) >= duration_of(Action::LookAt))
        );
        assert!(
            Action::ALL
                .iter()
                .all(|&a| duration_of(a) <= duration_of(Action::Clean))
        );
        assert!(duration_of(Action::SwitchOn) < duration_of(Action::GoTo));
        assert!(duration_of(Action::Throw) < duration_of(Action::Pour));
    }

    #[test]
    fn reports_name_the_place_and_the_container() {
        let go = task(Action::GoTo, "garage", Some("garage"));
        assert_eq!(running_detail(&go), "heading to the garage");
        assert_eq!(done_detail(&go), "went to the garage");
        let pour = task(Action::Pour, "milk", Some("glass"));
        assert_eq!(done_detail(&pour), "poured the milk into the glass");
        let on = task(Action::SwitchOn, "heater", None);
        assert_eq!(done_detail(&on), "switched on the heater");
        assert_eq!(running_detail(&on), "going for the heater");
    }
}
