//! Roles and tokens (`/v1/auth/...`, admin only): what `mirrorkv ctl auth` runs.

use reqwest::Method;
use serde_json::{json, Value};

use super::{Call, Client, Resend};
use crate::error::ClientError;
use crate::keys::key_path;
use crate::types::index_of;

/// The rights of a role on the keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub prefix: String,
    pub read: bool,
    pub write: bool,
}

/// A token as `create_token` answers it: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedToken {
    pub id: String,
    /// The secret: send it as `Authorization: Bearer <token>` (`ClientOptions::token`).
    pub token: String,
    pub role: String,
    /// When it stops working, in ms since the Unix epoch (`None`: never).
    pub expires_at_ms: Option<u64>,
    pub index: u64,
}

impl Client {
    async fn auth_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let resend = if method == Method::GET {
            Resend::Read
        } else {
            Resend::Write
        };
        let call = Call {
            body: body.map(|b| (b.to_string().into(), "application/json")),
            ..Call::plain(method, path, resend)
        };
        self.send_json(&call).await
    }

    /// Create or replace role `name`. Returns the change's index.
    pub async fn put_role(
        &self,
        name: &str,
        admin: bool,
        permissions: &[Permission],
    ) -> Result<u64, ClientError> {
        let permissions: Vec<Value> = permissions
            .iter()
            .map(|p| json!({"prefix": p.prefix, "read": p.read, "write": p.write}))
            .collect();
        let body = json!({"admin": admin, "permissions": permissions});
        let path = format!("/v1/auth/roles/{}", key_path(name));
        index_of(&self.auth_call(Method::PUT, &path, Some(body)).await?)
    }

    /// Remove role `name`. Returns the change's index.
    pub async fn delete_role(&self, name: &str) -> Result<u64, ClientError> {
        let path = format!("/v1/auth/roles/{}", key_path(name));
        index_of(&self.auth_call(Method::DELETE, &path, None).await?)
    }

    /// Every role, as the API lists them (`{"roles": [...]}`).
    pub async fn roles(&self) -> Result<Value, ClientError> {
        self.auth_call(Method::GET, "/v1/auth/roles", None).await
    }

    /// Create a token acting as `role`, expiring after `ttl_s` seconds if given.
    pub async fn create_token(
        &self,
        role: &str,
        ttl_s: Option<u64>,
    ) -> Result<CreatedToken, ClientError> {
        let body = json!({"role": role, "ttl_s": ttl_s});
        let answer = self
            .auth_call(Method::POST, "/v1/auth/tokens", Some(body))
            .await?;
        let text = |name: &str| {
            answer[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| ClientError::Decode(format!("a created token without {name}")))
        };
        Ok(CreatedToken {
            id: text("id")?,
            token: text("token")?,
            role: text("role")?,
            expires_at_ms: answer["expires_at_ms"].as_u64(),
            index: index_of(&answer)?,
        })
    }

    /// Every token's id, role and expiry (`{"tokens": [...]}`); never a secret.
    pub async fn tokens(&self) -> Result<Value, ClientError> {
        self.auth_call(Method::GET, "/v1/auth/tokens", None).await
    }

    /// Revoke token `id`. Returns the change's index.
    pub async fn revoke_token(&self, id: &str) -> Result<u64, ClientError> {
        let path = format!("/v1/auth/tokens/{}", key_path(id));
        index_of(&self.auth_call(Method::DELETE, &path, None).await?)
    }
}
