//! The dashboard's link to the daemon: its own task, so that drawing never waits on the
//! socket. It connects, subscribes to stats, keeps the status, the keys and (while the
//! clients screen shows) the clients list fresh, carries the user's actions, and reconnects
//! by itself when the daemon goes away.

use std::{collections::VecDeque, path::PathBuf, time::Duration};

use tokendealer_shared::{
    admin::{ClientFrame, ClientInfo, Event, MAX_PAGE, Request, Response, ServerFrame},
    frame::{self, FrameError},
};
use tokio::{
    net::unix::OwnedWriteHalf,
    sync::{mpsc, watch},
    time::Instant,
};

use super::app::{LinkEvent, Msg, Outcome};
use crate::client::Connection;

/// Between connection attempts.
const RETRY: Duration = Duration::from_secs(1);
/// A subscribed daemon sends a stats tick every second: this long without a frame, it is
/// stopped or stuck, and the link starts over rather than show it as connected.
const SILENCE: Duration = Duration::from_secs(5);
/// How often the status and the keys are re-read, and at most how often the clients are.
const REFRESH: Duration = Duration::from_secs(2);
/// A clients listing is repeated no sooner than this many times its own duration after it
/// ended, so a dashboard left open on the clients screen costs the daemon at most about one
/// part in this many of a core at any size (listing 100 000 clients takes about 0.15 s: a
/// refresh every 7 s or so).
const LISTING_SPACING: u32 = 50;

/// What each request in flight was for, so its response can be routed (they come in order).
enum Pending {
    Subscribe,
    Status,
    Keys,
    /// The pages so far of a clients listing, and when it started.
    Clients(Vec<ClientInfo>, Instant),
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

/// Runs until the dashboard drops its ends of the channels. The clients list, the one read
/// that grows with the registry, is kept fresh only while `clients_shown` is true.
pub async fn run(
    socket: PathBuf,
    events: mpsc::Sender<Msg>,
    mut actions: mpsc::Receiver<Request>,
    mut clients_shown: watch::Receiver<bool>,
) {
    loop {
        let reason = match Connection::open(&socket).await {
            Ok(conn) => {
                if events.send(Msg::Link(LinkEvent::Connected)).await.is_err() {
                    return;
                }
                match session(conn, &events, &mut actions, &mut clients_shown).await {
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

/// When the clients list is read: while it is shown, every [`REFRESH`] or, for a long list,
/// spaced by [`LISTING_SPACING`] times the last listing's duration; at once when it comes
/// into view or an action changed it.
struct Listing {
    in_flight: bool,
    /// Another listing is to start when the one in flight ends (an action changed the
    /// clients under it).
    again: bool,
    next_due: Instant,
}

impl Listing {
    fn new() -> Self {
        Self {
            in_flight: false,
            again: false,
            next_due: Instant::now(),
        }
    }

    /// Starts a listing unless one is in flight, in which case another follows it.
    async fn start(
        &mut self,
        tx: &mut OwnedWriteHalf,
        pending: &mut VecDeque<Pending>,
    ) -> Result<(), String> {
        if self.in_flight {
            self.again = true;
            return Ok(());
        }
        let first_page = Request::ListClients {
            after: None,
            limit: MAX_PAGE,
        };
        send(
            tx,
            pending,
            first_page,
            Pending::Clients(Vec::new(), Instant::now()),
        )
        .await?;
        self.in_flight = true;
        Ok(())
    }

    /// A listing that began at `started` has ended; starts the next one if it is owed.
    async fn ended(
        &mut self,
        started: Instant,
        tx: &mut OwnedWriteHalf,
        pending: &mut VecDeque<Pending>,
    ) -> Result<(), String> {
        self.in_flight = false;
        let now = Instant::now();
        self.next_due = now + REFRESH.max(now.duration_since(started) * LISTING_SPACING);
        if std::mem::take(&mut self.again) {
            self.start(tx, pending).await?;
        }
        Ok(())
    }
}

/// One connected session. `Ok` when the dashboard is gone, `Err` with the reason when the
/// connection is.
async fn session(
    conn: Connection,
    events: &mpsc::Sender<Msg>,
    actions: &mut mpsc::Receiver<Request>,
    clients_shown: &mut watch::Receiver<bool>,
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
    let mut listing = Listing::new();
    // The first tick, at once, lists the clients if they are shown; a change of screen
    // while disconnected needs nothing more.
    clients_shown.borrow_and_update();
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            // Not while an action is answered: the daemon handles a connection's requests
            // one at a time, so a long one (an RSA key made, a large file written) holds
            // its ticks back, and dropping the link would lose the answer (maybe a secret).
            () = tokio::time::sleep_until(last_heard + SILENCE),
                if !pending.iter().any(|p| matches!(p, Pending::Action(_))) =>
            {
                return Err(format!("the daemon sent nothing for {} s", SILENCE.as_secs()));
            }
            _ = refresh.tick() => {
                // Skip a round rather than pile requests up behind a slow daemon.
                if pending.len() < 4 {
                    send(&mut tx, &mut pending, Request::Status, Pending::Status).await?;
                    send(&mut tx, &mut pending, Request::ListKeys, Pending::Keys).await?;
                    // Half a refresh early counts as due: `next_due` is reckoned from when the
                    // last listing ended, just after the tick that started it.
                    if *clients_shown.borrow() && !listing.in_flight && Instant::now() + REFRESH / 2 >= listing.next_due {
                        listing.start(&mut tx, &mut pending).await?;
                    }
                }
            }
            changed = clients_shown.changed() => {
                if changed.is_err() { return Ok(()) }
                if *clients_shown.borrow_and_update() {
                    listing.start(&mut tx, &mut pending).await?;
                }
            }
            action = actions.recv() => {
                let Some(action) = action else { return Ok(()) };
                let done = describe(&action);
                send(&mut tx, &mut pending, action, Pending::Action(done)).await?;
            }
            frame = frames.recv() => {
                last_heard = Instant::now();
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
                        let shown = *clients_shown.borrow();
                        route(kind, response, &mut tx, &mut pending, &mut listing, shown).await?
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
    listing: &mut Listing,
    clients_shown: bool,
) -> Result<Option<LinkEvent>, String> {
    Ok(match (kind, response) {
        (Pending::Subscribe, Response::Error(e)) => return Err(e.to_string()),
        (Pending::Subscribe, _) => None,
        (Pending::Status, Response::Status(status)) => Some(LinkEvent::Status(status)),
        (Pending::Keys, Response::Keys(keys)) => Some(LinkEvent::Keys(keys)),
        (Pending::Clients(mut all, started), Response::Clients { clients, total }) => {
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
                    Pending::Clients(all, started),
                )
                .await?;
                None
            } else {
                listing.ended(started, tx, pending).await?;
                Some(LinkEvent::Clients(all))
            }
        }
        (Pending::Action(done), response) => {
            // After a change, show it without waiting for the next refresh. Best effort:
            // the answer (it may hold a secret shown nowhere else) is delivered even if the
            // daemon went away after giving it; the reader then reports the closed link.
            if !matches!(response, Response::Error(_))
                && send(tx, pending, Request::ListKeys, Pending::Keys)
                    .await
                    .is_ok()
                && clients_shown
            {
                let _ = listing.start(tx, pending).await;
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
