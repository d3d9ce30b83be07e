//! The LLM planner against a scripted OpenAI-compatible server on a real socket
//! (127.0.0.1, port 0): good answers, multi-step plans, and every way an LLM lets the
//! creature down (slow, failing, malformed, chatty), first at planner level, then through
//! the whole service from "the user says something" to a task in the ledger.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use creature::config::{Config, PlannerKind};
use creature::planner_llm::{LlmConfig, LlmPlanner, LlmSettings};
use creature::schemas;
use creature_actors::ports::{Action, Intent, PhysicalTask, PlanContext, Planner};
use creature_actors::rules::RulePlanner;
use serde_json::{Value, json};

use common::{TestBrain, assert_schema, eventually, start_with};

/// The utterance the scripted LLM puts in its calls, so a task it planned is recognisable.
const LLM_UTTERANCE: &str = "planned by the test llm";
const MODEL: &str = "test-planner-model";

/// Service-level tests take turns: each runs a whole brain with an 80 ms voice loop, and the
/// real-time check must not share two cores with another brain from this file.
static ONE_BRAIN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How the scripted server answers.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// One valid `do_physical_task` call (bring the cup).
    OneCall,
    /// Two calls: pick up the cup, then place it on the table.
    TwoSteps,
    /// Waits this long, then answers like `OneCall`.
    Slow(Duration),
    /// Burns the CPU of the shared async worker it runs on this long (no await), then
    /// answers like `OneCall`: a neighbour on the brain's own runtime that hogs it.
    Burn(Duration),
    /// Blocks the shared async worker it runs on (a thread sleep), then answers.
    Block(Duration),
    /// HTTP 500 with a plain-text body.
    ServerError,
    /// A tool call whose arguments are not JSON.
    ArgumentsNotJson,
    /// A tool call whose arguments break the schema (confidence 3, action "fly").
    ArgumentsInvalid,
    /// Only text, no tool call.
    TextOnly,
    /// A call to a tool that was never offered.
    OtherTool,
    /// A 200 whose body is not a chat completion.
    Garbage,
}

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    body: Value,
    authorization: Option<String>,
}

struct Script {
    mode: Mode,
    seen: Mutex<Vec<Seen>>,
    /// Requests hogging a worker right now, and the most at once (`Burn`, `Block`).
    hogging: std::sync::atomic::AtomicUsize,
    most_hogging: std::sync::atomic::AtomicUsize,
}

/// An OpenAI-compatible chat endpoint serving `POST /v1/chat/completions` from a script.
struct FakeLlm {
    addr: SocketAddr,
    script: Arc<Script>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    async fn start(mode: Mode) -> FakeLlm {
        let script = Arc::new(Script {
            mode,
            seen: Mutex::new(Vec::new()),
            hogging: Default::default(),
            most_hogging: Default::default(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(Arc::clone(&script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeLlm {
            addr,
            script,
            server,
        }
    }

    /// The API base, as `[reasoner.llm] base_url` takes it.
    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn args(action: &str, object: &str, destination: Option<&str>) -> String {
    let mut a =
        json!({"action": action, "object": object, "utterance": LLM_UTTERANCE, "confidence": 0.8});
    if let Some(d) = destination {
        a["destination"] = json!(d);
    }
    a.to_string()
}

/// A chat completion as OpenAI's API writes it.
fn completion(model: &Value, calls: &[(&str, String)], content: Option<&str>) -> Value {
    let tool_calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            json!({"id": format!("call_{i}"), "type": "function", "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": content});
    if !tool_calls.is_empty() {
        message["tool_calls"] = json!(tool_calls);
    }
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": if tool_calls.is_empty() { "stop" } else { "tool_calls" },
        }],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    })
}

async fn completions(
    State(script): State<Arc<Script>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mode = script.mode;
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    script.seen.lock().unwrap().push(Seen {
        body: body.clone(),
        authorization,
    });
    let model = &body["model"];
    let bring_cup = || vec![("do_physical_task", args("bring", "cup", None))];
    let answer = match mode {
        Mode::OneCall => completion(model, &bring_cup(), None),
        Mode::TwoSteps => completion(
            model,
            &[("do_physical_task", args("pick_up", "cup", None)), ("do_physical_task", args("place", "cup", Some("table")))],
            None,
        ),
        Mode::Slow(wait) => {
            tokio::time::sleep(wait).await;
            completion(model, &bring_cup(), None)
        }
        Mode::Burn(cpu) | Mode::Block(cpu) => {
            use std::sync::atomic::Ordering::SeqCst;
            let now = script.hogging.fetch_add(1, SeqCst) + 1;
            script.most_hogging.fetch_max(now, SeqCst);
            if matches!(script.mode, Mode::Block(_)) {
                std::thread::sleep(cpu);
            } else {
                let until = Instant::now() + cpu;
                let mut x: u64 = 1;
                while Instant::now() < until {
                    for _ in 0..1_000 {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    }
                    std::hint::black_box(x);
                }
            }
            script.hogging.fetch_sub(1, SeqCst);
            completion(model, &bring_cup(), None)
        }
        Mode::ServerError => return (StatusCode::INTERNAL_SERVER_ERROR, "the model fell over").into_response(),
        Mode::ArgumentsNotJson => completion(model, &[("do_physical_task", "{action: bring, the cup".into())], None),
        Mode::ArgumentsInvalid => completion(
            model,
            &[(
                "do_physical_task",
                json!({"action": "fly", "object": "cup", "utterance": LLM_UTTERANCE, "confidence": 3}).to_string(),
            )],
            None,
        ),
        Mode::TextOnly => completion(model, &[], Some("Sure, I would love to help you with the cup!")),
        Mode::OtherTool => completion(model, &[("launch_rocket", "{}".into())], None),
        Mode::Garbage => return (StatusCode::OK, [("content-type", "application/json")], "{\"choices\": [").into_response(),
    };
    Json(answer).into_response()
}

// --- planner level -------------------------------------------------------------------------

fn settings(llm: &FakeLlm, timeout: Duration) -> LlmSettings {
    LlmSettings {
        base_url: Some(llm.base_url()),
        model: MODEL.into(),
        api_key: Some("sk-test-key".into()),
        timeout,
        temperature: 0.2,
        max_tokens: 256,
        max_steps: 8,
    }
}

fn planner(llm: &FakeLlm, timeout: Duration) -> LlmPlanner {
    LlmPlanner::new(settings(llm, timeout), RulePlanner::default()).unwrap()
}

fn bring_the_cup() -> PlanContext {
    PlanContext {
        intent: Intent {
            task: PhysicalTask {
                action: Action::Bring,
                object: "cup".into(),
                destination: None,
                utterance: "Okay, I'll bring you the cup.".into(),
                confidence: 0.9,
            },
            tick: 12,
            detector: "rules+classifier".into(),
        },
        recent_monologue: vec![
            "Hello! Nice to see you.".into(),
            "Okay, I'll bring you the cup.".into(),
        ],
    }
}

#[tokio::test]
async fn the_request_carries_the_schema_tool_the_model_and_the_intent() {
    let llm = FakeLlm::start(Mode::OneCall).await;
    let out = planner(&llm, Duration::from_secs(5))
        .plan(bring_the_cup())
        .await
        .unwrap();
    assert_eq!(out.planner, "llm");
    assert_eq!(out.fallback, None);
    assert_eq!(out.calls.len(), 1);
    assert_eq!(out.calls[0].action, Action::Bring);
    assert_eq!(out.calls[0].utterance, LLM_UTTERANCE);

    let seen = llm.seen();
    assert_eq!(seen.len(), 1);
    let body = &seen[0].body;
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-test-key"));
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["max_tokens"], 256);
    let tools = body["tools"].as_array().expect("tools");
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["type"], "function");
    let function = &tools[0]["function"];
    assert_eq!(function["name"], "do_physical_task");
    let schema = schemas::schema("do_physical_task.schema.json").unwrap();
    assert_eq!(function["description"], schema["description"]);
    let params = &function["parameters"];
    assert_eq!(
        params["properties"]["action"]["enum"],
        schema["properties"]["action"]["enum"]
    );
    assert_eq!(
        params["properties"], schema["properties"],
        "property descriptions and limits kept"
    );
    assert_eq!(params["required"], schema["required"]);
    assert!(
        params.get("$schema").is_none() && params.get("$id").is_none(),
        "{params}"
    );

    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages[0]["role"], "system");
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .contains("do_physical_task")
    );
    let user = messages
        .iter()
        .find(|m| m["role"] == "user")
        .expect("a user message");
    let text = user["content"].as_str().unwrap();
    assert!(text.contains("Okay, I'll bring you the cup."), "{text}");
    assert!(
        text.contains("Hello! Nice to see you."),
        "the recent monologue: {text}"
    );
    assert!(
        text.contains("action bring") && text.contains("object \"cup\""),
        "the parsed intent: {text}"
    );
}

#[tokio::test]
async fn a_two_step_plan_comes_back_in_order() {
    let llm = FakeLlm::start(Mode::TwoSteps).await;
    let out = planner(&llm, Duration::from_secs(5))
        .plan(bring_the_cup())
        .await
        .unwrap();
    assert_eq!(out.planner, "llm");
    let steps: Vec<_> = out
        .calls
        .iter()
        .map(|c| (c.action, c.destination.clone()))
        .collect();
    assert_eq!(
        steps,
        [
            (Action::PickUp, None),
            (Action::Place, Some("table".to_string()))
        ]
    );
}

/// Plan with `mode`; the rule planner must answer, and the reason is returned.
async fn fallback_reason(mode: Mode, timeout: Duration) -> String {
    let llm = FakeLlm::start(mode).await;
    let out = planner(&llm, timeout).plan(bring_the_cup()).await.unwrap();
    assert_eq!(out.planner, "rules", "{mode:?}");
    assert_eq!(
        out.calls,
        vec![bring_the_cup().intent.task],
        "{mode:?}: the intent itself"
    );
    // async-openai retries a 5xx three times (100-400 ms apart), inside the timeout.
    let asked = if matches!(mode, Mode::ServerError) {
        4
    } else {
        1
    };
    assert_eq!(
        llm.seen().len(),
        asked,
        "{mode:?}: how often the endpoint was asked"
    );
    out.fallback
        .unwrap_or_else(|| panic!("{mode:?}: a fallback reason"))
}

#[tokio::test]
async fn a_slow_llm_times_out_and_the_rules_answer() {
    let started = Instant::now();
    let reason = fallback_reason(Mode::Slow(Duration::from_secs(5)), Duration::from_secs(1)).await;
    assert_eq!(reason, "llm timed out after 1 s");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout held: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn failing_and_malformed_answers_fall_back_with_the_reason() {
    let t = Duration::from_secs(5);
    let reason = fallback_reason(Mode::ServerError, t).await;
    assert!(
        reason.starts_with("llm endpoint answered HTTP 500")
            && reason.contains("the model fell over"),
        "{reason}"
    );
    let reason = fallback_reason(Mode::ArgumentsNotJson, t).await;
    assert!(
        reason.starts_with("llm tool call 1 rejected: arguments are not JSON"),
        "{reason}"
    );
    let reason = fallback_reason(Mode::ArgumentsInvalid, t).await;
    assert!(reason.starts_with("llm tool call 1 rejected: "), "{reason}");
    assert!(
        reason.contains("3 is greater than the maximum of 1"),
        "{reason}"
    );
    assert!(reason.contains("\"fly\" is not one of"), "{reason}");
    let reason = fallback_reason(Mode::TextOnly, t).await;
    assert!(
        reason.starts_with("llm answered without a tool call") && reason.contains("love to help"),
        "{reason}"
    );
    let reason = fallback_reason(Mode::OtherTool, t).await;
    assert_eq!(
        reason,
        "llm tool call 1 is `launch_rocket`, not do_physical_task"
    );
    let reason = fallback_reason(Mode::Garbage, t).await;
    assert!(
        reason.starts_with("llm answer is not a chat completion"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_unreachable_or_missing_endpoint_falls_back() {
    // A port nobody listens on: bind one, then free it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut s = LlmSettings::from_config(&LlmConfig::default());
    s.base_url = Some(format!("http://{addr}/v1"));
    let out = LlmPlanner::new(s, RulePlanner::default())
        .unwrap()
        .plan(bring_the_cup())
        .await
        .unwrap();
    let reason = out.fallback.unwrap();
    assert!(reason.starts_with("llm endpoint unreachable"), "{reason}");
    assert_eq!(out.planner, "rules");

    let out = LlmPlanner::from_config(&Config::default().reasoner)
        .unwrap()
        .plan(bring_the_cup())
        .await
        .unwrap();
    assert_eq!(out.fallback.as_deref(), Some("no LLM endpoint configured"));
}

#[test]
fn the_api_key_comes_from_the_variable_the_config_names() {
    let mut section = LlmConfig {
        api_key_env: "CREATURE_TEST_NO_SUCH_VARIABLE_1F3A".into(),
        ..LlmConfig::default()
    };
    assert_eq!(
        LlmSettings::from_config(&section).api_key,
        None,
        "unset: no key"
    );
    // PATH is always set: it stands in for a key variable without touching the environment.
    section.api_key_env = "PATH".into();
    assert_eq!(
        LlmSettings::from_config(&section).api_key,
        std::env::var("PATH").ok()
    );
    section.base_url = "http://127.0.0.1:9/v1/".into();
    assert_eq!(
        LlmSettings::from_config(&section).base_url.as_deref(),
        Some("http://127.0.0.1:9/v1")
    );
}

// --- through the whole service -------------------------------------------------------------

async fn brain_with_llm(
    llm: &FakeLlm,
    timeout_secs: f64,
    tweak: impl FnOnce(&mut Config),
) -> TestBrain {
    let base_url = llm.base_url();
    start_with(|c| {
        c.reasoner.planner = PlannerKind::Llm;
        c.reasoner.llm.base_url = base_url;
        c.reasoner.llm.model = MODEL.into();
        c.reasoner.llm.timeout_secs = timeout_secs;
        c.reasoner.llm.api_key_env = "CREATURE_TEST_NO_SUCH_VARIABLE_1F3A".into();
        // Brisk speech keeps the tests short; the loop still ticks every 80 ms.
        c.voice.sim.words_per_second = 10.0;
        tweak(c);
    })
    .await
}

async fn tasks(brain: &TestBrain) -> Vec<Value> {
    // Oldest first: creation order (`task-10` after `task-9`).
    let (status, page) = brain.get("/api/tasks?order=asc&limit=500").await;
    assert_eq!(status, 200, "{page}");
    page["tasks"].as_array().cloned().unwrap_or_default()
}

async fn tasks_at_least(brain: &TestBrain, n: usize, limit: Duration) -> Vec<Value> {
    eventually(limit, &format!("{n} task(s)"), || async {
        let list = tasks(brain).await;
        (list.len() >= n).then_some(list)
    })
    .await
}

async fn reasoner(brain: &TestBrain) -> Value {
    let (status, body) = brain.get("/api/actors/reasoner").await;
    assert_eq!(status, 200, "{body}");
    body["state"].clone()
}

/// The reasoner's record of the first deliberation that planned something.
async fn planned_record(brain: &TestBrain) -> Value {
    eventually(Duration::from_secs(5), "a planned deliberation", || async {
        let state = reasoner(brain).await;
        state["recent"]
            .as_array()
            .and_then(|r| r.iter().find(|d| d["outcome"] == "planned").cloned())
    })
    .await
}

async fn hear(brain: &TestBrain, text: &str) {
    let (status, body) = brain.post("/api/hear", json!({"text": text})).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_becomes_a_task_through_the_llm() {
    let _turn = ONE_BRAIN_AT_A_TIME.lock().await;
    let llm = FakeLlm::start(Mode::OneCall).await;
    let brain = brain_with_llm(&llm, 5.0, |_| {}).await;
    hear(&brain, "bring me the cup").await;
    let list = tasks_at_least(&brain, 1, Duration::from_secs(8)).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let task = &list[0];
    assert_schema("task.schema.json", task);
    assert_eq!(task["source"], "monologue");
    assert_eq!(task["arguments"]["action"], "bring");
    assert_eq!(
        task["arguments"]["utterance"], LLM_UTTERANCE,
        "the LLM's call, not the intent's"
    );

    let state = reasoner(&brain).await;
    assert_eq!(state["planner"], "llm");
    assert_eq!(state["fallbacks"], 0);
    let record = planned_record(&brain).await;
    assert_eq!(record["planner"], "llm");
    assert_eq!(record["fallback"], Value::Null);
    assert_eq!(record["tasks"][0], task["id"]);

    let seen = llm.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["model"], MODEL);
    assert_eq!(
        seen[0].authorization.as_deref().map(str::trim),
        Some("Bearer"),
        "no key variable set: no key"
    );
    let user = seen[0].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "user")
        .unwrap()
        .clone();
    assert!(
        user["content"]
            .as_str()
            .unwrap()
            .contains("I'll bring you the cup"),
        "{user}"
    );
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_step_plan_becomes_two_ordered_tasks() {
    let _turn = ONE_BRAIN_AT_A_TIME.lock().await;
    let llm = FakeLlm::start(Mode::TwoSteps).await;
    let brain = brain_with_llm(&llm, 5.0, |_| {}).await;
    hear(&brain, "bring me the cup").await;
    let list = tasks_at_least(&brain, 2, Duration::from_secs(8)).await;
    assert_eq!(list.len(), 2, "{list:?}");
    for task in &list {
        assert_schema("task.schema.json", task);
        assert_eq!(task["source"], "monologue");
    }
    let (first, second) = (&list[0], &list[1]);
    assert_eq!(first["arguments"]["action"], "pick_up");
    assert_eq!(
        (first["plan"]["step"].as_u64(), first["plan"]["of"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(second["arguments"]["action"], "place");
    assert_eq!(second["arguments"]["destination"], "table");
    assert_eq!(
        (
            second["plan"]["step"].as_u64(),
            second["plan"]["of"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(first["plan"]["plan"], second["plan"]["plan"], "one plan");
    let record = planned_record(&brain).await;
    assert_eq!(
        record["tasks"],
        json!([first["id"], second["id"]]),
        "filed in order"
    );
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_llm_still_files_the_task_through_the_rules() {
    let _turn = ONE_BRAIN_AT_A_TIME.lock().await;
    let llm = FakeLlm::start(Mode::Slow(Duration::from_secs(5))).await;
    let brain = brain_with_llm(&llm, 1.0, |_| {}).await;
    hear(&brain, "bring me the cup").await;
    let list = tasks_at_least(&brain, 1, Duration::from_secs(8)).await;
    let task = &list[0];
    assert_eq!(task["source"], "monologue");
    assert_eq!(task["arguments"]["object"], "cup");
    assert_ne!(
        task["arguments"]["utterance"], LLM_UTTERANCE,
        "the rule planner's call"
    );
    let state = reasoner(&brain).await;
    assert_eq!(state["planner"], "llm");
    assert_eq!(state["fallbacks"], 1);
    assert_eq!(state["last_fallback"], "llm timed out after 1 s");
    let record = planned_record(&brain).await;
    assert_eq!(record["planner"], "rules");
    assert_eq!(record["fallback"], "llm timed out after 1 s");
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tool_arguments_are_rejected_with_the_violation() {
    let _turn = ONE_BRAIN_AT_A_TIME.lock().await;
    let llm = FakeLlm::start(Mode::ArgumentsInvalid).await;
    let brain = brain_with_llm(&llm, 5.0, |_| {}).await;
    hear(&brain, "bring me the cup").await;
    let list = tasks_at_least(&brain, 1, Duration::from_secs(8)).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0]["arguments"]["action"], "bring",
        "the rule planner's call"
    );
    let state = reasoner(&brain).await;
    let why = state["last_fallback"].as_str().unwrap_or_default();
    assert!(why.starts_with("llm tool call 1 rejected: "), "{state}");
    assert!(why.contains("3 is greater than the maximum of 1"), "{why}");
    assert_eq!(planned_record(&brain).await["planner"], "rules");
    brain.service.shutdown().await;
}

/// The real-time check: while every LLM call takes 5 s, intents pile up in the slow
/// loop and the 80 ms voice tick never stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_second_llm_never_stalls_the_voice_tick() {
    let _turn = ONE_BRAIN_AT_A_TIME.lock().await;
    let llm = FakeLlm::start(Mode::Slow(Duration::from_secs(5))).await;
    let brain = brain_with_llm(&llm, 7.0, |c| c.reasoner.actor.max_in_flight = 2).await;
    // Overruns are counted from here: the window in which the LLM keeps the slow loop busy.
    let before = eventually(Duration::from_secs(5), "the voice loop ticking", || async {
        let (_, state) = brain.get("/api/state").await;
        (state["voice"]["ticks"].as_u64().unwrap_or(0) >= 3)
            .then(|| state["voice"]["overruns"].as_u64().unwrap())
    })
    .await;
    for text in [
        "bring me the cup",
        "open the door",
        "put the book on the shelf",
    ] {
        hear(&brain, text).await;
    }
    // Two deliberations wait on the LLM, the third waits for a slot, visibly.
    let waiting = eventually(
        Duration::from_secs(5),
        "2 in flight and 1 queued",
        || async {
            let state = reasoner(&brain).await;
            (state["in_flight"] == 2 && state["queued"] == 1).then_some(state)
        },
    )
    .await;
    assert_eq!(
        waiting["running"].as_array().map(Vec::len),
        Some(2),
        "{waiting}"
    );
    assert!(
        tasks(&brain).await.is_empty(),
        "nothing is filed before the LLM answers"
    );
    // The first two answers arrive after 5 s, through the LLM.
    let list = tasks_at_least(&brain, 2, Duration::from_secs(9)).await;
    assert!(
        list.iter()
            .all(|t| t["arguments"]["utterance"] == LLM_UTTERANCE),
        "{list:?}"
    );
    assert_eq!(reasoner(&brain).await["fallbacks"], 0);

    let (status, state) = brain.get("/api/state").await;
    assert_eq!(status, 200);
    let voice = &state["voice"];
    let max_gap = voice["interval_ms"]["max_ms"].as_f64().unwrap();
    eprintln!(
        "voice tick over {} ticks: interval {}",
        voice["ticks"], voice["interval_ms"]
    );
    assert!(voice["ticks"].as_u64().unwrap() >= 60, "{voice}");
    assert!(
        max_gap < 120.0,
        "a tick gap of {max_gap} ms while the LLM thought: {voice}"
    );
    assert_eq!(
        voice["overruns"].as_u64().unwrap() - before,
        0,
        "overruns while the LLM thought: {voice}"
    );
    brain.service.shutdown().await;
}

/// The LLM's server shares the brain's async workers and hogs them (`Burn`: CPU without an
/// await; `Block`: a sleeping worker thread), two calls at once so both workers are taken:
/// the 80 ms voice tick must still never stall, overrun or miss a beat.
async fn an_llm_hogging_the_workers_never_stalls_the_voice_tick(mode: Mode) {
    let _turn = ONE_BRAIN_AT_A_TIME.lock().await;
    let llm = FakeLlm::start(mode).await;
    let brain = brain_with_llm(&llm, 7.0, |c| c.reasoner.actor.max_in_flight = 2).await;
    let before = eventually(Duration::from_secs(5), "the voice loop ticking", || async {
        let (_, state) = brain.get("/api/state").await;
        let voice = &state["voice"];
        (voice["ticks"].as_u64().unwrap_or(0) >= 3).then(|| {
            (
                voice["overruns"].as_u64().unwrap(),
                voice["missed_ticks"].as_u64().unwrap(),
            )
        })
    })
    .await;
    for text in [
        "bring me the cup",
        "open the door",
        "put the book on the shelf",
    ] {
        hear(&brain, text).await;
    }
    tasks_at_least(&brain, 3, Duration::from_secs(20)).await;
    assert!(
        llm.script
            .most_hogging
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2,
        "the test's point: both async workers were taken at once"
    );
    let (_, state) = brain.get("/api/state").await;
    let voice = &state["voice"];
    let max_gap = voice["interval_ms"]["max_ms"].as_f64().unwrap();
    assert!(
        max_gap < 120.0,
        "a tick gap of {max_gap} ms while the LLM hogged the workers: {voice}"
    );
    assert_eq!(voice["overruns"].as_u64().unwrap() - before.0, 0, "{voice}");
    assert_eq!(
        voice["missed_ticks"].as_u64().unwrap() - before.1,
        0,
        "{voice}"
    );
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_burning_the_workers_cpu_never_stalls_the_voice_tick() {
    an_llm_hogging_the_workers_never_stalls_the_voice_tick(Mode::Burn(Duration::from_millis(1500)))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_blocking_the_workers_never_stalls_the_voice_tick() {
    an_llm_hogging_the_workers_never_stalls_the_voice_tick(Mode::Block(Duration::from_millis(
        1500,
    )))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_go_through_the_llm_to_the_body_and_come_back_done() {
    let _turn = ONE_BRAIN_AT_A_TIME.lock().await;
    let llm = FakeLlm::start(Mode::OneCall).await;
    let brain = brain_with_llm(&llm, 5.0, |_| {}).await;
    let body = tokio::spawn(creature::body_sim::run(creature::body_sim::BodySimArgs {
        url: brain.ws_url("/ws/body"),
        token: creature::config::DEV_BODY_TOKEN.into(),
        failure_rate: 0.0,
        speed: 10.0,
        seed: 5,
    }));
    hear(&brain, "bring me the cup").await;
    let done = eventually(
        Duration::from_secs(15),
        "the LLM's task to be done by the body",
        || async {
            tasks(&brain)
                .await
                .into_iter()
                .find(|t| t["state"] == "succeeded")
        },
    )
    .await;
    assert_eq!(
        done["arguments"]["utterance"], LLM_UTTERANCE,
        "the LLM planned it"
    );
    assert_eq!(done["source"], "monologue");
    let states = common::history(&done);
    assert_eq!(
        states,
        ["pending", "dispatched", "accepted", "running", "succeeded"]
    );
    assert_eq!(tasks(&brain).await.len(), 1, "one intent, one task");
    body.abort();
    brain.service.shutdown().await;
}
