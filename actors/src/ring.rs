//! [`Ring`]: a bounded list that keeps the newest items. A push into a full ring drops the
//! oldest item and counts it, so the recent history an actor keeps for its snapshot (and a
//! queue that must not grow) stays bounded without each actor writing the same four lines.
//! Its storage is allocated once, up front: pushing never allocates.

use std::collections::VecDeque;

use serde::{Serialize, Serializer};

/// The newest `capacity` items, oldest first.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
    /// Items pushed out by newer ones.
    dropped: u64,
}

impl<T> Ring<T> {
    /// An empty ring of `capacity` items (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Ring {
            items: VecDeque::with_capacity(capacity),
            capacity,
            dropped: 0,
        }
    }

    /// Add `item` as the newest; when full, the oldest goes (returned, and counted).
    pub fn push(&mut self, item: T) -> Option<T> {
        let out = if self.items.len() == self.capacity {
            self.dropped += 1;
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back(item);
        out
    }

    /// Take the oldest item out (a queue's next one). Not counted as dropped.
    pub fn pop_oldest(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// Take every item out, oldest first. Not counted as dropped.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.items.drain(..)
    }

    /// Forget every item (the drop count stays).
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Keep only the items `keep` says yes to.
    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.items.retain(keep);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.items.len() == self.capacity
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many items newer ones pushed out, ever.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The items, oldest first (`.rev()` for newest first).
    pub fn iter(&self) -> std::collections::vec_deque::Iter<'_, T> {
        self.items.iter()
    }

    /// The items, newest first.
    /// Every item, oldest first, to change in place.
    pub fn iter_mut(&mut self) -> std::collections::vec_deque::IterMut<'_, T> {
        self.items.iter_mut()
    }

    pub fn newest_first(&self) -> std::iter::Rev<std::collections::vec_deque::Iter<'_, T>> {
        self.items.iter().rev()
    }

    pub fn newest(&self) -> Option<&T> {
        self.items.back()
    }

    pub fn oldest(&self) -> Option<&T> {
        self.items.front()
    }
}

impl<'a, T> IntoIterator for &'a Ring<T> {
    type Item = &'a T;
    type IntoIter = std::collections::vec_deque::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// A list, oldest first (what the snapshots show).
impl<T: Serialize> Serialize for Ring<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.items.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_drops_the_oldest_and_counts_it() {
        let mut ring = Ring::new(3);
        assert!(ring.is_empty());
        for i in 1..=3 {
            assert_eq!(ring.push(i), None);
        }
        assert!(ring.is_full());
        assert_eq!(ring.push(4), Some(1));
        assert_eq!(ring.push(5), Some(2));
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(ring.newest_first().copied().collect::<Vec<_>>(), [5, 4, 3]);
        assert_eq!((ring.oldest(), ring.newest()), (Some(&3), Some(&5)));
        assert_eq!(ring.dropped(), 2);
        assert_eq!(ring.len(), 3);
    }

    #[test]
    fn taking_items_out_is_not_dropping_them() {
        let mut ring = Ring::new(2);
        ring.push("a");
        ring.push("b");
        assert_eq!(ring.pop_oldest(), Some("a"));
        ring.push("c");
        assert_eq!(ring.drain().collect::<Vec<_>>(), ["b", "c"]);
        assert!(ring.is_empty());
        assert_eq!(ring.dropped(), 0);
    }

    #[test]
    fn capacity_is_at_least_one_and_storage_is_allocated_once() {
        let mut ring = Ring::new(0);
        assert_eq!(ring.capacity(), 1);
        ring.push(1);
        assert_eq!(ring.push(2), Some(1));
        let mut big = Ring::new(100);
        let before = big.items.capacity();
        for i in 0..1_000 {
            big.push(i);
        }
        assert_eq!(
            big.items.capacity(),
            before,
            "pushing never grows the storage"
        );
    }

    #[test]
    fn it_serializes_as_a_list_oldest_first() {
        let mut ring = Ring::new(2);
        for i in 0..3 {
            ring.push(i);
        }
        assert_eq!(
            serde_json::to_value(&ring).unwrap(),
            serde_json::json!([1, 2])
        );
    }
}
