//! The claims of PROTOCOL §2's tokens and the rules on them: who a user is, what they may do
//! ([`Role`]), which room a token is for, and how long it lives. Signing and verifying the JWT
//! is the server's (it holds the secret); building the claims and checking their times against
//! a given `now` is here, so the server, the simulator and any Rust client mint them one way.

use serde::{Deserialize, Serialize};

/// What a user may do in a room (the token's `role`; absent means editor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May edit and drive the transport.
    #[default]
    Editor,
    /// Receives everything; `operation` and `transport` are answered with `forbidden`.
    Viewer,
}

impl Role {
    /// Whether this role may send `operation`.
    pub fn may_edit(self) -> bool {
        self == Role::Editor
    }

    /// Whether this role may send `transport` (play, pause, seek for everyone).
    pub fn may_drive_transport(self) -> bool {
        self == Role::Editor
    }

    /// Whether this role may take soft locks (`lock`, PROTOCOL §7): only those who may edit.
    pub fn may_lock(self) -> bool {
        self == Role::Editor
    }

    /// The wire name: `editor` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Editor => "editor",
            Role::Viewer => "viewer",
        }
    }
}

/// A role name that is neither `editor` nor `viewer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{role}` (expected `editor` or `viewer`)")]
pub struct UnknownRole {
    /// What was given.
    pub role: String,
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "editor" => Ok(Role::Editor),
            "viewer" => Ok(Role::Viewer),
            other => Err(UnknownRole { role: other.to_string() }),
        }
    }
}

/// The longest a token may live: one whose `exp` is further ahead than this is refused, and
/// none is minted. Ten years (a token that never expires in practice is a leaked key).
pub const MAX_TOKEN_LIFETIME: u64 = 10 * 365 * 24 * 3600;

/// Claims that cannot be minted, or are not valid at a given time. Times are seconds since the
/// Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    /// `exp` more than [`MAX_TOKEN_LIFETIME`] ahead (checking), or a lifetime over it (minting).
    #[error("token expiry {exp} is more than {max_secs} s ahead")]
    Lifetime {
        /// The expiry.
        exp: u64,
        /// [`MAX_TOKEN_LIFETIME`].
        max_secs: u64,
    },
    /// `exp` has passed.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The expiry.
        exp: u64,
        /// The time checked against.
        now: u64,
    },
    /// `nbf` has not come yet.
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The claim.
        nbf: u64,
        /// The time checked against.
        now: u64,
    },
}

/// The claims of app and room tokens (PROTOCOL §2). Build them with [`Claims::user`] (and
/// [`Claims::into_room`] for a room token), never field by field: the lifetime rules live there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The account id.
    pub sub: String,
    /// Display name.
    pub name: String,
    /// Avatar URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not valid before, seconds since the epoch; a present `nbf` that is not a whole number of
    /// seconds does not decode. Nothing minted here sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Project ids the user may join; `None` means any (app tokens only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
    /// Editor or viewer; absent means editor.
    #[serde(default)]
    pub role: Role,
    /// The room a room token is for; absent on app tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

impl Claims {
    /// The claims of a user with no avatar, project list or room, issued at `now` (seconds since
    /// the epoch) and valid `ttl_secs`: an app token's. A lifetime over [`MAX_TOKEN_LIFETIME`]
    /// is refused.
    pub fn user(sub: &str, name: &str, role: Role, now: u64, ttl_secs: u64) -> Result<Claims, ClaimsError> {
        if ttl_secs > MAX_TOKEN_LIFETIME {
            return Err(ClaimsError::Lifetime { exp: now.saturating_add(ttl_secs), max_secs: MAX_TOKEN_LIFETIME });
        }
        Ok(Claims {
            sub: sub.into(),
            name: name.into(),
            avatar: None,
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            projects: None,
            role,
            room: None,
        })
    }

    /// These claims with the avatar URL `avatar`.
    pub fn with_avatar(self, avatar: Option<String>) -> Claims {
        Claims { avatar, ..self }
    }

    /// These claims limited to the projects `projects` (`None`: any).
    pub fn with_projects(self, projects: Option<Vec<String>>) -> Claims {
        Claims { projects, ..self }
    }

    /// These claims as a room token's for `room`, issued at `now`: the project list is dropped,
    /// and the token lives `ttl_secs` but never past these claims' own `exp` (PROTOCOL §3.3).
    pub fn into_room(self, room: &str, now: u64, ttl_secs: u64) -> Claims {
        let exp = self.exp.min(now.saturating_add(ttl_secs));
        Claims { exp, room: Some(room.into()), projects: None, ..self }
    }

    /// Whether these claims allow joining `project`: it is in the project list (if any), and
    /// it is the token's room (if it is a room token).
    pub fn may_access(&self, project: &str) -> bool {
        let listed = self.projects.as_ref().map_or(true, |p| p.iter().any(|x| x == project));
        let room_ok = self.room.as_deref().map_or(true, |r| r == project);
        listed && room_ok
    }

    /// Checks the times at `now` (seconds since the epoch), with no leeway: `exp` not passed,
    /// `nbf` (when present) reached, and `exp` no more than [`MAX_TOKEN_LIFETIME`] ahead.
    pub fn check_at(&self, now: u64) -> Result<(), ClaimsError> {
        if self.exp < now {
            return Err(ClaimsError::Expired { exp: self.exp, now });
        }
        if let Some(nbf) = self.nbf.filter(|&nbf| nbf > now) {
            return Err(ClaimsError::NotYetValid { nbf, now });
        }
        if self.exp > now.saturating_add(MAX_TOKEN_LIFETIME) {
            return Err(ClaimsError::Lifetime { exp: self.exp, max_secs: MAX_TOKEN_LIFETIME });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles() {
        assert_eq!("viewer".parse::<Role>(), Ok(Role::Viewer));
        assert_eq!("editor".parse::<Role>(), Ok(Role::Editor));
        assert_eq!("admin".parse::<Role>(), Err(UnknownRole { role: "admin".into() }));
        assert_eq!(Role::default(), Role::Editor);
        assert!(Role::Editor.may_edit() && Role::Editor.may_drive_transport());
        assert!(!Role::Viewer.may_edit() && !Role::Viewer.may_drive_transport());
        assert_eq!(serde_json::to_value(Role::Viewer).unwrap(), json!("viewer"));
        assert_eq!(serde_json::from_value::<Role>(json!(Role::Editor.as_str())).unwrap(), Role::Editor);
    }

    #[test]
    fn room_claims_never_outlive_the_claims_they_come_from() {
        let user = Claims::user("u", "U", Role::Editor, 1000, 30).unwrap();
        assert_eq!(user.exp, 1030);
        let room = user.clone().into_room("r", 1000, 3600);
        assert_eq!((room.exp, room.room.as_deref(), room.projects), (1030, Some("r"), None));
        assert_eq!(user.into_room("r", 1000, 10).exp, 1010);
        assert!(matches!(
            Claims::user("u", "U", Role::Editor, 0, MAX_TOKEN_LIFETIME + 1),
            Err(ClaimsError::Lifetime { .. })
        ));
    }

    #[test]
    fn wire_shape_and_access() {
        let c = Claims::user("u", "Ann", Role::Viewer, 100, 60).unwrap().with_projects(Some(vec!["p".into()]));
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"sub":"u","name":"Ann","exp":160,"projects":["p"],"role":"viewer"})
        );
        assert!(c.may_access("p") && !c.may_access("q"));
        let room = c.with_avatar(Some("https://a".into())).into_room("p", 100, 3600);
        assert_eq!(
            serde_json::to_value(&room).unwrap(),
            json!({"sub":"u","name":"Ann","avatar":"https://a","exp":160,"role":"viewer","room":"p"})
        );
        assert!(room.may_access("p") && !room.may_access("q"));
        let decoded: Claims = serde_json::from_value(json!({"sub":"u","name":"U","exp":5,"nbf":1})).unwrap();
        assert_eq!((decoded.role, decoded.nbf), (Role::Editor, Some(1)));
        assert!(serde_json::from_value::<Claims>(json!({"sub":"u","name":"U","exp":5,"nbf":"soon"})).is_err());
    }

    #[test]
    fn times_are_checked_against_the_given_now() {
        let c = Claims { nbf: Some(10), ..Claims::user("u", "U", Role::Editor, 0, 20).unwrap() };
        assert_eq!(c.check_at(9), Err(ClaimsError::NotYetValid { nbf: 10, now: 9 }));
        assert_eq!(c.check_at(10), Ok(()));
        assert_eq!(c.check_at(20), Ok(()));
        assert_eq!(c.check_at(21), Err(ClaimsError::Expired { exp: 20, now: 21 }));
        let far = Claims::user("u", "U", Role::Editor, 0, MAX_TOKEN_LIFETIME).unwrap();
        assert_eq!(far.check_at(0), Ok(()));
        assert!(matches!(
            far.check_at(0).and(Claims { exp: far.exp + 1, ..far }.check_at(0)),
            Err(ClaimsError::Lifetime { .. })
        ));
    }
}
