//! Why a change through the control API failed, with its HTTP status and
//! the stable machine code scripts match on.

use std::fmt;

/// The class of a failed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// A field is malformed (400 `invalid`).
    Invalid,
    /// No such mapping or edge (404 `not_found`).
    NotFound,
    /// A name or address is taken, or the state forbids it (409 `conflict`).
    Conflict,
    /// The mapping names an edge that is not configured (422 `unknown_edge`).
    UnknownEdge,
    /// The listen address could not be bound (409 `bind_failed`).
    BindFailed,
    /// The agent failed (500 `internal`), e.g. the state file cannot be written.
    Internal,
    /// In a cluster: etcd cannot be reached, so nothing can change (503
    /// `store_unavailable`); the node keeps serving what it applied.
    StoreUnavailable,
}

impl ErrorKind {
    pub(crate) fn status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict | ErrorKind::BindFailed => 409,
            ErrorKind::UnknownEdge => 422,
            ErrorKind::Internal => 500,
            ErrorKind::StoreUnavailable => 503,
        }
    }

    pub(crate) fn code(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::UnknownEdge => "unknown_edge",
            ErrorKind::BindFailed => "bind_failed",
            ErrorKind::Internal => "internal",
            ErrorKind::StoreUnavailable => "store_unavailable",
        }
    }
}

/// A failed change: its class and a sentence naming the field or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangeError {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl ChangeError {
    pub(crate) fn new(kind: ErrorKind, message: String) -> Self {
        Self { kind, message }
    }

    pub(crate) fn not_found(name: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("no mapping named {name:?}"))
    }
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
