//! Access control as the state machine keeps it: roles (key prefixes with read and write
//! rights, plus an admin flag) and tokens (a SHA-256 hash of the secret, a role, an expiry).
//!
//! Both are replicated (`Command::Auth`), written beside the user's keys in `sm` (layout in
//! `db`), carried by snapshots and backups, and mirrored in memory by [`AuthTable`] so that a
//! node checks a token with one lookup and no I/O. The secret itself never enters the log: the
//! node that creates a token draws it, answers it once, and proposes only its hash.
//!
//! What a role allows is decided here ([`Role::may_read`], [`Role::may_write`]); where a
//! request needs which right is the API's (`mirrorkv-api`'s `auth`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::types::ApplyRefusal;

/// Most roles a cluster holds.
pub const MAX_ROLES: usize = 1000;
/// Most live tokens a cluster holds (expired ones are dropped as new ones are created).
pub const MAX_TOKENS: usize = 10_000;
/// Most prefixes one role lists.
pub const MAX_PERMISSIONS_PER_ROLE: usize = 100;
/// Longest role name, in bytes (`[A-Za-z0-9_.-]`).
pub const MAX_ROLE_NAME_BYTES: usize = 64;
/// Longest token id, in bytes (lowercase hex).
pub const MAX_TOKEN_ID_BYTES: usize = 32;
/// Longest token lifetime: ten years.
pub const MAX_TOKEN_TTL_S: u64 = 10 * 365 * 24 * 3600;

/// The rights a role has on the keys under one prefix (`""`: every key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub prefix: String,
    pub read: bool,
    pub write: bool,
}

/// A role: rights by key prefix, and whether it administers the cluster (membership,
/// snapshots, backups, access control, metrics). An admin may read and write every key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub admin: bool,
    pub permissions: Vec<Permission>,
}

impl Role {
    /// Whether this role may read `key`.
    pub fn may_read(&self, key: &str) -> bool {
        self.admin
            || self
                .permissions
                .iter()
                .any(|p| p.read && key.starts_with(p.prefix.as_str()))
    }

    /// Whether this role may write (put or delete) `key`.
    pub fn may_write(&self, key: &str) -> bool {
        self.admin
            || self
                .permissions
                .iter()
                .any(|p| p.write && key.starts_with(p.prefix.as_str()))
    }
}

/// A token as the state keeps it: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public name of the token (listing, revoking); not a secret.
    pub id: String,
    /// The role it acts as.
    pub role: String,
    /// SHA-256 of the secret token text.
    pub hash: [u8; 32],
    /// Wall-clock time of creation on the node that took the request, in ms since the epoch.
    pub created_at_ms: u64,
    /// Wall-clock time after which the token is refused, in ms since the epoch (`ttl_s`).
    pub expires_at_ms: Option<u64>,
}

impl TokenRecord {
    /// Whether the token is past its expiry at wall-clock time `now_ms`.
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }
}

/// A change of access control, as the log carries it (`Command::Auth`). Goes alone in its
/// entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Create or replace role `name`.
    PutRole { name: String, role: Role },
    /// Remove role `name`. Its tokens stay but allow nothing until a role of that name exists
    /// again.
    DeleteRole { name: String },
    /// Add a token. Tokens expired at its `created_at_ms` are dropped in the same entry, so the
    /// table holds at most `MAX_TOKENS` live ones and no more than that ever.
    CreateToken(TokenRecord),
    /// Revoke token `id`.
    DeleteToken { id: String },
}

/// Whether `name` is a valid role name.
pub fn valid_role_name(name: &str) -> bool {
    (1..=MAX_ROLE_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `id` is a valid token id.
pub fn valid_token_id(id: &str) -> bool {
    (1..=MAX_TOKEN_ID_BYTES).contains(&id.len())
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl AuthCommand {
    /// About how many bytes the command takes encoded (names, prefixes, a hash, integers).
    pub fn approx_bytes(&self) -> usize {
        const PART_BYTES: usize = 32;
        match self {
            AuthCommand::PutRole { name, role } => {
                PART_BYTES
                    + name.len()
                    + role
                        .permissions
                        .iter()
                        .map(|p| PART_BYTES + p.prefix.len())
                        .sum::<usize>()
            }
            AuthCommand::DeleteRole { name } => PART_BYTES + name.len(),
            AuthCommand::CreateToken(token) => 3 * PART_BYTES + token.id.len() + token.role.len(),
            AuthCommand::DeleteToken { id } => PART_BYTES + id.len(),
        }
    }

    /// Check the command's shape before it is proposed (`Command::validate`); `Err` says what
    /// is wrong.
    pub fn validate(&self, max_key_bytes: usize) -> Result<(), String> {
        let role_name = |name: &str| {
            if valid_role_name(name) {
                Ok(())
            } else {
                Err(format!(
                    "a role name is 1 to {MAX_ROLE_NAME_BYTES} bytes of letters, digits, '_', '.' and '-', got {name:?}"
                ))
            }
        };
        let token_id = |id: &str| {
            if valid_token_id(id) {
                Ok(())
            } else {
                Err(format!(
                    "a token id is 1 to {MAX_TOKEN_ID_BYTES} lowercase hex digits, got {id:?}"
                ))
            }
        };
        match self {
            AuthCommand::PutRole { name, role } => {
                role_name(name)?;
                if role.permissions.len() > MAX_PERMISSIONS_PER_ROLE {
                    return Err(format!(
                        "a role lists at most {MAX_PERMISSIONS_PER_ROLE} permissions, got {}",
                        role.permissions.len()
                    ));
                }
                if let Some(p) = role
                    .permissions
                    .iter()
                    .find(|p| p.prefix.len() > max_key_bytes)
                {
                    return Err(format!(
                        "a prefix of {} bytes exceeds max_key_bytes={max_key_bytes}",
                        p.prefix.len()
                    ));
                }
                Ok(())
            }
            AuthCommand::DeleteRole { name } => role_name(name),
            AuthCommand::CreateToken(token) => {
                token_id(&token.id)?;
                role_name(&token.role)?;
                match token.expires_at_ms {
                    Some(at) if at.saturating_sub(token.created_at_ms) > MAX_TOKEN_TTL_S * 1000 => {
                        Err(format!("a token lives at most {MAX_TOKEN_TTL_S} s"))
                    }
                    _ => Ok(()),
                }
            }
            AuthCommand::DeleteToken { id } => token_id(id),
        }
    }
}

/// One record write an auth command makes (`AuthTable::plan`), staged into the entry's batch
/// and then applied to the table in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthWrite {
    PutRole(String, Role),
    DeleteRole(String),
    PutToken(TokenRecord),
    DeleteToken(String),
}

/// Roles and tokens in memory, exactly the `sm` records of the applied state.
#[derive(Debug, Default, Clone)]
pub struct AuthTable {
    roles: BTreeMap<String, Arc<Role>>,
    /// Shared with each request's `TokenAccess`, so a lookup copies no strings.
    tokens: BTreeMap<String, Arc<TokenRecord>>,
    /// Token hash → token id.
    by_hash: HashMap<[u8; 32], String>,
}

/// The token a hash names, and what its role allows (`None`: the role does not exist now).
/// Two reference counts, no copies: it is made once per request.
#[derive(Debug, Clone)]
pub struct TokenAccess {
    pub token: Arc<TokenRecord>,
    pub role: Option<Arc<Role>>,
}

impl AuthTable {
    /// A table of these records (loaded at open, after an install).
    pub(crate) fn from_records(roles: Vec<(String, Role)>, tokens: Vec<TokenRecord>) -> Self {
        let mut table = Self::default();
        let writes = roles
            .into_iter()
            .map(|(name, role)| AuthWrite::PutRole(name, role))
            .chain(tokens.into_iter().map(AuthWrite::PutToken));
        for write in writes {
            table.apply(write);
        }
        table
    }

    /// The writes `command` makes to a table that is `self`, or why apply refuses it. Decided
    /// from the command and the table alone, so every node decides the same.
    pub(crate) fn plan(&self, command: &AuthCommand) -> Result<Vec<AuthWrite>, ApplyRefusal> {
        match command {
            AuthCommand::PutRole { name, role } => {
                if !self.roles.contains_key(name) && self.roles.len() >= MAX_ROLES {
                    return Err(ApplyRefusal::TooManyRoles {
                        max: MAX_ROLES as u64,
                    });
                }
                Ok(vec![AuthWrite::PutRole(name.clone(), role.clone())])
            }
            AuthCommand::DeleteRole { name } => match self.roles.contains_key(name) {
                true => Ok(vec![AuthWrite::DeleteRole(name.clone())]),
                false => Err(ApplyRefusal::RoleNotFound { name: name.clone() }),
            },
            AuthCommand::CreateToken(token) => {
                if !self.roles.contains_key(&token.role) {
                    return Err(ApplyRefusal::RoleNotFound {
                        name: token.role.clone(),
                    });
                }
                if self.tokens.contains_key(&token.id) || self.by_hash.contains_key(&token.hash) {
                    return Err(ApplyRefusal::TokenExists {
                        id: token.id.clone(),
                    });
                }
                let mut writes: Vec<AuthWrite> = self
                    .tokens
                    .values()
                    .filter(|t| t.expired_at(token.created_at_ms))
                    .map(|t| AuthWrite::DeleteToken(t.id.clone()))
                    .collect();
                if self.tokens.len() - writes.len() >= MAX_TOKENS {
                    return Err(ApplyRefusal::TooManyTokens {
                        max: MAX_TOKENS as u64,
                    });
                }
                writes.push(AuthWrite::PutToken(token.clone()));
                Ok(writes)
            }
            AuthCommand::DeleteToken { id } => match self.tokens.contains_key(id) {
                true => Ok(vec![AuthWrite::DeleteToken(id.clone())]),
                false => Err(ApplyRefusal::TokenNotFound { id: id.clone() }),
            },
        }
    }

    /// Apply one planned write.
    pub(crate) fn apply(&mut self, write: AuthWrite) {
        match write {
            AuthWrite::PutRole(name, role) => {
                self.roles.insert(name, Arc::new(role));
            }
            AuthWrite::DeleteRole(name) => {
                self.roles.remove(&name);
            }
            AuthWrite::PutToken(token) => {
                self.by_hash.insert(token.hash, token.id.clone());
                self.tokens.insert(token.id.clone(), Arc::new(token));
            }
            AuthWrite::DeleteToken(id) => {
                if let Some(token) = self.tokens.remove(&id) {
                    self.by_hash.remove(&token.hash);
                }
            }
        }
    }

    /// The live token whose secret hashes to `hash` at wall-clock time `now_ms`, if any.
    pub fn token(&self, hash: &[u8; 32], now_ms: u64) -> Option<TokenAccess> {
        let token = self.tokens.get(self.by_hash.get(hash)?)?;
        if token.expired_at(now_ms) {
            return None;
        }
        Some(TokenAccess {
            token: Arc::clone(token),
            role: self.roles.get(&token.role).cloned(),
        })
    }

    /// Every role, by name.
    pub fn roles(&self) -> impl Iterator<Item = (&str, &Role)> {
        self.roles
            .iter()
            .map(|(name, role)| (name.as_str(), &**role))
    }

    /// Every token (expired ones included until they are dropped), by id.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values().map(|token| &**token)
    }
}

/// The node's table, shared by the state machine (which changes it as it applies) and the API
/// (which reads it per request).
#[derive(Debug, Clone, Default)]
pub struct SharedAuth(Arc<RwLock<AuthTable>>);

impl SharedAuth {
    pub(crate) fn new(table: AuthTable) -> Self {
        Self(Arc::new(RwLock::new(table)))
    }

    /// Read the table. A panic elsewhere never leaves it half-changed (writes replace whole
    /// entries), so a poisoned lock is used as is.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, AuthTable> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn replace(&self, table: AuthTable) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    pub(crate) fn apply(&self, writes: Vec<AuthWrite>) {
        let mut table = self.0.write().unwrap_or_else(|p| p.into_inner());
        for write in writes {
            table.apply(write);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, role: &str, byte: u8, expires_at_ms: Option<u64>) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            role: role.into(),
            hash: [byte; 32],
            created_at_ms: 1000,
            expires_at_ms,
        }
    }

    fn apply(table: &mut AuthTable, command: AuthCommand) -> Result<(), ApplyRefusal> {
        for write in table.plan(&command)? {
            table.apply(write);
        }
        Ok(())
    }

    #[test]
    fn rights_follow_prefixes_and_admin_has_all() {
        let role = Role {
            admin: false,
            permissions: vec![
                Permission {
                    prefix: "app/".into(),
                    read: true,
                    write: true,
                },
                Permission {
                    prefix: "cfg/".into(),
                    read: true,
                    write: false,
                },
            ],
        };
        assert!(role.may_read("app/x") && role.may_write("app/x"));
        assert!(role.may_read("cfg/x") && !role.may_write("cfg/x"));
        assert!(!role.may_read("other") && !role.may_write("other"));
        assert!(!role.may_read("app"), "a prefix is not a key");
        let admin = Role {
            admin: true,
            permissions: vec![],
        };
        assert!(admin.may_read("anything") && admin.may_write(""));
    }

    #[test]
    fn tokens_need_their_role_expire_and_are_revoked() {
        let mut table = AuthTable::default();
        let create = AuthCommand::CreateToken(token("a1", "app", 1, Some(5000)));
        assert_eq!(
            apply(&mut table, create.clone()),
            Err(ApplyRefusal::RoleNotFound { name: "app".into() })
        );
        apply(
            &mut table,
            AuthCommand::PutRole {
                name: "app".into(),
                role: Role::default(),
            },
        )
        .unwrap();
        apply(&mut table, create.clone()).unwrap();
        assert_eq!(
            apply(&mut table, create),
            Err(ApplyRefusal::TokenExists { id: "a1".into() })
        );
        let found = table.token(&[1; 32], 4999).expect("live token");
        assert_eq!(
            (found.token.id.as_str(), found.token.role.as_str()),
            ("a1", "app")
        );
        assert!(table.token(&[1; 32], 5000).is_none(), "expired at its time");
        assert!(table.token(&[2; 32], 0).is_none(), "unknown hash");
        // A token created after a1 expired drops it in the same entry.
        let mut later = token("b2", "app", 2, None);
        later.created_at_ms = 6000;
        apply(&mut table, AuthCommand::CreateToken(later)).unwrap();
        assert_eq!(
            table.tokens().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["b2"]
        );
        apply(&mut table, AuthCommand::DeleteToken { id: "b2".into() }).unwrap();
        assert!(table.token(&[2; 32], 6000).is_none());
        assert_eq!(
            apply(&mut table, AuthCommand::DeleteToken { id: "b2".into() }),
            Err(ApplyRefusal::TokenNotFound { id: "b2".into() })
        );
    }

    #[test]
    fn deleting_a_role_leaves_its_tokens_without_rights() {
        let mut table = AuthTable::default();
        let put = AuthCommand::PutRole {
            name: "app".into(),
            role: Role {
                admin: true,
                permissions: vec![],
            },
        };
        apply(&mut table, put.clone()).unwrap();
        apply(
            &mut table,
            AuthCommand::CreateToken(token("a1", "app", 1, None)),
        )
        .unwrap();
        apply(&mut table, AuthCommand::DeleteRole { name: "app".into() }).unwrap();
        let found = table.token(&[1; 32], 0).expect("the token stays");
        assert!(found.role.is_none());
        apply(&mut table, put).unwrap();
        assert!(table.token(&[1; 32], 0).unwrap().role.unwrap().admin);
    }

    #[test]
    fn limits_hold() {
        let mut table = AuthTable::default();
        for i in 0..MAX_ROLES {
            apply(
                &mut table,
                AuthCommand::PutRole {
                    name: format!("r{i}"),
                    role: Role::default(),
                },
            )
            .unwrap();
        }
        let one_more = AuthCommand::PutRole {
            name: "extra".into(),
            role: Role::default(),
        };
        assert_eq!(
            apply(&mut table, one_more),
            Err(ApplyRefusal::TooManyRoles {
                max: MAX_ROLES as u64
            })
        );
        // Replacing an existing role is not one more.
        apply(
            &mut table,
            AuthCommand::PutRole {
                name: "r0".into(),
                role: Role::default(),
            },
        )
        .unwrap();
        let invalid = [
            AuthCommand::DeleteRole { name: "".into() },
            AuthCommand::DeleteRole { name: "a/b".into() },
            AuthCommand::DeleteToken { id: "XYZ".into() },
            AuthCommand::PutRole {
                name: "big".into(),
                role: Role {
                    admin: false,
                    permissions: vec![
                        Permission {
                            prefix: String::new(),
                            read: true,
                            write: true
                        };
                        MAX_PERMISSIONS_PER_ROLE + 1
                    ],
                },
            },
        ];
        for command in invalid {
            assert!(command.validate(4096).is_err(), "{command:?}");
        }
    }
}
