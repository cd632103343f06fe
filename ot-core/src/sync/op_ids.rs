//! Finding sequenced ops by (account, op id), for exactly-once (PROTOCOL §4), without copying
//! the ids: the index holds versions only, found by the hash of (account, op id), and reads the
//! ids back from the messages their owner keeps (the server's history window, a store's log).

use std::hash::{BuildHasher, RandomState};

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use super::Sequenced;

/// The version of each recorded op with an id, found by (account, op id). An id recorded again
/// (a lost race replayed, say) stands for its newest op. An empty account is no account, as in
/// every store. Recording an op allocates nothing beyond the table's growth: 16 bytes a slot,
/// the version and the hash of its ids.
///
/// Every call takes `msg`, the owner's message of a version (`None` once it is gone), so the
/// owner's messages stay the one copy of the ids. The hash is kept so that the table grows and
/// sheds its tombstones without reading those messages again: they are scattered in memory,
/// and hashing their ids once more cost more than the rest of recording.
#[derive(Debug, Clone, Default)]
pub struct OpIdIndex {
    versions: HashTable<Slot>,
    keys: RandomState,
}

/// One recorded op: its version and the hash of (account, op id).
#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    version: u64,
}

impl OpIdIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many ids are recorded.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether no id is recorded.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The op recorded under (`account`, `op_id`), read back through `msg`.
    pub fn find<'a>(
        &self,
        account: Option<&str>,
        op_id: &str,
        msg: impl Fn(u64) -> Option<&'a Sequenced>,
    ) -> Option<&'a Sequenced> {
        let hash = hash(&self.keys, account, op_id);
        let slot = self
            .versions
            .find(hash, |s| s.hash == hash && msg(s.version).is_some_and(|m| sent_under(m, account, op_id)))?;
        msg(slot.version)
    }

    /// Records `m` under its (account, op id), if it has an id; `msg` reads back the ops
    /// recorded before it. Returns the key it is recorded under, for [`OpIdIndex::forget_key`].
    pub fn record<'a>(&mut self, m: &Sequenced, msg: impl Fn(u64) -> Option<&'a Sequenced>) -> Option<u64> {
        let op_id = m.op_id.as_deref()?;
        let account = m.account.as_deref();
        let key = hash(&self.keys, account, op_id);
        let same = |s: &Slot| s.hash == key && msg(s.version).is_some_and(|o| sent_under(o, account, op_id));
        match self.versions.entry(key, same, |s| s.hash) {
            Entry::Occupied(mut e) => e.get_mut().version = m.version,
            Entry::Vacant(e) => {
                e.insert(Slot { hash: key, version: m.version });
            }
        }
        Some(key)
    }

    /// Forgets the op of `version` recorded under `key` (what [`OpIdIndex::record`] returned
    /// for it), if its id still stands for it: its owner is dropping it. The op's ids are not
    /// read again: for the oldest op of a window they are likely in no cache any more.
    pub fn forget_key(&mut self, key: u64, version: u64) {
        if let Ok(e) = self.versions.find_entry(key, |s| s.version == version) {
            e.remove();
        }
    }
}

fn hash(keys: &RandomState, account: Option<&str>, op_id: &str) -> u64 {
    keys.hash_one((account.unwrap_or(""), op_id))
}

/// Whether `m` was sent under (`account`, `op_id`): the match of exactly-once (an empty account
/// is no account).
pub fn sent_under(m: &Sequenced, account: Option<&str>, op_id: &str) -> bool {
    m.op_id.as_deref() == Some(op_id) && m.account.as_deref().unwrap_or("") == account.unwrap_or("")
}
