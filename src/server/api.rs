//! The JSON API: health, actors, state, tasks, and typed speech.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use creature_actors::intent;
use creature_actors::ports::{Action, PhysicalTask, TaskSource};
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
        .map_err(|e| ApiError::unprocessable("invalid_task", e))?;
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

pub(super) async fn list_tasks(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(state.brain().tasks.list().await?).into_response())
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
