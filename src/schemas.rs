//! The JSON Schemas in `schemas/`, embedded, with validators that resolve the schemas'
//! references to each other from the embedded copies (never from the network).

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

/// Every schema file, by file name.
pub const SCHEMAS: &[(&str, &str)] = &[
    (
        "actor.schema.json",
        include_str!("../schemas/actor.schema.json"),
    ),
    (
        "actors.schema.json",
        include_str!("../schemas/actors.schema.json"),
    ),
    (
        "audio_control.schema.json",
        include_str!("../schemas/audio_control.schema.json"),
    ),
    (
        "body_to_brain.schema.json",
        include_str!("../schemas/body_to_brain.schema.json"),
    ),
    (
        "brain_to_body.schema.json",
        include_str!("../schemas/brain_to_body.schema.json"),
    ),
    (
        "do_physical_task.schema.json",
        include_str!("../schemas/do_physical_task.schema.json"),
    ),
    (
        "error.schema.json",
        include_str!("../schemas/error.schema.json"),
    ),
    (
        "event.schema.json",
        include_str!("../schemas/event.schema.json"),
    ),
    (
        "face_frame.schema.json",
        include_str!("../schemas/face_frame.schema.json"),
    ),
    (
        "hear_request.schema.json",
        include_str!("../schemas/hear_request.schema.json"),
    ),
    (
        "hear_response.schema.json",
        include_str!("../schemas/hear_response.schema.json"),
    ),
    (
        "state.schema.json",
        include_str!("../schemas/state.schema.json"),
    ),
    (
        "task.schema.json",
        include_str!("../schemas/task.schema.json"),
    ),
    (
        "task_cancel.schema.json",
        include_str!("../schemas/task_cancel.schema.json"),
    ),
    (
        "task_page.schema.json",
        include_str!("../schemas/task_page.schema.json"),
    ),
    (
        "task_request.schema.json",
        include_str!("../schemas/task_request.schema.json"),
    ),
];

/// Where the schemas' `$id`s live.
const BASE: &str = "https://creature.local/schemas/";

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("no schema named {0}")]
    Unknown(String),
    #[error("schema {name} is invalid: {reason}")]
    Invalid { name: String, reason: String },
}

/// The schema `name` (a file name in `schemas/`) as JSON.
pub fn schema(name: &str) -> Result<Value, SchemaError> {
    let text = SCHEMAS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| SchemaError::Unknown(name.to_string()))?;
    serde_json::from_str(text).map_err(|e| SchemaError::Invalid {
        name: name.into(),
        reason: e.to_string(),
    })
}

struct Embedded;

impl Retrieve for Embedded {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri
            .as_str()
            .strip_prefix(BASE)
            .ok_or_else(|| format!("{} is not one of the creature's schemas", uri.as_str()))?;
        Ok(schema(name)?)
    }
}

/// A validator for the schema `name`.
pub fn validator(name: &str) -> Result<Validator, SchemaError> {
    let root = schema(name)?;
    jsonschema::options()
        .with_retriever(Embedded)
        .build(&root)
        .map_err(|e| SchemaError::Invalid {
            name: name.into(),
            reason: e.to_string(),
        })
}

/// Every way `instance` breaks the schema, as readable lines (empty when valid).
pub fn violations(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_compiles_and_every_file_is_listed() {
        for (name, _) in SCHEMAS {
            validator(name).unwrap_or_else(|e| panic!("{e}"));
            let id = schema(name).unwrap()["$id"].as_str().unwrap().to_string();
            assert_eq!(id, format!("{BASE}{name}"), "$id of {name}");
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let on_disk = std::fs::read_dir(dir).unwrap().count();
        assert_eq!(
            on_disk,
            SCHEMAS.len(),
            "a schema file is missing from SCHEMAS"
        );
    }

    #[test]
    fn tool_arguments_are_checked() {
        let v = validator("do_physical_task.schema.json").unwrap();
        let good = serde_json::json!({"action": "bring", "object": "cup", "utterance": "bring me the cup", "confidence": 0.9});
        assert!(violations(&v, &good).is_empty());
        let bad =
            serde_json::json!({"action": "fly", "object": "", "utterance": "x", "confidence": 2});
        let errs = violations(&v, &bad);
        assert!(errs.len() >= 3, "{errs:?}");
    }

    #[test]
    fn references_between_schemas_resolve() {
        let v = validator("task.schema.json").unwrap();
        let bad_args = serde_json::json!({
            "id": "task-000001", "state": "pending", "tool": "do_physical_task",
            "arguments": {"action": "bring", "object": "cup", "utterance": "u", "confidence": 7},
            "source": "api", "created_ms": 1, "updated_ms": 1, "deliveries": 0,
            "history": [{"state": "pending", "at_ms": 1}]
        });
        assert!(
            !violations(&v, &bad_args).is_empty(),
            "the nested do_physical_task schema applied"
        );
    }
}
