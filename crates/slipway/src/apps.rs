//! `slipway apps ...`: doctl's `apps` commands against a Slipway daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};
use slipway_spec::{App, Deployment, parse_document};

use crate::Outcome;
use crate::client::{Client, field};
use crate::output::{self, Format, OutputArgs};
use crate::wait;

#[derive(Debug, Subcommand)]
pub(crate) enum AppsCommand {
    /// Create an app from a spec file (YAML or JSON); its first deployment starts at once.
    #[command(after_help = crate::EXIT_CODES)]
    Create {
        #[arg(long)]
        spec: PathBuf,
        /// Wait until the first deployment ends; the exit code says how (below).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// List apps.
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show an app (APP is its ID or its name).
    Get {
        app: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Replace an app's spec and deploy it.
    #[command(after_help = crate::EXIT_CODES)]
    Update {
        app: String,
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Delete an app: its containers, network and built images. Databases' volumes are kept
    /// unless --purge.
    Delete {
        app: String,
        /// Also remove the databases' volumes (their data).
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Rolling restart of services and workers from the exact same image: nothing is fetched
    /// or built; jobs and databases are not touched.
    #[command(after_help = crate::EXIT_CODES)]
    Restart {
        app: String,
        /// Only these components (comma-separated); all services and workers when absent.
        #[arg(long, value_delimiter = ',')]
        components: Vec<String>,
        /// Wait until the restart ends; exit 0 only if it is ACTIVE.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Create a deployment of the app's spec; with --force-rebuild, fetch the latest commit and
    /// build even if the previous build could be reused.
    #[command(after_help = crate::EXIT_CODES)]
    CreateDeployment {
        app: String,
        #[arg(long)]
        force_rebuild: bool,
        /// With --force-rebuild: build without the layer cache.
        #[arg(long, requires = "force_rebuild")]
        clear_build_cache: bool,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// List an app's deployments, newest first.
    ListDeployments {
        app: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show one deployment.
    GetDeployment {
        app: String,
        deployment: String,
        /// Follow it until it ends (live progress), and exit with its outcome.
        #[arg(long, long_help = crate::EXIT_CODES)]
        wait: bool,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Cancel a deployment that has not ended; the previous version keeps serving.
    CancelDeployment {
        app: String,
        deployment: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Print a deployment's logs: BUILD (the build's output), DEPLOY (jobs and the rollout)
    /// or RUN (what the instances write, each line prefixed with its instance).
    Logs {
        app: String,
        /// Only this component's log.
        component: Option<String>,
        #[arg(long = "type", value_enum, default_value = "run")]
        kind: LogType,
        /// Keep printing: BUILD and DEPLOY until the deployment ends, RUN until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// The deployment (BUILD defaults to the newest that built, DEPLOY to the newest, RUN
        /// to the active one).
        #[arg(long)]
        deployment: Option<String>,
        /// With RUN, only the last N lines of each instance to begin with.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// An app's events (deployment created, phase changes, steps started and finished, with
    /// millisecond timestamps and durations) as JSON lines: the newest deployment's, or with
    /// --follow every new one until interrupted.
    Events {
        app: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Validate a spec without deploying it.
    Propose {
        #[arg(long)]
        spec: PathBuf,
        #[command(flatten)]
        out: OutputArgs,
    },
}

/// Reads a spec file as JSON for the daemon, which validates it (and warns about fields it
/// accepts without implementing them).
fn read_spec(path: &PathBuf) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_document(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub(crate) async fn run(cmd: AppsCommand) -> anyhow::Result<Outcome> {
    let client = Client::from_env()?;
    match cmd {
        AppsCommand::Create { spec, wait, out } => {
            let body = json!({"spec": read_spec(&spec)?});
            let v = client.post("/v2/apps", &body).await?;
            let app: App = field(v.clone(), "app")?;
            print_warnings(&v);
            let Some(d) = app
                .in_progress_deployment
                .clone()
                .or(app.pending_deployment.clone())
            else {
                output::apps(&out, &v, &[app])?;
                return Ok(Outcome::Ok);
            };
            // The app did not exist before: its stream opens now, and the deployment is read
            // once it listens.
            let events = if wait {
                wait::events(&client, &app.id).await
            } else {
                None
            };
            deployment_result(
                &client,
                &app.id,
                d,
                wait,
                &out,
                Some(json!({"app": v["app"]})),
                events,
            )
            .await
        }
        AppsCommand::List { out } => {
            let v = client.get("/v2/apps?per_page=200").await?;
            let apps: Vec<App> = field(v.clone(), "apps")?;
            output::apps(&out, &v, &apps)?;
            Ok(Outcome::Ok)
        }
        AppsCommand::Get { app, out } => {
            let v = client.get(&format!("/v2/apps/{app}")).await?;
            let a: App = field(v.clone(), "app")?;
            output::apps(&out, &v, &[a])?;
            Ok(Outcome::Ok)
        }
        AppsCommand::Update {
            app,
            spec,
            wait,
            out,
        } => {
            let body = json!({"spec": read_spec(&spec)?});
            let events = if wait {
                wait::events(&client, &app).await
            } else {
                None
            };
            let v = client.put(&format!("/v2/apps/{app}"), &body).await?;
            print_warnings(&v);
            let a: App = field(v.clone(), "app")?;
            let (list, _) = latest(&client, &a.id).await?;
            match list {
                Some(d) => deployment_result(&client, &a.id, d, wait, &out, None, events).await,
                None => {
                    output::apps(&out, &v, &[a])?;
                    Ok(Outcome::Ok)
                }
            }
        }
        AppsCommand::Delete { app, purge, out } => {
            let v = client
                .delete(&format!(
                    "/v2/apps/{app}{}",
                    if purge { "?purge=true" } else { "" }
                ))
                .await?;
            if out.output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("deleted app {}", v["id"].as_str().unwrap_or(&app));
            }
            Ok(Outcome::Ok)
        }
        AppsCommand::Restart {
            app,
            components,
            wait,
            out,
        } => {
            let body = json!({"components": components});
            let events = if wait {
                wait::events(&client, &app).await
            } else {
                None
            };
            let v = client
                .post(&format!("/v2/apps/{app}/restart"), &body)
                .await?;
            let d: Deployment = field(v, "deployment")?;
            deployment_result(&client, &app, d, wait, &out, None, events).await
        }
        AppsCommand::CreateDeployment {
            app,
            force_rebuild,
            clear_build_cache,
            wait,
            out,
        } => {
            let body =
                json!({"force_build": force_rebuild, "clear_build_cache": clear_build_cache});
            let events = if wait {
                wait::events(&client, &app).await
            } else {
                None
            };
            let v = client
                .post(&format!("/v2/apps/{app}/deployments"), &body)
                .await?;
            let d: Deployment = field(v, "deployment")?;
            deployment_result(&client, &app, d, wait, &out, None, events).await
        }
        AppsCommand::ListDeployments { app, out } => {
            let v = client
                .get(&format!("/v2/apps/{app}/deployments?per_page=200"))
                .await?;
            let list: Vec<Deployment> = field(v.clone(), "deployments")?;
            output::deployments(&out, &v, &list)?;
            Ok(Outcome::Ok)
        }
        AppsCommand::GetDeployment {
            app,
            deployment,
            wait,
            out,
        } => {
            let v = client
                .get(&format!("/v2/apps/{app}/deployments/{deployment}"))
                .await?;
            let d: Deployment = field(v.clone(), "deployment")?;
            if wait {
                let events = wait::events(&client, &app).await;
                let d = client.deployment(&app, &d.id).await?;
                return deployment_result(&client, &app, d, true, &out, None, events).await;
            }
            output::deployments(&out, &v, &[d])?;
            Ok(Outcome::Ok)
        }
        AppsCommand::CancelDeployment {
            app,
            deployment,
            out,
        } => {
            let v = client
                .post(
                    &format!("/v2/apps/{app}/deployments/{deployment}/cancel"),
                    &json!({}),
                )
                .await?;
            let d: Deployment = field(v.clone(), "deployment")?;
            output::deployments(&out, &v, &[d])?;
            Ok(Outcome::Ok)
        }
        AppsCommand::Logs {
            app,
            component,
            kind,
            follow,
            deployment,
            tail,
        } => {
            logs(
                &client,
                &app,
                component.as_deref(),
                kind,
                follow,
                deployment,
                tail,
            )
            .await?;
            Ok(Outcome::Ok)
        }
        AppsCommand::Events { app, follow } => {
            client
                .events_to_stdout(&format!("/v2/apps/{app}/events?follow={follow}"))
                .await?;
            Ok(Outcome::Ok)
        }
        AppsCommand::Propose { spec, out } => {
            let v = client
                .post("/v2/apps/propose", &json!({"spec": read_spec(&spec)?}))
                .await?;
            if out.output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_warnings(&v);
                println!(
                    "the spec is valid; the name is {}",
                    if v["app_name_available"].as_bool() == Some(true) {
                        "available"
                    } else {
                        "taken"
                    }
                );
            }
            Ok(Outcome::Ok)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogType {
    Build,
    Deploy,
    Run,
}

async fn logs(
    client: &Client,
    app: &str,
    component: Option<&str>,
    kind: LogType,
    follow: bool,
    deployment: Option<String>,
    tail: Option<usize>,
) -> anyhow::Result<()> {
    let kind_name = match kind {
        LogType::Build => "BUILD",
        LogType::Deploy => "DEPLOY",
        LogType::Run => "RUN",
    };
    let mut query = format!("type={kind_name}&follow={follow}");
    if let Some(t) = tail {
        query.push_str(&format!("&tail={t}"));
    }
    let deployment = match (deployment, kind) {
        (Some(d), _) => Some(d),
        (None, LogType::Run) => None,
        (None, LogType::Deploy) => {
            let (latest, _) = latest(client, app).await?;
            Some(
                latest
                    .ok_or_else(|| anyhow::anyhow!("app {app} has no deployment"))?
                    .id,
            )
        }
        (None, LogType::Build) => {
            // The newest deployment that built (a restart builds nothing).
            let v = client
                .get(&format!("/v2/apps/{app}/deployments?per_page=50"))
                .await?;
            let list: Vec<Deployment> = field(v, "deployments")?;
            let build = list
                .into_iter()
                .find(|d| d.kind == slipway_spec::DeploymentKind::Build)
                .ok_or_else(|| anyhow::anyhow!("app {app} has no deployment that built"))?;
            Some(build.id)
        }
    };
    let path = match (&deployment, component) {
        (Some(d), Some(c)) => format!("/v2/apps/{app}/deployments/{d}/components/{c}/logs?{query}"),
        (Some(d), None) => format!("/v2/apps/{app}/deployments/{d}/logs?{query}"),
        (None, Some(c)) => format!("/v2/apps/{app}/logs?{query}&component={c}"),
        (None, None) => format!("/v2/apps/{app}/logs?{query}"),
    };
    let v = client.get(&path).await?;
    let url = if follow {
        v["live_url"].as_str()
    } else {
        v["historic_urls"][0].as_str()
    }
    .ok_or_else(|| anyhow::anyhow!("the API gave no log URL"))?;
    client.stream_to_stdout(url).await
}

fn print_warnings(v: &Value) {
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!(
            "warning: {}: {}",
            w["path"].as_str().unwrap_or(""),
            w["message"].as_str().unwrap_or("")
        );
    }
}

async fn latest(client: &Client, app: &str) -> anyhow::Result<(Option<Deployment>, u64)> {
    let v = client
        .get(&format!("/v2/apps/{app}/deployments?per_page=1"))
        .await?;
    let total = v["meta"]["total"].as_u64().unwrap_or(0);
    let list: Vec<Deployment> = field(v, "deployments")?;
    Ok((list.into_iter().next(), total))
}

/// Prints a deployment, after following it to its end with `--wait`.
async fn deployment_result(
    client: &Client,
    app: &str,
    d: Deployment,
    wait: bool,
    out: &OutputArgs,
    extra: Option<Value>,
    events: wait::Events,
) -> anyhow::Result<Outcome> {
    let json_out = out.output == Format::Json;
    let (d, outcome) = if wait {
        match wait::follow(client, app, d, json_out, events).await? {
            wait::Followed::Ended(d, outcome) => (d, outcome),
            wait::Followed::Interrupted(d) => {
                eprintln!(
                    "stopped waiting: deployment {} ({}) goes on; follow it again with `slipway apps get-deployment {app} {} --wait`",
                    d.id, d.phase, d.id
                );
                return Ok(Outcome::Interrupted);
            }
        }
    } else {
        (d, Outcome::Ok)
    };
    let mut v = json!({"deployment": d});
    if let Some(Value::Object(extra)) = extra {
        for (k, val) in extra {
            v[k] = val;
        }
    }
    if wait && json_out {
        // The last of the JSON lines: the deployment as it ended.
        println!("{}", serde_json::to_string(&v)?);
    } else {
        output::deployments(out, &v, std::slice::from_ref(&d))?;
    }
    if wait && !json_out {
        eprintln!("{}", wait::summary(&d));
    }
    Ok(outcome)
}
