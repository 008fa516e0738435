//! CPU time spent by a proxy, read from `/proc`: the bench's own threads (where the ingress
//! runs; the load generator's threads have a name of their own) or an nginx master and its
//! workers.

use std::time::Duration;

/// The name of the bench's runtime threads (the ingress and the engine run on them).
pub const BENCH_THREADS: &str = "slipway-bench";
/// The name the ingress gives its own threads (one per CPU).
pub const INGRESS_THREADS: &str = "slipway-ingress";
/// The name of the load generator's threads, whose time is not counted.
pub const LOAD_THREADS: &str = "slipway-load";

/// Linux reports CPU time in clock ticks of 1/100 s.
const TICK: Duration = Duration::from_millis(10);

/// `(name, ppid, user + system ticks)` from the text of a `/proc/.../stat` file.
fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state, ppid, ... utime is the 14th field of the line, stime the 15th.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, ppid, utime + stime))
}

fn read_stat(path: &str) -> Option<(String, u32, u64)> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// The CPU time of this process's threads named [`BENCH_THREADS`] and [`INGRESS_THREADS`].
pub fn bench_threads() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let ticks: u64 = tasks
        .flatten()
        .filter_map(|t| read_stat(&format!("{}/stat", t.path().display())))
        .filter(|(name, _, _)| name.starts_with(BENCH_THREADS) || name.starts_with(INGRESS_THREADS))
        .map(|(_, _, ticks)| ticks)
        .sum();
    TICK * ticks as u32
}

/// The CPU time of a process and of its children (an nginx master and its workers).
pub fn process_tree(pid: u32) -> Duration {
    let own = read_stat(&format!("/proc/{pid}/stat")).map_or(0, |(_, _, t)| t);
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return TICK * own as u32;
    };
    let children: u64 = procs
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|p| read_stat(&format!("{}/stat", p.path().display())))
        .filter(|(_, ppid, _)| *ppid == pid)
        .map(|(_, _, t)| t)
        .sum();
    TICK * (own + children) as u32
}

/// How many CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_the_name() {
        let line = "1234 (tokio rt) S 99 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(parse_stat(line), Some(("tokio rt".into(), 99, 300)));
    }

    #[test]
    fn reads_this_process() {
        let (_, ppid, _) = read_stat("/proc/self/stat").expect("a stat file");
        assert!(ppid > 0);
    }
}
