//! Who may use the API: users with argon2id password hashes (web login), API tokens stored
//! as SHA-256 hashes with a short prefix for display, and web sessions (also stored hashed)
//! with their CSRF token.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::{Row, params};
use crate::error::{Error, Result};
use crate::secrets::{random_bytes, random_token, token_hash};
use crate::{Catalog, enum_text, now, text_enum};

/// What a user or token may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads jobs, runs, restore points and settings.
    ReadOnly,
    /// Also runs and cancels jobs and restores.
    Operator,
    /// Also changes jobs, pools, repositories, users and tokens.
    Admin,
}

impl Role {
    /// Whether this role may do what `needed` may.
    pub fn includes(self, needed: Role) -> bool {
        self >= needed
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// An API token as listed: never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    /// The token's first characters, to tell tokens apart.
    pub prefix: String,
    pub role: Role,
    /// The user (or "bootstrap") who created it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A token just created: `secret` is shown once and not kept.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewApiToken {
    pub token: ApiToken,
    pub secret: String,
}

/// A live web session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// Requests that change something must echo it (header), proving they come from the page.
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// A session just created: `id` goes into the cookie and is not kept.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub session: Session,
    pub id: String,
}

/// Tokens start with this, so a leaked one is recognisable (secret scanners, logs).
const TOKEN_PREFIX: &str = "xvt_";
/// Characters of a token shown in listings: the fixed prefix and 8 random ones.
const TOKEN_DISPLAY_LEN: usize = TOKEN_PREFIX.len() + 8;
const MIN_PASSWORD_LEN: usize = 8;

fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!("{what} name {name:?}: 1 to 200 printable characters")));
    }
    Ok(())
}

/// argon2id with the crate's default cost (19 MiB, 2 passes), off the async threads.
async fn hash_password(password: String) -> Result<String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::Invalid(format!("a password needs at least {MIN_PASSWORD_LEN} characters")));
    }
    let salt = random_bytes::<16>()?;
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Invalid(format!("password salt: {e}")))?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Invalid(format!("hashing the password: {e}")))
    })
    .await
    .map_err(|e| Error::Invalid(format!("hashing the password: {e}")))?
}

async fn password_matches(password: String, hash: String) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let parsed = PasswordHash::new(&hash).map_err(|e| Error::Corrupt(format!("stored password hash: {e}")))?;
        Ok(argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .map_err(|e| Error::Invalid(format!("checking the password: {e}")))?
}

fn user_row(row: &Row) -> Result<User> {
    Ok(User { name: row.text(0)?, role: text_enum(&row.text(1)?)?, created_at: row.time(2)? })
}

const TOKEN_COLUMNS: &str = "id, name, prefix, role, created_by, created_at, expires_at, last_used_at";

fn token_row(row: &Row) -> Result<ApiToken> {
    Ok(ApiToken {
        id: row.text(0)?,
        name: row.text(1)?,
        prefix: row.text(2)?,
        role: text_enum(&row.text(3)?)?,
        created_by: row.text(4)?,
        created_at: row.time(5)?,
        expires_at: row.opt_time(6)?,
        last_used_at: row.opt_time(7)?,
    })
}

impl Catalog {
    pub async fn create_user(&self, name: &str, password: &str, role: Role) -> Result<User> {
        validate_name("user", name)?;
        let hash = hash_password(password.to_string()).await?;
        let at = now();
        let inserted = self
            .db
            .execute(
                "INSERT INTO users (name, password_hash, role, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT (name) DO NOTHING",
                params![name, hash, enum_text(&role)?, at],
            )
            .await?;
        if inserted == 0 {
            return Err(Error::Conflict(format!("user {name:?} already exists")));
        }
        Ok(User { name: name.to_string(), role, created_at: at })
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        let rows = self.db.query("SELECT name, role, created_at FROM users ORDER BY name", params![]).await?;
        rows.iter().map(user_row).collect()
    }

    pub async fn user(&self, name: &str) -> Result<User> {
        let row = self.db.query_opt("SELECT name, role, created_at FROM users WHERE name = $1", params![name]).await?;
        user_row(&row.ok_or_else(|| Error::NotFound { what: "user", id: name.to_string() })?)
    }

    /// The user, when `password` is theirs; none for an unknown user or a wrong password
    /// (the caller answers both the same way).
    pub async fn check_password(&self, name: &str, password: &str) -> Result<Option<User>> {
        let Some(row) = self
            .db
            .query_opt("SELECT name, role, created_at, password_hash FROM users WHERE name = $1", params![name])
            .await?
        else {
            return Ok(None);
        };
        let matches = password_matches(password.to_string(), row.text(3)?).await?;
        if matches { user_row(&row).map(Some) } else { Ok(None) }
    }

    /// Changes the password and ends the user's sessions.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<()> {
        let hash = hash_password(password.to_string()).await?;
        let mut tx = self.db.begin().await?;
        let changed = tx
            .execute("UPDATE users SET password_hash = $2, updated_at = $3 WHERE name = $1", params![name, hash, now()])
            .await?;
        if changed == 0 {
            return Err(Error::NotFound { what: "user", id: name.to_string() });
        }
        tx.execute("DELETE FROM sessions WHERE user_name = $1", params![name]).await?;
        tx.commit().await
    }

    pub async fn set_role(&self, name: &str, role: Role) -> Result<()> {
        let changed = self
            .db
            .execute(
                "UPDATE users SET role = $2, updated_at = $3 WHERE name = $1",
                params![name, enum_text(&role)?, now()],
            )
            .await?;
        if changed == 0 {
            return Err(Error::NotFound { what: "user", id: name.to_string() });
        }
        Ok(())
    }

    /// Removes the user and their sessions (their tokens stay: a token has its own role).
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let mut tx = self.db.begin().await?;
        tx.execute("DELETE FROM sessions WHERE user_name = $1", params![name]).await?;
        if tx.execute("DELETE FROM users WHERE name = $1", params![name]).await? == 0 {
            return Err(Error::NotFound { what: "user", id: name.to_string() });
        }
        tx.commit().await
    }

    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        created_by: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<NewApiToken> {
        validate_name("token", name)?;
        let secret = format!("{TOKEN_PREFIX}{}", random_token()?);
        let token = ApiToken {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            prefix: secret[..TOKEN_DISPLAY_LEN].to_string(),
            role,
            created_by: created_by.to_string(),
            created_at: now(),
            expires_at,
            last_used_at: None,
        };
        self.db
            .execute(
                "INSERT INTO api_tokens (id, name, prefix, hash, role, created_by, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                params![
                    &token.id,
                    &token.name,
                    &token.prefix,
                    token_hash(&secret),
                    enum_text(&role)?,
                    created_by,
                    token.created_at,
                    expires_at
                ],
            )
            .await?;
        Ok(NewApiToken { token, secret })
    }

    /// The token `secret` names, if it exists and has not expired; records its use.
    pub async fn authenticate_token(&self, secret: &str) -> Result<Option<ApiToken>> {
        let hash = token_hash(secret);
        let at = now();
        let Some(row) = self
            .db
            .query_opt(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = $1"), params![&hash])
            .await?
        else {
            return Ok(None);
        };
        let mut token = token_row(&row)?;
        if token.expires_at.is_some_and(|e| e <= at) {
            return Ok(None);
        }
        self.db.execute("UPDATE api_tokens SET last_used_at = $2 WHERE hash = $1", params![hash, at]).await?;
        token.last_used_at = Some(at);
        Ok(Some(token))
    }

    pub async fn tokens(&self) -> Result<Vec<ApiToken>> {
        let rows = self
            .db
            .query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"), params![])
            .await?;
        rows.iter().map(token_row).collect()
    }

    pub async fn delete_token(&self, id: &str) -> Result<()> {
        if self.db.execute("DELETE FROM api_tokens WHERE id = $1", params![id]).await? == 0 {
            return Err(Error::NotFound { what: "API token", id: id.to_string() });
        }
        Ok(())
    }

    /// A session of `user` valid for `lifetime`; expired sessions are cleared on the way.
    pub async fn create_session(&self, user: &str, lifetime: Duration) -> Result<NewSession> {
        let role = self.user(user).await?.role;
        let id = random_token()?;
        let at = now();
        let session = Session { user: user.to_string(), role, csrf_token: random_token()?, expires_at: at + lifetime };
        let mut tx = self.db.begin().await?;
        tx.execute("DELETE FROM sessions WHERE expires_at <= $1", params![at]).await?;
        tx.execute(
            "INSERT INTO sessions (hash, user_name, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            params![token_hash(&id), user, &session.csrf_token, at, session.expires_at],
        )
        .await?;
        tx.commit().await?;
        Ok(NewSession { session, id })
    }

    /// The live session the cookie value `id` names, with the user's current role.
    pub async fn session(&self, id: &str) -> Result<Option<Session>> {
        let row = self
            .db
            .query_opt(
                "SELECT s.user_name, u.role, s.csrf_token, s.expires_at FROM sessions s
                 JOIN users u ON u.name = s.user_name WHERE s.hash = $1 AND s.expires_at > $2",
                params![token_hash(id), now()],
            )
            .await?;
        row.map(|row| {
            Ok(Session {
                user: row.text(0)?,
                role: text_enum(&row.text(1)?)?,
                csrf_token: row.text(2)?,
                expires_at: row.time(3)?,
            })
        })
        .transpose()
    }

    /// Logout: the session ends (a no-op for an unknown one).
    pub async fn delete_session(&self, id: &str) -> Result<()> {
        self.db.execute("DELETE FROM sessions WHERE hash = $1", params![token_hash(id)]).await.map(drop)
    }
}
