//! Reading old events. Events are facts and are never rewritten: when a type's schema changes,
//! its version goes up by one and a [`Step`] turns the `data` of the old version into the new
//! one as the event is read. A reader therefore only ever deserialises current versions.

use serde_json::Value;

use crate::DecodeError;

/// One schema change of a type: turns the `data` of version `from` into version `from + 1`.
#[derive(Clone, Copy)]
pub struct Step {
    pub type_name: &'static str,
    pub from: u32,
    pub upcast: fn(Value) -> Value,
}

/// The versions of every event type: which one is current, and the steps that lead to it.
pub struct History<'a> {
    /// Every type name of the log with its current version.
    pub current: &'a [(&'static str, u32)],
    /// Every schema change, for every type.
    pub steps: &'a [Step],
}

/// The history of the chat event log; `docs/events.md` says how to add a step.
pub const LOG: History<'static> = History {
    current: &[
        ("ConversationCreated", 2),
        ("MessageSent", 1),
        ("MessagesRead", 1),
    ],
    steps: &[Step {
        type_name: "ConversationCreated",
        from: 1,
        upcast: conversation_created_v1_to_v2,
    }],
};

/// Version 2 of `ConversationCreated` added `idempotencyKey`; a version-1 event had none.
fn conversation_created_v1_to_v2(mut data: Value) -> Value {
    if let Value::Object(fields) = &mut data {
        fields.insert("idempotencyKey".to_owned(), Value::Null);
    }
    data
}

impl History<'_> {
    /// The current version of a type, or `None` for a type the log does not know.
    pub fn current(&self, type_name: &str) -> Option<u32> {
        self.current
            .iter()
            .find(|(name, _)| *name == type_name)
            .map(|(_, version)| *version)
    }

    /// The `data` of a `type_name` event at `version`, upcast to the type's current version.
    pub fn upcast(&self, type_name: &str, version: u32, data: Value) -> Result<Value, DecodeError> {
        let current = self
            .current(type_name)
            .ok_or_else(|| DecodeError::UnknownType(type_name.to_owned()))?;
        let unknown = || DecodeError::UnknownVersion {
            type_name: type_name.to_owned(),
            version,
        };
        if version > current {
            return Err(DecodeError::NewerVersion {
                type_name: type_name.to_owned(),
                version,
                known: current,
            });
        }
        if version == 0 {
            return Err(unknown());
        }
        let mut data = data;
        for from in version..current {
            let step = self
                .steps
                .iter()
                .find(|s| s.type_name == type_name && s.from == from)
                .ok_or_else(unknown)?;
            data = (step.upcast)(data);
        }
        Ok(data)
    }
}
