//! The embedded rule planner: a physical-task intent already names its action, object and
//! destination, so the plan is that one tool call, after a sanity check. It is the default
//! slow loop and the fallback whenever an LLM planner cannot answer.

use std::time::Duration;

use crate::ports::{PlanContext, PlanOutcome, Planner, PlannerError};

/// Turns an intent into its `do_physical_task` call.
#[derive(Debug, Clone)]
pub struct RulePlanner {
    /// Intents less sure than this are not acted on.
    pub min_confidence: f32,
    /// Extra thinking time, to exercise the slow loop (benchmarks, tests, demos).
    pub delay: Duration,
}

impl Default for RulePlanner {
    fn default() -> Self {
        RulePlanner {
            min_confidence: 0.5,
            delay: Duration::ZERO,
        }
    }
}

impl RulePlanner {
    /// The plan for `ctx`, without the artificial delay (the LLM planner's fallback).
    pub fn plan_now(&self, ctx: &PlanContext) -> Result<PlanOutcome, PlannerError> {
        let task = &ctx.intent.task;
        if task.confidence < self.min_confidence {
            return Err(PlannerError::Unplannable(format!(
                "confidence {:.2} is below {:.2}",
                task.confidence, self.min_confidence
            )));
        }
        task.validate()
            .map_err(|e| PlannerError::Unplannable(e.to_string()))?;
        Ok(PlanOutcome {
            calls: vec![task.clone()],
            planner: "rules",
            fallback: None,
        })
    }
}

#[async_trait::async_trait]
impl Planner for RulePlanner {
    fn name(&self) -> &'static str {
        "rules"
    }

    async fn plan(&self, ctx: PlanContext) -> Result<PlanOutcome, PlannerError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.plan_now(&ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{Action, Intent, PhysicalTask};

    fn ctx(confidence: f32) -> PlanContext {
        PlanContext {
            intent: Intent {
                task: PhysicalTask {
                    action: Action::Bring,
                    object: "cup".into(),
                    destination: None,
                    utterance: "I'll bring you the cup".into(),
                    confidence,
                },
                tick: 3,
                detector: "rules".into(),
            },
            recent_monologue: vec![],
        }
    }

    #[tokio::test]
    async fn plans_the_intent_as_one_call() {
        let out = RulePlanner::default().plan(ctx(0.9)).await.unwrap();
        assert_eq!(out.calls.len(), 1);
        assert_eq!(out.calls[0].object, "cup");
        assert_eq!(out.planner, "rules");
    }

    #[tokio::test]
    async fn refuses_a_task_that_breaks_its_actions_argument_rule() {
        let mut go = ctx(0.9);
        go.intent.task.action = Action::GoTo;
        go.intent.task.object = "garage".into();
        let err = RulePlanner::default().plan(go.clone()).await.unwrap_err();
        assert!(
            err.to_string().contains("`go_to` needs a `destination`"),
            "{err}"
        );
        go.intent.task.destination = Some("garage".into());
        let out = RulePlanner::default().plan(go).await.unwrap();
        assert_eq!(out.calls[0].action, Action::GoTo);
        let mut wipe = ctx(0.9);
        wipe.intent.task.action = Action::Clean;
        wipe.intent.task.destination = Some("sink".into());
        let err = RulePlanner::default().plan(wipe).await.unwrap_err();
        assert!(
            err.to_string().contains("`clean` takes no `destination`"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn refuses_unsure_intents() {
        let err = RulePlanner::default().plan(ctx(0.2)).await.unwrap_err();
        assert!(err.to_string().contains("confidence"), "{err}");
    }
}
