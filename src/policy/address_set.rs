//! The distinct visible addresses of one message, in first-seen order, kept compactly: every
//! address in one text buffer with an end offset each, de-duplicated through a table of indices
//! into that buffer (never a second copy of the text). A header can show millions of addresses;
//! one `String` per address plus a `HashSet<String>` of clones costs ten times the header's
//! size, this about twice its address text (issue 11: memory per message in flight).

use std::fmt;
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

/// Distinct addresses, first-seen order. Equality is the list's (order included).
#[derive(Clone, Default)]
pub struct AddressSet {
    text: String,
    /// End offset in `text` of each address (its start is the previous end).
    ends: Vec<u32>,
    /// Indices into `ends`, hashed by the address text; dropped by [`AddressSet::freeze`].
    index: Option<Index>,
    /// Addresses counted but not stored because `text` would pass 4 GiB (unreachable while
    /// messages are capped at 256 MiB; counted, so the count never falls short).
    unstored: usize,
}

#[derive(Clone)]
struct Index {
    table: HashTable<u32>,
    hasher: RandomState,
}

impl AddressSet {
    pub fn new() -> AddressSet {
        AddressSet::default()
    }

    /// Room for about `addresses` entries of `text_bytes` in all (a hint: avoids the copies and
    /// the slack of growing by doubling when the caller can estimate).
    pub fn reserve(&mut self, addresses: usize, text_bytes: usize) {
        self.text.reserve(text_bytes);
        self.ends.reserve(addresses);
        // A frozen set gets its table back first, with what it already holds.
        if self.index.is_none() {
            self.rebuild_index();
        }
        if let Some(index) = self.index.as_mut() {
            index.table.reserve(addresses, |&i| {
                index.hasher.hash_one(entry(&self.text, &self.ends, i))
            });
        }
    }

    /// Adds `address` unless it is already in; true when it was new.
    pub fn insert(&mut self, address: &str) -> bool {
        if self.index.is_none() {
            self.rebuild_index();
        }
        let Some(index) = self.index.as_mut() else {
            return false;
        };
        let hash = index.hasher.hash_one(address);
        let (text, ends) = (&self.text, &self.ends);
        if index
            .table
            .find(hash, |&i| entry(text, ends, i) == address)
            .is_some()
        {
            return false;
        }
        let Ok(end) = u32::try_from(self.text.len() + address.len()) else {
            self.unstored += 1;
            return true;
        };
        let Ok(slot) = u32::try_from(self.ends.len()) else {
            self.unstored += 1;
            return true;
        };
        self.text.push_str(address);
        self.ends.push(end);
        let hasher = &index.hasher;
        index.table.insert_unique(hash, slot, |&i| {
            hasher.hash_one(entry(&self.text, &self.ends, i))
        });
        true
    }

    pub fn contains(&self, address: &str) -> bool {
        match &self.index {
            Some(index) => index
                .table
                .find(index.hasher.hash_one(address), |&i| {
                    entry(&self.text, &self.ends, i) == address
                })
                .is_some(),
            None => self.iter().any(|a| a == address),
        }
    }

    /// Drops the de-duplication table and spare capacity once the list is complete.
    pub fn freeze(&mut self) {
        self.index = None;
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    /// How many distinct addresses (stored or not).
    pub fn len(&self) -> usize {
        self.ends.len() + self.unstored
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        (i < self.ends.len()).then(|| entry(&self.text, &self.ends, i as u32))
    }

    pub fn first(&self) -> Option<&str> {
        self.get(0)
    }

    /// The stored addresses in first-seen order.
    pub fn iter(&self) -> Iter<'_> {
        Iter { set: self, next: 0 }
    }

    /// Keeps the first `n` addresses (the count of the rest is gone too).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len() {
            return;
        }
        self.unstored = 0;
        // Only the cut entries leave the table: a reading taken back after a long list of
        // earlier fields costs what it added, not the whole list again.
        if let Some(index) = self.index.as_mut() {
            for i in n as u32..self.ends.len() as u32 {
                let hash = index.hasher.hash_one(entry(&self.text, &self.ends, i));
                if let Ok(found) = index.table.find_entry(hash, |&j| j == i) {
                    found.remove();
                }
            }
        }
        self.ends.truncate(n);
        self.text
            .truncate(self.ends.last().map_or(0, |&e| e as usize));
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }

    fn rebuild_index(&mut self) {
        let mut index = Index::new();
        for i in 0..self.ends.len() as u32 {
            let hash = index.hasher.hash_one(entry(&self.text, &self.ends, i));
            let hasher = &index.hasher;
            index.table.insert_unique(hash, i, |&j| {
                hasher.hash_one(entry(&self.text, &self.ends, j))
            });
        }
        self.index = Some(index);
    }
}

impl Index {
    fn new() -> Index {
        Index {
            table: HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

fn entry<'a>(text: &'a str, ends: &[u32], i: u32) -> &'a str {
    let i = i as usize;
    let start = i.checked_sub(1).map_or(0, |p| ends[p] as usize);
    &text[start..ends[i] as usize]
}

#[derive(Clone)]
pub struct Iter<'a> {
    set: &'a AddressSet,
    next: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let a = self.set.get(self.next)?;
        self.next += 1;
        Some(a)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.set.ends.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a AddressSet {
    type Item = &'a str;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<S: AsRef<str>> FromIterator<S> for AddressSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> AddressSet {
        let mut set = AddressSet::new();
        for a in iter {
            set.insert(a.as_ref());
        }
        set
    }
}

impl<S: AsRef<str>> Extend<S> for AddressSet {
    fn extend<I: IntoIterator<Item = S>>(&mut self, iter: I) {
        for a in iter {
            self.insert(a.as_ref());
        }
    }
}

impl PartialEq for AddressSet {
    fn eq(&self, other: &AddressSet) -> bool {
        self.text == other.text && self.ends == other.ends && self.unstored == other.unstored
    }
}

impl Eq for AddressSet {}

impl<S: AsRef<str>> PartialEq<[S]> for AddressSet {
    fn eq(&self, other: &[S]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for AddressSet {
    fn eq(&self, other: &[S; N]) -> bool {
        *self == other[..]
    }
}

impl<S: AsRef<str>> PartialEq<Vec<S>> for AddressSet {
    fn eq(&self, other: &Vec<S>) -> bool {
        *self == other[..]
    }
}

impl std::ops::Index<usize> for AddressSet {
    type Output = str;
    fn index(&self, i: usize) -> &str {
        match self.get(i) {
            Some(a) => a,
            None => panic!("address {i} of {}", self.ends.len()),
        }
    }
}

impl fmt::Debug for AddressSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl serde::Serialize for AddressSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_first_seen_order_without_duplicates() {
        let mut s = AddressSet::new();
        assert!(s.insert("b@x"));
        assert!(s.insert("a@x"));
        assert!(!s.insert("b@x"));
        assert!(s.insert("B@x"));
        assert_eq!(s, ["b@x", "a@x", "B@x"]);
        assert!(s.contains("a@x") && !s.contains("c@x"));
        assert_eq!(s.len(), 3);
        assert_eq!(s.get(2), Some("B@x"));
        assert_eq!(s.get(3), None);
    }

    #[test]
    fn frozen_set_still_answers_and_can_grow() {
        let mut s: AddressSet = ["a@x", "b@x", "a@x"].into_iter().collect();
        s.freeze();
        assert!(s.contains("b@x"));
        assert!(!s.insert("a@x"));
        assert!(s.insert("c@x"));
        assert_eq!(s, ["a@x", "b@x", "c@x"]);
    }

    #[test]
    fn reserving_on_a_frozen_set_keeps_it_distinct() {
        let mut s: AddressSet = ["a@x", "b@x"].into_iter().collect();
        s.freeze();
        s.reserve(100, 1000);
        assert!(!s.insert("a@x"));
        assert!(s.insert("c@x"));
        assert_eq!(s, ["a@x", "b@x", "c@x"]);
    }

    #[test]
    fn truncate_forgets_the_rest() {
        let mut s: AddressSet = (0..1000).map(|i| format!("u{i}@x")).collect();
        s.truncate(10);
        assert_eq!(s.len(), 10);
        assert_eq!(s.iter().last(), Some("u9@x"));
        assert!(s.insert("u500@x"), "a cut address is new again");
        assert!(!s.insert("u3@x"));
    }

    #[test]
    fn empty_strings_and_utf8_round_trip() {
        let s: AddressSet = ["", "ü@ä.example", ""].into_iter().collect();
        assert_eq!(s, ["", "ü@ä.example"]);
        assert_eq!(
            serde_json::to_string(&s).expect("json"),
            r#"["","ü@ä.example"]"#
        );
    }
}
