//! [`Source`]: a reader that turns arbitrary fuzzer bytes into choices.
//!
//! Every read succeeds: past the end of the input it yields zeros, so any byte string is a
//! valid program for the generators and nothing is ever rejected. Choices are taken modulo the
//! number of options (`%`), which is what keeps most inputs meaningful: an index is picked
//! among the list's real positions, an id among the ids that exist.

/// Arbitrary bytes read as a stream of choices; zeros once exhausted.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Source<'a> {
    /// Reads choices from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Source { data, pos: 0 }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next byte, or 0 past the end.
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    /// A number in `0..n` (0 when `n` is 0). Takes two bytes when `n` exceeds 256.
    pub fn below(&mut self, n: usize) -> usize {
        match n {
            0 | 1 => {
                // Still consume a byte so the shape of the input stays stable.
                self.byte();
                0
            }
            2..=256 => usize::from(self.byte()) % n,
            _ => (usize::from(self.byte()) << 8 | usize::from(self.byte())) % n,
        }
    }

    /// True for roughly one byte value in `one_in`, and never on zeros: exhausted input takes
    /// the common path.
    pub fn rare(&mut self, one_in: u8) -> bool {
        let b = self.byte();
        b != 0 && b % one_in.max(1) == 0
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// One element of a non-empty slice.
    pub fn pick<'s, T>(&mut self, items: &'s [T]) -> &'s T {
        &items[self.below(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_reads_are_zero_and_common() {
        let mut s = Source::new(&[7]);
        assert_eq!(s.byte(), 7);
        assert!(s.is_empty());
        assert_eq!(s.byte(), 0);
        assert_eq!(s.below(10), 0);
        assert!(!s.rare(2));
    }

    #[test]
    fn below_stays_in_range() {
        let data: Vec<u8> = (0..=255).collect();
        let mut s = Source::new(&data);
        for n in [1, 2, 3, 255, 256, 257, 1000] {
            assert!(s.below(n) < n.max(1));
        }
    }
}
