//! The access-control part of t20's model: roles put and deleted, tokens created (dropping the
//! expired ones) and revoked, the rules of `storage/src/auth.rs` restated, and checked against
//! the store's table after every op, so snapshots, restores and re-opens must carry them.

use std::collections::BTreeMap;

use mirrorkv_storage::{
    ApplyRefusal, AuthCommand, CommandResult, KvReader, Permission, Role, TokenRecord,
};

#[derive(Debug, Default, Clone)]
pub struct AuthModel {
    roles: BTreeMap<String, Role>,
    tokens: BTreeMap<String, TokenRecord>,
}

/// The auth command of an op: `kind` picks put role, delete role, create token or revoke
/// token; `role` and `token` pick among a few names so that each exists or not often.
pub fn auth_command(kind: u8, role: u8, token: u8, ttl_ms: Option<u8>, now_ms: u64) -> AuthCommand {
    let name = format!("r{role}");
    let id = format!("{token:x}");
    match kind % 4 {
        0 => AuthCommand::PutRole {
            name,
            role: Role {
                admin: token.is_multiple_of(3),
                permissions: vec![Permission {
                    prefix: format!("k/{token:02}"),
                    read: true,
                    write: role.is_multiple_of(2),
                }],
            },
        },
        1 => AuthCommand::DeleteRole { name },
        2 => AuthCommand::CreateToken(TokenRecord {
            id,
            role: name,
            hash: [token; 32],
            created_at_ms: now_ms,
            expires_at_ms: ttl_ms.map(|ttl| now_ms + u64::from(ttl)),
        }),
        _ => AuthCommand::DeleteToken { id },
    }
}

impl AuthModel {
    pub fn apply(&mut self, command: &AuthCommand) -> CommandResult {
        let refused = |refusal| CommandResult::Refused(refusal);
        match command {
            AuthCommand::PutRole { name, role } => {
                self.roles.insert(name.clone(), role.clone());
            }
            AuthCommand::DeleteRole { name } => {
                if self.roles.remove(name).is_none() {
                    return refused(ApplyRefusal::RoleNotFound { name: name.clone() });
                }
            }
            AuthCommand::CreateToken(token) => {
                if !self.roles.contains_key(&token.role) {
                    return refused(ApplyRefusal::RoleNotFound {
                        name: token.role.clone(),
                    });
                }
                if self.tokens.contains_key(&token.id) {
                    return refused(ApplyRefusal::TokenExists {
                        id: token.id.clone(),
                    });
                }
                self.tokens
                    .retain(|_, t| t.expires_at_ms.is_none_or(|at| at > token.created_at_ms));
                self.tokens.insert(token.id.clone(), token.clone());
            }
            AuthCommand::DeleteToken { id } => {
                if self.tokens.remove(id).is_none() {
                    return refused(ApplyRefusal::TokenNotFound { id: id.clone() });
                }
            }
        }
        CommandResult::Nothing
    }

    /// The store's table holds exactly these roles and tokens, and finds each token by its
    /// hash with its role.
    pub fn check(&self, reader: &KvReader) {
        let table = reader.auth().read();
        let roles: BTreeMap<String, Role> = table
            .roles()
            .map(|(name, role)| (name.to_string(), role.clone()))
            .collect();
        assert_eq!(roles, self.roles, "roles differ from the model");
        let tokens: BTreeMap<String, TokenRecord> =
            table.tokens().map(|t| (t.id.clone(), t.clone())).collect();
        assert_eq!(tokens, self.tokens, "tokens differ from the model");
        for token in self.tokens.values() {
            let found = table.token(&token.hash, token.created_at_ms);
            let live = token
                .expires_at_ms
                .is_none_or(|at| at > token.created_at_ms);
            match found {
                Some(access) => {
                    assert!(live, "an expired token {} was found", token.id);
                    assert_eq!(access.token.id, token.id);
                    assert_eq!(access.role.as_deref(), self.roles.get(&token.role));
                }
                None => assert!(!live, "token {} not found by its hash", token.id),
            }
        }
    }
}
