//! The markdown document the benchmarks write: the machine, the targets, and one section per
//! benchmark with its tables and what they mean.

use std::fmt::Write as _;

/// A markdown table.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        out.push_str(&line(&self.header));
        let rule: Vec<String> = self.header.iter().map(|_| "---".to_string()).collect();
        out.push_str(&line(&rule));
        for r in &self.rows {
            out.push_str(&line(r));
        }
    }
}

#[derive(Debug, Clone)]
enum Block {
    Text(String),
    Table(Table),
}

/// One benchmark's part of the document.
#[derive(Debug, Clone)]
pub struct Section {
    title: String,
    blocks: Vec<Block>,
}

impl Section {
    pub fn new(title: &str) -> Section {
        Section {
            title: title.to_string(),
            blocks: Vec::new(),
        }
    }

    pub fn text(&mut self, text: impl Into<String>) {
        self.blocks.push(Block::Text(text.into()));
    }

    pub fn table(&mut self, table: Table) {
        self.blocks.push(Block::Table(table));
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "## {}\n", self.title);
        for b in &self.blocks {
            match b {
                Block::Text(t) => {
                    let _ = writeln!(out, "{}\n", t.trim());
                }
                Block::Table(t) => {
                    t.render(out);
                    out.push('\n');
                }
            }
        }
    }
}

/// Whether a target was met: `None` when it could not be measured.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub benchmark: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

impl Verdict {
    pub fn new(benchmark: &str, target: &str, measured: String, met: Option<bool>) -> Verdict {
        Verdict {
            benchmark: benchmark.into(),
            target: target.into(),
            measured,
            met,
        }
    }
}

/// `met`, `missed` or `not measured`.
pub fn met_word(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    }
}

/// The whole document.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub facts: Vec<(String, String)>,
    pub verdicts: Vec<Verdict>,
    pub sections: Vec<Section>,
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# Benchmarks\n\n");
        out.push_str(
            "Every figure below was measured by `slipway-bench` in one run on the machine \
             described here, each beside its baseline in the same run (the two alternate, \
             repetition by repetition). Reproduce with `just bench`, or \
             `cargo build --release -p slipway` (2c runs that binary) then \
             `cargo run --release -p slipway-bench -- --write docs/benchmarks.md` \
             (`--quick` for a short run with fewer repetitions). The run needs a local Docker \
             engine and no image registry: the example app is a static binary in a \
             `FROM scratch` image. It sends traffic only to addresses of this machine \
             (127.0.0.1 and the gateways of the networks Docker made on it), bounds every load \
             in time and in count, and removes every Docker object it created (they all carry \
             `slipway.daemon=<its run ID>`, or `<its run ID>-…` for the daemons it runs as \
             processes) and stops every process it started.\n\n",
        );
        out.push_str("## The machine\n\n");
        let mut facts = Table::new(&["", ""]);
        for (k, v) in &self.facts {
            facts.row(vec![k.clone(), v.clone()]);
        }
        facts.render(&mut out);
        out.push_str("\n## Targets\n\n");
        let mut targets = Table::new(&["benchmark", "target", "measured", ""]);
        for v in &self.verdicts {
            targets.row(vec![
                v.benchmark.clone(),
                v.target.clone(),
                v.measured.clone(),
                met_word(v.met).to_string(),
            ]);
        }
        targets.render(&mut out);
        out.push('\n');
        for s in &self.sections {
            s.render(&mut out);
        }
        format!("{}\n", out.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_tables_and_verdicts() {
        let mut s = Section::new("Restart");
        s.text("What was measured.");
        let mut t = Table::new(&["what", "time"]);
        t.row(vec!["slipway".into(), "1.0 s".into()]);
        s.table(t);
        let report = Report {
            facts: vec![("CPUs".into(), "2".into())],
            verdicts: vec![Verdict::new(
                "restart",
                "≤ 1.15x",
                "1.02x".into(),
                Some(true),
            )],
            sections: vec![s],
        };
        let md = report.render();
        assert!(md.contains("| CPUs | 2 |"), "{md}");
        assert!(md.contains("| restart | ≤ 1.15x | 1.02x | met |"), "{md}");
        let section = "## Restart\n\nWhat was measured.\n\n\
                       | what | time |\n| --- | --- |\n| slipway | 1.0 s |\n";
        assert!(md.contains(section), "{md}");
        assert!(md.ends_with("|\n"));
    }
}
