//! The caller's identity: a user id that follows the log's rule ([`events::admission::user_id`],
//! 1..=[`MAX_USER_ID_CHARS`] characters, no U+0000). The rule is defined there, once; this type
//! only carries the proof that a string passed it.

use std::fmt;

/// Longest accepted user id, in Unicode characters (the log's rule: [`events::admission`]).
pub use events::MAX_USER_ID_CHARS;

/// A verified user id: it follows the log's rule, so every event naming it may enter the log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Checks the 1..=[`MAX_USER_ID_CHARS`] rule (used for ids that do not come from a token,
    /// e.g. recipients).
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidUserId> {
        let id = id.into();
        match events::admission::user_id(&id) {
            Ok(()) => Ok(Self(id)),
            Err(events::admission::Flaw::Empty) => Err(InvalidUserId::Empty),
            Err(events::admission::Flaw::Nul) => Err(InvalidUserId::Nul),
            Err(_) => Err(InvalidUserId::TooLong),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidUserId;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

/// Why a string is not a valid [`UserId`].
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidUserId {
    #[error("user id is empty")]
    Empty,
    #[error("user id is longer than {MAX_USER_ID_CHARS} characters")]
    TooLong,
    /// No text of the log may hold U+0000, so no user could ever act.
    #[error("user id contains U+0000")]
    Nul,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_rules() {
        assert_eq!(UserId::new(""), Err(InvalidUserId::Empty));
        assert_eq!(UserId::new("x".repeat(51)), Err(InvalidUserId::TooLong));
        assert!(UserId::new("é".repeat(50)).is_ok());
        assert_eq!(UserId::new("a\0b"), Err(InvalidUserId::Nul));
        let id = UserId::new("google_337456865285275482928").unwrap();
        assert_eq!(id.to_string(), "google_337456865285275482928");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"google_337456865285275482928\""
        );
        assert_eq!(id.clone().into_string(), id.as_str());
    }
}
