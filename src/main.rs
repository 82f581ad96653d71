//! The `event-gateway` command: `serve` (the default), `token` and `publish`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use event_gateway::auth::{TokenMinter, TokenRequest};
use event_gateway::broker::publish_once;
use event_gateway::event::{Envelope, OrgId};
use event_gateway::settings::Settings;
use event_gateway::startup::Application;
use event_gateway::telemetry;

#[derive(Parser)]
#[command(
    name = "event-gateway",
    version,
    about = "Real-time event gateway: JWT-authenticated Server-Sent Events from Redis pub/sub"
)]
struct Cli {
    /// Configuration file layered over config/default.toml (environment variables still win).
    #[arg(long, global = true, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Print a JWT signed with the configured HS256 secret (development and tests).
    Token {
        /// The user the token is for (its `sub` claim).
        #[arg(long)]
        sub: String,
        /// A role of `policy.roles`: by default landlord, tenant, contractor, ops (may subscribe)
        /// or service (may publish).
        #[arg(long)]
        role: String,
        /// An org the token grants (1 to 64 of A-Z, a-z, 0-9, _ or -); repeat for several.
        #[arg(long = "org", required = true)]
        orgs: Vec<String>,
        /// The tenant id a tenant sees events of (default: the sub).
        #[arg(long)]
        tenant_id: Option<String>,
        /// The contractor id a contractor sees events of (default: the sub).
        #[arg(long)]
        contractor_id: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Publish one event through the configured Redis, or through a gateway's POST /api/publish.
    Publish {
        /// The org the event belongs to.
        #[arg(long)]
        org: String,
        /// The event type: dot-separated segments of a-z, 0-9, _ or -, e.g. ticket.created.
        #[arg(long = "type")]
        event_type: String,
        /// The event's `data` object, as JSON.
        #[arg(long)]
        data: String,
        /// Keep it in history (Redis Function) instead of a fire-and-forget PUBLISH. Over HTTP
        /// (--url) every event is durable.
        #[arg(long)]
        durable: bool,
        /// A running gateway's base URL, e.g. http://127.0.0.1:8080 (used when no Redis is configured).
        #[arg(long)]
        url: Option<String>,
        /// A `service` token for --url; minted from the configured secret when omitted.
        #[arg(long)]
        token: Option<String>,
    },
    /// Exit 0 when the local gateway answers /healthz (or /readyz with --ready), else 1: for
    /// container health checks, which have no curl in the runtime image.
    Healthcheck {
        /// Base URL; default http://127.0.0.1:<server.port>.
        #[arg(long)]
        url: Option<String>,
        /// Check readiness (broker connected, not draining) instead of liveness.
        #[arg(long)]
        ready: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings),
        Command::Token {
            sub,
            role,
            orgs,
            tenant_id,
            contractor_id,
            ttl,
        } => {
            // A token the gateway would refuse is refused here, with the reason.
            if !settings.policy.roles.contains_key(&role) {
                let mut known: Vec<&str> = settings.policy.roles.keys().map(String::as_str).collect();
                known.sort_unstable();
                bail!(
                    "--role {role:?} is not a role of policy.roles; known roles: {}",
                    known.join(", ")
                );
            }
            for org in &orgs {
                OrgId::parse(org).with_context(|| format!("--org {org:?}"))?;
            }
            let token = minter(&settings)?.mint(&TokenRequest {
                sub: &sub,
                role: &role,
                orgs: &orgs,
                tenant_id: tenant_id.as_deref(),
                contractor_id: contractor_id.as_deref(),
                ttl_secs: ttl,
            })?;
            println!("{token}");
            Ok(())
        }
        Command::Publish {
            org,
            event_type,
            data,
            durable,
            url,
            token,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(publish(settings, org, event_type, data, durable, url, token))
        }
        Command::Healthcheck { url, ready } => {
            let host = match settings.server.host.as_str() {
                "0.0.0.0" | "::" => "127.0.0.1",
                host => host,
            };
            let base = url.unwrap_or_else(|| format!("http://{host}:{}", settings.server.port));
            let path = if ready { "/readyz" } else { "/healthz" };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let status = runtime.block_on(async {
                reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(3))
                    .build()?
                    .get(format!("{}{path}", base.trim_end_matches('/')))
                    .send()
                    .await
                    .map(|response| response.status())
            });
            match status {
                Ok(status) if status.is_success() => Ok(()),
                Ok(status) => bail!("{path} answered {status}"),
                Err(error) => bail!("{path} unreachable: {error}"),
            }
        }
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(&settings.log);
    for variable in event_gateway::settings::ignored_variables() {
        tracing::warn!(
            %variable,
            "This variable is not read: settings come from GATEWAY__SECTION__KEY (double underscores), e.g. GATEWAY__SERVER__PORT."
        );
    }
    actix_web::rt::System::new().block_on(async move {
        let application = Application::build(settings).await?;
        application.run_until_stopped().await
    })
}

fn minter(settings: &Settings) -> anyhow::Result<TokenMinter> {
    if settings.auth.jwt_secret.expose_secret().is_empty() {
        bail!("auth.jwt_secret is not set: set GATEWAY__AUTH__JWT_SECRET to mint tokens");
    }
    Ok(TokenMinter::new(&settings.auth.jwt_secret, &settings.auth))
}

async fn publish(
    settings: Settings,
    org: String,
    event_type: String,
    data: String,
    durable: bool,
    url: Option<String>,
    token: Option<String>,
) -> anyhow::Result<()> {
    let org = OrgId::parse(&org).context("--org")?;
    let data: serde_json::Value = serde_json::from_str(&data).context("--data is not JSON")?;
    let envelope = serde_json::json!({"type": event_type, "orgId": org.as_str(), "data": data}).to_string();
    Envelope::parse(envelope.as_bytes(), settings.limits.max_event_bytes).context("invalid event")?;

    if url.is_none() && !settings.uses_embedded_broker() {
        let id = publish_once(&settings.redis, &org, &envelope, durable).await?;
        match id {
            Some(id) => println!("{id}"),
            None => println!("published"),
        }
        return Ok(());
    }
    let base = url.unwrap_or_else(|| format!("http://127.0.0.1:{}", settings.server.port));
    if !durable {
        eprintln!("note: publishing over HTTP ({base}/api/publish), which keeps every event in history");
    }
    let token = match token {
        Some(token) => token,
        None => minter(&settings)
            .context("pass --token with a service token")?
            .mint(&TokenRequest {
                sub: "event-gateway-cli",
                role: "service",
                orgs: &[org.to_string()],
                tenant_id: None,
                contractor_id: None,
                ttl_secs: 300,
            })?,
    };
    let response = reqwest::Client::new()
        .post(format!("{}/api/publish", base.trim_end_matches('/')))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(envelope)
        .send()
        .await
        .with_context(|| format!("reaching {base}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("the gateway answered {status}: {body}");
    }
    let ids: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match ids["ids"].get(0).and_then(|id| id.as_str()) {
        Some(id) => println!("{id}"),
        None => println!("{body}"),
    }
    Ok(())
}
