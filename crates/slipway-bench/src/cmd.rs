//! Running other programs (the docker and git CLIs, bash, nginx, apt-get), each bounded in
//! time: a command still running at its deadline is killed.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

/// What a finished command printed, and how long it took.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub elapsed: Duration,
}

/// A command to run: the program, its arguments, its environment and its directory.
#[derive(Debug)]
pub struct Cmd {
    command: Command,
    line: String,
    timeout: Duration,
}

impl Cmd {
    pub fn new(program: &str) -> Cmd {
        let mut command = Command::new(program);
        command
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        Cmd {
            command,
            line: program.to_string(),
            timeout: Duration::from_secs(120),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self.line.push(' ');
            self.line.push_str(&a.as_ref().to_string_lossy());
            self.command.arg(a);
        }
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Cmd {
        self.command.env(key, value);
        self
    }

    pub fn dir(mut self, dir: &Path) -> Cmd {
        self.command.current_dir(dir);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = timeout;
        self
    }

    /// Runs it to the end; fails when it exits non-zero or passes its deadline.
    pub async fn run(mut self) -> anyhow::Result<Output> {
        let started = Instant::now();
        let output = tokio::time::timeout(self.timeout, self.command.output())
            .await
            .with_context(|| {
                format!(
                    "`{}` did not finish within {} s",
                    self.line,
                    self.timeout.as_secs()
                )
            })?
            .with_context(|| format!("cannot run `{}`", self.line))?;
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!(
                "`{}` failed ({}): {}",
                self.line,
                output.status,
                last_lines(&format!("{stdout}{stderr}"), 5)
            );
        }
        Ok(Output { stdout, elapsed })
    }
}

/// The last `n` non-empty lines of `text`, joined with " | ".
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Whether a program is on the PATH.
pub async fn exists(program: &str) -> bool {
    Cmd::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .timeout(Duration::from_secs(10))
        .run()
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_skips_empty_ones() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(last_lines("a", 5), "a");
    }
}
