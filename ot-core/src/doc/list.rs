//! [`IdList`]: the persistent list of ids that each ordered list of the document is.

use std::fmt;
use std::sync::Arc;

use super::Id;

/// A chunk grows to this many ids before it splits in two.
const CHUNK_MAX: usize = 128;

/// A chunk this short merges with a neighbour after a removal, when the two fit in one.
const CHUNK_LOW: usize = CHUNK_MAX / 4;

/// An ordered list of entity ids (`tracks`, `markers`, the clips of one track), persistent:
/// cloning it is O(1), and the clone shares every chunk until one of them is written.
///
/// The ids are held in chunks of at most 128 (`CHUNK_MAX`), behind an outer vector of chunk
/// pointers. An insert or a removal edits one chunk in place when nothing else holds it (a
/// `memmove` of at most 128 pointers) and otherwise copies that one chunk and the outer vector,
/// never the rest: a state kept by the server's history window costs one chunk per list the
/// next op changed. Finding an index walks the chunk lengths, a few dozen for a list of
/// thousands. The lists of a project are short (tens of tracks, hundreds of clips per track),
/// so this beats a balanced tree, whose middle insert splits the tree and joins it again.
#[derive(Clone, Default)]
pub struct IdList {
    len: usize,
    /// Never holds an empty chunk.
    chunks: Arc<Vec<Arc<Vec<Id>>>>,
}

impl IdList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list holds no id.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id at `index`, if any.
    pub fn get(&self, index: usize) -> Option<&Id> {
        let (c, at) = self.find(index)?;
        self.chunks[c].get(at)
    }

    /// The ids in order.
    pub fn iter(&self) -> IdListIter<'_> {
        IdListIter(self.chunks.iter().flat_map(chunk_iter))
    }

    /// The index of `id`, if it is in the list. O(length).
    pub fn index_of(&self, id: &str) -> Option<usize> {
        let mut before = 0;
        for chunk in self.chunks.iter() {
            if let Some(i) = chunk.iter().position(|x| **x == *id) {
                return Some(before + i);
            }
            before += chunk.len();
        }
        None
    }

    /// Adds `id` at the end.
    pub fn push_back(&mut self, id: Id) {
        self.insert(self.len, id);
    }

    /// Inserts `id` at `index`, shifting the later ids up.
    ///
    /// # Panics
    /// If `index` is past the end, as `Vec::insert` does; the callers check it first.
    pub fn insert(&mut self, index: usize, id: Id) {
        assert!(index <= self.len, "insert at {index} into a list of {}", self.len);
        let chunks = Arc::make_mut(&mut self.chunks);
        self.len += 1;
        if chunks.is_empty() {
            chunks.push(Arc::new(vec![id]));
            return;
        }
        // The end of a chunk is also the start of the next: an insert there goes to the
        // earlier one, so an append fills the last chunk.
        let (c, at) = locate(chunks, index, true);
        let chunk = writable(&mut chunks[c], 1);
        chunk.insert(at, id);
        if chunk.len() > CHUNK_MAX {
            let tail = chunk.split_off(chunk.len() / 2);
            chunks.insert(c + 1, Arc::new(tail));
        }
    }

    /// Removes and returns the id at `index`, shifting the later ids down.
    ///
    /// # Panics
    /// If `index` is out of range, as `Vec::remove` does; the callers check it first.
    pub fn remove(&mut self, index: usize) -> Id {
        assert!(index < self.len, "remove at {index} from a list of {}", self.len);
        let chunks = Arc::make_mut(&mut self.chunks);
        self.len -= 1;
        let (c, at) = locate(chunks, index, false);
        let chunk = writable(&mut chunks[c], 0);
        let id = chunk.remove(at);
        let left = chunk.len();
        if left == 0 {
            chunks.remove(c);
        } else if left < CHUNK_LOW {
            // Merge a short chunk into a neighbour it fits in, so deletes cannot leave many
            // tiny chunks behind.
            if c + 1 < chunks.len() && left + chunks[c + 1].len() <= CHUNK_MAX {
                let next = chunks.remove(c + 1);
                writable(&mut chunks[c], next.len()).extend(next.iter().cloned());
            } else if c > 0 && left + chunks[c - 1].len() <= CHUNK_MAX {
                let this = chunks.remove(c);
                writable(&mut chunks[c - 1], this.len()).extend(this.iter().cloned());
            }
        }
        id
    }

    /// The chunk and the offset in it of `index`, if it is in the list.
    fn find(&self, index: usize) -> Option<(usize, usize)> {
        (index < self.len).then(|| locate(&self.chunks, index, false))
    }
}

/// The chunk holding position `index` and the offset in it; with `at_end`, a position at the
/// end of a chunk belongs to that chunk (an insert point) rather than to the next one.
/// `index` must be within the list (or at its end, with `at_end`).
fn locate(chunks: &[Arc<Vec<Id>>], mut index: usize, at_end: bool) -> (usize, usize) {
    let last = chunks.len().saturating_sub(1);
    for (c, chunk) in chunks.iter().enumerate() {
        if index < chunk.len() || (at_end && index == chunk.len()) || c == last {
            return (c, index);
        }
        index -= chunk.len();
    }
    (0, index)
}

/// The chunk, copied first if another list shares it, with room for `extra` more ids (so a
/// copy made for an insert is not reallocated by that insert).
fn writable(chunk: &mut Arc<Vec<Id>>, extra: usize) -> &mut Vec<Id> {
    if Arc::get_mut(chunk).is_none() {
        let mut copy = Vec::with_capacity(chunk.len() + extra);
        copy.extend(chunk.iter().cloned());
        *chunk = Arc::new(copy);
    }
    // The chunk is unique now, so this copies nothing.
    Arc::make_mut(chunk)
}

impl PartialEq for IdList {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && (Arc::ptr_eq(&self.chunks, &other.chunks) || self.iter().eq(other.iter()))
    }
}

impl fmt::Debug for IdList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl std::ops::Index<usize> for IdList {
    type Output = Id;

    /// # Panics
    /// If `index` is out of range, as a slice does.
    fn index(&self, index: usize) -> &Id {
        match self.get(index) {
            Some(id) => id,
            None => panic!("index {index} out of range for a list of {}", self.len),
        }
    }
}

/// The ids of an [`IdList`] in order.
pub struct IdListIter<'a>(ChunksIter<'a>);

type ChunksIter<'a> = std::iter::FlatMap<
    std::slice::Iter<'a, Arc<Vec<Id>>>,
    std::slice::Iter<'a, Id>,
    fn(&'a Arc<Vec<Id>>) -> std::slice::Iter<'a, Id>,
>;

fn chunk_iter(chunk: &Arc<Vec<Id>>) -> std::slice::Iter<'_, Id> {
    chunk.iter()
}

impl<'a> Iterator for IdListIter<'a> {
    type Item = &'a Id;

    fn next(&mut self) -> Option<&'a Id> {
        self.0.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl<'a> IntoIterator for &'a IdList {
    type Item = &'a Id;
    type IntoIter = IdListIter<'a>;

    fn into_iter(self) -> IdListIter<'a> {
        self.iter()
    }
}

impl FromIterator<Id> for IdList {
    fn from_iter<I: IntoIterator<Item = Id>>(iter: I) -> Self {
        let mut list = IdList::new();
        for id in iter {
            list.push_back(id);
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: usize) -> Id {
        Id::from(format!("i{n}"))
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(usize),
        Remove(usize),
        Snapshot,
    }

    fn edits() -> impl Strategy<Value = Vec<Edit>> {
        prop::collection::vec(
            prop_oneof![
                6 => any::<usize>().prop_map(Edit::Insert),
                4 => any::<usize>().prop_map(Edit::Remove),
                1 => Just(Edit::Snapshot),
            ],
            0..1500,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Every edit agrees with a plain `Vec`, and a clone taken before later edits keeps
        /// exactly what the list held then (the edits after it copy, never write through).
        #[test]
        fn behaves_as_a_vec_and_clones_are_untouched(edits in edits()) {
            let mut list = IdList::new();
            let mut model: Vec<Id> = Vec::new();
            let mut kept: Vec<(IdList, Vec<Id>)> = Vec::new();
            for (n, e) in edits.into_iter().enumerate() {
                match e {
                    Edit::Insert(i) => {
                        let i = i % (model.len() + 1);
                        list.insert(i, id(n));
                        model.insert(i, id(n));
                    }
                    Edit::Remove(i) if !model.is_empty() => {
                        let i = i % model.len();
                        prop_assert_eq!(list.remove(i), model.remove(i));
                    }
                    Edit::Remove(_) => {}
                    Edit::Snapshot => kept.push((list.clone(), model.clone())),
                }
                prop_assert_eq!(list.len(), model.len());
                prop_assert!(list.chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK_MAX));
            }
            prop_assert!(list.iter().eq(model.iter()));
            for (i, x) in model.iter().enumerate() {
                prop_assert_eq!(&list[i], x);
                prop_assert_eq!(list.index_of(x), Some(i));
            }
            prop_assert_eq!(list.get(model.len()), None);
            prop_assert_eq!(list.index_of("absent"), None);
            for (snapshot, then) in kept {
                prop_assert!(snapshot.iter().eq(then.iter()));
            }
        }
    }

    #[test]
    fn deletes_do_not_leave_many_short_chunks() {
        let mut list: IdList = (0..1000).map(id).collect();
        for _ in 0..900 {
            list.remove(list.len() / 3);
        }
        assert_eq!(list.len(), 100);
        // A short chunk is left unmerged only beside chunks too full to take it.
        assert!(list.chunks.len() <= 100 / CHUNK_LOW + 2, "{} chunks for 100 ids", list.chunks.len());
    }
}
