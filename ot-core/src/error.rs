//! Typed errors of ot-core: what is wrong with an operation, a state, or a sync step.

use crate::doc::EntityKind;

/// Why an operation cannot be decoded or applied. Each variant names what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    /// The JSON is not an operation of PROTOCOL §5.2.
    #[error("malformed operation: {reason}")]
    Malformed {
        /// What serde or the shape check said.
        reason: String,
    },
    /// A field the op type needs is absent.
    #[error("{op} operation needs `{field}`")]
    MissingField {
        /// The op type (`insert`, `move`, …).
        op: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// `insert`, `delete` and `move` do not apply to the project itself.
    #[error("{op} does not apply to target `project`")]
    ProjectNotAllowed {
        /// The op type.
        op: &'static str,
    },
    /// No entity has this id.
    #[error("no entity with id `{id}`")]
    UnknownEntity {
        /// The id named by the op.
        id: String,
    },
    /// The entity exists but is of another kind than the op's `target`.
    #[error("`{id}` is a {found}, not a {expected}")]
    WrongKind {
        /// The id.
        id: String,
        /// What the op's `target` says.
        expected: EntityKind,
        /// What the entity is.
        found: EntityKind,
    },
    /// A clip's `parent` is missing or is not a track.
    #[error("clip parent `{parent}` is not a track")]
    ParentNotTrack {
        /// The parent id given (empty when none was given).
        parent: String,
    },
    /// A track or marker op carries a `parent`.
    #[error("a {kind} has no parent, but `parent` was given")]
    UnexpectedParent {
        /// The kind of the op's target.
        kind: EntityKind,
    },
    /// `index` is past the end of the destination list.
    #[error("index {index} out of range for a list of length {len}")]
    IndexOutOfRange {
        /// The index given.
        index: usize,
        /// The list's length (for a move, after the entity is taken out).
        len: usize,
    },
    /// An update's path starts with a structural key.
    #[error("`{key}` is structural and cannot be updated")]
    StructuralPath {
        /// The structural key.
        key: String,
    },
    /// An update's path is longer than any server takes ([`crate::protocol::HARD_MAX_PATH`]).
    #[error("update path of {len} keys is over the limit of {limit}")]
    PathTooLong {
        /// Keys given.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// An update with an empty path.
    #[error("update path is empty")]
    EmptyPath,
    /// An insert of an id that already exists (or twice in one insert).
    #[error("id `{id}` already exists")]
    DuplicateId {
        /// The duplicated id.
        id: String,
    },
    /// An insert whose `value` is not an entity of its kind.
    #[error("insert value for `{id}` is invalid: {reason}")]
    InvalidValue {
        /// The inserted id.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Why a JSON state could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    /// The state is not a JSON object.
    #[error("state is not a JSON object")]
    NotAnObject,
    /// A structural field has the wrong type.
    #[error("state field `{field}` has the wrong shape")]
    BadField {
        /// The field.
        field: &'static str,
    },
    /// Two entities share an id.
    #[error("id `{id}` appears twice in the state")]
    DuplicateId {
        /// The id.
        id: String,
    },
}
