//! The dashboard's link to the daemon: its own task, so that drawing never waits on the
//! socket. It connects, subscribes to stats, keeps the clients and keys lists fresh, carries
//! the user's actions, and reconnects by itself when the daemon goes away.

use std::{collections::VecDeque, path::PathBuf, time::Duration};

use tokendealer_shared::{
    admin::{ClientFrame, ClientInfo, Event, MAX_PAGE, Request, Response, ServerFrame},
    frame::{self, FrameError},
};
use tokio::{net::unix::OwnedWriteHalf, sync::mpsc};

use super::app::{LinkEvent, Msg, Outcome};
use crate::client::Connection;

/// Between connection attempts.
const RETRY: Duration = Duration::from_secs(1);
/// How often the clients and keys lists and the status are re-read.
const REFRESH: Duration = Duration::from_secs(2);

/// What each request in flight was for, so its response can be routed (they come in order).
enum Pending {
    Subscribe,
    Status,
    Keys,
    Clients(Vec<ClientInfo>),
    /// A user's action, with what to say when it succeeds.
    Action(String),
}

/// What to tell the user when an action succeeds with a bare `Done`.
fn describe(request: &Request) -> String {
    match request {
        Request::DisableClient { id } => format!("client `{id}` disabled"),
        Request::EnableClient { id } => format!("client `{id}` enabled"),
        Request::RemoveClient { id } => format!("client `{id}` removed"),
        _ => "done".to_owned(),
    }
}

/// Runs until the dashboard drops its ends of the channels.
pub async fn run(socket: PathBuf, events: mpsc::Sender<Msg>, mut actions: mpsc::Receiver<Request>) {
    loop {
        let reason = match Connection::open(&socket).await {
            Ok(conn) => {
                if events.send(Msg::Link(LinkEvent::Connected)).await.is_err() {
                    return;
                }
                match session(conn, &events, &mut actions).await {
                    Ok(()) => return,
                    Err(reason) => reason,
                }
            }
            Err(e) => e.to_string(),
        };
        if events
            .send(Msg::Link(LinkEvent::Disconnected(reason)))
            .await
            .is_err()
        {
            return;
        }
        // While waiting to retry, actions cannot be carried: say so at once.
        let retry = tokio::time::sleep(RETRY);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                () = &mut retry => break,
                action = actions.recv() => {
                    if action.is_none() { return }
                    let refused = Msg::Link(LinkEvent::Done(Err("not connected to the daemon".into())));
                    if events.send(refused).await.is_err() { return }
                }
            }
        }
    }
}

async fn send(
    tx: &mut OwnedWriteHalf,
    pending: &mut VecDeque<Pending>,
    request: Request,
    kind: Pending,
) -> Result<(), String> {
    frame::write(tx, &ClientFrame::Request(request))
        .await
        .map_err(|e| e.to_string())?;
    pending.push_back(kind);
    Ok(())
}

/// One connected session. `Ok` when the dashboard is gone, `Err` with the reason when the
/// connection is.
async fn session(
    conn: Connection,
    events: &mpsc::Sender<Msg>,
    actions: &mut mpsc::Receiver<Request>,
) -> Result<(), String> {
    let (mut rx, mut tx) = conn.into_stream().into_split();
    // Reading is not cancel-safe, so it has a task of its own feeding a channel.
    let (frames_tx, mut frames) = mpsc::channel::<Result<Option<ServerFrame>, FrameError>>(16);
    let reader = tokio::spawn(async move {
        loop {
            let frame = frame::read::<ServerFrame, _>(&mut rx).await;
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(reader);

    let mut pending = VecDeque::new();
    send(
        &mut tx,
        &mut pending,
        Request::Subscribe,
        Pending::Subscribe,
    )
    .await?;
    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                // Skip a round rather than pile requests up behind a slow daemon.
                if pending.len() < 4 {
                    send(&mut tx, &mut pending, Request::Status, Pending::Status).await?;
                    send(&mut tx, &mut pending, Request::ListKeys, Pending::Keys).await?;
                    let first_page = Request::ListClients { after: None, limit: MAX_PAGE };
                    send(&mut tx, &mut pending, first_page, Pending::Clients(Vec::new())).await?;
                }
            }
            action = actions.recv() => {
                let Some(action) = action else { return Ok(()) };
                let done = describe(&action);
                send(&mut tx, &mut pending, action, Pending::Action(done)).await?;
            }
            frame = frames.recv() => {
                let frame = match frame {
                    Some(Ok(Some(frame))) => frame,
                    Some(Ok(None)) | None => return Err("the daemon closed the connection".into()),
                    Some(Err(e)) => return Err(e.to_string()),
                };
                let event = match frame {
                    ServerFrame::Event(Event::Stats(tick)) => Some(LinkEvent::Tick(tick)),
                    ServerFrame::Refused(e) => return Err(e.to_string()),
                    ServerFrame::Hello(_) => return Err("the daemon greeted twice".into()),
                    ServerFrame::Response(response) => {
                        let kind = pending.pop_front().ok_or("the daemon answered a question nobody asked")?;
                        route(kind, response, &mut tx, &mut pending).await?
                    }
                };
                if let Some(event) = event
                    && events.send(Msg::Link(event)).await.is_err()
                {
                    return Ok(());
                }
            }
        }
    }
}

async fn route(
    kind: Pending,
    response: Response,
    tx: &mut OwnedWriteHalf,
    pending: &mut VecDeque<Pending>,
) -> Result<Option<LinkEvent>, String> {
    Ok(match (kind, response) {
        (Pending::Subscribe, _) => None,
        (Pending::Status, Response::Status(status)) => Some(LinkEvent::Status(status)),
        (Pending::Keys, Response::Keys(keys)) => Some(LinkEvent::Keys(keys)),
        (Pending::Clients(mut all), Response::Clients { clients, total }) => {
            let more = !clients.is_empty() && ((all.len() + clients.len()) as u64) < total;
            all.extend(clients);
            if more {
                let after = all.last().map(|c| c.id.clone());
                send(
                    tx,
                    pending,
                    Request::ListClients {
                        after,
                        limit: MAX_PAGE,
                    },
                    Pending::Clients(all),
                )
                .await?;
                None
            } else {
                Some(LinkEvent::Clients(all))
            }
        }
        (Pending::Action(done), response) => {
            // After a change, show it without waiting for the next refresh.
            if !matches!(response, Response::Error(_)) {
                send(tx, pending, Request::ListKeys, Pending::Keys).await?;
                send(
                    tx,
                    pending,
                    Request::ListClients {
                        after: None,
                        limit: MAX_PAGE,
                    },
                    Pending::Clients(Vec::new()),
                )
                .await?;
            }
            Some(LinkEvent::Done(outcome(response, done)))
        }
        (_, Response::Error(e)) => return Err(e.to_string()),
        _ => return Err("the daemon answered something this dashboard does not expect".into()),
    })
}

fn outcome(response: Response, done: String) -> Result<Outcome, String> {
    match response {
        Response::ClientAdded { id, secret } => Ok(Outcome::ClientAdded { id, secret }),
        Response::SecretRotated {
            id,
            secret,
            old_valid_until,
        } => Ok(Outcome::SecretRotated {
            id,
            secret,
            old_until: old_valid_until,
        }),
        Response::KeyRotated { active, .. } => Ok(Outcome::Message(format!(
            "keys rotated: {} signs now",
            short_kid(&active)
        ))),
        Response::KeyRevoked { kid, .. } => {
            Ok(Outcome::Message(format!("key {} revoked", short_kid(&kid))))
        }
        Response::Error(e) => Err(e.to_string()),
        _ => Ok(Outcome::Message(done)),
    }
}

/// A kid's first characters, enough to tell keys apart in a status line.
fn short_kid(kid: &str) -> String {
    match kid.char_indices().nth(12) {
        Some((cut, _)) => format!("{}…", &kid[..cut]),
        None => kid.to_owned(),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
