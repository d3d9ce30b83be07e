//! The LLM planner behind the `Planner` port: asks any OpenAI-compatible chat endpoint
//! (through async-openai) to turn an intent into `do_physical_task` tool calls, checks every
//! call against the tool's JSON Schema, and falls back to the rule planner, saying why,
//! whenever the LLM cannot give a usable plan in time.

use std::fmt;
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, ChatCompletionTool, ChatCompletionTools,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs, CreateChatCompletionResponse,
    FunctionObject,
};
use creature_actors::ports::{PhysicalTask, PlanContext, PlanOutcome, Planner, PlannerError};
use creature_actors::rules::RulePlanner;
use serde_json::Value;

use crate::config::{ConfigError, ReasonerSection};
use crate::schemas::{self, SchemaError};

/// The one tool the planner offers, named as the schema's `title`.
pub const TOOL_NAME: &str = "do_physical_task";

/// The schema the tool definition is generated from and the arguments are checked against.
const TOOL_SCHEMA: &str = "do_physical_task.schema.json";

/// Monologue phrases sent with an intent, newest kept: enough context, a bounded prompt.
const MAX_CONTEXT_PHRASES: usize = 16;

/// Longest piece of an endpoint's text quoted in a fallback reason.
const MAX_QUOTE: usize = 160;

const SYSTEM_PROMPT: &str = "You are the planner of a small robot creature. The creature has just \
said, in its own words, that it will do something physical. Turn that commitment into actions for \
its body: call the do_physical_task tool once for every physical step, in the order the steps must \
happen. A simple request is one call; something like \"put the cup on the table\" may be two (pick_up, \
then place). Use the objects and places the creature named; do not invent others. Set confidence to \
how sure you are that the creature meant it (0..1). Do not ask questions and do not answer in text: \
only call the tool.";

/// Why the LLM planner could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LlmPlannerError {
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("do_physical_task.schema.json cannot be a tool definition: {0}")]
    ToolSchema(String),
}

/// Why an LLM answer was not used. Its text is the `fallback` reason the reasoner shows.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmFailure {
    #[error("no LLM endpoint configured")]
    NoEndpoint,
    #[error("llm timed out after {} s", .0.as_secs_f64())]
    TimedOut(Duration),
    #[error("llm endpoint unreachable: {0}")]
    Transport(String),
    #[error("llm endpoint answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("llm answer is not a chat completion: {0}")]
    Malformed(String),
    #[error("llm answered without a tool call{}", said_suffix(.said))]
    NoToolCall { said: Option<String> },
    #[error("llm tool call {index} is `{name}`, not do_physical_task")]
    UnknownTool { index: usize, name: String },
    #[error("llm planned {steps} steps; at most {max} are accepted")]
    TooManySteps { steps: usize, max: usize },
    #[error("llm tool call {index} rejected: {reason}")]
    Rejected { index: usize, reason: String },
    #[error("llm request could not be built: {0}")]
    Request(String),
}

fn said_suffix(said: &Option<String>) -> String {
    match said {
        Some(text) => format!(" (it said {text:?})"),
        None => String::new(),
    }
}

impl LlmFailure {
    fn from_openai(err: OpenAIError) -> Self {
        match err {
            OpenAIError::ApiError(api) => LlmFailure::Status {
                status: api.status_code.as_u16(),
                message: quote(&api.api_error.message),
            },
            OpenAIError::Reqwest(e) => LlmFailure::Transport(error_chain(&e)),
            OpenAIError::JSONDeserialize(e, content) => {
                LlmFailure::Malformed(format!("{e} in {}", quote(&content)))
            }
            other => LlmFailure::Transport(error_chain(&other)),
        }
    }
}

/// An error with its causes, because reqwest's own text stops at "error sending request".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// `text` shortened for a reason line, on a character boundary.
fn quote(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The LLM planner's endpoint and model: `[reasoner.llm]` in the config file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// The endpoint's API base, `/v1` included (`/chat/completions` is appended).
    /// Empty: no endpoint, so every deliberation falls back to the rule planner.
    pub base_url: String,
    pub model: String,
    /// Name of the environment variable holding the API key: the key itself never sits in
    /// the config file. An unset variable sends no key (fine for local servers).
    pub api_key_env: String,
    /// Longest wait for the whole request, answer included.
    pub timeout_secs: f64,
    pub temperature: f32,
    /// Most tokens the model may generate per answer.
    pub max_tokens: u32,
    /// Most tool calls accepted from one answer; a longer plan is refused (and falls back).
    pub max_steps: usize,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: String::new(),
            model: "gpt-4o-mini".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            timeout_secs: 8.0,
            temperature: 0.2,
            max_tokens: 512,
            max_steps: 8,
        }
    }
}

impl LlmConfig {
    /// Refuse values the LLM planner cannot run with, naming the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        let url = self.base_url.trim();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return invalid(
                "reasoner.llm.base_url",
                format!("{url:?} is not an http:// or https:// URL"),
            );
        }
        if self.model.trim().is_empty() {
            return invalid("reasoner.llm.model", "must name a model".into());
        }
        if self.api_key_env.contains('=') || self.api_key_env.contains('\0') {
            return invalid(
                "reasoner.llm.api_key_env",
                format!("{:?} is not an environment variable name", self.api_key_env),
            );
        }
        if !(self.timeout_secs.is_finite() && self.timeout_secs > 0.0 && self.timeout_secs <= 600.0)
        {
            return invalid(
                "reasoner.llm.timeout_secs",
                format!("{} is outside 0..600 seconds", self.timeout_secs),
            );
        }
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return invalid(
                "reasoner.llm.temperature",
                format!("{} is outside 0..2", self.temperature),
            );
        }
        if self.max_tokens == 0 {
            return invalid("reasoner.llm.max_tokens", "must be at least 1".into());
        }
        if !(1..=32).contains(&self.max_steps) {
            return invalid(
                "reasoner.llm.max_steps",
                format!("{} is outside 1..32", self.max_steps),
            );
        }
        Ok(())
    }
}

/// What the planner needs from `[reasoner.llm]`, with the API key already looked up.
#[derive(Clone)]
pub struct LlmSettings {
    /// API base with `/v1`; `None`: no endpoint, every intent falls back.
    pub base_url: Option<String>,
    pub model: String,
    /// The key from the environment variable the config names; `None` sends none.
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub temperature: f32,
    pub max_tokens: u32,
    pub max_steps: usize,
}

impl fmt::Debug for LlmSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmSettings")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .field("max_steps", &self.max_steps)
            .finish()
    }
}

impl LlmSettings {
    /// The settings of `section`, reading the API key from the environment variable it
    /// names (once, at startup). Call `section.check()` (via `Config::load`) first.
    pub fn from_config(section: &LlmConfig) -> Self {
        let base_url = section.base_url.trim().trim_end_matches('/');
        let api_key = match section.api_key_env.trim() {
            "" => None,
            name => std::env::var(name)
                .ok()
                .filter(|key| !key.trim().is_empty()),
        };
        // `check()` refuses these; still, never panic on a NaN from an unchecked section.
        let timeout = match section.timeout_secs {
            secs if secs.is_finite() => Duration::from_secs_f64(secs.clamp(0.001, 600.0)),
            _ => Duration::from_secs(8),
        };
        LlmSettings {
            base_url: (!base_url.is_empty()).then(|| base_url.to_string()),
            model: section.model.clone(),
            api_key,
            timeout,
            temperature: section.temperature,
            max_tokens: section.max_tokens,
            max_steps: section.max_steps.max(1),
        }
    }
}

/// The `do_physical_task` tool definition, generated from the JSON Schema: its description
/// becomes the function's, the rest (property descriptions included) its parameters.
pub fn tool_definition() -> Result<FunctionObject, LlmPlannerError> {
    let mut schema = schemas::schema(TOOL_SCHEMA)?;
    let Value::Object(fields) = &mut schema else {
        return Err(LlmPlannerError::ToolSchema(
            "it is not a JSON object".into(),
        ));
    };
    if let Some(title) = fields.remove("title") {
        if title != TOOL_NAME {
            return Err(LlmPlannerError::ToolSchema(format!(
                "its title is {title}, not {TOOL_NAME}"
            )));
        }
    }
    fields.remove("$schema");
    fields.remove("$id");
    // The per-action argument rules (`allOf` of if/then) stay out of the tool: several
    // providers refuse composition keywords at the top of function parameters. The rules
    // are written in the action and destination descriptions the model reads, and every
    // call the model makes is still checked against the whole schema, rules included.
    fields.remove("allOf");
    let description = match fields.remove("description") {
        Some(Value::String(text)) => Some(text),
        _ => None,
    };
    if !fields.get("properties").is_some_and(Value::is_object) {
        return Err(LlmPlannerError::ToolSchema(
            "it has no `properties` object".into(),
        ));
    }
    Ok(FunctionObject {
        name: TOOL_NAME.into(),
        description,
        parameters: Some(schema),
        strict: None,
    })
}

/// The slow loop's LLM planner. Cheap to share: one HTTP client, one compiled validator.
pub struct LlmPlanner {
    settings: LlmSettings,
    /// `None` when no endpoint is configured.
    client: Option<Client<OpenAIConfig>>,
    tool: ChatCompletionTools,
    /// The tool's schema, compiled once: every call's arguments are checked against it.
    validator: jsonschema::Validator,
    /// Answers whenever the LLM cannot.
    rules: RulePlanner,
}

impl fmt::Debug for LlmPlanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmPlanner")
            .field("settings", &self.settings)
            .field("rules", &self.rules)
            .finish()
    }
}

impl LlmPlanner {
    pub fn new(settings: LlmSettings, rules: RulePlanner) -> Result<Self, LlmPlannerError> {
        let tool = ChatCompletionTools::Function(ChatCompletionTool {
            function: tool_definition()?,
        });
        let validator = schemas::validator(TOOL_SCHEMA)?;
        // Every field set explicitly: async-openai's defaults would read OPENAI_* variables.
        let client = settings.base_url.as_ref().map(|base| {
            let config = OpenAIConfig::new()
                .with_api_base(base.clone())
                .with_api_key(settings.api_key.clone().unwrap_or_default())
                .with_org_id("")
                .with_project_id("");
            Client::with_config(config)
        });
        match &settings.base_url {
            Some(base) => tracing::info!(
                endpoint = %base,
                model = %settings.model,
                api_key = settings.api_key.is_some(),
                timeout_s = settings.timeout.as_secs_f64(),
                "LLM planner ready"
            ),
            None => tracing::warn!(
                model = %settings.model,
                "LLM planner without an endpoint ([reasoner.llm] base_url is empty): the rule planner answers"
            ),
        }
        Ok(LlmPlanner {
            settings,
            client,
            tool,
            validator,
            rules,
        })
    }

    /// The planner `[reasoner]` describes, with the rule planner at its `min_confidence`.
    pub fn from_config(reasoner: &ReasonerSection) -> Result<Self, LlmPlannerError> {
        let rules = RulePlanner {
            min_confidence: reasoner.min_confidence,
            ..RulePlanner::default()
        };
        Self::new(LlmSettings::from_config(&reasoner.llm), rules)
    }

    pub fn settings(&self) -> &LlmSettings {
        &self.settings
    }

    /// Ask the LLM; any failure says why.
    pub async fn ask(&self, ctx: &PlanContext) -> Result<Vec<PhysicalTask>, LlmFailure> {
        let Some(client) = &self.client else {
            return Err(LlmFailure::NoEndpoint);
        };
        let request = self.request(ctx)?;
        let started = Instant::now();
        let answer = tokio::time::timeout(self.settings.timeout, client.chat().create(request))
            .await
            .map_err(|_| LlmFailure::TimedOut(self.settings.timeout))?
            .map_err(LlmFailure::from_openai)?;
        let calls = self.read_answer(answer)?;
        tracing::debug!(
            model = %self.settings.model,
            steps = calls.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "LLM planned"
        );
        Ok(calls)
    }

    // `max_tokens` is deprecated by OpenAI for `max_completion_tokens`, but it is the one the
    // local OpenAI-compatible servers (llama.cpp, Ollama, vLLM) all read.
    #[allow(deprecated)]
    fn request(&self, ctx: &PlanContext) -> Result<CreateChatCompletionRequest, LlmFailure> {
        CreateChatCompletionRequestArgs::default()
            .model(self.settings.model.clone())
            .messages(vec![
                ChatCompletionRequestSystemMessage::from(SYSTEM_PROMPT).into(),
                ChatCompletionRequestUserMessage::from(user_message(ctx)).into(),
            ])
            .tools(vec![self.tool.clone()])
            .temperature(self.settings.temperature)
            .max_tokens(self.settings.max_tokens)
            .build()
            .map_err(|e| LlmFailure::Request(e.to_string()))
    }

    /// The tool calls of the first choice, each checked, in the order the LLM gave them.
    fn read_answer(
        &self,
        answer: CreateChatCompletionResponse,
    ) -> Result<Vec<PhysicalTask>, LlmFailure> {
        let choice = answer
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| LlmFailure::Malformed("the answer has no choices".into()))?;
        let message = choice.message;
        let calls = message.tool_calls.unwrap_or_default();
        if calls.is_empty() {
            let said = message
                .content
                .or(message.refusal)
                .map(|t| quote(&t))
                .filter(|t| !t.is_empty());
            return Err(LlmFailure::NoToolCall { said });
        }
        if calls.len() > self.settings.max_steps {
            return Err(LlmFailure::TooManySteps {
                steps: calls.len(),
                max: self.settings.max_steps,
            });
        }
        calls
            .into_iter()
            .enumerate()
            .map(|(i, call)| self.read_call(i + 1, call))
            .collect()
    }

    fn read_call(
        &self,
        index: usize,
        call: ChatCompletionMessageToolCalls,
    ) -> Result<PhysicalTask, LlmFailure> {
        let function = match call {
            ChatCompletionMessageToolCalls::Function(call) => call.function,
            ChatCompletionMessageToolCalls::Custom(call) => {
                return Err(LlmFailure::UnknownTool {
                    index,
                    name: call.custom_tool.name,
                });
            }
        };
        if function.name != TOOL_NAME {
            return Err(LlmFailure::UnknownTool {
                index,
                name: function.name,
            });
        }
        let rejected = |reason: String| LlmFailure::Rejected { index, reason };
        let arguments: Value = serde_json::from_str(&function.arguments).map_err(|e| {
            rejected(format!(
                "arguments are not JSON ({e}): {}",
                quote(&function.arguments)
            ))
        })?;
        let violations = schemas::violations(&self.validator, &arguments);
        if !violations.is_empty() {
            return Err(rejected(violations.join("; ")));
        }
        let task: PhysicalTask =
            serde_json::from_value(arguments).map_err(|e| rejected(e.to_string()))?;
        task.validate().map_err(|e| rejected(e.to_string()))?;
        Ok(task)
    }
}

/// The user turn: the recent monologue for context, then the commitment to plan.
fn user_message(ctx: &PlanContext) -> String {
    let task = &ctx.intent.task;
    let mut text = String::from("What the creature said recently, oldest first:\n");
    let skip = ctx
        .recent_monologue
        .len()
        .saturating_sub(MAX_CONTEXT_PHRASES);
    if ctx.recent_monologue.is_empty() {
        text.push_str("(nothing else)\n");
    }
    for phrase in &ctx.recent_monologue[skip..] {
        text.push_str("- ");
        text.push_str(phrase.trim());
        text.push('\n');
    }
    text.push_str(&format!(
        "\nThe commitment to carry out: {:?}\n",
        task.utterance.trim()
    ));
    text.push_str(&format!(
        "Read by the watcher as: action {}, object {:?}, destination {}, confidence {:.2}.\n",
        task.action.as_str(),
        task.object,
        task.destination
            .as_ref()
            .map_or_else(|| "none".to_string(), |d| format!("{d:?}")),
        task.confidence,
    ));
    text.push_str("Call do_physical_task once per physical step, in order.");
    text
}

#[async_trait::async_trait]
impl Planner for LlmPlanner {
    fn name(&self) -> &'static str {
        "llm"
    }

    async fn plan(&self, ctx: PlanContext) -> Result<PlanOutcome, PlannerError> {
        let failure = match self.ask(&ctx).await {
            Ok(calls) => {
                return Ok(PlanOutcome {
                    calls,
                    planner: "llm",
                    fallback: None,
                });
            }
            Err(failure) => failure,
        };
        let reason = failure.to_string();
        tracing::warn!(reason = %creature_actors::text::printable(&reason), model = %self.settings.model, "LLM planner fell back to the rule planner");
        match self.rules.plan_now(&ctx) {
            Ok(outcome) => Ok(PlanOutcome {
                fallback: Some(reason),
                ..outcome
            }),
            // Keep the rule planner's verdict, with why it was asked.
            Err(PlannerError::Unplannable(why)) => Err(PlannerError::Unplannable(format!(
                "{why} (rule fallback: {reason})"
            ))),
            Err(PlannerError::Failed(why)) => Err(PlannerError::Failed(format!(
                "{why} (rule fallback: {reason})"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use creature_actors::ports::{Action, Intent};

    fn ctx() -> PlanContext {
        PlanContext {
            intent: Intent {
                task: PhysicalTask {
                    action: Action::Place,
                    object: "cup".into(),
                    destination: Some("table".into()),
                    utterance: "Alright, I'll put the cup on the table.".into(),
                    confidence: 0.9,
                },
                tick: 40,
                detector: "rules".into(),
            },
            recent_monologue: (0..20).map(|i| format!("phrase {i}")).collect(),
        }
    }

    fn settings(base_url: Option<&str>) -> LlmSettings {
        LlmSettings {
            base_url: base_url.map(str::to_string),
            model: "m".into(),
            api_key: None,
            timeout: Duration::from_secs(1),
            temperature: 0.2,
            max_tokens: 64,
            max_steps: 2,
        }
    }

    #[test]
    fn the_tool_definition_is_the_schema_without_its_identity() {
        let tool = tool_definition().unwrap();
        assert_eq!(tool.name, "do_physical_task");
        assert!(
            tool.description
                .unwrap()
                .starts_with("Ask the creature's body")
        );
        let params = tool.parameters.unwrap();
        for gone in ["$schema", "$id", "title", "description"] {
            assert!(params.get(gone).is_none(), "{gone} is stripped");
        }
        let schema = schemas::schema(TOOL_SCHEMA).unwrap();
        assert_eq!(
            params["properties"], schema["properties"],
            "property descriptions kept"
        );
        assert_eq!(params["required"], schema["required"]);
        assert!(
            params.get("allOf").is_none(),
            "argument rules stay out of the tool"
        );
        assert!(
            schema.get("allOf").is_some(),
            "the schema itself keeps them"
        );
        let actions = params["properties"]["action"]["enum"].as_array().unwrap();
        assert_eq!(actions.len(), Action::ALL.len());
        for action in Action::ALL {
            assert!(
                actions.contains(&Value::from(action.as_str())),
                "{action:?}"
            );
        }
        let said = params["properties"]["action"]["description"]
            .as_str()
            .unwrap();
        assert!(
            said.contains("go_to (go somewhere; needs destination"),
            "{said}"
        );
    }

    #[test]
    fn the_user_message_carries_the_intent_and_the_newest_phrases() {
        let text = user_message(&ctx());
        assert!(
            text.contains("\"Alright, I'll put the cup on the table.\""),
            "{text}"
        );
        assert!(
            text.contains("action place, object \"cup\", destination \"table\""),
            "{text}"
        );
        assert!(
            text.contains("phrase 19") && text.contains("phrase 4") && !text.contains("phrase 3\n"),
            "{text}"
        );
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            LlmFailure::TimedOut(Duration::from_secs(8)).to_string(),
            "llm timed out after 8 s"
        );
        assert_eq!(
            LlmFailure::TimedOut(Duration::from_millis(1500)).to_string(),
            "llm timed out after 1.5 s"
        );
        assert_eq!(
            LlmFailure::NoEndpoint.to_string(),
            "no LLM endpoint configured"
        );
        let said = LlmFailure::NoToolCall {
            said: Some("Sure!".into()),
        };
        assert_eq!(
            said.to_string(),
            "llm answered without a tool call (it said \"Sure!\")"
        );
        assert_eq!(quote(&"é".repeat(400)).chars().count(), MAX_QUOTE + 1);
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let mut s = settings(Some("http://x/v1"));
        s.api_key = Some("sk-secret".into());
        assert!(!format!("{s:?}").contains("sk-secret"));
    }

    #[tokio::test]
    async fn without_an_endpoint_the_rules_answer_and_say_why() {
        let planner = LlmPlanner::new(settings(None), RulePlanner::default()).unwrap();
        assert_eq!(planner.name(), "llm");
        let out = planner.plan(ctx()).await.unwrap();
        assert_eq!(out.planner, "rules");
        assert_eq!(out.fallback.as_deref(), Some("no LLM endpoint configured"));
        assert_eq!(out.calls.len(), 1);
        let mut unsure = ctx();
        unsure.intent.task.confidence = 0.1;
        let err = planner.plan(unsure).await.unwrap_err().to_string();
        assert!(
            err.contains("confidence") && err.contains("no LLM endpoint configured"),
            "{err}"
        );
    }

    #[test]
    fn tool_calls_are_checked_against_the_schema() {
        let planner = LlmPlanner::new(settings(None), RulePlanner::default()).unwrap();
        let call = |name: &str, args: &str| {
            serde_json::from_value::<ChatCompletionMessageToolCalls>(serde_json::json!({
                "type": "function", "id": "c1", "function": {"name": name, "arguments": args}
            }))
            .unwrap()
        };
        let ok = planner
            .read_call(
                1,
                call(
                    TOOL_NAME,
                    r#"{"action":"pick_up","object":"cup","utterance":"u","confidence":0.8}"#,
                ),
            )
            .unwrap();
        assert_eq!(ok.action, Action::PickUp);
        let err = planner
            .read_call(
                2,
                call(
                    TOOL_NAME,
                    r#"{"action":"fly","object":"cup","utterance":"u","confidence":3}"#,
                ),
            )
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("llm tool call 2 rejected: "), "{err}");
        assert!(
            err.contains("greater than the maximum of 1") && err.contains("fly"),
            "{err}"
        );
        // The per-action argument rules hold for what an LLM sends.
        let ok = planner
            .read_call(
                1,
                call(
                    TOOL_NAME,
                    r#"{"action":"go_to","object":"garage","destination":"garage","utterance":"u","confidence":0.8}"#,
                ),
            )
            .unwrap();
        assert_eq!(ok.action, Action::GoTo);
        for bad in [
            r#"{"action":"go_to","object":"garage","utterance":"u","confidence":0.8}"#,
            r#"{"action":"pour","object":"milk","utterance":"u","confidence":0.8}"#,
            r#"{"action":"switch_on","object":"heater","destination":"wall","utterance":"u","confidence":0.8}"#,
        ] {
            let err = planner
                .read_call(1, call(TOOL_NAME, bad))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("rejected") && err.contains("destination"),
                "{bad}: {err}"
            );
        }
        let err = planner
            .read_call(1, call(TOOL_NAME, "{action: bring"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not JSON"), "{err}");
        let err = planner
            .read_call(1, call("launch_rocket", "{}"))
            .unwrap_err();
        assert_eq!(
            err,
            LlmFailure::UnknownTool {
                index: 1,
                name: "launch_rocket".into()
            }
        );
    }
}
