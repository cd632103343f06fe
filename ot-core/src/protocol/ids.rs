//! The id rule of PROTOCOL §1: room, project and connection ids are 1–`max` characters of
//! `[A-Za-z0-9_-]`.

/// The longest room or project id.
pub const ROOM_ID_MAX: usize = 128;

/// The longest connection id (`_pk`).
pub const CONNECTION_ID_MAX: usize = 64;

/// Whether `s` is 1–`max` characters of `[A-Za-z0-9_-]`: a room or project id with
/// [`ROOM_ID_MAX`], a connection id with [`CONNECTION_ID_MAX`]. Anything else is answered with
/// a 400 or a close 4400.
pub fn valid_id(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("room_1-A", ROOM_ID_MAX));
        assert!(valid_id(&"a".repeat(ROOM_ID_MAX), ROOM_ID_MAX));
        assert!(!valid_id(&"a".repeat(ROOM_ID_MAX + 1), ROOM_ID_MAX));
        assert!(!valid_id(&"a".repeat(CONNECTION_ID_MAX + 1), CONNECTION_ID_MAX));
        for bad in ["", "a/b", "a.b", "a b", "é", "a%20"] {
            assert!(!valid_id(bad, ROOM_ID_MAX), "{bad:?}");
        }
    }
}
