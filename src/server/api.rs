//! The JSON API: health, actors, state, tasks, and typed speech.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use creature_actors::intent;
use creature_actors::ports::{
    Action, PageOrder, PageQuery, PhysicalTask, TaskSource, TaskState, id_number,
};
use creature_actors::tasks::CancelFilter;
use creature_actors::voice::HearError;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ApiJson};

pub(super) async fn healthz(State(state): State<AppState>) -> Response {
    let brain = state.brain();
    if brain.is_running() {
        Json(json!({"status": "ok", "backend": brain.voice.backend()})).into_response()
    } else {
        ApiError::unavailable("the brain has stopped; see the log for why").into_response()
    }
}

pub(super) async fn actors(State(state): State<AppState>) -> Response {
    Json(state.brain().actors()).into_response()
}

pub(super) async fn actor(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.brain().snapshot(&name).await?).into_response())
}

pub(super) async fn state(State(state): State<AppState>) -> Result<Response, ApiError> {
    let brain = state.brain();
    let (affect, tasks, reasoner) = tokio::join!(
        brain.affect.snapshot(),
        brain.tasks.summary(),
        brain.reasoner.snapshot()
    );
    let reasoner = reasoner?;
    let tasks = tasks?;
    let tasks_attached = tasks.body_attached;
    Ok(Json(json!({
        "uptime_ms": state.inner.started.elapsed().as_millis() as u64,
        "running": brain.is_running(),
        "voice": brain.voice.report(),
        "affect": affect?,
        "tasks": tasks,
        "reasoner": {
            "planner": reasoner["planner"],
            "in_flight": reasoner["in_flight"],
            "queued": reasoner["queued"],
            "fallbacks": reasoner["fallbacks"],
        },
        "face": {
            "latency_ms": state.face_latency().percentiles(),
            "subscribers": brain.face.subscribers(),
            "sockets": state.inner.face_clients.load(Ordering::Relaxed),
        },
        "body": {
            "attached": tasks_attached,
            "sessions": state.inner.body.sessions.load(Ordering::Relaxed),
            "refused_auth": state.inner.body.refused_auth.load(Ordering::Relaxed),
            "bad_messages": state.inner.body.bad_messages.load(Ordering::Relaxed),
            "rate_limited": state.inner.body.rate_limited.load(Ordering::Relaxed),
        },
        "audio": {
            "session_open": state.inner.audio_busy.load(Ordering::Relaxed),
            "inbox_dropped_samples": brain.inbox().dropped(),
            "received_samples": brain.inbox().received(),
        },
    }))
    .into_response())
}

/// `POST /api/tasks`: either an utterance to read, or explicit tool arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TaskRequest {
    utterance: Option<String>,
    action: Option<Action>,
    object: Option<String>,
    destination: Option<String>,
    confidence: Option<f32>,
}

impl TaskRequest {
    fn into_task(self) -> Result<PhysicalTask, ApiError> {
        if let Some(action) = self.action {
            let object = self.object.ok_or_else(|| {
                ApiError::unprocessable(
                    "invalid_task",
                    "`object` is required when `action` is given",
                )
            })?;
            let utterance = self.utterance.unwrap_or_else(|| {
                let mut u = format!("{} the {object}", action.as_str().replace('_', " "));
                if let Some(d) = &self.destination {
                    u.push_str(&format!(" to the {d}"));
                }
                u
            });
            return Ok(PhysicalTask {
                action,
                object: object.trim().to_string(),
                destination: self.destination.map(|d| d.trim().to_string()),
                utterance,
                confidence: self.confidence.unwrap_or(1.0),
            });
        }
        if self.object.is_some() || self.destination.is_some() {
            return Err(ApiError::unprocessable(
                "invalid_task",
                "`object` and `destination` need an `action`; or send just an `utterance`",
            ));
        }
        let utterance = self.utterance.ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_task",
                "send {\"utterance\": \"bring me the cup\"} or {\"action\": \"bring\", \"object\": \"cup\"}",
            )
        })?;
        if utterance.chars().count() > PhysicalTask::MAX_UTTERANCE {
            return Err(ApiError::unprocessable(
                "invalid_task",
                format!(
                    "`utterance` is longer than {} characters",
                    PhysicalTask::MAX_UTTERANCE
                ),
            ));
        }
        let parsed = intent::parse(&utterance).ok_or_else(|| {
            ApiError::unprocessable(
                "no_physical_task",
                format!("found no physical task in {utterance:?}; try e.g. \"bring me the cup\""),
            )
        })?;
        let mut task = parsed.into_task(&utterance);
        if let Some(c) = self.confidence {
            task.confidence = c;
        }
        Ok(task)
    }
}

pub(super) async fn create_task(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TaskRequest>,
) -> Result<Response, ApiError> {
    let args = req.into_task()?;
    args.validate()
        .map_err(|e| ApiError::unprocessable("invalid_task", e.to_string()))?;
    let task = state
        .brain()
        .tasks
        .create(args, TaskSource::Api, None)
        .await?;
    let location = format!("/api/tasks/{}", task.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(task),
    )
        .into_response())
}

/// Tasks per page of `GET /api/tasks` unless `limit` says otherwise.
pub(super) const DEFAULT_PAGE: usize = 50;
/// The largest page `GET /api/tasks` serves.
pub(super) const MAX_PAGE: usize = 500;

fn invalid_query(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_query", detail)
}

/// States named in a `state` parameter: `pending`, ..., or `unfinished` / `finished`.
fn parse_states(value: &str, into: &mut Vec<TaskState>) -> Result<(), ApiError> {
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let named: Vec<TaskState> = match name {
            "unfinished" => TaskState::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .collect(),
            "finished" => TaskState::ALL
                .into_iter()
                .filter(|s| s.is_terminal())
                .collect(),
            _ => match TaskState::ALL.into_iter().find(|s| s.as_str() == name) {
                Some(s) => vec![s],
                None => {
                    let known: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
                    return Err(invalid_query(format!(
                        "unknown state {:?}; use {}, unfinished or finished",
                        creature_actors::text::printable(name),
                        known.join(", ")
                    )));
                }
            },
        };
        for s in named {
            if !into.contains(&s) {
                into.push(s);
            }
        }
    }
    Ok(())
}

/// `GET /api/tasks?limit=50&cursor=task-120&state=pending,running&order=desc`.
fn page_query(params: &[(String, String)]) -> Result<PageQuery, ApiError> {
    let mut query = PageQuery {
        after: None,
        limit: DEFAULT_PAGE,
        order: PageOrder::Desc,
        states: Vec::new(),
    };
    for (key, value) in params {
        match key.as_str() {
            "limit" => {
                // Past the largest page: the largest page (the caller pages on from there).
                query.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        invalid_query(format!(
                            "`limit` must be a whole number from 1 (at most {MAX_PAGE} are served)"
                        ))
                    })?
                    .min(MAX_PAGE);
            }
            "cursor" if value.is_empty() => query.after = None,
            "cursor" => {
                let n = id_number(value)
                    .or_else(|| value.parse().ok())
                    .ok_or_else(|| {
                        invalid_query(
                            "`cursor` must be the `next_cursor` of the previous page (a task id)",
                        )
                    })?;
                query.after = Some(n);
            }
            "state" => parse_states(value, &mut query.states)?,
            "order" => {
                query.order = match value.as_str() {
                    "asc" => PageOrder::Asc,
                    "desc" => PageOrder::Desc,
                    _ => return Err(invalid_query("`order` is `asc` or `desc`")),
                }
            }
            other => {
                return Err(invalid_query(format!(
                    "unknown parameter {:?}; use limit, cursor, state, order",
                    creature_actors::text::printable(other)
                )));
            }
        }
    }
    Ok(query)
}

/// `GET /api/tasks`: one page of the ledger, newest first unless `order=asc`:
/// `{"tasks": [...], "next_cursor": "task-71" | null, "total": n}`.
pub(super) async fn list_tasks(
    State(state): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| invalid_query(e.body_text()))?;
    let query = page_query(&params)?;
    Ok(Json(state.brain().tasks.page(query).await?).into_response())
}

/// Body of `POST /api/tasks/cancel` (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CancelRequest {
    /// One state or several (`"pending"`, `["pending", "running"]`, `"unfinished"`).
    #[serde(default)]
    state: Option<OneOrMany>,
    #[serde(default)]
    source: Option<TaskSource>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `POST /api/tasks/cancel`: cancel every unfinished task, or those of the given state(s)
/// and source; `{"cancelled": [ids...]}`.
pub(super) async fn cancel_tasks(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: CancelRequest = super::error::optional_json_body(&body)?;
    let mut states = Vec::new();
    match &req.state {
        None => Ok(()),
        Some(OneOrMany::One(s)) => parse_states(s, &mut states),
        Some(OneOrMany::Many(all)) => all.iter().try_for_each(|s| parse_states(s, &mut states)),
    }
    .map_err(|e| ApiError::unprocessable("invalid_body", e.detail))?;
    if let Some(done) = states.iter().find(|s| s.is_terminal()) {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!(
                "{} tasks are finished; only unfinished ones can be cancelled",
                done.as_str()
            ),
        ));
    }
    let filter = CancelFilter {
        states,
        source: req.source,
    };
    let cancelled = state.brain().tasks.cancel_all(filter).await?;
    Ok(Json(json!({ "cancelled": cancelled })).into_response())
}

pub(super) async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.brain().tasks.get(&id).await?).into_response())
}

pub(super) async fn cancel_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.brain().tasks.cancel(&id).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HearRequest {
    text: String,
}

pub(super) async fn hear(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<HearRequest>,
) -> Result<Response, ApiError> {
    let brain = state.brain();
    brain.voice.hear(&req.text).map_err(|e| match e {
        HearError::AudioOnly(_) => ApiError::new(StatusCode::CONFLICT, "audio_only", e.to_string()),
        HearError::NotRunning => ApiError::unavailable(e.to_string()),
        HearError::Empty | HearError::TooLong(_) => {
            ApiError::unprocessable("invalid_text", e.to_string())
        }
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"heard": req.text.trim(), "backend": brain.voice.backend()})),
    )
        .into_response())
}
