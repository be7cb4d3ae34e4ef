//! Applying `Command::Auth`: the table in memory decides (`AuthTable::plan`), the records are
//! staged into the entry's batch here, and the table changes only once the batch is written
//! (`apply::apply_one`), so it never holds what RocksDB does not.

use rocksdb::{WriteBatch, DB};

use crate::auth::{AuthCommand, AuthWrite, SharedAuth};
use crate::codec;
use crate::db::{self, CF_SM};
use crate::error::Result;
use crate::types::CommandResult;

/// Stage `command`'s writes into `batch`, adding them to `planned` for the table; answer its
/// result (a refusal changes nothing).
pub(super) fn stage(
    db: &DB,
    auth: &SharedAuth,
    command: &AuthCommand,
    batch: &mut WriteBatch,
    planned: &mut Vec<AuthWrite>,
) -> Result<CommandResult> {
    let writes = match auth.read().plan(command) {
        Ok(writes) => writes,
        Err(refusal) => return Ok(CommandResult::Refused(refusal)),
    };
    let cf = db::cf(db, CF_SM);
    for write in &writes {
        match write {
            AuthWrite::PutRole(name, role) => batch.put_cf(
                cf,
                db::tagged(db::ROLE_TAG, name.as_bytes()),
                codec::encode(role)?,
            ),
            AuthWrite::DeleteRole(name) => {
                batch.delete_cf(cf, db::tagged(db::ROLE_TAG, name.as_bytes()))
            }
            AuthWrite::PutToken(token) => batch.put_cf(
                cf,
                db::tagged(db::TOKEN_TAG, token.id.as_bytes()),
                codec::encode(token)?,
            ),
            AuthWrite::DeleteToken(id) => {
                batch.delete_cf(cf, db::tagged(db::TOKEN_TAG, id.as_bytes()))
            }
        }
    }
    planned.extend(writes);
    Ok(CommandResult::Nothing)
}
