//! JWT auth (PROTOCOL §2): app tokens for the HTTP API, room tokens for sockets.
//!
//! Both are HS256 JWTs signed with the server's secret and verified with `jsonwebtoken`
//! (signature, `exp` with no leeway). A room token is an app token's user claims plus `room`.
//! Verification takes `now` implicitly from the system clock through `jsonwebtoken`; minting
//! takes it from [`now_secs`].

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a user may do in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May edit and drive the transport.
    #[default]
    Editor,
    /// Receives everything; `operation` and `transport` are answered with `forbidden`.
    Viewer,
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Role, AuthError> {
        match s {
            "editor" => Ok(Role::Editor),
            "viewer" => Ok(Role::Viewer),
            other => Err(AuthError::BadRole { role: other.to_string() }),
        }
    }
}

/// The claims of app and room tokens.
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
    /// Whether these claims allow joining `project`.
    pub fn may_access(&self, project: &str) -> bool {
        let listed = self.projects.as_ref().map_or(true, |p| p.iter().any(|x| x == project));
        let room_ok = self.room.as_deref().map_or(true, |r| r == project);
        listed && room_ok
    }
}

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token was given.
    #[error("no token")]
    Missing,
    /// Malformed, wrongly signed or expired.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// A room token for another room, or an app token on a socket.
    #[error("token is not for room `{room}`")]
    WrongRoom {
        /// The room the socket is for.
        room: String,
    },
    /// Not `editor` or `viewer`.
    #[error("unknown role `{role}`")]
    BadRole {
        /// What was given.
        role: String,
    },
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Signs `claims` with `secret` (HS256).
pub fn sign(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    Ok(encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))?)
}

/// Verifies signature and expiry (no leeway) and returns the claims.
pub fn verify(secret: &str, token: &str) -> Result<Claims, AuthError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "sub"]);
    Ok(decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v)?.claims)
}

/// Verifies a room token for `room` (socket auth): a valid token whose `room` claim equals it.
pub fn verify_room(secret: &str, token: Option<&str>, room: &str) -> Result<Claims, AuthError> {
    let claims = verify(secret, token.ok_or(AuthError::Missing)?)?;
    if claims.room.as_deref() != Some(room) {
        return Err(AuthError::WrongRoom { room: room.to_string() });
    }
    Ok(claims)
}

/// The claims of a user with no avatar, project list or room, valid `ttl_secs` from now.
fn user_claims(sub: &str, name: &str, role: Role, ttl_secs: u64) -> Claims {
    Claims {
        sub: sub.into(),
        name: name.into(),
        avatar: None,
        exp: now_secs() + ttl_secs,
        projects: None,
        role,
        room: None,
    }
}

/// Mints a room token for `room`, valid `ttl_secs`.
pub fn room_token(
    secret: &str,
    room: &str,
    sub: &str,
    name: &str,
    role: Role,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let claims = Claims { room: Some(room.into()), ..user_claims(sub, name, role, ttl_secs) };
    Ok(sign(secret, &claims)?)
}

/// Mints an app token (what a studio backend gives a signed-in user), valid `ttl_secs`.
pub fn app_token(
    secret: &str,
    sub: &str,
    name: &str,
    projects: Option<Vec<String>>,
    role: Role,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let claims = Claims { projects, ..user_claims(sub, name, role, ttl_secs) };
    Ok(sign(secret, &claims)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_token_round_trip_and_refusals() {
        let t = room_token("s", "r1", "u", "Ann", Role::Viewer, 60).unwrap();
        let c = verify_room("s", Some(&t), "r1").unwrap();
        assert_eq!(c.role, Role::Viewer);
        assert!(matches!(verify_room("s", Some(&t), "r2"), Err(AuthError::WrongRoom { .. })));
        assert!(matches!(verify_room("x", Some(&t), "r1"), Err(AuthError::Invalid(_))));
        assert!(matches!(verify_room("s", None, "r1"), Err(AuthError::Missing)));
        let app = app_token("s", "u", "Ann", Some(vec!["p".into()]), Role::Editor, 60).unwrap();
        let c = verify("s", &app).unwrap();
        assert!(c.may_access("p") && !c.may_access("q"));
        assert!(matches!(verify_room("s", Some(&app), "p"), Err(AuthError::WrongRoom { .. })));
    }
}
