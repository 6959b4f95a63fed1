//! The admin socket: a Unix stream socket (mode 0660) for the `tokendealer` tool.
//!
//! Who may talk is decided from the peer's credentials (SO_PEERCRED): root, the daemon's own
//! uid, and the uids and primary gids listed in the config. A peer that breaks the protocol
//! loses its own connection and nothing else.

use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use tokendealer_shared::{
    admin::{
        AdminError, ChangeKind, ClientFrame, ClientInfo, Event, Hello, KeyInfo, KeyState, MAX_PAGE,
        PROTOCOL_VERSION, Request, Response, ServerFrame, Status,
    },
    clients_file,
    frame::{self, FrameError, MAX_FRAME},
};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    AdminAccess, State,
    clients::{self, Client, Edit, EditError, Edited, WriteError},
    config::MAX_TOKEN_TTL,
    keys::{KeyChangeError, RotationRefused},
};

/// How many admin connections are served at once. When all are taken, a newcomer ends the
/// connection that has sat idle longest; with none idle, it waits for a request to finish,
/// and later peers wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// How many of them may be subscribed to stats (dashboards) at once: never all, so that
/// the others can always be made room for a one-shot command (`systemctl reload` among them).
const MAX_SUBSCRIBERS: u32 = 24;
/// How many peers that may not administer are told so at once; more are just closed.
const MAX_REFUSALS: usize = 4;
/// How long a new peer has to greet.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may sit idle between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a read-only request may take before the peer is told it failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a frame may wait for a peer that does not read before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the admin socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("refusing to replace {}: it exists and is not a socket; move it or set `admin_socket`", .0.display())]
    NotASocket(PathBuf),
    #[error("another tokendealerd is already listening on {}", .0.display())]
    InUse(PathBuf),
    #[error("cannot create the admin socket {}: {source}{}", path.display(), hint(path, source))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What to do about a socket path the kernel will not take.
fn hint(path: &Path, source: &io::Error) -> &'static str {
    // sun_path holds 108 bytes, the terminating NUL included.
    if path.as_os_str().len() >= 108 || source.kind() == ErrorKind::InvalidInput {
        "; a Unix socket path has at most 107 bytes: set a shorter `admin_socket` in the config"
    } else {
        ""
    }
}

/// Binds the admin socket at `path`, replacing a stale socket a crashed daemon left behind.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err)?;
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindError::NotASocket(path.to_owned()));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(path.to_owned())),
            // Nobody answers: a stale socket from a daemon that did not clean up.
            Err(_) => fs::remove_file(path).map_err(io_err)?,
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    // Clients connect by this path, which the kernel takes up to 107 bytes.
    if path.as_os_str().len() >= 108 {
        return Err(io_err(io::Error::from(ErrorKind::InvalidInput)));
    }
    // A socket is made with the umask's mode. Made where it is served, a loose umask (000)
    // would let anyone connect before the chmod, while the file already vouched for its
    // group (see `vouching_group`). So it is made in a directory of its own, which nobody
    // else may enter, made 0660 there, and only then moved into place.
    let staging = staging_dir(parent).map_err(io_err)?;
    let placed = place(&staging, path);
    // Only what this call made: the socket if it was not moved, and its directory.
    drop(fs::remove_file(staging.join("s")));
    drop(fs::remove_dir(&staging));
    match placed {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(BindError::InUse(path.to_owned())),
        Err(e) => Err(io_err(e)),
    }
}

/// Makes a new directory in `parent` that only this user may enter, under a name nobody
/// else made (one found there, another's or left by a crash, is not touched).
fn staging_dir(parent: &Path) -> io::Result<PathBuf> {
    let mut builder = fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    let mut tries = 0;
    loop {
        let mut name = [0u8; 6];
        aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut name)
            .map_err(|_| io::Error::other("no system randomness"))?;
        let dir = parent.join(format!(".admin-sock.{}", hex::encode(name)));
        match builder.create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Binds the socket in `staging`, makes it 0660 and moves it to `path`, never over a file
/// there (a socket another daemon bound since it was looked for is in use).
fn place(staging: &Path, path: &Path) -> io::Result<UnixListener> {
    let dir = fs::File::open(staging)?;
    // Bound through the directory's descriptor: the staging path may be longer than the
    // 107 bytes a socket path may have, though `path` is not.
    let through_fd = PathBuf::from(format!(
        "/proc/self/fd/{}/s",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ));
    let listener = match UnixListener::bind(&through_fd) {
        Ok(listener) => listener,
        // No /proc: the staging path itself, when it is short enough.
        Err(e) if e.kind() == ErrorKind::NotFound => UnixListener::bind(staging.join("s"))?,
        Err(e) => return Err(e),
    };
    let staged = staging.join("s");
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o660))?;
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        &staged,
        rustix::fs::CWD,
        path,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => {}
        // A file system without RENAME_NOREPLACE: a hard link never replaces either.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            fs::hard_link(&staged, path)?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(listener)
}

/// Removes the socket at shutdown.
pub fn unlink(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!(socket = %path.display(), error = %e, "cannot remove the admin socket");
    }
}

fn own_uid() -> u32 {
    static UID: OnceLock<u32> = OnceLock::new();
    // The owner of /proc/self is the process's uid; this keeps us free of `unsafe` libc calls.
    *UID.get_or_init(|| fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid()))
}

/// Accepts admin connections until `stop` fires; then closes those still open.
/// A socket bound again where the first was deleted (see `State::reload`) replaces it: the
/// new listener comes through `rebound`.
pub async fn serve(
    mut listener: UnixListener,
    mut rebound: tokio::sync::mpsc::UnboundedReceiver<UnixListener>,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let idle = Arc::new(Idle::default());
    let subscribers = Arc::new(Semaphore::new(MAX_SUBSCRIBERS as usize));
    let tracker = TaskTracker::new();
    // Where peers connect: its group and mode can vouch for a peer's group membership. The
    // path the daemon serves, not the listener's own: one the daemon bound was bound in a
    // staging directory and moved (see `bind`). None for an abstract socket.
    let socket_file = listener
        .local_addr()
        .ok()
        .filter(|a| a.as_pathname().is_some())
        .map(|_| state.admin_socket.clone());
    'accepting: loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            Some(again) = rebound.recv() => {
                listener = again;
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((uid, gid)) = credentials(&stream) else {
            continue;
        };
        // Whether connecting through the socket file proved membership of its group: told
        // now, as the kernel checked it now; which groups may administer is asked of the
        // lists in force at each request.
        let vouched = socket_file.as_deref().and_then(vouching_group);
        let lists = state.admin_access.load_full();
        let allowed = permitted(uid, gid, vouched, &lists);
        // A peer that may not administer takes no slot: silent connections from it must not
        // keep permitted admins waiting, nor end their idle ones. It is told why on a budget
        // of its own, or, with that spent, just closed.
        let permit = if allowed {
            match slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Every slot is taken: make room by ending the connection idle longest
                    // (a script's leaked connection, a peer that never greeted); with none
                    // idle, the first to become so (a request answered). While this peer
                    // waits for a slot no other is accepted, so the excess stays in the
                    // backlog rather than holding open connections.
                    loop {
                        let went_idle = idle.entered.notified();
                        tokio::pin!(went_idle);
                        // Registered before looking, so that a connection going idle in
                        // between is not missed.
                        went_idle.as_mut().enable();
                        match idle.evict_oldest(Instant::now()) {
                            // Its slot comes back as soon as its task has ended: wait for
                            // that alone, or a second connection would be closed for one
                            // newcomer.
                            Eviction::Evicted => {
                                tracing::info!(
                                    "admin connections all taken; closed the one idle longest"
                                );
                                tokio::select! {
                                    () = stop.cancelled() => break 'accepting,
                                    permit = slots.clone().acquire_owned() => break permit.expect("semaphore never closed"),
                                }
                            }
                            // Idle for less than a moment: maybe between two pages of a
                            // listing. Its turn comes when it has been idle a while.
                            Eviction::NotBefore(at) => tokio::select! {
                                biased;
                                () = stop.cancelled() => break 'accepting,
                                permit = slots.clone().acquire_owned() => break permit.expect("semaphore never closed"),
                                () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                            },
                            Eviction::NoneIdle => tokio::select! {
                                biased;
                                () = stop.cancelled() => break 'accepting,
                                permit = slots.clone().acquire_owned() => break permit.expect("semaphore never closed"),
                                () = &mut went_idle => {}
                            },
                        }
                    }
                }
            }
        } else {
            match refusals.clone().try_acquire_owned() {
                Ok(refusal) => refusal,
                Err(_) => {
                    tracing::warn!(uid, "admin connection refused: uid is not permitted");
                    continue;
                }
            }
        };
        let peer = Peer {
            uid,
            gid,
            allowed,
            vouched,
            lists,
            idle: idle.clone(),
            subscribers: subscribers.clone(),
        };
        let state = state.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            if let Err(e) = converse(stream, &state, &peer, &stop).await {
                tracing::info!(uid, error = %e, "admin connection closed");
            }
        });
    }
    tracker.close();
    // A change being written is answered before its connection ends; but a reload stuck on
    // a hung file system, or a peer that stopped reading, must not hold the stop forever.
    if tokio::time::timeout(crate::http::DRAIN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("admin connections still busy at the drain deadline; closing them");
    }
}

/// One admin connection's peer, and the shared budgets it draws on.
struct Peer {
    uid: u32,
    gid: u32,
    /// Whether it was permitted when it connected; each request and stats tick checks
    /// again after a reload (which may have taken its access away).
    allowed: bool,
    /// The group whose membership connecting through the socket file proved, if any.
    vouched: Option<u32>,
    /// The access lists `allowed` was decided by.
    lists: Arc<AdminAccess>,
    idle: Arc<Idle>,
    subscribers: Arc<Semaphore>,
}

/// How long a connection must have been idle before a newcomer may close it: a tool paging
/// through a listing is idle between two pages for far less.
const EVICTABLE_AFTER: Duration = Duration::from_millis(500);

/// The connections waiting for their peer's next frame, none of them subscribed, by how
/// long they have waited (and since when): the first is the one to end when a newcomer
/// needs its slot.
#[derive(Default)]
struct Idle {
    waiting: std::sync::Mutex<IdleMap>,
    next: std::sync::atomic::AtomicU64,
    /// Told whenever a connection becomes idle: a newcomer waiting for a slot looks again.
    entered: tokio::sync::Notify,
}

type IdleMap = std::collections::BTreeMap<u64, (Instant, CancellationToken)>;

/// What [`Idle::evict_oldest`] did.
enum Eviction {
    Evicted,
    /// The oldest may be closed from then on.
    NotBefore(Instant),
    NoneIdle,
}

impl Idle {
    /// Enters a connection as idle from now until the guard is dropped; the guard's token
    /// fires if it is to close.
    fn enter(self: &Arc<Self>) -> IdleGuard {
        let seq = self.next.fetch_add(1, Relaxed);
        let token = CancellationToken::new();
        self.lock().insert(seq, (Instant::now(), token.clone()));
        self.entered.notify_waiters();
        IdleGuard {
            idle: self.clone(),
            seq,
            token,
        }
    }

    /// Ends the connection idle longest, if it has been idle for [`EVICTABLE_AFTER`].
    fn evict_oldest(&self, now: Instant) -> Eviction {
        let mut waiting = self.lock();
        let Some(mut oldest) = waiting.first_entry() else {
            return Eviction::NoneIdle;
        };
        let evictable_at = oldest.get().0 + EVICTABLE_AFTER;
        if evictable_at > now {
            return Eviction::NotBefore(evictable_at);
        }
        oldest.get_mut().1.cancel();
        oldest.remove();
        Eviction::Evicted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap> {
        // The map is consistent whatever panicked while holding it.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct IdleGuard {
    idle: Arc<Idle>,
    seq: u64,
    token: CancellationToken,
}

impl IdleGuard {
    /// Ends the connection's idleness; returns whether it was chosen to close meanwhile (a
    /// request that came as it was evicted: the newcomer waits for this slot alone). From
    /// here on it cannot be: eviction and this take the same lock.
    fn leave(self) -> bool {
        let token = self.token.clone();
        drop(self);
        token.is_cancelled()
    }
}

impl Drop for IdleGuard {
    fn drop(&mut self) {
        self.idle.lock().remove(&self.seq);
    }
}

/// The peer's uid and primary gid; `None` when they cannot be told.
fn credentials(stream: &UnixStream) -> Option<(u32, u32)> {
    match stream.peer_cred() {
        Ok(cred) => Some((cred.uid(), cred.gid())),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read admin peer credentials; closing");
            None
        }
    }
}

/// Whether a peer may administer by `access`: root, the daemon's own uid, a listed uid, a
/// listed primary gid, or a listed group its connection proved membership of.
fn permitted(uid: u32, gid: u32, vouched: Option<u32>, access: &AdminAccess) -> bool {
    uid == 0
        || uid == own_uid()
        || access.uids.contains(&uid)
        || access.gids.contains(&gid)
        || vouched.is_some_and(|group| access.gids.contains(&group))
}

/// A permitted peer's access, checked again whenever the access lists were reloaded.
struct Access<'p> {
    peer: &'p Peer,
    checked: Arc<AdminAccess>,
}

impl<'p> Access<'p> {
    fn new(peer: &'p Peer) -> Self {
        Self {
            peer,
            checked: peer.lists.clone(),
        }
    }

    /// Whether the peer may still administer: true at once unless a reload stored other
    /// lists since the last look.
    fn still_permits(&mut self, state: &State) -> bool {
        let now = state.admin_access.load_full();
        if Arc::ptr_eq(&now, &self.checked) {
            return true;
        }
        self.checked = now;
        let peer = self.peer;
        permitted(peer.uid, peer.gid, peer.vouched, &self.checked)
    }
}

/// The group membership that connecting through the socket file at `path` takes: the
/// file's group, when the file belongs to root or to us, its group may read and write, and
/// other users have no access. Then the kernel checked every peer against all of its
/// groups when it connected, supplementary ones included (`usermod -aG`), which
/// SO_PEERCRED cannot tell: it carries the primary gid only.
///
/// Not with a POSIX ACL on the file: its group bits are then the ACL's mask, and a named
/// user entry could let in someone in none of the groups.
fn vouching_group(path: &Path) -> Option<u32> {
    let file = fs::metadata(path).ok()?;
    let vouches = (file.uid() == 0 || file.uid() == own_uid())
        && file.mode() & 0o060 == 0o060
        && file.mode() & 0o007 == 0
        && !has_acl(path);
    vouches.then(|| file.gid())
}

/// Whether the file carries an access ACL. An error other than "no ACL" or "no ACL support
/// here" counts as yes: the file then vouches for nobody.
fn has_acl(path: &Path) -> bool {
    match rustix::fs::getxattr(path, "system.posix_acl_access", &mut [0u8; 0]) {
        Ok(_) => true,
        Err(e) => !matches!(e, rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP),
    }
}

/// One admin connection. `stop` ends it between requests only: a request being handled
/// when the daemon stops is answered first (a change lands either way, and an added
/// client's secret exists nowhere but in that answer).
async fn converse(
    stream: UnixStream,
    state: &Arc<State>,
    peer: &Peer,
    stop: &CancellationToken,
) -> Result<(), FrameError> {
    let (uid, allowed) = (peer.uid, peer.allowed);
    let (mut rx, mut tx) = stream.into_split();
    // Only a permitted peer holds one of the slots a newcomer may need.
    let waiting = allowed.then(|| peer.idle.enter());
    let evicted = waiting.as_ref().map(|w| w.token.clone().cancelled_owned());
    let greeting = tokio::select! {
        biased;
        () = stop.cancelled() => return Ok(()),
        () = async { evicted.expect("guarded").await }, if evicted.is_some() => return Ok(()),
        greeting = tokio::time::timeout(HELLO_TIMEOUT, frame::read::<ClientFrame, _>(&mut rx)) => greeting,
    };
    drop(waiting);
    let hello = match greeting {
        Ok(Ok(Some(ClientFrame::Hello(hello)))) => hello,
        Ok(Ok(Some(ClientFrame::Request(_)))) => {
            return Err(FrameError::Io(io::Error::new(
                ErrorKind::InvalidData,
                "request before hello",
            )));
        }
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(FrameError::Io(io::Error::new(
                ErrorKind::TimedOut,
                "no hello in time",
            )));
        }
    };
    // Our greeting goes first whatever follows: its layout is frozen, so any version of the
    // tool can read it and explain a mismatch.
    send(&mut tx, &ServerFrame::Hello(Hello::current())).await?;
    if !allowed {
        tracing::warn!(uid, "admin connection refused: uid is not permitted");
        return send(
            &mut tx,
            &ServerFrame::Refused(AdminError::PermissionDenied { uid }),
        )
        .await;
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        tracing::warn!(
            uid,
            tool = hello.protocol_version,
            daemon = PROTOCOL_VERSION,
            "admin protocol mismatch"
        );
        let refusal = AdminError::ProtocolMismatch {
            daemon: PROTOCOL_VERSION,
            tool: hello.protocol_version,
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        return send(&mut tx, &ServerFrame::Refused(refusal)).await;
    }

    // Frames are read by their own task: reading is not cancel-safe, and the loop below
    // must wait on requests and on stats ticks at once.
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(async move {
        loop {
            let frame = frame::read::<ClientFrame, _>(&mut rx).await;
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    let mut access = Access::new(peer);
    let mut ticks: Option<tokio::sync::broadcast::Receiver<_>> = None;
    // Held while subscribed: a dashboard's slot is never taken for a newcomer.
    let mut subscribed = None;
    loop {
        let idle = tokio::time::sleep(IDLE_TIMEOUT);
        let waiting = subscribed.is_none().then(|| peer.idle.enter());
        let evicted = waiting.as_ref().map(|w| w.token.clone().cancelled_owned());
        tokio::select! {
            // Closed when told, even with a request arrived meanwhile: the newcomer waits for
            // this slot alone.
            biased;
            () = stop.cancelled() => return Ok(()),
            () = async { evicted.expect("guarded").await }, if evicted.is_some() => {
                tracing::info!(uid, "admin connection closed: idle, and its slot was wanted");
                return Ok(());
            }
            frame = frames.recv() => {
                if waiting.is_some_and(IdleGuard::leave) {
                    tracing::info!(uid, "admin connection closed: idle, and its slot was wanted");
                    return Ok(());
                }
                let request = match frame {
                    Some(Ok(Some(ClientFrame::Request(request)))) => request,
                    Some(Ok(Some(ClientFrame::Hello(_)))) => {
                        return send(&mut tx, &ServerFrame::Response(Response::Error(AdminError::BadRequest))).await;
                    }
                    Some(Ok(None)) | None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                };
                tracing::debug!(uid, request = request.name(), "admin request");
                // A reload may have taken this peer's access away since it connected: an
                // open dashboard must not go on changing clients.
                if !access.still_permits(state) {
                    tracing::warn!(uid, "admin connection closed: uid no longer permitted");
                    let refusal = AdminError::PermissionDenied { uid };
                    return send(&mut tx, &ServerFrame::Response(Response::Error(refusal))).await;
                }
                if request == Request::Subscribe && subscribed.is_none() {
                    match peer.subscribers.clone().try_acquire_owned() {
                        Ok(permit) => {
                            subscribed = Some(permit);
                            ticks = Some(state.stats.subscribe());
                        }
                        Err(_) => {
                            tracing::info!(uid, max = MAX_SUBSCRIBERS, "admin: subscription refused, too many dashboards open");
                            let refusal = AdminError::TooManySubscribers { max: MAX_SUBSCRIBERS };
                            send(&mut tx, &ServerFrame::Response(Response::Error(refusal))).await?;
                            continue;
                        }
                    }
                }
                // A change runs to its end and its real outcome is told: cut short by a
                // timeout it would still land (the blocking write goes on), with an added
                // client's or a rotated secret never shown. Only reads are given up on.
                let response = if request.changes_state() {
                    handle(state, request, uid).await
                } else {
                    match tokio::time::timeout(REQUEST_TIMEOUT, handle(state, request, uid)).await {
                        Ok(response) => response,
                        Err(_) => Response::Error(AdminError::Internal("the request timed out".into())),
                    }
                };
                send(&mut tx, &ServerFrame::Response(response)).await?;
            }
            tick = async { ticks.as_mut().expect("guarded").recv().await }, if ticks.is_some() => {
                // Nor go on seeing which clients get tokens.
                if !access.still_permits(state) {
                    tracing::warn!(uid, "admin connection closed: uid no longer permitted");
                    return Ok(());
                }
                match tick {
                    Ok(tick) => send(&mut tx, &ServerFrame::Event(Event::Stats((*tick).clone()))).await?,
                    // A slow reader missed some ticks; it gets the next ones.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
            () = idle, if ticks.is_none() => return Ok(()),
        }
    }
}

/// Writes one frame, giving up on a peer that stops reading.
async fn send(
    tx: &mut tokio::net::unix::OwnedWriteHalf,
    frame: &ServerFrame,
) -> Result<(), FrameError> {
    match tokio::time::timeout(WRITE_TIMEOUT, frame::write(tx, frame)).await {
        Ok(result) => result,
        Err(_) => Err(FrameError::Io(io::Error::new(
            ErrorKind::TimedOut,
            "peer stopped reading",
        ))),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn handle(state: &Arc<State>, request: Request, uid: u32) -> Response {
    match request {
        Request::Status => Response::Status(Box::new(status(state))),
        // On the blocking pool: the first page of a registry sorts its clients.
        Request::ListClients { after, limit } => {
            let listing = state.clone();
            tokio::task::spawn_blocking(move || list_clients(&listing, after.as_deref(), limit))
                .await
                .unwrap_or_else(|e| Response::Error(AdminError::Internal(e.to_string())))
        }
        Request::ListKeys => Response::Keys(key_infos(state)),
        Request::RotateKey { now } => {
            let keys = state.clone();
            let result =
                tokio::task::spawn_blocking(move || keys.keys.rotate(now, keys.longest_ttl()))
                    .await;
            match result {
                Ok(Ok(r)) => {
                    tracing::info!(uid, active = %r.active, forced = now, "admin: keys rotated");
                    state
                        .changes
                        .note_active_key(|| state.active_kid(), Some(uid));
                    Response::KeyRotated {
                        active: r.active,
                        retiring: r.retiring,
                        next: r.next,
                        next_may_sign_at: r.next_may_sign_at,
                    }
                }
                Ok(Err(e)) => Response::Error(key_error(e)),
                Err(e) => Response::Error(AdminError::Internal(e.to_string())),
            }
        }
        Request::RevokeKey { kid } => {
            let keys = state.clone();
            let revoked = kid.clone();
            let result =
                tokio::task::spawn_blocking(move || keys.keys.revoke(&revoked, keys.longest_ttl()))
                    .await;
            match result {
                Ok(Ok(former_state)) => {
                    tracing::warn!(uid, %kid, "admin: key revoked");
                    state
                        .changes
                        .note_revoked(kid.clone(), || state.active_kid(), Some(uid));
                    Response::KeyRevoked {
                        kid,
                        former_state,
                        active: state.keys.load().active_kid().to_owned(),
                    }
                }
                Ok(Err(e)) => Response::Error(key_error(e)),
                Err(e) => Response::Error(AdminError::Internal(e.to_string())),
            }
        }
        Request::Subscribe => {
            tracing::info!(uid, "admin: subscribed to stats");
            Response::Subscribed
        }
        Request::Reload => {
            tracing::info!(uid, "admin: reload");
            match state.reload_announced().await {
                Ok(outcome) => Response::Reloaded(outcome),
                Err(e) => Response::Error(AdminError::Internal(e.to_string())),
            }
        }
        Request::AddClient {
            id,
            audiences,
            scopes,
            ttl_secs,
        } => {
            let ttl = ttl_secs.map(Duration::from_secs);
            if let Some(Err(problem)) = ttl.map(clients_file::check_token_ttl) {
                return Response::Error(AdminError::InvalidInput(format!(
                    "the token lifetime {problem}"
                )));
            }
            let secret = clients::new_secret();
            let edit = Edit::Add {
                id: id.clone(),
                audiences,
                scopes,
                ttl,
                secret_hash: clients::hash_secret(&secret),
            };
            match apply(state, uid, edit).await {
                Ok(()) => {
                    tracing::info!(uid, client = %id, "admin: client added");
                    Response::ClientAdded { id, secret }
                }
                Err(e) => Response::Error(e),
            }
        }
        Request::RotateSecret { id, keep_old_secs } => {
            let secret = clients::new_secret();
            let keep_old_until = (keep_old_secs > 0).then(|| {
                jiff::Timestamp::now()
                    .checked_add(Duration::from_secs(
                        keep_old_secs.min(MAX_TOKEN_TTL.as_secs()),
                    ))
                    .unwrap_or(jiff::Timestamp::MAX)
            });
            let edit = Edit::RotateSecret {
                id: id.clone(),
                new_hash: clients::hash_secret(&secret),
                keep_old_until,
            };
            match apply(state, uid, edit).await {
                Ok(()) => {
                    // What the file now holds, not what was asked: the old secret may have
                    // had less time left than the overlap asked for.
                    let old_valid_until = old_secret_until(state, &id);
                    tracing::info!(uid, client = %id, old_valid_until, "admin: secret rotated");
                    Response::SecretRotated {
                        id,
                        secret,
                        old_valid_until,
                    }
                }
                Err(e) => Response::Error(e),
            }
        }
        Request::DisableClient { id } => {
            done(
                state,
                uid,
                "client disabled",
                Edit::SetDisabled { id, disabled: true },
            )
            .await
        }
        Request::EnableClient { id } => {
            done(
                state,
                uid,
                "client enabled",
                Edit::SetDisabled {
                    id,
                    disabled: false,
                },
            )
            .await
        }
        Request::RemoveClient { id } => {
            done(state, uid, "client removed", Edit::Remove { id }).await
        }
        Request::ImportClients { clients } => {
            let count = clients.len() as u64;
            let ids: Vec<String> = clients.iter().map(|(id, _)| id.clone()).collect();
            match apply(state, uid, Edit::Import { clients }).await {
                Ok(()) => {
                    tracing::info!(uid, count, clients = ?ids, "admin: clients imported");
                    Response::Imported { count }
                }
                Err(e) => Response::Error(e),
            }
        }
    }
}

async fn done(state: &State, uid: u32, what: &'static str, edit: Edit) -> Response {
    let id = match &edit {
        Edit::SetDisabled { id, .. } | Edit::Remove { id } => id.clone(),
        _ => String::new(),
    };
    match apply(state, uid, edit).await {
        Ok(()) => {
            tracing::info!(uid, client = %id, "admin: {what}");
            Response::Done
        }
        Err(e) => Response::Error(e),
    }
}

/// Until when a client's previous secret works, as the file now holds it: after a rotation,
/// maybe less than the overlap asked for, if the old secret had less time left.
fn old_secret_until(state: &State, id: &str) -> Option<i64> {
    state
        .clients
        .load()
        .get(id)
        .and_then(|c| c.old_secret_until(jiff::Timestamp::now().as_second()))
}

/// What an edit changes, for the change log.
fn change_of(edit: &Edit) -> ChangeKind {
    match edit {
        Edit::Add { id, .. } => ChangeKind::ClientAdded { id: id.clone() },
        Edit::Remove { id } => ChangeKind::ClientRemoved { id: id.clone() },
        Edit::SetDisabled { id, disabled: true } => ChangeKind::ClientDisabled { id: id.clone() },
        Edit::SetDisabled {
            id,
            disabled: false,
        } => ChangeKind::ClientEnabled { id: id.clone() },
        Edit::RotateSecret { id, .. } => ChangeKind::SecretRotated {
            id: id.clone(),
            old_valid_until: None,
        },
        Edit::Import { clients } => ChangeKind::ClientsImported {
            count: clients.len() as u64,
        },
    }
}

/// Runs a clients-file edit on the blocking pool (it fsyncs) and types its failure; a
/// change made is logged with `uid`.
async fn apply(state: &State, uid: u32, edit: Edit) -> Result<(), AdminError> {
    let mut change = change_of(&edit);
    let edited = apply_edit(state, edit).await?;
    // Done already (disabling a disabled client): no change for the dashboards to tell.
    if edited == Edited::Written {
        if let ChangeKind::SecretRotated {
            id,
            old_valid_until,
        } = &mut change
        {
            *old_valid_until = old_secret_until(state, id);
        }
        state.changes.record(Some(uid), change);
    }
    Ok(())
}

async fn apply_edit(state: &State, edit: Edit) -> Result<Edited, AdminError> {
    let (clients, keys, token_ttl) = (state.clients.clone(), state.keys.clone(), state.token_ttl);
    let result = tokio::task::spawn_blocking(move || {
        let result = clients.edit(&edit);
        crate::note_longest_ttl(&keys, &clients, token_ttl);
        result
    })
    .await
    .map_err(|e| AdminError::Internal(e.to_string()))?;
    result.map_err(|e| match e {
        WriteError::Edit(EditError::Exists(id)) => AdminError::ClientExists(id),
        WriteError::Edit(EditError::NoSuchClient(id)) => AdminError::NoSuchClient(id),
        WriteError::Edit(EditError::Invalid(m)) => AdminError::InvalidInput(m),
        WriteError::Edit(EditError::FileInvalid(e)) => AdminError::ClientsFileInvalid {
            file: state.clients.path().display().to_string(),
            reason: e.to_string(),
        },
        WriteError::Empty { .. } => AdminError::ClientsFileInvalid {
            file: state.clients.path().display().to_string(),
            reason: "it is empty while clients are loaded (caught mid-save?); save it again, or \
                     leave a comment in it to mean no clients"
                .into(),
        },
        other => {
            tracing::error!(error = %other, "clients file write failed");
            AdminError::WriteFailed(other.to_string())
        }
    })
}

fn key_error(e: KeyChangeError) -> AdminError {
    match e {
        KeyChangeError::Refused(refused) => {
            let possible_at = match &refused {
                RotationRefused::TooEarly { possible_at, .. } => *possible_at,
                RotationRefused::NoNext => 0,
            };
            AdminError::RotationTooEarly {
                message: refused.to_string(),
                possible_at,
            }
        }
        KeyChangeError::NoSuchKey(kid) => AdminError::NoSuchKey(kid),
        KeyChangeError::Store(e) => {
            tracing::error!(error = %e, "key directory write failed");
            AdminError::KeyStoreFailed(e.to_string())
        }
    }
}

fn list_clients(state: &State, after: Option<&str>, limit: u32) -> Response {
    let registry = state.clients.load();
    let total = registry.len() as u64;
    let now = jiff::Timestamp::now().as_second();
    // A page ends at `limit` clients or near the frame limit, whichever comes first: clients
    // with long audience lists would otherwise make a page too large to send, and every
    // listing would fail. Readers page on until `total`, so a short page costs nothing.
    let mut bytes = 0;
    let page = registry
        .in_id_order_after(after)
        .take(limit.clamp(1, MAX_PAGE) as usize)
        .enumerate()
        .take_while(|(i, c)| {
            bytes += encoded_size(c);
            // The first always goes, so that a listing moves on whatever its size.
            *i == 0 || bytes <= PAGE_BYTES
        })
        .map(|(_, c)| ClientInfo {
            id: c.id.clone(),
            audiences: c
                .any_audience
                .then(|| "*".to_owned())
                .into_iter()
                .chain(c.audiences.iter().cloned())
                .collect(),
            scopes: c.scopes.to_vec(),
            ttl_secs: c.token_ttl.map(|t| t.as_secs()),
            disabled: c.disabled,
            old_secret_until: c.old_secret_until(now),
            issued: c.counters.issued.load(Relaxed),
            last_issued: Some(c.counters.last_issued.load(Relaxed)).filter(|&t| t > 0),
        })
        .collect();
    Response::Clients {
        clients: page,
        total,
    }
}

/// How many bytes of clients a page may hold: the frame limit less room for the rest.
const PAGE_BYTES: usize = MAX_FRAME - 64 * 1024;

/// An upper bound of a client's size in a `Clients` frame: its strings, each with a length
/// prefix of at most 10 bytes, and 64 for the numbers and flags.
fn encoded_size(c: &Client) -> usize {
    let strings = c.audiences.iter().chain(c.scopes.iter());
    c.id.len() + 10 + strings.map(|s| s.len() + 10).sum::<usize>() + 11 + 64
}

fn key_infos(state: &State) -> Vec<KeyInfo> {
    let next_may_sign_at = state.keys.next_may_sign_at();
    state
        .keys
        .load()
        .entries()
        .iter()
        .map(|e| KeyInfo {
            kid: e.meta.kid.clone(),
            alg: e.meta.alg.to_string(),
            state: e.meta.state,
            created: e.meta.created,
            activated: e.meta.activated,
            retire_at: e.meta.retire_at,
            may_sign_at: next_may_sign_at.filter(|_| e.meta.state == KeyState::Next),
        })
        .collect()
}

fn status(state: &State) -> Status {
    let registry = state.clients.load();
    let now = jiff::Timestamp::now().as_second();
    let (disabled, rotating) = registry.iter().fold((0, 0), |(disabled, rotating), c| {
        (
            disabled + u64::from(c.disabled),
            rotating + u64::from(c.old_secret_until(now).is_some()),
        )
    });
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_secs: state.started.elapsed().as_secs(),
        config_path: state.config.path.as_ref().map(|p| p.display().to_string()),
        listen: state.listen.to_string(),
        issuer: state.issuer.clone(),
        // What signs now: a reload that changed `algorithm` applies at the next rotation
        // (the next key, in `keys`, tells which).
        algorithm: state.keys.load().active().map_or_else(
            || state.keys.settings().alg.to_string(),
            |key| key.alg().to_string(),
        ),
        clients_file: state.clients.path().display().to_string(),
        clients: registry.len() as u64,
        disabled,
        rotating,
        last_reload: state.last_reload(),
        keys: key_infos(state),
        key_rotations: state.changes.key_rotations(),
        secret_rotations: state.changes.secret_rotations(),
        changes: state.changes.recent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket is moved into place already 0660, leaving nothing else in its directory;
    /// a second daemon's bind is refused while the first one's socket answers.
    #[tokio::test]
    async fn the_socket_is_placed_with_its_mode_and_never_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let _listener = bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o660);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["admin.sock"], "the staging directory is gone");
        assert!(matches!(bind(&path), Err(BindError::InUse(_))));
    }

    /// A socket path the kernel takes (up to 107 bytes) binds, though its staging path is
    /// longer; one longer is refused saying so.
    #[tokio::test]
    async fn a_long_socket_path_binds() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().as_os_str().len();
        let long = dir.path().join("d".repeat(100 - base - 12));
        let path = long.join("admin.sock");
        assert_eq!(path.as_os_str().len(), 100);
        let _listener = bind(&path).unwrap();
        std::os::unix::net::UnixStream::connect(&path).unwrap();

        let too_long = long.join("a".repeat(20));
        let err = bind(&too_long).unwrap_err();
        assert!(err.to_string().contains("107 bytes"), "{err}");
    }

    /// A connection that leaves idleness after it was chosen to close is told so (it closes
    /// rather than serve the request that came meanwhile); one that leaves before is not,
    /// and can no longer be chosen.
    #[test]
    fn leaving_idleness_tells_whether_the_connection_was_evicted() {
        let idle = Arc::new(Idle::default());
        let (first, second) = (idle.enter(), idle.enter());
        let later = Instant::now() + EVICTABLE_AFTER;
        assert!(matches!(idle.evict_oldest(later), Eviction::Evicted));
        assert!(first.leave(), "evicted before it left");
        assert!(!second.leave(), "left first");
        assert!(matches!(idle.evict_oldest(later), Eviction::NoneIdle));
    }
}
