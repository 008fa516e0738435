//! Text and JSON output, with doctl's `--format`, `--no-header` and `-o json`.

use anyhow::bail;
use clap::{Args, ValueEnum};
use serde_json::Value;
use slipway_spec::{App, Deployment};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct OutputArgs {
    /// Output format: `text` (a table) or `json` (the API's JSON).
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub output: Format,
    /// Columns to print, comma-separated (e.g. `ID,Cause,Progress,Phase,Created,Updated`).
    #[arg(long, global = true, value_delimiter = ',')]
    pub format: Vec<String>,
    /// Leave out the header row.
    #[arg(long, global = true)]
    pub no_header: bool,
}

type Column<T> = (&'static str, fn(&T) -> String);

fn time(t: &jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub(crate) fn duration(d: &Deployment) -> String {
    match d.duration() {
        Some(s) => format!("{:.1}s", s.as_secs_f64()),
        None => "-".into(),
    }
}

pub(crate) const DEPLOYMENT_COLUMNS: &[Column<Deployment>] = &[
    ("ID", |d| d.id.clone()),
    ("Cause", |d| d.cause.clone()),
    ("Progress", |d| {
        format!("{}/{}", d.progress.success_steps, d.progress.total_steps)
    }),
    ("Phase", |d| d.phase.to_string()),
    ("Created", |d| time(&d.created_at)),
    ("Updated", |d| time(&d.updated_at)),
    ("Duration", duration),
    ("Error", |d| {
        crate::wait::failure(d)
            .map(|e| e.code.to_string())
            .unwrap_or_default()
    }),
];
const DEPLOYMENT_DEFAULT: &[&str] = &["ID", "Cause", "Progress", "Phase", "Created", "Updated"];

pub(crate) const APP_COLUMNS: &[Column<App>] = &[
    ("ID", |a| a.id.clone()),
    ("Spec Name", |a| a.spec.name.clone()),
    ("Default Ingress", |a| {
        a.default_ingress.clone().unwrap_or_default()
    }),
    ("Active Deployment ID", |a| {
        a.active_deployment
            .as_ref()
            .map(|d| d.id.clone())
            .unwrap_or_default()
    }),
    ("Active Phase", |a| {
        a.active_deployment
            .as_ref()
            .map(|d| d.phase.to_string())
            .unwrap_or_default()
    }),
    ("In Progress Deployment ID", |a| {
        a.in_progress_deployment
            .as_ref()
            .map(|d| d.id.clone())
            .unwrap_or_default()
    }),
    ("Created", |a| time(&a.created_at)),
    ("Updated", |a| time(&a.updated_at)),
];
const APP_DEFAULT: &[&str] = &[
    "ID",
    "Spec Name",
    "Default Ingress",
    "Active Deployment ID",
    "In Progress Deployment ID",
    "Created",
    "Updated",
];

/// Prints rows as an aligned table, or the raw JSON.
pub(crate) fn print<T>(
    out: &OutputArgs,
    json: &Value,
    rows: &[T],
    columns: &[Column<T>],
    defaults: &[&str],
) -> anyhow::Result<()> {
    if out.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(json)?);
        return Ok(());
    }
    let wanted: Vec<String> = if out.format.is_empty() {
        defaults.iter().map(|s| s.to_string()).collect()
    } else {
        out.format.iter().map(|s| s.trim().to_string()).collect()
    };
    let mut chosen = Vec::new();
    for w in &wanted {
        let norm = |s: &str| s.to_ascii_lowercase().replace([' ', '_'], "");
        match columns.iter().find(|(name, _)| norm(name) == norm(w)) {
            Some(c) => chosen.push(*c),
            None => bail!(
                "--format: no column \"{w}\"; the columns are {}",
                columns
                    .iter()
                    .map(|(n, _)| n.replace(' ', ""))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
    let mut table: Vec<Vec<String>> = Vec::new();
    if !out.no_header {
        table.push(chosen.iter().map(|(n, _)| n.to_string()).collect());
    }
    for r in rows {
        table.push(chosen.iter().map(|(_, f)| f(r)).collect());
    }
    let widths: Vec<usize> = (0..chosen.len())
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", line.join("    ").trim_end());
    }
    Ok(())
}

pub(crate) fn deployments(
    out: &OutputArgs,
    json: &Value,
    rows: &[Deployment],
) -> anyhow::Result<()> {
    print(out, json, rows, DEPLOYMENT_COLUMNS, DEPLOYMENT_DEFAULT)
}

pub(crate) fn apps(out: &OutputArgs, json: &Value, rows: &[App]) -> anyhow::Result<()> {
    print(out, json, rows, APP_COLUMNS, APP_DEFAULT)
}
