//! The last bytes of a program's output, kept whole line by line.

use std::collections::VecDeque;

/// Keeps the last chunks of an output whose total stays within a limit (the newest chunk is
/// always kept), and counts what was left out.
#[derive(Debug)]
pub struct OutputTail {
    max_bytes: usize,
    kept: VecDeque<String>,
    bytes: usize,
    left_out: u64,
}

impl OutputTail {
    pub fn new(max_bytes: usize) -> Self {
        OutputTail {
            max_bytes,
            kept: VecDeque::new(),
            bytes: 0,
            left_out: 0,
        }
    }

    pub fn push(&mut self, chunk: String) {
        self.bytes += chunk.len();
        self.kept.push_back(chunk);
        while self.bytes > self.max_bytes && self.kept.len() > 1 {
            if let Some(old) = self.kept.pop_front() {
                self.bytes -= old.len();
                self.left_out += 1;
            }
        }
    }

    /// What was kept, after a line saying how much was not when something was left out.
    pub fn finish(self) -> String {
        let mut out = String::with_capacity(self.bytes + 100);
        if self.left_out > 0 {
            out.push_str(&format!(
                "... {} earlier lines not kept: only the last {} KiB of the output are ...\n",
                self.left_out,
                self.max_bytes >> 10
            ));
        }
        out.extend(self.kept);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::OutputTail;

    #[test]
    fn only_the_last_bytes_are_kept_and_what_was_left_out_is_said() {
        let mut tail = OutputTail::new(2048);
        for i in 0..10_000 {
            tail.push(format!("line {i:05} {}\n", "x".repeat(40)));
        }
        let out = tail.finish();
        assert!(out.len() < 2048 + 200, "{}", out.len());
        assert!(out.starts_with("... 9"), "{}", &out[..80]);
        assert!(out.ends_with(&format!("line 09999 {}\n", "x".repeat(40))));

        let mut small = OutputTail::new(2048);
        small.push("done\n".into());
        assert_eq!(small.finish(), "done\n");
    }
}
