//! `xenvault job create|list|run|history|logs`: jobs on a `xenvault server`, through its
//! REST API (HTTPS; the server's certificate pinned by fingerprint like `pool add` does).

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use xenvault_jobs::model::{Job, Run, RunStatus};

use crate::exit::{self, ExitKind};
use crate::output::{table, time};
use crate::repo_cmds::print_json;

#[derive(Subcommand)]
pub enum Commands {
    /// Jobs on a xenvault server (token from XENVAULT_TOKEN).
    Job {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: JobCommand,
    },
}

#[derive(Args)]
pub struct ServerArgs {
    /// The server's URL.
    #[arg(long, global = true, env = "XENVAULT_SERVER", default_value = "https://127.0.0.1:8443")]
    server: String,
    /// SHA-256 fingerprint of the server's certificate (what `xenvault server` printed).
    #[arg(long, global = true, env = "XENVAULT_SERVER_FINGERPRINT", conflicts_with = "insecure")]
    fingerprint: Option<String>,
    /// Accept any server certificate (encrypted, not authenticated).
    #[arg(long, global = true)]
    insecure: bool,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Create a job from a TOML file (the fields of the API's Job).
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    /// List the jobs.
    List,
    /// Start a run of JOB (id or name) now; --follow prints its log until it ends.
    Run {
        job: String,
        #[arg(long)]
        follow: bool,
    },
    /// The newest runs (of JOB, if given).
    History {
        job: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// A run's log; --follow keeps printing until the run ends (exit code from its result).
    Logs {
        run: String,
        #[arg(long)]
        follow: bool,
    },
}

/// An authenticated client of one server.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(args: &ServerArgs) -> Result<Self> {
        let token = std::env::var("XENVAULT_TOKEN").ok().filter(|t| !t.is_empty()).ok_or_else(|| {
            anyhow!("set XENVAULT_TOKEN to an API token of the server (POST /api/tokens)").context(ExitKind::Usage)
        })?;
        let trust = match (&args.fingerprint, args.insecure) {
            (Some(f), _) => xenvault_tls::ServerTrust::PinSha256(
                xenvault_tls::parse_sha256_fingerprint(f)
                    .map_err(|e| anyhow!("--fingerprint: {e}").context(ExitKind::Usage))?,
            ),
            (None, true) => xenvault_tls::ServerTrust::Insecure,
            (None, false) => xenvault_tls::ServerTrust::SystemRoots,
        };
        let tls = xenvault_tls::client_config(&trust)?;
        let http = reqwest::Client::builder().use_preconfigured_tls(tls).build()?;
        Ok(Api { http, base: args.server.trim_end_matches('/').to_owned(), token })
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<reqwest::Response> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| format!("{method} {}{path}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(answer_error(response).await)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        Ok(self.send(method, path, body).await?.json().await?)
    }
}

/// What an unsuccessful answer of the server says (its JSON error's message), as an
/// authentication failure for 401 and 403.
pub(crate) async fn answer_error(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    let error = anyhow!("the server answered {status}: {message}");
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        error.context(ExitKind::Auth)
    } else {
        error
    }
}

pub async fn run(Commands::Job { server, command }: Commands) -> Result<ExitCode> {
    let api = Api::new(&server)?;
    match command {
        JobCommand::Create { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let job: Job =
                toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", file.display()).context(ExitKind::Usage))?;
            let created: Job = api.json(Method::POST, "/api/jobs", Some(&serde_json::to_value(&job)?)).await?;
            if server.json {
                print_json(&created)?;
            } else {
                println!("created job {} ({})", created.name, created.id);
            }
        }
        JobCommand::List => {
            let jobs: Vec<Job> = api.json(Method::GET, "/api/jobs", None).await?;
            if server.json {
                print_json(&jobs)?;
            } else {
                let rows: Vec<Vec<String>> = jobs
                    .iter()
                    .map(|j| {
                        let schedules: Vec<&str> = j.schedules.iter().map(|s| s.cron.as_str()).collect();
                        vec![
                            j.name.clone(),
                            if j.enabled { "yes" } else { "no" }.into(),
                            j.pool.clone(),
                            j.repository.clone(),
                            schedules.join(", "),
                        ]
                    })
                    .collect();
                table(&["NAME", "ENABLED", "POOL", "REPOSITORY", "SCHEDULES"], &rows, &[]);
            }
        }
        JobCommand::Run { job, follow } => {
            let run: Run = api.json(Method::POST, &format!("/api/jobs/{}/run", segment(&job)), None).await?;
            if follow {
                return follow_run(&api, &run.id, server.json).await;
            }
            if server.json {
                print_json(&run)?;
            } else {
                println!("started run {} of job {job}", run.id);
            }
        }
        JobCommand::History { job, limit } => {
            let mut path = format!("/api/runs?limit={limit}");
            if let Some(job) = job {
                let found: Job = api.json(Method::GET, &format!("/api/jobs/{}", segment(&job)), None).await?;
                path.push_str(&format!("&job={}", segment(&found.id)));
            }
            let page: Value = api.json(Method::GET, &path, None).await?;
            if server.json {
                print_json(&page)?;
            } else {
                let runs: Vec<Run> = serde_json::from_value(page["runs"].clone())?;
                let rows: Vec<Vec<String>> = runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            status_text(r.status),
                            time(r.queued_at),
                            r.finished_at.map(time).unwrap_or_default(),
                            format!("{}/{}", r.totals.vms_ok, r.totals.vms),
                            xenvault_types::units::bytes(r.totals.bytes_stored),
                        ]
                    })
                    .collect();
                table(&["RUN", "STATUS", "QUEUED", "FINISHED", "VMS OK", "STORED"], &rows, &[4, 5]);
            }
        }
        JobCommand::Logs { run, follow } => {
            if follow {
                return follow_run(&api, &run, server.json).await;
            }
            let lines: Vec<Value> = api.json(Method::GET, &format!("/api/runs/{}/log", segment(&run)), None).await?;
            if server.json {
                print_json(&lines)?;
            } else {
                lines.iter().for_each(print_line);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A path segment with the characters that would change the path escaped.
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}

fn status_text(status: RunStatus) -> String {
    serde_json::to_value(status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn print_line(line: &Value) {
    let at = line["at"].as_str().and_then(|t| t.parse().ok()).map(time).unwrap_or_default();
    println!("{at}  {:<7}  {}", line["level"].as_str().unwrap_or(""), line["message"].as_str().unwrap_or(""));
}

/// Prints the run's log lines as they come (the server's event stream) until the run ends;
/// the exit code says how it ended (0 success, 4 partial, 1 otherwise).
async fn follow_run(api: &Api, run: &str, json: bool) -> Result<ExitCode> {
    let response = api.send(Method::GET, &format!("/api/runs/{}/events", segment(run)), None).await?;
    let mut body = response.bytes_stream();
    let mut pending = String::new();
    let mut last: Option<Run> = None;
    while let Some(chunk) = body.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).map(str::to_owned);
            let (Some(event), Some(data)) = (field("event: "), field("data: ")) else { continue };
            let value: Value = serde_json::from_str(&data)?;
            match event.as_str() {
                "log" if json => println!("{data}"),
                "log" => print_line(&value),
                "run" => last = Some(serde_json::from_value(value["run"].clone())?),
                _ => {}
            }
        }
    }
    let Some(run) = last.filter(|r| r.status.is_finished()) else {
        bail!("the server closed the event stream before the run ended (is it stopping?)");
    };
    if json {
        print_json(&run)?;
    } else {
        let error = run.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        println!("run {} {}{error}", run.id, status_text(run.status));
    }
    Ok(ExitCode::from(match run.status {
        RunStatus::Success => 0,
        RunStatus::Partial => exit::PARTIAL,
        _ => exit::FAILURE,
    }))
}
