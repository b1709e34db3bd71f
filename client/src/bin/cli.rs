//! switchboard-cli: route, send, tail, conversations and history from a shell.
//!
//!   export $(./dev env)
//!   switchboard-cli --user alice send --to-user bob "hi bob"
//!   switchboard-cli --user bob history dm:alice,bob
//!   switchboard-cli publish --api-key "$KEY" --from system:orders --to-users bob "order shipped"
//!   switchboard-cli --user carol tail --channel ch:news
//!   switchboard-cli publish --api-key "$KEY" --to-channel ch:news "breaking"

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;
use switchboard_client::{Api, Client, ClientConfig, Event, Kind, Target};

#[derive(Parser)]
#[command(
    name = "switchboard-cli",
    version,
    about = "Talk to a Switchboard deployment"
)]
struct Cli {
    /// Coordinator base URL, or several replicas separated by commas.
    #[arg(
        long,
        env = "SWITCHBOARD_COORDINATOR_URL",
        default_value = "http://127.0.0.1:18080"
    )]
    coordinator: String,
    /// Acting user; with --jwt-secret a development token is minted for it.
    #[arg(long, env = "SWITCHBOARD_USER")]
    user: Option<String>,
    /// A JWT (otherwise minted from --user and --jwt-secret).
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The development stack's HS256 secret (`./dev env` prints it).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Which server serves USER.
    Route { user: String },
    /// Wait until SERVERS live servers own every partition (exit 1 if they
    /// do not within --wait-secs).
    Settled {
        servers: usize,
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// Send a chat (or ephemeral) message; prints its msg_id.
    Send(SendArgs),
    /// Publish as a backend with an API key (`POST /v1/publish`); prints the msg_id.
    Publish(PublishArgs),
    /// A channel's subscribers and distinct users over every server (API key).
    ChannelStats {
        #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
        api_key: String,
        channel: String,
    },
    /// Who of USERS is online, with devices and last_seen, over every server (API key).
    Presence {
        #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
        api_key: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Print incoming messages as JSON lines; reconnects and resumes by itself.
    Tail {
        #[arg(long, default_value = "cli")]
        device: String,
        /// Resume after this cursor.
        #[arg(long)]
        cursor: Option<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Exit after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// Also subscribe to this channel (repeatable).
        #[arg(long = "channel")]
        channels: Vec<String>,
    },
    /// Create, change and list group conversations.
    #[command(subcommand)]
    Conversation(ConversationCmd),
    /// Messages of a conversation, newest first.
    History {
        conversation: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        before: Option<String>,
    },
}

#[derive(Args)]
#[group(id = "send_to", required = true, multiple = false)]
struct SendTo {
    #[arg(long)]
    to_user: Option<String>,
    #[arg(long)]
    to_conversation: Option<String>,
    /// A channel (the token's `publish` claim must allow it).
    #[arg(long)]
    to_channel: Option<String>,
}

#[derive(Args)]
struct SendArgs {
    #[command(flatten)]
    to: SendTo,
    #[command(flatten)]
    body: Body,
    /// Retry key: the same id gives the same msg_id.
    #[arg(long)]
    id: Option<String>,
}

/// What a message carries, for `send` and `publish`.
#[derive(Args)]
struct Body {
    /// Text to send as {"text": …}; use --json for any JSON body.
    text: Option<String>,
    #[arg(long, conflicts_with = "text")]
    json: Option<String>,
    #[arg(long)]
    ephemeral: bool,
}

impl Body {
    fn value(&self) -> anyhow::Result<Value> {
        match (&self.text, &self.json) {
            (Some(t), _) => Ok(json!({ "text": t })),
            (None, Some(j)) => serde_json::from_str(j)
                .map_err(|e| anyhow::anyhow!("--json is not valid JSON: {e}")),
            (None, None) => anyhow::bail!("give the TEXT to send or --json BODY"),
        }
    }

    fn kind(&self) -> Kind {
        if self.ephemeral {
            Kind::Ephemeral
        } else {
            Kind::Chat
        }
    }
}

#[derive(Args)]
struct PublishArgs {
    /// An API key of the servers (`SWITCHBOARD_API_KEYS` there).
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    api_key: String,
    /// The sender, `system:<name>`.
    #[arg(long, default_value = "system:cli")]
    from: String,
    /// Recipients, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with_all = ["to_conversation", "to_channel"],
        required_unless_present_any = ["to_conversation", "to_channel"]
    )]
    to_users: Vec<String>,
    #[arg(long, conflicts_with = "to_channel")]
    to_conversation: Option<String>,
    /// Every device subscribed to this channel.
    #[arg(long)]
    to_channel: Option<String>,
    #[command(flatten)]
    body: Body,
    /// Idempotency key: the same key gives the same msg_id (default: random).
    #[arg(long)]
    key: Option<String>,
    /// To one subscriber of `--to-channel` only (anycast).
    #[arg(long, requires = "to_channel")]
    anycast: bool,
    /// With `--anycast`: the same subscriber for the same key while it stays.
    #[arg(long, requires = "anycast")]
    anycast_key: Option<String>,
}

impl PublishArgs {
    fn publication(&self) -> anyhow::Result<protocol::Publish> {
        let to = match (&self.to_conversation, &self.to_channel) {
            (_, Some(c)) => {
                protocol::PublishTarget::Channel(protocol::ChannelName::new(c.as_str())?)
            }
            (Some(c), None) => {
                protocol::PublishTarget::Conversation(protocol::ConversationId::new(c.as_str())?)
            }
            (None, None) => protocol::PublishTarget::Users(
                self.to_users
                    .iter()
                    .map(|u| protocol::UserId::new(u.as_str()))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let key = self
            .key
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Ok(protocol::Publish {
            to,
            kind: self.body.kind(),
            body: serde_json::value::to_raw_value(&self.body.value()?)?,
            from: protocol::UserId::new(self.from.as_str())?,
            idempotency_key: protocol::ClientMsgId::new(key)?,
            anycast: self.anycast,
            key: self.anycast_key.clone(),
        })
    }
}

#[derive(Subcommand)]
enum ConversationCmd {
    Create {
        #[arg(long)]
        id: Option<String>,
        members: Vec<String>,
    },
    Add {
        conversation: String,
        user: String,
    },
    Remove {
        conversation: String,
        user: String,
    },
    List,
}

impl Cli {
    fn identity(&self) -> anyhow::Result<(String, String)> {
        let user = self
            .user
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--user (or SWITCHBOARD_USER) is required"))?;
        let token = match (&self.token, &self.jwt_secret) {
            (Some(t), _) => t.clone(),
            (None, Some(secret)) => dev_token(secret, &user)?,
            (None, None) => {
                anyhow::bail!("give --token, or --jwt-secret to mint a development token")
            }
        };
        Ok((user, token))
    }
}

/// A development token may use every channel: whoever holds the
/// development secret could mint any token anyway.
fn dev_token(secret: &str, user: &str) -> anyhow::Result<String> {
    let all = vec!["ch:*".to_owned()];
    let grants = switchboard_client::token::Grants {
        channels: all.clone(),
        publish: all,
    };
    Ok(switchboard_client::token::mint_hs256_with(
        secret, user, 3600, &grants,
    )?)
}

fn target(args: &SendArgs) -> anyhow::Result<Target> {
    let to = &args.to;
    Ok(match (&to.to_user, &to.to_conversation, &to.to_channel) {
        (Some(u), _, _) => Target::User(protocol::UserId::new(u.as_str())?),
        (None, Some(c), _) => Target::Conversation(protocol::ConversationId::new(c.as_str())?),
        (None, None, Some(c)) => Target::Channel(protocol::ChannelName::new(c.as_str())?),
        (None, None, None) => anyhow::bail!("give --to-user, --to-conversation or --to-channel"),
    })
}

/// What `tail` follows and for how long.
struct TailArgs<'a> {
    device: &'a str,
    cursor: Option<&'a str>,
    count: Option<usize>,
    seconds: Option<u64>,
    channels: &'a [String],
}

async fn tail(cli: &Cli, args: TailArgs<'_>) -> anyhow::Result<()> {
    let TailArgs {
        device,
        cursor,
        count,
        seconds,
        channels,
    } = args;
    let (user, token) = cli.identity()?;
    let cursor = cursor
        .map(str::parse)
        .transpose()
        .map_err(|_| anyhow::anyhow!("--cursor must be <log_epoch>:<offset>"))?;
    let config_user = user.clone();
    let config = ClientConfig {
        coordinator_url: cli.coordinator.clone(),
        token,
        user_id: user,
        device_id: device.to_owned(),
        cursor,
        max_backoff: Duration::from_secs(5),
        report_duplicates: false,
        local_address: None,
        // With the development secret, a long tail mints its own fresh tokens.
        refresh: cli.jwt_secret.clone().map(|secret| {
            let user = config_user.clone();
            switchboard_client::TokenRefresh::new(move || {
                let token = dev_token(&secret, &user).ok();
                async move { token }
            })
        }),
    };
    let mut client = Client::start(config);
    for c in channels {
        let channel = protocol::ChannelName::new(c.as_str())?;
        let s = client.subscribe(&channel).await?;
        eprintln!("subscribed to {channel} (cursor {})", s.cursor);
    }
    let deadline = seconds.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, client.next_event())
                .await
                .unwrap_or(None),
            None => client.next_event().await,
        };
        match next {
            Some(Event::Message(m)) => {
                seen += 1;
                println!("{}", serde_json::to_string(&m)?);
                // Printed is handled: an anycast publication goes to no one else.
                if let (true, Some(channel)) = (m.anycast, &m.channel) {
                    client.handled(channel, m.msg_id).await?;
                }
            }
            Some(Event::Connected {
                server_id,
                resumed,
                cursor,
            }) => eprintln!("connected to {server_id} (resumed: {resumed}, cursor {cursor})"),
            Some(Event::Disconnected { code }) => {
                eprintln!("disconnected ({code:?}); reconnecting")
            }
            Some(Event::Connecting { server_id }) => eprintln!("connecting to {server_id}"),
            Some(Event::AttemptFailed(at)) => eprintln!("attempt failed ({at:?}); retrying"),
            Some(Event::Unauthorized) => anyhow::bail!("the token was refused"),
            Some(Event::Synced(_)) | Some(Event::Duplicate(_)) => {}
            Some(Event::Presence(p)) => eprintln!("presence {}", serde_json::to_string(&p)?),
            Some(Event::Join(m)) => eprintln!("{} joined {}", m.user, m.channel),
            Some(Event::Leave(m)) => eprintln!("{} left {}", m.user, m.channel),
            Some(Event::Subscribed {
                channel,
                recovered,
                cursor,
            }) => eprintln!("subscribed to {channel} (recovered: {recovered}, cursor {cursor})"),
            None => break,
        }
    }
    if let Some(c) = client.cursor() {
        eprintln!("cursor {c}");
    }
    client.close().await;
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Settled { servers, wait_secs } => {
            let api = Api::new(&cli.coordinator, "");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(*wait_secs);
            while !api.assignment().await.is_ok_and(|a| a.settled(*servers)) {
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "{servers} servers do not own every partition after {wait_secs} s"
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Cmd::Route { user } => {
            let r = Api::new(&cli.coordinator, "").route(user).await?;
            println!(
                "{}",
                json!({"user_id": r.user_id, "partition": r.partition, "server_id": r.server_id, "ws_url": r.ws_url, "epoch": r.epoch})
            );
        }
        Cmd::ChannelStats { api_key, channel } => {
            let channel = protocol::ChannelName::new(channel.as_str())?;
            let stats = Api::new(&cli.coordinator, api_key)
                .channel_stats(&channel)
                .await?;
            println!("{}", serde_json::to_string(&stats)?);
        }
        Cmd::Presence { api_key, users } => {
            let users = users
                .iter()
                .map(protocol::UserId::new)
                .collect::<Result<Vec<_>, _>>()?;
            let api = Api::new(&cli.coordinator, api_key);
            for p in api.presence(&users).await? {
                println!("{}", serde_json::to_string(&p)?);
            }
        }
        Cmd::Publish(args) => {
            let item = args.publication()?;
            let msg_id = Api::new(&cli.coordinator, &args.api_key)
                .publish(&item)
                .await?;
            println!("{}", msg_id.0);
        }
        Cmd::Send(args) => {
            let (user, token) = cli.identity()?;
            let id = args
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
            let msg_id = Api::new(&cli.coordinator, &token)
                .send(
                    &user,
                    &id,
                    &target(args)?,
                    args.body.value()?,
                    args.body.kind(),
                )
                .await?;
            println!("{msg_id}");
        }
        Cmd::Tail {
            device,
            cursor,
            count,
            seconds,
            channels,
        } => {
            let args = TailArgs {
                device,
                cursor: cursor.as_deref(),
                count: *count,
                seconds: *seconds,
                channels,
            };
            tail(&cli, args).await?
        }
        Cmd::Conversation(c) => {
            let (user, token) = cli.identity()?;
            let api = Api::new(&cli.coordinator, &token);
            match c {
                ConversationCmd::Create { id, members } => {
                    let c = api.create_conversation(&user, id.as_deref(), members);
                    println!("{}", serde_json::to_string(&c.await?)?)
                }
                ConversationCmd::Add {
                    conversation,
                    user: u,
                } => api.add_member(&user, conversation, u).await?,
                ConversationCmd::Remove {
                    conversation,
                    user: u,
                } => api.remove_member(&user, conversation, u).await?,
                ConversationCmd::List => {
                    println!(
                        "{}",
                        serde_json::to_string(&api.conversations(&user).await?)?
                    )
                }
            }
        }
        Cmd::History {
            conversation,
            limit,
            before,
        } => {
            let (user, token) = cli.identity()?;
            let page = Api::new(&cli.coordinator, &token)
                .history(&user, conversation, before.as_deref(), *limit)
                .await?;
            for m in &page.messages {
                println!("{}", serde_json::to_string(m)?);
            }
            if let Some(next) = page.next_before {
                eprintln!("more: --before {next}");
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-cli: {e:#}");
            ExitCode::FAILURE
        }
    }
}
