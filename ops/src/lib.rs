//! The operator's side of the log as the source of truth: rebuild the projection from the log,
//! verify it against the log, export the log for analytics, create the log's topics. `chatctl` is the command line over
//! these modules; tests call them in-process too.

pub mod audit;
pub mod bench;
pub mod export;
pub mod import;
pub mod log;
pub mod rebuild;
pub mod replay;
pub mod topics;
pub mod verify;
