//! Helpers more than one integration-test crate uses (each crate compiles this module on its
//! own and uses part of it, hence the dead_code allowance).
#![allow(dead_code)]

/// A seeded xorshift generator: the same seed gives the same cases on every machine, so a
/// failure found by a generated test is reproduced by running it again.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}
