//! Counting what one connection received, and comparing it with what the policy says it must
//! receive: lost (expected, never received), unexpected (received, not expected: a policy or
//! isolation leak), duplicates and out-of-order deliveries.

/// A set of event sequence numbers, one bit each, grown on demand.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
}

impl PartialEq for SeqSet {
    /// Same members, whatever the capacity.
    fn eq(&self, other: &Self) -> bool {
        let longest = self.words.len().max(other.words.len());
        (0..longest).all(|i| self.words.get(i).unwrap_or(&0) == other.words.get(i).unwrap_or(&0))
    }
}

impl Eq for SeqSet {}

impl SeqSet {
    /// Adds `seq`; false when it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        fresh
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|word| word & (1u64 << (seq % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.words.iter().map(|word| word.count_ones() as u64).sum()
    }

    /// Members of both sets.
    pub fn intersection(&self, other: &SeqSet) -> SeqSet {
        SeqSet {
            words: self.words.iter().zip(&other.words).map(|(a, b)| a & b).collect(),
        }
    }

    /// How many members of `self` are not in `other`.
    pub fn count_missing_from(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, word)| (word & !other.words.get(i).copied().unwrap_or(0)).count_ones() as u64)
            .sum()
    }
}

impl FromIterator<u64> for SeqSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut set = SeqSet::default();
        for seq in iter {
            set.insert(seq);
        }
        set
    }
}

/// What one connection received.
#[derive(Debug, Default, Clone)]
pub struct ConnTally {
    received: SeqSet,
    /// Bench events delivered, duplicates included.
    pub deliveries: u64,
    pub duplicates: u64,
    /// Deliveries older than an earlier delivery of the same org (the contract orders events of
    /// one org; across orgs there is no order to keep).
    pub out_of_order: u64,
    /// Deliveries with a sequence number the run never published.
    pub unknown: u64,
    /// Newest sequence number seen, per org index of the plan.
    newest_by_org: Vec<(u32, u64)>,
}

impl ConnTally {
    /// Records a delivery of `seq`, published to the org with index `org` (None: not a
    /// published sequence number).
    pub fn record(&mut self, seq: u64, org: Option<u32>) {
        self.deliveries += 1;
        let Some(org) = org else {
            self.unknown += 1;
            return;
        };
        if !self.received.insert(seq) {
            self.duplicates += 1;
        }
        match self.newest_by_org.iter_mut().find(|(o, _)| *o == org) {
            Some((_, newest)) if seq < *newest => self.out_of_order += 1,
            Some((_, newest)) => *newest = seq,
            None => self.newest_by_org.push((org, seq)),
        }
    }

    pub fn received(&self) -> &SeqSet {
        &self.received
    }
}

/// The comparison of one connection (or a sum of connections) with its expectation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub expected: u64,
    /// Distinct expected events received.
    pub received: u64,
    pub lost: u64,
    /// Distinct events received that the policy says this connection must not see.
    pub unexpected: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unknown: u64,
}

impl Verdict {
    pub fn of(expected: &SeqSet, tally: &ConnTally) -> Self {
        let lost = expected.count_missing_from(tally.received());
        let unexpected = tally.received().count_missing_from(expected);
        let expected_count = expected.len();
        Self {
            expected: expected_count,
            received: expected_count - lost,
            lost,
            unexpected,
            duplicates: tally.duplicates,
            out_of_order: tally.out_of_order,
            unknown: tally.unknown,
        }
    }

    pub fn add(&mut self, other: &Verdict) {
        self.expected += other.expected;
        self.received += other.received;
        self.lost += other.lost;
        self.unexpected += other.unexpected;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.unknown += other.unknown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_set_counts_members_and_differences() {
        let a: SeqSet = [0, 1, 63, 64, 200].into_iter().collect();
        let b: SeqSet = [1, 64, 999].into_iter().collect();
        assert_eq!(a.len(), 5);
        assert!(a.contains(63) && a.contains(200) && !a.contains(2) && !a.contains(10_000));
        assert_eq!(a.count_missing_from(&b), 3);
        assert_eq!(b.count_missing_from(&a), 1);
        assert_eq!(SeqSet::default().count_missing_from(&a), 0);
        assert_eq!(a.intersection(&b), [1, 64].into_iter().collect());
    }

    #[test]
    fn verdict_counts_lost_unexpected_duplicates_and_disorder() {
        let expected: SeqSet = [0, 2, 4, 6, 8].into_iter().collect();
        let mut tally = ConnTally::default();
        // org 0 gets even numbers, org 1 odd ones; 3 is not expected (a leak), 6 arrives twice,
        // 4 arrives after 6 (out of order within org 0), 1 after 3 in org 1 is out of order.
        for (seq, org) in [(0, 0), (2, 0), (3, 1), (6, 0), (6, 0), (4, 0), (1, 1)] {
            tally.record(seq, Some(org));
        }
        tally.record(77, None);
        let verdict = Verdict::of(&expected, &tally);
        assert_eq!(
            verdict,
            Verdict {
                expected: 5,
                received: 4,
                lost: 1,
                unexpected: 2,
                duplicates: 1,
                out_of_order: 2,
                unknown: 1,
            }
        );
        assert_eq!(tally.deliveries, 8);
        let mut sum = verdict;
        sum.add(&verdict);
        assert_eq!(sum.lost, 2);
        assert_eq!(sum.expected, 10);
    }

    #[test]
    fn an_exact_delivery_is_clean() {
        let expected: SeqSet = (0..1000).collect();
        let mut tally = ConnTally::default();
        for seq in 0..1000 {
            tally.record(seq, Some((seq % 3) as u32));
        }
        let verdict = Verdict::of(&expected, &tally);
        assert_eq!(verdict.received, 1000);
        assert_eq!(
            (
                verdict.lost,
                verdict.unexpected,
                verdict.duplicates,
                verdict.out_of_order
            ),
            (0, 0, 0, 0)
        );
    }
}
