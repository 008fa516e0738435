//! `slipway tokens`: API tokens, kept as digests in the daemon's store.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::json;
use slipway_store::{Store, TokenRecord};

use crate::output::{Format, OutputArgs};
use crate::paths;

#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Create a token; it is printed once and only its digest is kept.
    Create {
        name: String,
        /// The token may read but not change anything.
        #[arg(long)]
        read_only: bool,
        #[arg(long, env = "SLIPWAY_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// List tokens (their names and scopes, never their secrets).
    List {
        #[arg(long, env = "SLIPWAY_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Revoke a token by ID or name; the daemon refuses it from its next request on.
    Revoke {
        token: String,
        #[arg(long, env = "SLIPWAY_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

async fn open(data_dir: Option<PathBuf>) -> anyhow::Result<Store> {
    let dir = data_dir.unwrap_or_else(paths::default_data_dir);
    let file = dir.join("slipway.db");
    if !file.exists() {
        bail!(
            "no Slipway store at {}: start the daemon once with this data directory, or pass --data-dir",
            file.display()
        );
    }
    Store::open(&file)
        .await
        .with_context(|| format!("cannot open the store in {}", dir.display()))
}

fn describe(t: &TokenRecord) -> serde_json::Value {
    json!({
        "id": t.id, "name": t.name,
        "scope": if t.read_only { "read" } else { "read-write" },
        "created_at": t.created_at, "revoked_at": t.revoked_at,
    })
}

pub(crate) async fn run(cmd: TokensCommand) -> anyhow::Result<()> {
    match cmd {
        TokensCommand::Create {
            name,
            read_only,
            data_dir,
            out,
        } => {
            let store = open(data_dir).await?;
            if store
                .tokens()
                .await?
                .iter()
                .any(|t| t.name == name && t.revoked_at.is_none())
            {
                bail!("a token named \"{name}\" exists; revoke it first or choose another name");
            }
            let secret = format!("slw_{}", paths::random_hex(32));
            let record = TokenRecord {
                id: slipway_spec::new_id(),
                name,
                digest: slipway_api::token_digest(&secret),
                read_only,
                created_at: slipway_spec::now(),
                revoked_at: None,
            };
            store.insert_token(&record).await?;
            if out.output == Format::Json {
                let mut v = describe(&record);
                v["token"] = json!(secret);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{secret}");
                eprintln!(
                    "token {} ({}) created; it is shown only now",
                    record.name,
                    if read_only { "read-only" } else { "read-write" }
                );
            }
        }
        TokensCommand::List { data_dir, out } => {
            let tokens = open(data_dir).await?.tokens().await?;
            if out.output == Format::Json {
                let list: Vec<_> = tokens.iter().map(describe).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"tokens": list}))?
                );
            } else {
                if !out.no_header {
                    println!(
                        "{:<38}{:<20}{:<12}{:<26}Revoked",
                        "ID", "Name", "Scope", "Created"
                    );
                }
                for t in tokens {
                    println!(
                        "{:<38}{:<20}{:<12}{:<26}{}",
                        t.id,
                        t.name,
                        if t.read_only { "read" } else { "read-write" },
                        t.created_at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
                        t.revoked_at.map_or_else(String::new, |r| r
                            .strftime("%Y-%m-%d %H:%M:%S UTC")
                            .to_string())
                    );
                }
            }
        }
        TokensCommand::Revoke { token, data_dir } => {
            if !open(data_dir).await?.revoke_token(&token).await? {
                bail!("no live token with ID or name \"{token}\"");
            }
            println!("revoked {token}");
        }
    }
    Ok(())
}
