//! Summaries of repeated measurements, and how they are written.

use std::time::Duration;

/// The durations of one operation repeated N times.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    samples: Vec<Duration>,
}

impl Timings {
    pub fn push(&mut self, d: Duration) {
        self.samples.push(d);
    }

    /// The last measurement.
    pub fn latest(&self) -> Duration {
        self.samples.last().copied().unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut s = self.samples.clone();
        s.sort();
        s
    }

    /// The median (the mean of the two middle values for an even count).
    pub fn median(&self) -> Duration {
        let s = self.sorted();
        match s.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2,
        }
    }

    pub fn min(&self) -> Duration {
        self.samples.iter().min().copied().unwrap_or_default()
    }

    pub fn max(&self) -> Duration {
        self.samples.iter().max().copied().unwrap_or_default()
    }

    /// `median (min–max)` in seconds, e.g. `1.23 s (1.10–1.40)`.
    pub fn summary_secs(&self) -> String {
        format!(
            "{:.2} s ({:.2}–{:.2})",
            self.median().as_secs_f64(),
            self.min().as_secs_f64(),
            self.max().as_secs_f64()
        )
    }

    /// `median (min–max)` in milliseconds.
    pub fn summary_ms(&self) -> String {
        format!(
            "{:.1} ms ({:.1}–{:.1})",
            ms(self.median()),
            ms(self.min()),
            ms(self.max())
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A count with thousands separated by commas: `136,947`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The `p`-th percentile (0–100) of sorted values, nearest rank.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of plain numbers.
pub fn median_f64(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A ratio written as `1.07x`.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        return f64::INFINITY;
    }
    a.as_secs_f64() / b.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(ms: &[u64]) -> Timings {
        let mut t = Timings::default();
        for m in ms {
            t.push(Duration::from_millis(*m));
        }
        t
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(timings(&[3, 1, 2]).median(), Duration::from_millis(2));
        assert_eq!(timings(&[4, 1, 2, 3]).median(), Duration::from_micros(2500));
        assert_eq!(timings(&[]).median(), Duration::ZERO);
    }

    #[test]
    fn min_max_and_summary() {
        let t = timings(&[1500, 1000, 2000]);
        assert_eq!(t.min(), Duration::from_millis(1000));
        assert_eq!(t.max(), Duration::from_millis(2000));
        assert_eq!(t.summary_secs(), "1.50 s (1.00–2.00)");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile::<u32>(&[], 50.0), 0);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(5_000_000), "5,000,000");
    }

    #[test]
    fn median_of_numbers() {
        assert_eq!(median_f64(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_f64(&[1.0, 2.0]), 1.5);
    }
}
