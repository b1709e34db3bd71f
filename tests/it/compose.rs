//! docker-compose.yml really works: the stack comes up healthy, scales to
//! three messaging servers, the coordinator spreads partitions over all three,
//! and clients routed to the third one chat. Needs the images `./dev test`
//! builds (`switchboard/*:local`).

use harness::{free_port, wait_until, Event, Infra, WsClient};
use protocol::{Assignment, ServerFrame};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "compose-test-secret-0123456789abcdef";
const API_KEY: &str = "compose-test-api-key-0123456789abcdef";

struct Compose {
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn new() -> anyhow::Result<Self> {
        let project = format!("sbtest{}", std::process::id());
        let mut env = vec![
            ("SWITCHBOARD_JWT_SECRET".to_owned(), SECRET.to_owned()),
            ("SWITCHBOARD_API_KEY".to_owned(), API_KEY.to_owned()),
            ("SB_PARTITIONS".into(), "12".into()),
        ];
        for var in [
            "SB_KAFKA_PORT",
            "SB_ETCD_PORT",
            "SB_ETCD_PEER_PORT",
            "SB_POSTGRES_PORT",
            "SB_COORDINATOR_PORT",
            "SB_PERSISTER_PORT",
        ] {
            env.push((var.to_owned(), free_port()?.to_string()));
        }
        Ok(Self { project, env })
    }

    fn port(&self, var: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
        let out = tokio::process::Command::new("docker-compose")
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // The engine, not the test harness's version shim.
            .env_remove("DOCKER_HOST")
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "docker-compose {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

async fn assignment(base: &str) -> Option<Assignment> {
    reqwest::get(format!("{base}/v1/assignment"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn wait_servers(base: &str, n: usize) -> anyhow::Result<Assignment> {
    wait_until(
        &format!("{n} servers own every partition"),
        Duration::from_secs(180),
        || async {
            assignment(base).await.is_some_and(|a| {
                let owners: BTreeSet<_> = a.owners.iter().flatten().collect();
                a.servers.len() == n && owners.len() == n && a.owners.iter().all(Option::is_some)
            })
        },
    )
    .await?;
    assignment(base)
        .await
        .ok_or_else(|| anyhow::anyhow!("assignment vanished"))
}

fn token(user: &str) -> String {
    switchboard_client::token::mint_hs256(SECRET, user, 600).unwrap_or_default()
}

pub async fn scale_to_three_and_chat_on_the_third(_infra: Arc<Infra>) -> anyhow::Result<()> {
    let c = Compose::new()?;
    let result = scenario(&c).await;
    let _ = c.run(&["down", "-v", "--remove-orphans"]).await;
    result
}

async fn scenario(c: &Compose) -> anyhow::Result<()> {
    let base = format!("http://127.0.0.1:{}", c.port("SB_COORDINATOR_PORT"));
    c.run(&["up", "-d", "--scale", "messaging-server=2"])
        .await?;
    let two = wait_servers(&base, 2).await?;
    c.run(&["up", "-d", "--scale", "messaging-server=3"])
        .await?;
    let three = wait_servers(&base, 3).await?;
    let third = three
        .servers
        .keys()
        .find(|id| !two.servers.contains_key(*id))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no new server"))?;
    let loads = three.loads();
    anyhow::ensure!(
        loads.values().all(|n| *n == 4),
        "12 partitions over 3 servers: {loads:?}"
    );
    let on_third: Vec<String> = (0..2000)
        .map(|i| format!("user{i}"))
        .filter(|u| {
            three.owners[protocol::partition_for(u, three.partitions) as usize]
                .as_ref()
                .map(protocol::ServerId::as_str)
                == Some(third.as_str())
        })
        .take(2)
        .collect();
    let ws_url = three.servers[&third].ws_url.clone();
    let mut clients = Vec::new();
    for u in &on_third {
        let route: serde_json::Value = reqwest::get(format!("{base}/v1/route?user_id={u}"))
            .await?
            .json()
            .await?;
        anyhow::ensure!(
            route["server_id"] == third.as_str(),
            "{u} is not routed to the third server: {route}"
        );
        let mut ws = WsClient::connect(&ws_url).await?;
        anyhow::ensure!(
            matches!(
                ws.hello(&token(u), "d", None).await?,
                Event::Frame(ServerFrame::Welcome(_))
            ),
            "{u}: no welcome"
        );
        clients.push(ws);
    }
    let send = serde_json::json!({"type":"send","id":1,"client_msg_id":"hi","to":{"user": on_third[1]},"body":{"text":"hello from compose"}});
    clients[0].send_text(send.to_string()).await?;
    let mut got = false;
    for _ in 0..5 {
        if let ServerFrame::Message(m) = clients[1].frame(Duration::from_secs(10)).await? {
            got = m.body.get().contains("hello from compose");
            break;
        }
    }
    anyhow::ensure!(got, "the message did not arrive on the third server");
    // The compose file hands the API key to the servers: a backend publishes.
    let publication = serde_json::json!({"to": {"users": [on_third[1]]}, "body": {"text": "from a backend"},
        "from": "system:compose", "idempotency_key": "p1"});
    reqwest::Client::new()
        .post(format!("{}/v1/publish", three.servers[&third].http_url))
        .bearer_auth(API_KEY)
        .json(&publication)
        .send()
        .await?
        .error_for_status()?;
    match clients[1].frame(Duration::from_secs(10)).await? {
        ServerFrame::Message(m) => anyhow::ensure!(m.from.as_str() == "system:compose", "{m:?}"),
        other => anyhow::bail!("expected the publication, got {other:?}"),
    }
    Ok(())
}
