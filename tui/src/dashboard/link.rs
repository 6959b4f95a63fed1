//! The dashboard's link to the daemon: its own task, so that drawing never waits on the
//! socket. It connects, subscribes to stats, keeps the status, the keys and (while the
//! clients screen shows) the clients list fresh, carries the user's actions, and reconnects
//! by itself when the daemon goes away, unless it refused this dashboard for good.

use std::{collections::VecDeque, path::PathBuf, time::Duration};

use tokendealer_shared::{
    admin::{AdminError, ClientFrame, ClientInfo, Event, MAX_PAGE, Request, Response, ServerFrame},
    frame::{self, FrameError},
};
use tokio::{
    net::unix::OwnedWriteHalf,
    sync::{mpsc, watch},
    time::Instant,
};

use super::app::{LinkEvent, Msg, Outcome};
use crate::client::{ClientError, Connection};

/// Between connection attempts.
const RETRY: Duration = Duration::from_secs(1);
/// Between attempts while the daemon has as many dashboards as it takes.
const FULL_RETRY: Duration = Duration::from_secs(15);
/// A subscribed daemon sends a stats tick every second: this long without a frame, it is
/// stopped or stuck, and the link starts over rather than show it as connected.
const SILENCE: Duration = Duration::from_secs(5);
/// How long a daemon may stay silent while an action nobody watches any more is answered:
/// far longer than any action takes (an RSA key made, a large file written).
const GIVE_UP: Duration = Duration::from_secs(30);

/// How long the link waits for what; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Between connection attempts.
    pub retry: Duration,
    /// Between attempts while the daemon has as many dashboards as it takes.
    pub full_retry: Duration,
    /// Without a frame, no action pending: the link starts over.
    pub silence: Duration,
    /// Without a frame, an action pending and the user no longer waiting for it: the link
    /// starts over.
    pub give_up: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            retry: RETRY,
            full_retry: FULL_RETRY,
            silence: SILENCE,
            give_up: GIVE_UP,
        }
    }
}

/// What the link watches of the dashboard.
pub struct Watched {
    /// The clients screen shows: the clients list is kept fresh.
    pub clients_shown: watch::Receiver<bool>,
    /// The user watches an action being answered (its waiting dialog is open).
    pub watching: watch::Receiver<bool>,
}

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The connection is gone or unusable; the link tries again.
    Lost(String),
    /// Writing failed; the daemon may have written why before it closed.
    WriteFailed(String),
    /// The daemon refused this dashboard, and would again: the link stops.
    Refused(String),
    /// The daemon has as many dashboards as it takes: the link tries again, less often.
    Full(String),
}

impl From<String> for End {
    fn from(reason: String) -> Self {
        Self::Lost(reason)
    }
}

impl From<&str> for End {
    fn from(reason: &str) -> Self {
        Self::Lost(reason.to_owned())
    }
}

impl End {
    /// A refusal in the daemon's words: final when it is about who we are or which protocol
    /// we speak, which asking again cannot change; the daemon warns in its log each time.
    fn refused(e: &AdminError) -> Self {
        match e {
            AdminError::PermissionDenied { .. } | AdminError::ProtocolMismatch { .. } => {
                Self::Refused(e.to_string())
            }
            AdminError::TooManySubscribers { .. } => Self::Full(e.to_string()),
            _ => Self::Lost(e.to_string()),
        }
    }

    fn opening(e: &ClientError) -> Self {
        match e {
            ClientError::Mismatch { .. } => Self::Refused(e.to_string()),
            ClientError::Refused(e) => Self::refused(e),
            _ => Self::Lost(e.to_string()),
        }
    }
}
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

/// Runs until the dashboard drops its ends of the channels, or the daemon refuses it for
/// good. The clients list, the one read that grows with the registry, is kept fresh only
/// while the clients screen shows.
pub async fn run(
    socket: PathBuf,
    events: mpsc::Sender<Msg>,
    mut actions: mpsc::Receiver<Request>,
    mut watched: Watched,
    timing: Timing,
) {
    loop {
        let end = match Connection::open(&socket).await {
            Ok(conn) => {
                if events.send(Msg::Link(LinkEvent::Connected)).await.is_err() {
                    return;
                }
                match session(conn, &events, &mut actions, &mut watched, timing).await {
                    Ok(()) => return,
                    Err(end) => end,
                }
            }
            Err(e) => End::opening(&e),
        };
        let (reason, wait) = match end {
            End::Lost(reason) | End::WriteFailed(reason) => (reason, timing.retry),
            // A slot frees when someone closes a dashboard, which is not a matter of seconds.
            End::Full(reason) => (reason, timing.full_retry),
            End::Refused(reason) => {
                let _ = events.send(Msg::Link(LinkEvent::Refused(reason))).await;
                return;
            }
        };
        if events
            .send(Msg::Link(LinkEvent::Disconnected(reason)))
            .await
            .is_err()
        {
            return;
        }
        // While waiting to retry, actions cannot be carried: say so at once.
        let retry = tokio::time::sleep(wait);
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
) -> Result<(), End> {
    frame::write(tx, &ClientFrame::Request(request))
        .await
        .map_err(|e| End::WriteFailed(e.to_string()))?;
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
    ) -> Result<(), End> {
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
    ) -> Result<(), End> {
        self.in_flight = false;
        let now = Instant::now();
        self.next_due = now + REFRESH.max(now.duration_since(started) * LISTING_SPACING);
        if std::mem::take(&mut self.again) {
            self.start(tx, pending).await?;
        }
        Ok(())
    }
}

/// One connected session. `Ok` when the dashboard is gone, `Err` with why when the
/// connection is.
async fn session(
    conn: Connection,
    events: &mpsc::Sender<Msg>,
    actions: &mut mpsc::Receiver<Request>,
    watched: &mut Watched,
    timing: Timing,
) -> Result<(), End> {
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
    match converse(&mut tx, &mut frames, events, actions, watched, timing).await {
        // A daemon that refuses us writes why and closes, so writing may fail first ("broken
        // pipe") while its reason waits to be read.
        Err(End::WriteFailed(reason)) => {
            let refusal = tokio::time::timeout(timing.silence, async {
                while let Some(Ok(Some(frame))) = frames.recv().await {
                    if let ServerFrame::Refused(e) = frame {
                        return Some(End::refused(&e));
                    }
                }
                None
            });
            Err(refusal.await.ok().flatten().unwrap_or(End::Lost(reason)))
        }
        other => other,
    }
}

type Frames = mpsc::Receiver<Result<Option<ServerFrame>, FrameError>>;

async fn converse(
    tx: &mut OwnedWriteHalf,
    frames: &mut Frames,
    events: &mpsc::Sender<Msg>,
    actions: &mut mpsc::Receiver<Request>,
    watched: &mut Watched,
    timing: Timing,
) -> Result<(), End> {
    let clients_shown = &mut watched.clients_shown;
    let mut pending = VecDeque::new();
    send(tx, &mut pending, Request::Subscribe, Pending::Subscribe).await?;
    let mut refresh = tokio::time::interval(REFRESH);
    let mut listing = Listing::new();
    // The first tick, at once, lists the clients if they are shown; a change of screen
    // while disconnected needs nothing more.
    clients_shown.borrow_and_update();
    let mut last_heard = Instant::now();
    let mut check_at = last_heard + timing.silence;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(check_at) => {
                let silent = last_heard.elapsed();
                if !pending.iter().any(|p| matches!(p, Pending::Action(_))) {
                    return Err(format!("the daemon sent nothing for {} s", timing.silence.as_secs()).into());
                }
                // An action is answered: the daemon handles a connection's requests one at a
                // time, so a long one (an RSA key made, a large file written) holds its ticks
                // back, and dropping the link would lose the answer (maybe a secret). The link
                // is kept, and the user told, while they wait for it; once they have stopped,
                // a daemon silent far longer than any action takes is given up on.
                if silent >= timing.give_up && !*watched.watching.borrow() {
                    return Err(format!(
                        "the daemon sent nothing for {} s; the outcome of the last action is unknown: check with `tokendealer clients list`",
                        silent.as_secs()
                    ).into());
                }
                if events.send(Msg::Link(LinkEvent::Silent(silent.as_secs()))).await.is_err() {
                    return Ok(());
                }
                check_at = Instant::now() + timing.silence.min(Duration::from_secs(1));
            }
            _ = refresh.tick() => {
                // Skip a round rather than pile requests up behind a slow daemon.
                if pending.len() < 4 {
                    send(tx, &mut pending, Request::Status, Pending::Status).await?;
                    send(tx, &mut pending, Request::ListKeys, Pending::Keys).await?;
                    // Half a refresh early counts as due: `next_due` is reckoned from when the
                    // last listing ended, just after the tick that started it.
                    if *clients_shown.borrow() && !listing.in_flight && Instant::now() + REFRESH / 2 >= listing.next_due {
                        listing.start(tx, &mut pending).await?;
                    }
                }
            }
            changed = clients_shown.changed() => {
                if changed.is_err() { return Ok(()) }
                if *clients_shown.borrow_and_update() {
                    listing.start(tx, &mut pending).await?;
                }
            }
            action = actions.recv() => {
                let Some(action) = action else { return Ok(()) };
                let done = describe(&action);
                send(tx, &mut pending, action, Pending::Action(done)).await?;
            }
            frame = frames.recv() => {
                last_heard = Instant::now();
                check_at = last_heard + timing.silence;
                let frame = match frame {
                    Some(Ok(Some(frame))) => frame,
                    Some(Ok(None)) | None => return Err("the daemon closed the connection".into()),
                    Some(Err(e)) => return Err(e.to_string().into()),
                };
                let event = match frame {
                    ServerFrame::Event(Event::Stats(tick)) => Some(LinkEvent::Tick(tick)),
                    ServerFrame::Refused(e) => return Err(End::refused(&e)),
                    ServerFrame::Hello(_) => return Err("the daemon greeted twice".into()),
                    ServerFrame::Response(response) => {
                        let kind = pending.pop_front().ok_or("the daemon answered a question nobody asked")?;
                        let shown = *clients_shown.borrow();
                        route(kind, response, tx, &mut pending, &mut listing, shown).await?
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
) -> Result<Option<LinkEvent>, End> {
    Ok(match (kind, response) {
        (Pending::Subscribe, Response::Error(e)) => return Err(End::refused(&e)),
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
        (_, Response::Error(e)) => return Err(End::refused(&e)),
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

#[cfg(test)]
mod tests {
    //! The link against a stand-in daemon on a socket of its own, which speaks the protocol
    //! as a script says: what the link does when refused, or left without an answer.

    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokendealer_shared::admin::{Hello, PROTOCOL_VERSION, ReloadOutcome, Status};
    use tokio::{
        net::{UnixListener, UnixStream},
        task::JoinHandle,
    };

    use super::*;

    /// How long any news from the link may take.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// A socket path of the test's own, removed when dropped.
    struct Socket(PathBuf);

    impl Socket {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "tokendealer-link-{}-{name}.sock",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&path);
            Self(path)
        }
    }

    impl Drop for Socket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A stand-in daemon that runs `script` on each connection; returns how many it took.
    fn daemon<F, Fut>(socket: &Socket, script: F) -> Arc<AtomicUsize>
    where
        F: Fn(UnixStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = UnixListener::bind(&socket.0).expect("binding the stand-in daemon");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(script(stream));
            }
        });
        connections
    }

    /// Reads the link's greeting and answers with `hello`.
    async fn greet(stream: &mut UnixStream, hello: Hello) {
        let greeting = frame::read::<ClientFrame, _>(stream).await;
        assert!(
            matches!(greeting, Ok(Some(ClientFrame::Hello(_)))),
            "{greeting:?}"
        );
        frame::write(stream, &ServerFrame::Hello(hello))
            .await
            .expect("greeting the link");
    }

    struct Link {
        events: mpsc::Receiver<Msg>,
        actions: mpsc::Sender<Request>,
        watching: watch::Sender<bool>,
        _clients_shown: watch::Sender<bool>,
        task: JoinHandle<()>,
    }

    fn link(socket: &Socket, timing: Timing) -> Link {
        let (events_tx, events) = mpsc::channel(64);
        let (actions, actions_rx) = mpsc::channel(4);
        let (clients_shown_tx, clients_shown) = watch::channel(false);
        let (watching_tx, watching) = watch::channel(true);
        let task = tokio::spawn(run(
            socket.0.clone(),
            events_tx,
            actions_rx,
            Watched {
                clients_shown,
                watching,
            },
            timing,
        ));
        Link {
            events,
            actions,
            watching: watching_tx,
            _clients_shown: clients_shown_tx,
            task,
        }
    }

    /// The link's next news but the daemon's data.
    async fn next(link: &mut Link) -> LinkEvent {
        loop {
            match tokio::time::timeout(DEADLINE, link.events.recv()).await {
                Ok(Some(Msg::Link(
                    LinkEvent::Status(_) | LinkEvent::Keys(_) | LinkEvent::Tick(_),
                ))) => {}
                Ok(Some(Msg::Link(event))) => return event,
                Ok(Some(other)) => panic!("the link sent {other:?}"),
                Ok(None) => panic!("the link ended"),
                Err(_) => panic!("no news from the link within {DEADLINE:?}"),
            }
        }
    }

    /// Quick retries, so that a link that would retry does so many times within the test.
    fn eager() -> Timing {
        Timing {
            retry: Duration::from_millis(10),
            full_retry: Duration::from_millis(10),
            ..Timing::default()
        }
    }

    /// Waits for the link to stop by itself, and says how many connections it made.
    async fn stops(link: Link, connections: &AtomicUsize) -> usize {
        tokio::time::timeout(DEADLINE, link.task)
            .await
            .expect("the link did not stop")
            .expect("the link panicked");
        connections.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_uid_refused_is_not_retried() {
        let socket = Socket::new("uid");
        // The daemon writes its reason and closes at once: the link's subscription may then
        // fail to be written, before the reason is read.
        let connections = daemon(&socket, |mut stream| async move {
            greet(&mut stream, Hello::current()).await;
            let refusal = ServerFrame::Refused(AdminError::PermissionDenied { uid: 65_534 });
            let _ = frame::write(&mut stream, &refusal).await;
        });
        let mut link = link(&socket, eager());
        assert!(matches!(next(&mut link).await, LinkEvent::Connected));
        let event = next(&mut link).await;
        assert!(
            matches!(&event, LinkEvent::Refused(why) if why.contains("permission denied: uid 65534") && why.ends_with("admin_uids/admin_gids)")),
            "{event:?}"
        );
        assert_eq!(stops(link, &connections).await, 1);
    }

    #[tokio::test]
    async fn another_protocol_is_not_retried() {
        let socket = Socket::new("protocol");
        let connections = daemon(&socket, |mut stream| async move {
            let hello = Hello {
                protocol_version: PROTOCOL_VERSION + 1,
                software_version: "9.9.9".into(),
            };
            greet(&mut stream, hello).await;
            let refusal = AdminError::ProtocolMismatch {
                daemon: PROTOCOL_VERSION + 1,
                tool: PROTOCOL_VERSION,
                daemon_version: "9.9.9".into(),
            };
            let _ = frame::write(&mut stream, &ServerFrame::Refused(refusal)).await;
        });
        let mut link = link(&socket, eager());
        let event = next(&mut link).await;
        assert!(
            matches!(&event, LinkEvent::Refused(why) if why.contains("9.9.9")),
            "{event:?}"
        );
        assert_eq!(stops(link, &connections).await, 1);
    }

    /// Too many dashboards open is a refusal that passes: the link tries again.
    #[tokio::test]
    async fn too_many_dashboards_is_retried() {
        let socket = Socket::new("full");
        let connections = daemon(&socket, |mut stream| async move {
            greet(&mut stream, Hello::current()).await;
            let _ = frame::read::<ClientFrame, _>(&mut stream).await;
            let refusal = Response::Error(AdminError::TooManySubscribers { max: 24 });
            let _ = frame::write(&mut stream, &ServerFrame::Response(refusal)).await;
            // As the daemon does, the connection stays open after the refusal (a closed one
            // would fail the link's next write before it reads the answer); until the link
            // hangs up, whatever else it asks goes unanswered.
            while let Ok(Some(_)) = frame::read::<ClientFrame, _>(&mut stream).await {}
        });
        let mut link = link(&socket, eager());
        for _ in 0..2 {
            assert!(matches!(next(&mut link).await, LinkEvent::Connected));
            let event = next(&mut link).await;
            assert!(
                matches!(&event, LinkEvent::Disconnected(why) if why.contains("dashboards are open")),
                "{event:?}"
            );
        }
        assert!(connections.load(Ordering::SeqCst) >= 2);
    }

    fn status() -> Status {
        Status {
            version: "0.1.0".into(),
            pid: 1,
            uptime_secs: 1,
            config_path: None,
            listen: "127.0.0.1:8080".into(),
            issuer: "http://127.0.0.1:8080".into(),
            algorithm: "RS512".into(),
            clients_file: "clients.toml".into(),
            clients: 0,
            disabled: 0,
            rotating: 0,
            last_reload: ReloadOutcome::Ok { at: 0, clients: 0 },
            keys: vec![],
            key_rotations: 0,
            secret_rotations: 0,
            changes: vec![],
        }
    }

    /// A daemon that stops answering while an action is pending: the link keeps it (the
    /// answer may be a secret) and says it is silent for as long as the user waits; once they
    /// have stopped, it gives up after [`Timing::give_up`], saying the outcome is unknown.
    #[tokio::test]
    async fn a_daemon_silent_on_an_action_is_told_then_given_up_once_nobody_waits() {
        let socket = Socket::new("silent");
        let _connections = daemon(&socket, |mut stream| async move {
            greet(&mut stream, Hello::current()).await;
            while let Ok(Some(ClientFrame::Request(request))) =
                frame::read::<ClientFrame, _>(&mut stream).await
            {
                let response = match request {
                    Request::Subscribe => Response::Subscribed,
                    Request::Status => Response::Status(Box::new(status())),
                    Request::ListKeys => Response::Keys(vec![]),
                    // Stuck: no answer, no tick, the connection open.
                    _ => break,
                };
                let _ = frame::write(&mut stream, &ServerFrame::Response(response)).await;
            }
            std::future::pending::<()>().await;
            drop(stream);
        });
        let timing = Timing {
            retry: Duration::from_millis(10),
            full_retry: Duration::from_millis(10),
            silence: Duration::from_secs(1),
            give_up: Duration::from_secs(3),
        };
        let mut link = link(&socket, timing);
        assert!(matches!(next(&mut link).await, LinkEvent::Connected));
        link.actions
            .send(Request::AddClient {
                id: "svc".into(),
                audiences: vec![],
                scopes: vec![],
                ttl_secs: None,
            })
            .await
            .expect("sending the action");
        // The user watches: past the give-up bound, the link is kept and the silence told.
        loop {
            match next(&mut link).await {
                LinkEvent::Silent(secs) if secs >= 3 => break,
                LinkEvent::Silent(_) => {}
                other => panic!("expected the daemon's silence, got {other:?}"),
            }
        }
        link.watching.send_replace(false);
        loop {
            match next(&mut link).await {
                LinkEvent::Silent(_) => {}
                LinkEvent::Disconnected(why) => {
                    assert!(
                        why.contains("the outcome of the last action is unknown")
                            && why.contains("tokendealer clients list"),
                        "{why}"
                    );
                    break;
                }
                other => panic!("expected the link given up, got {other:?}"),
            }
        }
    }
}
