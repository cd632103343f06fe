//! JWT auth (PROTOCOL §2): app tokens for the HTTP API, room tokens for sockets.
//!
//! Both are HS256 JWTs signed with the server's secret and verified with `jsonwebtoken`
//! (signature, `exp` and `nbf` with no leeway). A room token is an app token's user claims plus
//! `room`. Refused besides: an `nbf` that is not a whole number of seconds, and an `exp` more than
//! [`MAX_TOKEN_LIFETIME`] ahead (a token that never expires in practice is a leaked key).
//!
//! The claims and their rules are ot-core's ([`ot_core::protocol::token`], re-exported here as
//! [`Claims`], [`Role`] and [`MAX_TOKEN_LIFETIME`]); this module signs and verifies them.
//! Minting takes `now` as a parameter: [`Claims::user`] builds a user's claims and
//! [`Claims::into_room`] turns any claims into a room token's, never outliving them; the
//! wrappers [`room_token`] and [`app_token`], `join` and the `token` subcommand all go through
//! them. Verification compares `exp` and `nbf` with the system clock inside `jsonwebtoken`
//! (which cannot be given a clock), and again, with the lifetime bound, with the `now` given to
//! [`verify_at`] ([`Claims::check_at`]).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ot_core::protocol::{ClaimsError, UnknownRole};

/// The claims, their builder and the roles are ot-core's, shared with the clients.
pub use ot_core::protocol::{Claims, Role, MAX_TOKEN_LIFETIME};

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token was given.
    #[error("no token")]
    Missing,
    /// Malformed, wrongly signed, expired or not yet valid (`nbf`).
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// A room token for another room, or an app token on a socket.
    #[error("token is not for room `{room}`")]
    WrongRoom {
        /// The room the socket is for.
        room: String,
    },
    /// `exp` more than [`MAX_TOKEN_LIFETIME`] ahead (verifying), or a lifetime over it (minting).
    #[error("token expiry {exp} is more than {max_secs} s ahead")]
    Lifetime {
        /// The token's expiry, seconds since the epoch.
        exp: u64,
        /// [`MAX_TOKEN_LIFETIME`].
        max_secs: u64,
    },
    /// Not `editor` or `viewer`.
    #[error("unknown role `{role}`")]
    BadRole {
        /// What was given.
        role: String,
    },
}

impl From<UnknownRole> for AuthError {
    fn from(e: UnknownRole) -> AuthError {
        AuthError::BadRole { role: e.role }
    }
}

impl From<ClaimsError> for AuthError {
    fn from(e: ClaimsError) -> AuthError {
        match e {
            ClaimsError::Lifetime { exp, max_secs } => AuthError::Lifetime { exp, max_secs },
            ClaimsError::Expired { .. } => AuthError::Invalid(ErrorKind::ExpiredSignature.into()),
            ClaimsError::NotYetValid { .. } => AuthError::Invalid(ErrorKind::ImmatureSignature.into()),
        }
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Signs `claims` with `secret` (HS256).
pub fn sign(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    Ok(encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))?)
}

/// Verifies signature, `exp` and `nbf` (no leeway) and the lifetime bound, and returns the claims.
pub fn verify(secret: &str, token: &str) -> Result<Claims, AuthError> {
    verify_at(secret, token, now_secs())
}

/// [`verify`] at `now` (seconds since the epoch): `exp`, `nbf` and the lifetime bound are checked
/// against `now`. `jsonwebtoken` also checks `exp` and `nbf` against the system clock, so a token
/// outside its window by either clock is refused.
pub fn verify_at(secret: &str, token: &str, now: u64) -> Result<Claims, AuthError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 0;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "sub"]);
    // A present `nbf` that is not a whole number of seconds fails to decode (`Claims::nbf` is a
    // `u64`), where `jsonwebtoken` alone would ignore it.
    let claims = decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v)?.claims;
    claims.check_at(now)?;
    Ok(claims)
}

/// Verifies a room token for `room` (socket auth): a valid token whose `room` claim equals it.
pub fn verify_room(secret: &str, token: Option<&str>, room: &str) -> Result<Claims, AuthError> {
    let claims = verify(secret, token.ok_or(AuthError::Missing)?)?;
    if claims.room.as_deref() != Some(room) {
        return Err(AuthError::WrongRoom { room: room.to_string() });
    }
    Ok(claims)
}

/// Mints a room token for `room`, valid `ttl_secs` from now (at most [`MAX_TOKEN_LIFETIME`]).
pub fn room_token(
    secret: &str,
    room: &str,
    sub: &str,
    name: &str,
    role: Role,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let now = now_secs();
    let claims = Claims::user(sub, name, role, now, ttl_secs)?.into_room(room, now, ttl_secs);
    Ok(sign(secret, &claims)?)
}

/// Mints an app token (what a studio backend gives a signed-in user), valid `ttl_secs` from now
/// (at most [`MAX_TOKEN_LIFETIME`]).
pub fn app_token(
    secret: &str,
    sub: &str,
    name: &str,
    projects: Option<Vec<String>>,
    role: Role,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let claims = Claims::user(sub, name, role, now_secs(), ttl_secs)?.with_projects(projects);
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

    fn signed(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"s")).unwrap()
    }

    #[test]
    fn time_claims_are_checked_against_the_given_now() {
        let now = now_secs();
        let tok = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"sub": "u", "name": "U", "exp": now + 60});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            signed(c)
        };
        assert!(verify_at("s", &tok(serde_json::json!({"nbf": now})), now).is_ok());
        let later = tok(serde_json::json!({"nbf": now + 30}));
        assert!(matches!(verify_at("s", &later, now), Err(AuthError::Invalid(_))));
        // A malformed `nbf` is refused, not ignored.
        assert!(matches!(
            verify_at("s", &tok(serde_json::json!({"nbf": "tomorrow"})), now),
            Err(AuthError::Invalid(_))
        ));
        let far = tok(serde_json::json!({"exp": 1u64 << 62}));
        assert!(matches!(verify_at("s", &far, now), Err(AuthError::Lifetime { exp, .. }) if exp == 1 << 62));
        let ten_years = tok(serde_json::json!({"exp": now + MAX_TOKEN_LIFETIME}));
        assert!(verify_at("s", &ten_years, now).is_ok());
        // The injected clock is honoured: at now + 61 the token has expired.
        assert!(matches!(verify_at("s", &tok(serde_json::json!({})), now + 61), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn minting_refuses_a_lifetime_over_the_bound() {
        assert!(room_token("s", "r", "u", "U", Role::Editor, u64::MAX).is_err());
        assert!(app_token("s", "u", "U", None, Role::Editor, MAX_TOKEN_LIFETIME + 1).is_err());
        assert!(matches!(
            AuthError::from(Claims::user("u", "U", Role::Editor, 0, MAX_TOKEN_LIFETIME + 1).unwrap_err()),
            AuthError::Lifetime { .. }
        ));
        assert!(matches!("admin".parse::<Role>().map_err(AuthError::from), Err(AuthError::BadRole { .. })));
    }
}
