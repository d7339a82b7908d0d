//! Past versions of event types, frozen as they were published: the schema of the log keeps
//! describing them (the log holds their events forever), and their upcast steps start here.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A conversation came into being with its participants, which never change afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConversationCreated {
    pub conversation_id: Uuid,
    /// The user who created it; also a participant.
    pub created_by: String,
    /// Every participant, the creator included, sorted and without repeats.
    pub participants: Vec<String>,
    pub is_group: bool,
    /// `""` for a direct conversation.
    pub title: String,
}
