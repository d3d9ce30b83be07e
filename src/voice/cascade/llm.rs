//! The cascade's LLM turn: a streamed chat completion from an OpenAI-compatible endpoint,
//! on an async runtime of its own (one thread), so the model thread never waits for it.
//! The model thread sends a request and polls for the reply's pieces each step; a request
//! can be cancelled (a barge-in), which aborts the HTTP stream at once.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequestArgs,
};
use creature_actors::VoiceError;
use futures::StreamExt;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::AbortHandle;

/// Who said a line of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// The endpoint and how to ask it.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// API base with `/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Longest wait for the first piece of the reply, and for each next one.
    pub timeout: Duration,
    pub max_tokens: u32,
    pub temperature: f32,
    pub system_prompt: String,
}

/// What came back for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    /// A piece of the reply's text.
    Piece { id: u64, text: String },
    /// The reply is complete.
    Done { id: u64 },
    /// The request failed; the reason reads as a sentence.
    Failed { id: u64, why: String },
}

enum Command {
    Ask { id: u64, lines: Vec<(Role, String)> },
    Cancel { id: u64 },
}

/// The LLM turns' runtime, seen from the model thread.
pub struct LlmTurns {
    commands: UnboundedSender<Command>,
    events: Receiver<LlmEvent>,
    settings: ChatSettings,
}

impl std::fmt::Debug for LlmTurns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmTurns")
            .field("endpoint", &self.settings.base_url)
            .field("model", &self.settings.model)
            .finish()
    }
}

impl LlmTurns {
    /// Start the runtime thread. It ends when this is dropped.
    pub fn start(settings: ChatSettings) -> Result<LlmTurns, VoiceError> {
        let (commands, mut rx) = unbounded_channel::<Command>();
        let (events, events_rx) = channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| VoiceError::Model(format!("cannot start the LLM runtime: {e}")))?;
        let config = OpenAIConfig::new()
            .with_api_base(settings.base_url.clone())
            .with_api_key(settings.api_key.clone().unwrap_or_default())
            .with_org_id("")
            .with_project_id("");
        let client = Client::with_config(config);
        let chat = settings.clone();
        std::thread::Builder::new()
            .name("cascade-llm".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut running: HashMap<u64, AbortHandle> = HashMap::new();
                    while let Some(command) = rx.recv().await {
                        running.retain(|_, task| !task.is_finished());
                        match command {
                            Command::Ask { id, lines } => {
                                let task = tokio::spawn(stream_reply(
                                    client.clone(),
                                    chat.clone(),
                                    id,
                                    lines,
                                    events.clone(),
                                ));
                                running.insert(id, task.abort_handle());
                            }
                            Command::Cancel { id } => {
                                if let Some(task) = running.remove(&id) {
                                    task.abort();
                                }
                            }
                        }
                    }
                    for task in running.values() {
                        task.abort();
                    }
                });
            })
            .map_err(|e| VoiceError::Model(format!("cannot start the LLM thread: {e}")))?;
        Ok(LlmTurns {
            commands,
            events: events_rx,
            settings,
        })
    }

    pub fn settings(&self) -> &ChatSettings {
        &self.settings
    }

    /// Ask for a reply to the conversation so far (oldest line first).
    pub fn ask(&self, id: u64, lines: Vec<(Role, String)>) {
        let _ = self.commands.send(Command::Ask { id, lines });
    }

    /// Drop request `id`: its stream is aborted and nothing more comes for it.
    pub fn cancel(&self, id: u64) {
        let _ = self.commands.send(Command::Cancel { id });
    }

    /// The next event, if one is waiting (never blocks).
    pub fn poll(&self) -> Option<LlmEvent> {
        self.events.try_recv().ok()
    }
}

// `max_tokens` is deprecated by OpenAI for `max_completion_tokens`, but it is the one the
// local OpenAI-compatible servers (llama.cpp, Ollama, vLLM) all read.
#[allow(deprecated)]
async fn stream_reply(
    client: Client<OpenAIConfig>,
    chat: ChatSettings,
    id: u64,
    lines: Vec<(Role, String)>,
    events: Sender<LlmEvent>,
) {
    let mut messages: Vec<ChatCompletionRequestMessage> =
        vec![ChatCompletionRequestSystemMessage::from(chat.system_prompt.as_str()).into()];
    for (role, text) in lines {
        messages.push(match role {
            Role::User => ChatCompletionRequestUserMessage::from(text).into(),
            Role::Assistant => ChatCompletionRequestAssistantMessage::from(text).into(),
        });
    }
    let request = match CreateChatCompletionRequestArgs::default()
        .model(chat.model.clone())
        .messages(messages)
        .temperature(chat.temperature)
        .max_tokens(chat.max_tokens)
        .stream(true)
        .build()
    {
        Ok(request) => request,
        Err(e) => {
            let _ = events.send(LlmEvent::Failed {
                id,
                why: format!("cannot build the request: {e}"),
            });
            return;
        }
    };
    let started = Instant::now();
    let failed = |why: String| LlmEvent::Failed { id, why };
    let mut stream =
        match tokio::time::timeout(chat.timeout, client.chat().create_stream(request)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let _ = events.send(failed(format!("the endpoint refused: {e}")));
                return;
            }
            Err(_) => {
                let _ = events.send(failed(format!(
                    "no answer within {:.1} s",
                    chat.timeout.as_secs_f64()
                )));
                return;
            }
        };
    loop {
        match tokio::time::timeout(chat.timeout, stream.next()).await {
            Err(_) => {
                let _ = events.send(failed(format!(
                    "the reply stalled for {:.1} s",
                    chat.timeout.as_secs_f64()
                )));
                return;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let _ = events.send(failed(format!("the reply stream broke: {e}")));
                return;
            }
            Ok(Some(Ok(chunk))) => {
                let text: String = chunk
                    .choices
                    .iter()
                    .filter_map(|c| c.delta.content.as_deref())
                    .collect();
                if !text.is_empty() && events.send(LlmEvent::Piece { id, text }).is_err() {
                    return;
                }
            }
        }
    }
    tracing::debug!(
        id,
        took_ms = started.elapsed().as_millis() as u64,
        "cascade LLM reply streamed"
    );
    let _ = events.send(LlmEvent::Done { id });
}
