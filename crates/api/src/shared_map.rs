//! An ordered map whose versions share their entries, so that a configuration of 100,000 objects
//! can be written to while readers hold the previous version, and two versions can be compared,
//! at a cost that follows the change rather than the size.
//!
//! Entries live in sorted chunks, chunks in sorted segments, each behind an `Arc`: a shallow
//! B-tree of fixed depth. A clone shares everything. A write to a shared map copies the segment
//! list, one segment (a pointer per chunk) and one chunk (key clones and a pointer per value):
//! at most a few hundred pointers at 100,000 entries, where a flat list of chunks would copy
//! thousands, each a reference count that the readers' thread also touches. Values are never
//! copied. [`SharedMap::differences`] skips every segment and chunk two versions still share.
//!
//! The persistent maps on crates.io that would do this (`im`, `imbl`, `rpds`) are MPL-2.0, which
//! this project's licence policy (`deny.toml`) does not take.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::slice;
use std::sync::Arc;

/// Most entries in a chunk, and chunks in a segment. A write under a reader copies one of each:
/// 128 keeps that within a few microseconds, and the segment list short up to millions of entries
/// (100,000 entries make about 25 segments). Small under test, so that a few hundred keys take
/// every split and join.
const MAX_GROUP: usize = if cfg!(test) { 8 } else { 128 };
/// Fewest members a chunk or segment keeps before it joins a neighbour, so that deletions cannot
/// leave the map as a long list of near-empty pieces.
const MIN_GROUP: usize = MAX_GROUP / 4;
/// Members per chunk and segment when a map is built at once: half full, so that the first
/// inserts do not split.
const BUILD_GROUP: usize = MAX_GROUP / 2;

type Entry<K, V> = (K, Arc<V>);
type Chunk<K, V> = Vec<Entry<K, V>>;
type Segment<K, V> = Vec<Arc<Chunk<K, V>>>;

/// An ordered map like `BTreeMap`, whose clones cost one pointer and whose versions share what
/// did not change. Iteration is in key order.
pub struct SharedMap<K, V> {
    /// Sorted and disjoint; no segment or chunk is empty or longer than [`MAX_GROUP`].
    segments: Arc<Vec<Arc<Segment<K, V>>>>,
    len: usize,
}

/// One key whose entry differs between two versions of a map: added (`old` is `None`), removed
/// (`new` is `None`) or replaced.
#[derive(Debug, PartialEq, Eq)]
pub struct Difference<'a, K, V> {
    pub key: &'a K,
    pub old: Option<&'a V>,
    pub new: Option<&'a V>,
}

/// What each level of the map is sorted by: the first key it holds.
trait FirstKey<K> {
    fn first_key(&self) -> &K;
}

impl<K, V> FirstKey<K> for Entry<K, V> {
    fn first_key(&self) -> &K {
        &self.0
    }
}

impl<K, T: FirstKey<K>> FirstKey<K> for Arc<Vec<T>> {
    fn first_key(&self) -> &K {
        self[0].first_key()
    }
}

/// In a sorted level, the member that holds `key` or would: the last whose first key is not above
/// it (the first when `key` is below them all).
fn member_for<K, Q, T>(level: &[T], key: &Q) -> usize
where
    T: FirstKey<K>,
    K: Borrow<Q>,
    Q: Ord + ?Sized,
{
    level
        .partition_point(|m| m.first_key().borrow() <= key)
        .saturating_sub(1)
}

/// Brings member `i` of a level, just changed, back within bounds: removes it when empty, splits
/// it when too long, joins it with a neighbour when too short (splitting the two again if they
/// are too long together).
fn rebalance<T: Clone>(level: &mut Vec<Arc<Vec<T>>>, i: usize) {
    let len = level[i].len();
    if len == 0 {
        level.remove(i);
    } else if len > MAX_GROUP {
        let upper = Arc::make_mut(&mut level[i]).split_off(len / 2);
        level.insert(i + 1, Arc::new(upper));
    } else if len < MIN_GROUP && level.len() > 1 {
        let first = if i + 1 < level.len() { i } else { i - 1 };
        let second = Arc::unwrap_or_clone(level.remove(first + 1));
        let joined = Arc::make_mut(&mut level[first]);
        joined.extend(second);
        if joined.len() > MAX_GROUP {
            let upper = joined.split_off(joined.len() / 2);
            level.insert(first + 1, Arc::new(upper));
        }
    }
}

/// `items` in groups of [`BUILD_GROUP`], in order.
fn in_groups<T>(items: impl IntoIterator<Item = T>) -> Vec<Arc<Vec<T>>> {
    let mut items = items.into_iter().peekable();
    let mut groups = Vec::new();
    while items.peek().is_some() {
        groups.push(Arc::new(items.by_ref().take(BUILD_GROUP).collect()));
    }
    groups
}

impl<K, V> SharedMap<K, V> {
    pub fn new() -> Self {
        SharedMap {
            segments: Arc::default(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter {
            segments: self.segments.iter(),
            chunks: [].iter(),
            entries: [].iter(),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Ord, V> SharedMap<K, V> {
    /// Where `key` is (`Ok`) or would go (`Err`): its segment, its chunk and its place in the
    /// chunk. `None` when the map is empty.
    fn locate<Q>(&self, key: &Q) -> Option<(usize, usize, Result<usize, usize>)>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let s = member_for(&self.segments, key);
        let segment = self.segments.get(s)?;
        let c = member_for(segment, key);
        let place = segment[c].binary_search_by(|(k, _)| k.borrow().cmp(key));
        Some((s, c, place))
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.locate(key)? {
            (s, c, Ok(i)) => Some(&self.segments[s][c][i].1),
            (_, _, Err(_)) => None,
        }
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(key).is_some()
    }

    /// The entries from the first key not below `start`, in order.
    pub fn range_from<Q>(&self, start: &Q) -> Iter<'_, K, V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let Some((s, c, place)) = self.locate(start) else {
            return self.iter();
        };
        let segment = &self.segments[s];
        Iter {
            segments: self.segments[s + 1..].iter(),
            chunks: segment[c + 1..].iter(),
            entries: segment[c][place.unwrap_or_else(|i| i)..].iter(),
        }
    }

    /// The keys whose entries differ from `self` to `newer`, in key order. Segments and chunks
    /// both still share are skipped whole, so two versions a few writes apart compare in the
    /// time of those writes; a value replaced (even by an equal one) counts as a difference.
    pub fn differences<'a>(&'a self, newer: &'a Self) -> Vec<Difference<'a, K, V>> {
        let mut found = Vec::new();
        let (mut old, mut new) = (Cursor::new(&self.segments), Cursor::new(&newer.segments));
        loop {
            if let (Some(a), Some(b)) = (old.segment_start(), new.segment_start())
                && Arc::ptr_eq(a, b)
            {
                old.skip_segment();
                new.skip_segment();
                continue;
            }
            if let (Some(a), Some(b)) = (old.chunk_start(), new.chunk_start())
                && Arc::ptr_eq(a, b)
            {
                old.skip_chunk();
                new.skip_chunk();
                continue;
            }
            let (before, after) = (old.entry(), new.entry());
            let order = match (before, after) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            // The side whose key comes first moves on; with equal keys, both do.
            let was = before.filter(|_| order.is_le());
            let now = after.filter(|_| order.is_ge());
            if let Some((key, _)) = now.or(was)
                && !matches!((was, now), (Some((_, a)), Some((_, b))) if Arc::ptr_eq(a, b))
            {
                found.push(Difference {
                    key,
                    old: was.map(|(_, v)| &**v),
                    new: now.map(|(_, v)| &**v),
                });
            }
            if was.is_some() {
                old.step();
            }
            if now.is_some() {
                new.step();
            }
        }
        found
    }
}

impl<K: Ord + Clone, V> SharedMap<K, V> {
    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<Arc<V>> {
        let value = Arc::new(value);
        let segments = Arc::make_mut(&mut self.segments);
        if segments.is_empty() {
            segments.push(Arc::new(vec![Arc::new(vec![(key, value)])]));
            self.len = 1;
            return None;
        }
        let s = member_for(segments, &key);
        let segment = Arc::make_mut(&mut segments[s]);
        let c = member_for(segment, &key);
        let chunk = Arc::make_mut(&mut segment[c]);
        match chunk.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut chunk[i].1, value)),
            Err(i) => {
                chunk.insert(i, (key, value));
                self.len += 1;
                rebalance(segment, c);
                rebalance(segments, s);
                None
            }
        }
    }

    /// Removes `key`; returns its value. A map without it is left untouched (and still shared).
    pub fn remove<Q>(&mut self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (s, c, Ok(i)) = self.locate(key)? else {
            return None;
        };
        let segments = Arc::make_mut(&mut self.segments);
        let segment = Arc::make_mut(&mut segments[s]);
        let (_, value) = Arc::make_mut(&mut segment[c]).remove(i);
        self.len -= 1;
        rebalance(segment, c);
        rebalance(segments, s);
        Some(value)
    }
}

/// A place in a map, walked entry by entry or a whole chunk or segment at a time.
struct Cursor<'a, K, V> {
    segments: &'a [Arc<Segment<K, V>>],
    /// Segment, chunk in it, entry in that.
    at: (usize, usize, usize),
}

impl<'a, K, V> Cursor<'a, K, V> {
    fn new(segments: &'a [Arc<Segment<K, V>>]) -> Self {
        Cursor {
            segments,
            at: (0, 0, 0),
        }
    }

    fn entry(&self) -> Option<&'a Entry<K, V>> {
        let (s, c, e) = self.at;
        Some(&self.segments.get(s)?[c][e])
    }

    /// The segment this cursor is at the start of, if it is.
    fn segment_start(&self) -> Option<&'a Arc<Segment<K, V>>> {
        let (s, c, e) = self.at;
        self.segments.get(s).filter(|_| (c, e) == (0, 0))
    }

    /// The chunk this cursor is at the start of, if it is.
    fn chunk_start(&self) -> Option<&'a Arc<Chunk<K, V>>> {
        let (s, c, e) = self.at;
        self.segments.get(s).map(|seg| &seg[c]).filter(|_| e == 0)
    }

    fn step(&mut self) {
        self.at.2 += 1;
        let (s, c, e) = self.at;
        if e == self.segments[s][c].len() {
            self.skip_chunk();
        }
    }

    fn skip_chunk(&mut self) {
        let (s, c, _) = self.at;
        self.at = (s, c + 1, 0);
        if c + 1 == self.segments[s].len() {
            self.skip_segment();
        }
    }

    fn skip_segment(&mut self) {
        self.at = (self.at.0 + 1, 0, 0);
    }
}

/// The entries of a [`SharedMap`], in key order.
pub struct Iter<'a, K, V> {
    segments: slice::Iter<'a, Arc<Segment<K, V>>>,
    chunks: slice::Iter<'a, Arc<Chunk<K, V>>>,
    entries: slice::Iter<'a, Entry<K, V>>,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((k, v)) = self.entries.next() {
                return Some((k, v));
            }
            match self.chunks.next() {
                Some(chunk) => self.entries = chunk.iter(),
                None => self.chunks = self.segments.next()?.iter(),
            }
        }
    }
}

impl<'a, K, V> IntoIterator for &'a SharedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Iter<'a, K, V> {
        self.iter()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SharedMap<K, V> {
    /// Like `BTreeMap`: for a key given twice, the later value is kept.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let sorted: std::collections::BTreeMap<K, V> = entries.into_iter().collect();
        let len = sorted.len();
        let chunks = in_groups(sorted.into_iter().map(|(k, v)| (k, Arc::new(v))));
        SharedMap {
            segments: Arc::new(in_groups(chunks)),
            len,
        }
    }
}

impl<K, V> Clone for SharedMap<K, V> {
    fn clone(&self) -> Self {
        SharedMap {
            segments: self.segments.clone(),
            len: self.len,
        }
    }
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        SharedMap::new()
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq for SharedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<K: Eq, V: Eq> Eq for SharedMap<K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SharedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Keys from a small range so that inserts replace and removes hit; enough operations to
        // split, join and empty chunks many times.
        let op = prop_oneof![
            (0u16..600, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u16..600).prop_map(Op::Remove),
        ];
        prop::collection::vec(op, 0..2_000)
    }

    fn apply(map: &mut SharedMap<u16, u32>, model: &mut BTreeMap<u16, u32>, op: &Op) {
        match *op {
            Op::Insert(k, v) => {
                assert_eq!(map.insert(k, v).map(|v| *v), model.insert(k, v));
            }
            Op::Remove(k) => {
                assert_eq!(map.remove(&k).map(|v| *v), model.remove(&k));
            }
        }
    }

    fn chunks<K, V>(map: &SharedMap<K, V>) -> impl Iterator<Item = &Arc<Chunk<K, V>>> {
        map.segments.iter().flat_map(|s| s.iter())
    }

    fn check_shape(map: &SharedMap<u16, u32>) {
        let within = |len: usize| (1..=MAX_GROUP).contains(&len);
        assert!(map.segments.iter().all(|s| within(s.len())));
        assert!(chunks(map).all(|c| within(c.len())));
        let keys: Vec<u16> = map.keys().copied().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys out of order");
        assert_eq!(keys.len(), map.len());
    }

    proptest! {
        #[test]
        fn it_behaves_like_a_btree_map(ops in ops(), probe in 0u16..600) {
            let (mut map, mut model) = (SharedMap::new(), BTreeMap::new());
            for op in &ops {
                apply(&mut map, &mut model, op);
            }
            check_shape(&map);
            prop_assert!(map.iter().map(|(k, v)| (*k, *v)).eq(model.clone()));
            prop_assert_eq!(map.get(&probe), model.get(&probe));
            prop_assert!(map
                .range_from(&probe)
                .map(|(k, v)| (*k, *v))
                .eq(model.range(probe..).map(|(k, v)| (*k, *v))));
            let rebuilt: SharedMap<u16, u32> = model.clone().into_iter().collect();
            prop_assert_eq!(&rebuilt, &map);
        }

        /// A version written after a clone leaves the clone as it was, and the differences
        /// between them are exactly what a naive comparison of the two finds.
        #[test]
        fn versions_stay_apart_and_their_differences_are_exact(
            before in ops(),
            after in prop::collection::vec(ops(), 1..3),
        ) {
            let (mut map, mut model) = (SharedMap::new(), BTreeMap::new());
            for op in &before {
                apply(&mut map, &mut model, op);
            }
            let (old, old_model) = (map.clone(), model.clone());
            for op in after.iter().flatten() {
                apply(&mut map, &mut model, op);
            }
            check_shape(&map);
            check_shape(&old);
            prop_assert!(old.iter().map(|(k, v)| (*k, *v)).eq(old_model.clone()));
            let found: BTreeMap<u16, (Option<u32>, Option<u32>)> = old
                .differences(&map)
                .into_iter()
                .map(|d| (*d.key, (d.old.copied(), d.new.copied())))
                .collect();
            // A key replaced by the same value may show up; any other listed key must differ,
            // and every key that differs must be listed.
            for (k, (was, now)) in &found {
                prop_assert_eq!(*was, old_model.get(k).copied());
                prop_assert_eq!(*now, model.get(k).copied());
            }
            for k in old_model.keys().chain(model.keys()) {
                if old_model.get(k) != model.get(k) {
                    prop_assert!(found.contains_key(k), "key {} differs but is not listed", k);
                }
            }
        }
    }

    #[test]
    fn a_write_under_a_reader_copies_one_chunk_and_the_comparison_skips_the_rest() {
        let map: SharedMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let mut next = map.clone();
        next.insert(5_000, 7);
        next.remove(&10);
        next.insert(20_000, 1);
        let kept: std::collections::HashSet<*const Chunk<u32, u32>> =
            chunks(&next).map(Arc::as_ptr).collect();
        let shared = chunks(&map)
            .filter(|c| kept.contains(&Arc::as_ptr(c)))
            .count();
        assert_eq!(
            shared,
            chunks(&map).count() - 3,
            "all but the three written chunks"
        );
        let differences = map.differences(&next);
        assert_eq!(
            differences,
            vec![
                Difference {
                    key: &10,
                    old: Some(&10),
                    new: None
                },
                Difference {
                    key: &5_000,
                    old: Some(&5_000),
                    new: Some(&7)
                },
                Difference {
                    key: &20_000,
                    old: None,
                    new: Some(&1)
                },
            ]
        );
        assert_eq!(
            map.get(&5_000),
            Some(&5_000),
            "the reader's version is unchanged"
        );
        assert_eq!((map.len(), next.len()), (10_000, 10_000));
    }

    #[test]
    fn lookups_take_a_borrowed_key() {
        let map: SharedMap<String, u8> = [("a".to_string(), 1), ("b".to_string(), 2)]
            .into_iter()
            .collect();
        assert_eq!(map.get("b"), Some(&2));
        assert!(!map.contains_key("c"));
        assert_eq!(map.range_from("aa").count(), 1);
        assert_eq!(format!("{map:?}"), r#"{"a": 1, "b": 2}"#);
    }
}
