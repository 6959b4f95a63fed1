//! Dashboard state and its update function. No I/O here: keys and daemon news come in as
//! [`Msg`]s, requests for the daemon go out as the return value of [`App::update`].

use std::collections::{HashMap, VecDeque};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokendealer_shared::{
    admin::{ClientInfo, KeyInfo, Request, StatsTick, Status},
    clients_file::{check_audience, check_client_id, check_scope_token},
    duration,
};

/// Ticks kept for the long chart: an hour of one-second ticks.
pub const HISTORY: usize = 3600;
/// The short chart's window.
pub const SHORT_WINDOW: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Overview,
    Clients,
    Keys,
}

impl Screen {
    pub const ALL: [Self; 3] = [Self::Overview, Self::Clients, Self::Keys];

    pub fn title(self) -> &'static str {
        match self {
            Self::Overview => "Overview",
            Self::Clients => "Clients",
            Self::Keys => "Keys",
        }
    }
}

/// The link to the daemon as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    Connecting,
    Connected,
    /// Connected, but the daemon has said nothing for this many seconds while an action is
    /// answered: the link is kept, since dropping it could lose the answer (maybe a secret).
    Silent(u64),
    /// Why the last attempt failed; the link retries by itself.
    Disconnected(String),
    /// The daemon refused this dashboard for good (not permitted, another protocol): the
    /// link does not retry, since asking again gets the same answer.
    Refused(String),
}

/// What the clients table is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Id,
    Rate,
    Total,
    LastIssued,
}

impl SortKey {
    fn next(self) -> Self {
        match self {
            Self::Id => Self::Rate,
            Self::Rate => Self::Total,
            Self::Total => Self::LastIssued,
            Self::LastIssued => Self::Id,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Rate => "tokens/s",
            Self::Total => "total",
            Self::LastIssued => "last issuance",
        }
    }
}

/// The registration form's fields, in order.
pub const FORM_FIELDS: [&str; 4] = ["id", "audiences", "scopes", "token ttl"];

/// A modal dialog; while one is open it takes every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialog {
    AddClient {
        fields: [String; 4],
        focus: usize,
        error: Option<String>,
    },
    RotateSecret {
        id: String,
        overlap: String,
        error: Option<String>,
    },
    ToggleClient {
        id: String,
        disable: bool,
    },
    RemoveClient {
        id: String,
    },
    RotateKey {
        /// The next key and when it may sign; `None` when unknown.
        next: Option<(String, i64)>,
    },
    /// A secret shown once.
    Secret {
        id: String,
        secret: String,
        note: String,
    },
    /// Waiting for the daemon to answer an action.
    Working(String),
    /// The daemon refused an action.
    Failed(String),
    /// The daemon refused the dashboard itself: the whole reason, which a status bar cuts.
    Refused(String),
}

/// Everything the dashboard reacts to.
#[derive(Debug, Clone)]
pub enum Msg {
    Key(KeyEvent),
    Link(LinkEvent),
    /// The terminal is now `height` rows tall (a page of a table is as many rows as show).
    Resize {
        height: u16,
    },
    /// A second has passed: notices age.
    Second,
    /// A signal asks the program to end (SIGTERM, SIGINT, SIGHUP, SIGQUIT).
    Quit,
}

/// News from the daemon link.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    Connected,
    Disconnected(String),
    /// Nothing from the daemon for this many seconds while an action is answered.
    Silent(u64),
    /// Refused for good: the link has stopped.
    Refused(String),
    Status(Box<Status>),
    Clients(Vec<ClientInfo>),
    Keys(Vec<KeyInfo>),
    Tick(StatsTick),
    /// The answer to an action the user asked for.
    Done(Result<Outcome, String>),
}

/// What a successful action produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    ClientAdded {
        id: String,
        secret: String,
    },
    SecretRotated {
        id: String,
        secret: String,
        old_until: Option<i64>,
    },
    Message(String),
}

/// How long a notice stays in the status bar, in seconds.
pub const NOTICE_SECS: u32 = 8;

/// What the status bar says when an action is asked for while another is unanswered.
const ONE_AT_A_TIME: &str =
    "one action at a time: still waiting for the daemon's answer to the last one";

/// A one-line notice in the status bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub text: String,
    /// Seconds left on screen; `None` for a notice about the unanswered action, which
    /// stays as long as it is true.
    left: Option<u32>,
}

/// The dashboard's state.
#[derive(Debug)]
pub struct App {
    pub socket: String,
    pub connection: Connection,
    pub screen: Screen,
    pub status: Option<Status>,
    pub clients: Vec<ClientInfo>,
    pub keys: Vec<KeyInfo>,
    pub history: VecDeque<StatsTick>,
    pub long_window: bool,
    pub selected_client: usize,
    /// The client under the cursor: it stays under it when the rows move (a refresh, a new
    /// rate order, a client added above it).
    selected_id: Option<String>,
    pub selected_key: usize,
    pub sort: SortKey,
    pub sort_descending: bool,
    pub filter: String,
    pub filtering: bool,
    pub dialog: Option<Dialog>,
    pub help: bool,
    /// A one-line notice in the status bar (the last action's result, or the wait for it).
    notice: Option<Notice>,
    /// Dialogs that came while a secret was on screen, shown once it is closed: a secret is
    /// never replaced before the user has it.
    queued: VecDeque<Dialog>,
    /// The terminal's height, for paging through a table.
    height: u16,
    /// An action was sent and its answer has not come: no other is started meanwhile (its
    /// answer could replace a secret on screen before it is read).
    awaiting: bool,
    pub quit: bool,
    pub color: bool,
}

impl App {
    pub fn new(socket: String, color: bool) -> Self {
        Self {
            socket,
            connection: Connection::Connecting,
            screen: Screen::Overview,
            status: None,
            clients: Vec::new(),
            keys: Vec::new(),
            history: VecDeque::with_capacity(HISTORY),
            long_window: false,
            selected_client: 0,
            selected_id: None,
            selected_key: 0,
            sort: SortKey::Id,
            sort_descending: false,
            filter: String::new(),
            filtering: false,
            dialog: None,
            help: false,
            notice: None,
            queued: VecDeque::new(),
            height: 24,
            awaiting: false,
            quit: false,
            color,
        }
    }

    pub fn last_tick(&self) -> Option<&StatsTick> {
        self.history.back()
    }

    /// Whether the user watches an action being answered (its waiting dialog is open).
    pub fn watching_action(&self) -> bool {
        matches!(self.dialog, Some(Dialog::Working(_)))
    }

    /// The status bar's notice, if any.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_ref().map(|n| n.text.as_str())
    }

    /// Shows `text` in the status bar for [`NOTICE_SECS`].
    fn say(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice {
            text: text.into(),
            left: Some(NOTICE_SECS),
        });
    }

    /// Shows `text`, about the unanswered action, in the status bar until the answer comes.
    fn say_until_answered(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice {
            text: text.into(),
            left: None,
        });
    }

    /// The action was answered, or will never be: what was said about waiting is stale.
    fn answered(&mut self) {
        self.awaiting = false;
        if self.notice.as_ref().is_some_and(|n| n.left.is_none()) {
            self.notice = None;
        }
    }

    /// Rows a page of a table moves: as many as it shows (the tabs, the status bar, the
    /// hint line, the table's borders and its header take six).
    fn page(&self) -> usize {
        usize::from(self.height.saturating_sub(6)).max(1)
    }

    /// Tokens per second in the last tick.
    pub fn tokens_per_second(&self) -> u64 {
        self.last_tick()
            .map_or(0, |t| per_second(t.issued, t.interval_ms))
    }

    /// Refused token requests per second in the last tick.
    pub fn failures_per_second(&self) -> u64 {
        self.last_tick()
            .map_or(0, |t| per_second(t.failures, t.interval_ms))
    }

    /// Tokens per second of one client in the last tick.
    pub fn client_rate(&self, id: &str) -> u64 {
        self.last_tick().map_or(0, |t| {
            t.clients
                .iter()
                .find(|c| c.id == id)
                .map_or(0, |c| per_second(c.issued, t.interval_ms))
        })
    }

    /// Tokens per second of every client active in the last tick.
    fn client_rates(&self) -> HashMap<&str, u64> {
        self.last_tick().map_or_else(HashMap::new, |t| {
            t.clients
                .iter()
                .map(|c| (c.id.as_str(), per_second(c.issued, t.interval_ms)))
                .collect()
        })
    }

    /// The clients table as shown: filtered, then sorted.
    pub fn visible_clients(&self) -> Vec<&ClientInfo> {
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<&ClientInfo> = self
            .clients
            .iter()
            .filter(|c| {
                needle.is_empty()
                    || c.id.to_lowercase().contains(&needle)
                    || c.audiences
                        .iter()
                        .any(|a| a.to_lowercase().contains(&needle))
                    || c.scopes.iter().any(|s| s.to_lowercase().contains(&needle))
            })
            .collect();
        // Looked up once per client, not once per comparison (a scan of the tick each).
        let rates = if self.sort == SortKey::Rate {
            self.client_rates()
        } else {
            HashMap::new()
        };
        let rate = |c: &ClientInfo| rates.get(c.id.as_str()).copied().unwrap_or(0);
        rows.sort_by(|a, b| {
            let order = match self.sort {
                SortKey::Id => a.id.cmp(&b.id),
                SortKey::Rate => rate(a).cmp(&rate(b)).then_with(|| a.id.cmp(&b.id)),
                SortKey::Total => a.issued.cmp(&b.issued).then_with(|| a.id.cmp(&b.id)),
                SortKey::LastIssued => a
                    .last_issued
                    .cmp(&b.last_issued)
                    .then_with(|| a.id.cmp(&b.id)),
            };
            if self.sort_descending {
                order.reverse()
            } else {
                order
            }
        });
        rows
    }

    fn selected_client_id(&self) -> Option<String> {
        self.visible_clients()
            .get(self.selected_client)
            .map(|c| c.id.clone())
    }

    /// Applies one message; returns a request for the daemon, if the message asks for one.
    pub fn update(&mut self, msg: Msg) -> Option<Request> {
        match msg {
            Msg::Link(event) => {
                self.link(event);
                None
            }
            Msg::Resize { height } => {
                self.height = height;
                None
            }
            Msg::Second => {
                if let Some(notice) = &mut self.notice
                    && let Some(left) = &mut notice.left
                {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        self.notice = None;
                    }
                }
                None
            }
            Msg::Quit => {
                self.quit = true;
                None
            }
            Msg::Key(key) if key.kind == KeyEventKind::Release => None,
            Msg::Key(key) => {
                let request = self.key(key);
                self.awaiting |= request.is_some();
                request
            }
        }
    }

    fn link(&mut self, event: LinkEvent) {
        // Any word from the daemon ends its silence.
        if matches!(self.connection, Connection::Silent(_))
            && !matches!(
                event,
                LinkEvent::Silent(_) | LinkEvent::Disconnected(_) | LinkEvent::Refused(_)
            )
        {
            self.connection = Connection::Connected;
        }
        match event {
            LinkEvent::Connected => self.connection = Connection::Connected,
            LinkEvent::Disconnected(why) => {
                self.connection = Connection::Disconnected(why);
                if self.awaiting {
                    self.answered();
                    self.show(Dialog::Failed(UNKNOWN_OUTCOME.into()));
                }
            }
            LinkEvent::Silent(secs) => self.connection = Connection::Silent(secs),
            LinkEvent::Refused(why) => {
                self.connection = Connection::Refused(why.clone());
                // One dialog for both: the second would replace the first.
                let shown = if self.awaiting {
                    self.answered();
                    format!("{why}. As for the last action, {UNKNOWN_OUTCOME}")
                } else {
                    why
                };
                self.show(Dialog::Refused(shown));
            }
            LinkEvent::Status(status) => self.status = Some(*status),
            LinkEvent::Clients(clients) => {
                self.clients = clients;
                self.follow_selection();
            }
            LinkEvent::Keys(keys) => {
                self.keys = keys;
                self.selected_key = self.selected_key.min(self.keys.len().saturating_sub(1));
            }
            LinkEvent::Tick(tick) => {
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(tick);
                if self.sort == SortKey::Rate && self.screen == Screen::Clients {
                    self.follow_selection();
                }
            }
            LinkEvent::Done(outcome) => {
                self.answered();
                self.done(outcome);
            }
        }
    }

    /// Shows the answer to the action that was sent.
    fn done(&mut self, outcome: Result<Outcome, String>) {
        match outcome {
            Ok(Outcome::ClientAdded { id, secret }) => {
                self.show(Dialog::Secret {
                    note: format!("Client `{id}` is registered."),
                    id,
                    secret,
                });
            }
            Ok(Outcome::SecretRotated {
                id,
                secret,
                old_until,
            }) => {
                let note = match old_until {
                    Some(t) => format!(
                        "The old secret of `{id}` keeps working until {}.",
                        crate::render::time(t)
                    ),
                    None => format!("The old secret of `{id}` no longer works."),
                };
                self.show(Dialog::Secret { id, secret, note });
            }
            Ok(Outcome::Message(message)) => {
                // Closes the waiting dialog, not one opened after Esc left it.
                if matches!(self.dialog, Some(Dialog::Working(_))) {
                    self.dialog = None;
                }
                self.say(message);
            }
            Err(reason) => self.show(Dialog::Failed(reason)),
        }
    }

    /// Opens `dialog`, unless a secret is on screen: it is shown once the secret is closed,
    /// since a secret replaced before it was copied is lost for good (only its hash is kept).
    fn show(&mut self, dialog: Dialog) {
        if matches!(self.dialog, Some(Dialog::Secret { .. })) {
            self.queued.push_back(dialog);
            self.say("more to read once the secret is closed");
        } else {
            self.dialog = Some(dialog);
        }
    }

    /// Opens a dialog that ends in an action, if one may be sent now. One action at a time:
    /// the answer to a second one could come right after the first's and, were the first's a
    /// secret, take its place before the user has read it.
    fn open_action(&mut self, dialog: Dialog) {
        if self.awaiting {
            self.say_until_answered(ONE_AT_A_TIME);
        } else if self.connection == Connection::Connected {
            self.dialog = Some(dialog);
        }
    }

    /// Puts the cursor back on the selected client after the rows changed, or, when it is
    /// gone (removed, filtered out), keeps the row number within the table.
    fn follow_selection(&mut self) {
        let rows = self.visible_clients();
        let found = self
            .selected_id
            .as_deref()
            .and_then(|id| rows.iter().position(|c| c.id == id));
        let index = found.unwrap_or_else(|| self.selected_client.min(rows.len().saturating_sub(1)));
        let id = rows.get(index).map(|c| c.id.clone());
        self.selected_client = index;
        self.selected_id = id;
    }

    fn key(&mut self, key: KeyEvent) -> Option<Request> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return None;
        }
        if self.help {
            self.help = false;
            return None;
        }
        if self.dialog.is_some() {
            return self.dialog_key(key);
        }
        if self.filtering {
            match key.code {
                KeyCode::Enter => self.filtering = false,
                KeyCode::Esc => {
                    self.filtering = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.follow_selection();
            return None;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab => self.screen = Screen::ALL[(self.screen_index() + 1) % 3],
            KeyCode::BackTab => self.screen = Screen::ALL[(self.screen_index() + 2) % 3],
            KeyCode::Char('1') => self.screen = Screen::Overview,
            KeyCode::Char('2') => self.screen = Screen::Clients,
            KeyCode::Char('3') => self.screen = Screen::Keys,
            _ => return self.screen_key(key),
        }
        None
    }

    fn screen_index(&self) -> usize {
        Screen::ALL
            .iter()
            .position(|s| *s == self.screen)
            .unwrap_or(0)
    }

    fn screen_key(&mut self, key: KeyEvent) -> Option<Request> {
        if let Some(step) = Step::of(key.code) {
            let page = self.page();
            match self.screen {
                Screen::Clients => {
                    let rows = self.visible_clients().len();
                    self.selected_client = step.from(self.selected_client, rows, page);
                    self.selected_id = self.selected_client_id();
                    return None;
                }
                Screen::Keys => {
                    self.selected_key = step.from(self.selected_key, self.keys.len(), page);
                    return None;
                }
                Screen::Overview => {}
            }
        }
        match (self.screen, key.code) {
            (Screen::Overview, KeyCode::Char('t')) => self.long_window = !self.long_window,
            (Screen::Clients, KeyCode::Char('s')) => {
                self.sort = self.sort.next();
                // Activity reads best busiest-first; ids alphabetically.
                self.sort_descending = self.sort != SortKey::Id;
                self.follow_selection();
            }
            (Screen::Clients, KeyCode::Char('S')) => {
                self.sort_descending = !self.sort_descending;
                self.follow_selection();
            }
            (Screen::Clients, KeyCode::Char('/')) => self.filtering = true,
            (Screen::Clients, KeyCode::Char('a')) => {
                self.open_action(Dialog::AddClient {
                    fields: Default::default(),
                    focus: 0,
                    error: None,
                });
            }
            (Screen::Clients, KeyCode::Char('r')) => {
                if let Some(id) = self.selected_client_id() {
                    self.open_action(Dialog::RotateSecret {
                        id,
                        overlap: "24h".into(),
                        error: None,
                    });
                }
            }
            (Screen::Clients, KeyCode::Char('d')) => {
                if let Some(client) = self.visible_clients().get(self.selected_client) {
                    let dialog = Dialog::ToggleClient {
                        id: client.id.clone(),
                        disable: !client.disabled,
                    };
                    self.open_action(dialog);
                }
            }
            (Screen::Clients, KeyCode::Char('x') | KeyCode::Delete) => {
                if let Some(id) = self.selected_client_id() {
                    self.open_action(Dialog::RemoveClient { id });
                }
            }
            (Screen::Keys, KeyCode::Char('r' | 'R')) => {
                let next = self
                    .keys
                    .iter()
                    .find(|k| k.state == tokendealer_shared::admin::KeyState::Next)
                    .and_then(|k| k.may_sign_at.map(|at| (k.kid.clone(), at)));
                self.open_action(Dialog::RotateKey { next });
            }
            _ => {}
        }
        None
    }

    fn dialog_key(&mut self, key: KeyEvent) -> Option<Request> {
        let dialog = self.dialog.take()?;
        let (next, request) = match dialog {
            Dialog::AddClient {
                mut fields,
                mut focus,
                error,
            } => match key.code {
                KeyCode::Esc => (None, None),
                KeyCode::Tab | KeyCode::Down => {
                    focus = (focus + 1) % FORM_FIELDS.len();
                    (
                        Some(Dialog::AddClient {
                            fields,
                            focus,
                            error,
                        }),
                        None,
                    )
                }
                KeyCode::BackTab | KeyCode::Up => {
                    focus = (focus + FORM_FIELDS.len() - 1) % FORM_FIELDS.len();
                    (
                        Some(Dialog::AddClient {
                            fields,
                            focus,
                            error,
                        }),
                        None,
                    )
                }
                KeyCode::Backspace => {
                    fields[focus].pop();
                    (
                        Some(Dialog::AddClient {
                            fields,
                            focus,
                            error,
                        }),
                        None,
                    )
                }
                KeyCode::Char(c) => {
                    fields[focus].push(c);
                    (
                        Some(Dialog::AddClient {
                            fields,
                            focus,
                            error,
                        }),
                        None,
                    )
                }
                KeyCode::Enter => match add_client_request(&fields) {
                    Ok(request) => (
                        Some(Dialog::Working(format!(
                            "registering `{}`…",
                            fields[0].trim()
                        ))),
                        Some(request),
                    ),
                    Err(error) => (
                        Some(Dialog::AddClient {
                            fields,
                            focus,
                            error: Some(error),
                        }),
                        None,
                    ),
                },
                _ => (
                    Some(Dialog::AddClient {
                        fields,
                        focus,
                        error,
                    }),
                    None,
                ),
            },
            Dialog::RotateSecret {
                id,
                mut overlap,
                error,
            } => match key.code {
                KeyCode::Esc => (None, None),
                KeyCode::Backspace => {
                    overlap.pop();
                    (Some(Dialog::RotateSecret { id, overlap, error }), None)
                }
                KeyCode::Char(c) => {
                    overlap.push(c);
                    (Some(Dialog::RotateSecret { id, overlap, error }), None)
                }
                KeyCode::Enter => match parse_overlap(&overlap) {
                    Ok(keep_old_secs) => (
                        Some(Dialog::Working(format!("rotating the secret of `{id}`…"))),
                        Some(Request::RotateSecret { id, keep_old_secs }),
                    ),
                    Err(e) => (
                        Some(Dialog::RotateSecret {
                            id,
                            overlap,
                            error: Some(e),
                        }),
                        None,
                    ),
                },
                _ => (Some(Dialog::RotateSecret { id, overlap, error }), None),
            },
            Dialog::ToggleClient { id, disable } => match key.code {
                KeyCode::Enter | KeyCode::Char('y') => {
                    let request = if disable {
                        Request::DisableClient { id: id.clone() }
                    } else {
                        Request::EnableClient { id: id.clone() }
                    };
                    (
                        Some(Dialog::Working(format!("updating `{id}`…"))),
                        Some(request),
                    )
                }
                KeyCode::Esc | KeyCode::Char('n') => (None, None),
                _ => (Some(Dialog::ToggleClient { id, disable }), None),
            },
            Dialog::RemoveClient { id } => match key.code {
                KeyCode::Char('y') => (
                    Some(Dialog::Working(format!("removing `{id}`…"))),
                    Some(Request::RemoveClient { id }),
                ),
                KeyCode::Esc | KeyCode::Char('n') | KeyCode::Enter => (None, None),
                _ => (Some(Dialog::RemoveClient { id }), None),
            },
            Dialog::RotateKey { next } => match key.code {
                KeyCode::Enter | KeyCode::Char('y') => (
                    Some(Dialog::Working("rotating the signing keys…".into())),
                    Some(Request::RotateKey { now: false }),
                ),
                KeyCode::Char('!') => (
                    Some(Dialog::Working("rotating the signing keys now…".into())),
                    Some(Request::RotateKey { now: true }),
                ),
                KeyCode::Esc | KeyCode::Char('n') => (None, None),
                _ => (Some(Dialog::RotateKey { next }), None),
            },
            // The secret stays on screen until the user says they have it.
            Dialog::Secret { id, secret, note } => match key.code {
                KeyCode::Enter | KeyCode::Esc => (None, None),
                _ => (Some(Dialog::Secret { id, secret, note }), None),
            },
            // Esc stops the waiting, not the action: its answer, when it comes, is shown.
            Dialog::Working(what) => match key.code {
                KeyCode::Esc => {
                    self.say_until_answered(format!(
                        "{} (still waiting for the daemon's answer)",
                        what.trim_end_matches('…')
                    ));
                    (None, None)
                }
                _ => (Some(Dialog::Working(what)), None),
            },
            Dialog::Failed(_) => (None, None),
            // Nothing more can happen once refused: `q` quits at once, as it would without
            // the dialog.
            Dialog::Refused(_) => {
                self.quit = key.code == KeyCode::Char('q');
                (None, None)
            }
        };
        // What came while a secret was shown follows it.
        self.dialog = next.or_else(|| self.queued.pop_front());
        request
    }
}

/// What to say when the daemon is gone before it answered an action.
const UNKNOWN_OUTCOME: &str = "the daemon went away before answering; the change may have been made: \
     once it is back, look with `tokendealer clients list` (or `tokendealer keys list`)";

/// `count` events in a tick `interval_ms` long, per second (to the nearest): ticks are about
/// a second apart, not exactly.
pub fn per_second(count: u64, interval_ms: u64) -> u64 {
    let ms = interval_ms.max(1);
    (count.saturating_mul(1000) + ms / 2) / ms
}

/// A move of a table's selection.
#[derive(Debug, Clone, Copy)]
enum Step {
    Up,
    Down,
    PageUp,
    PageDown,
    First,
    Last,
}

impl Step {
    fn of(code: KeyCode) -> Option<Self> {
        Some(match code {
            KeyCode::Up | KeyCode::Char('k') => Self::Up,
            KeyCode::Down | KeyCode::Char('j') => Self::Down,
            KeyCode::PageUp => Self::PageUp,
            KeyCode::PageDown => Self::PageDown,
            KeyCode::Home | KeyCode::Char('g') => Self::First,
            KeyCode::End | KeyCode::Char('G') => Self::Last,
            _ => return None,
        })
    }

    /// The row selected after this move from row `at` of `rows`, `page` rows to a page.
    fn from(self, at: usize, rows: usize, page: usize) -> usize {
        let last = rows.saturating_sub(1);
        match self {
            Self::Up => at.saturating_sub(1),
            Self::Down => at.saturating_add(1).min(last),
            Self::PageUp => at.saturating_sub(page),
            Self::PageDown => at.saturating_add(page).min(last),
            Self::First => 0,
            Self::Last => last,
        }
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Validates the registration form before anything is sent.
pub fn add_client_request(fields: &[String; 4]) -> Result<Request, String> {
    let id = fields[0].trim().to_owned();
    check_client_id(&id).map_err(|e| format!("id: {e}"))?;
    let audiences = split_list(&fields[1]);
    for a in &audiences {
        check_audience(a)?;
    }
    let scopes = split_list(&fields[2]);
    for s in &scopes {
        check_scope_token(s)?;
    }
    let ttl_secs = match fields[3].trim() {
        "" => None,
        ttl => Some(
            duration::parse(ttl)
                .map_err(|e| format!("token ttl: {e}"))?
                .as_secs(),
        ),
    };
    Ok(Request::AddClient {
        id,
        audiences,
        scopes,
        ttl_secs,
    })
}

fn parse_overlap(text: &str) -> Result<u64, String> {
    match text.trim() {
        "0" => Ok(0),
        t => duration::parse(t)
            .map(duration::secs_rounded_up)
            .map_err(|e| format!("overlap: {e} (or 0 to stop the old secret now)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::KeyEvent;

    fn key(code: KeyCode) -> Msg {
        Msg::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn typed(app: &mut App, text: &str) {
        for c in text.chars() {
            assert_eq!(app.update(key(KeyCode::Char(c))), None);
        }
    }

    fn client(id: &str, issued: u64) -> ClientInfo {
        ClientInfo {
            id: id.into(),
            audiences: vec!["https://api".into()],
            scopes: vec!["read".into()],
            ttl_secs: None,
            disabled: false,
            old_secret_until: None,
            issued,
            last_issued: None,
        }
    }

    fn connected() -> App {
        let mut app = App::new("/run/tokendealer/admin.sock".into(), false);
        app.update(Msg::Link(LinkEvent::Connected));
        app.update(Msg::Link(LinkEvent::Clients(vec![
            client("b", 5),
            client("a", 9),
            client("c", 1),
        ])));
        app
    }

    #[test]
    fn the_cursor_stays_on_its_client_when_the_rows_move() {
        let mut app = connected();
        app.screen = Screen::Clients;
        app.update(key(KeyCode::Char('j')));
        assert_eq!(app.selected_client_id().as_deref(), Some("b"));
        // Two clients registered elsewhere sort above it.
        app.update(Msg::Link(LinkEvent::Clients(vec![
            client("a", 9),
            client("aa", 0),
            client("ab", 0),
            client("b", 5),
            client("c", 1),
        ])));
        assert_eq!(app.selected_client_id().as_deref(), Some("b"));
        app.update(key(KeyCode::Char('x')));
        assert_eq!(app.dialog, Some(Dialog::RemoveClient { id: "b".into() }));
        app.update(key(KeyCode::Esc));
        // Gone: the cursor keeps its row, on whatever client is there now.
        app.update(Msg::Link(LinkEvent::Clients(vec![
            client("a", 9),
            client("c", 1),
        ])));
        assert_eq!(app.selected_client_id().as_deref(), Some("c"));
    }

    #[test]
    fn tab_cycles_screens_and_q_quits() {
        let mut app = connected();
        app.update(key(KeyCode::Tab));
        assert_eq!(app.screen, Screen::Clients);
        app.update(key(KeyCode::Tab));
        app.update(key(KeyCode::Tab));
        assert_eq!(app.screen, Screen::Overview);
        app.update(key(KeyCode::BackTab));
        assert_eq!(app.screen, Screen::Keys);
        app.update(key(KeyCode::Char('q')));
        assert!(app.quit);
    }

    #[test]
    fn ctrl_c_quits_even_inside_a_dialog() {
        let mut app = connected();
        app.screen = Screen::Clients;
        app.update(key(KeyCode::Char('a')));
        assert!(app.dialog.is_some());
        app.update(Msg::Key(KeyEvent::new(
            KeyCode::Char('c'),
            KeyModifiers::CONTROL,
        )));
        assert!(app.quit);
    }

    #[test]
    fn registering_validates_then_sends_and_shows_the_secret_once() {
        let mut app = connected();
        app.screen = Screen::Clients;
        app.update(key(KeyCode::Char('a')));
        typed(&mut app, "bad id");
        assert_eq!(
            app.update(key(KeyCode::Enter)),
            None,
            "invalid id is not sent"
        );
        assert!(matches!(
            &app.dialog,
            Some(Dialog::AddClient { error: Some(_), .. })
        ));
        for _ in 0..6 {
            app.update(key(KeyCode::Backspace));
        }
        typed(&mut app, "svc");
        app.update(key(KeyCode::Tab));
        typed(&mut app, "https://a, https://b");
        app.update(key(KeyCode::Tab));
        typed(&mut app, "read write");
        app.update(key(KeyCode::Tab));
        typed(&mut app, "1h");
        let request = app.update(key(KeyCode::Enter));
        assert_eq!(
            request,
            Some(Request::AddClient {
                id: "svc".into(),
                audiences: vec!["https://a".into(), "https://b".into()],
                scopes: vec!["read".into(), "write".into()],
                ttl_secs: Some(3600),
            })
        );
        assert!(matches!(app.dialog, Some(Dialog::Working(_))));
        app.update(Msg::Link(LinkEvent::Done(Ok(Outcome::ClientAdded {
            id: "svc".into(),
            secret: "s3cret".into(),
        }))));
        assert!(matches!(&app.dialog, Some(Dialog::Secret { secret, .. }) if secret == "s3cret"));
        app.update(key(KeyCode::Char('x')));
        assert!(app.dialog.is_some(), "only Enter or Esc closes the secret");
        app.update(key(KeyCode::Enter));
        assert!(app.dialog.is_none());
    }

    #[test]
    fn remove_asks_by_name_and_needs_yes() {
        let mut app = connected();
        app.screen = Screen::Clients;
        app.update(key(KeyCode::Char('j')));
        app.update(key(KeyCode::Char('x')));
        assert_eq!(app.dialog, Some(Dialog::RemoveClient { id: "b".into() }));
        assert_eq!(
            app.update(key(KeyCode::Enter)),
            None,
            "Enter does not confirm a removal"
        );
        app.update(key(KeyCode::Char('x')));
        assert_eq!(
            app.update(key(KeyCode::Char('y'))),
            Some(Request::RemoveClient { id: "b".into() })
        );
    }

    #[test]
    fn sort_and_filter() {
        let mut app = connected();
        app.screen = Screen::Clients;
        let ids = |app: &App| {
            app.visible_clients()
                .iter()
                .map(|c| c.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&app), ["a", "b", "c"]);
        app.update(key(KeyCode::Char('s')));
        app.update(key(KeyCode::Char('s')));
        assert_eq!(app.sort, SortKey::Total);
        assert_eq!(ids(&app), ["a", "b", "c"], "busiest first: 9, 5, 1");
        app.update(key(KeyCode::Char('S')));
        assert_eq!(ids(&app), ["c", "b", "a"]);
        app.update(key(KeyCode::Char('/')));
        typed(&mut app, "b");
        app.update(key(KeyCode::Enter));
        assert_eq!(ids(&app), ["b"]);
        app.update(key(KeyCode::Char('q')));
        assert!(app.quit, "q quits again once the filter is left");
    }

    #[test]
    fn key_rotation_needs_confirmation_and_offers_now() {
        let mut app = connected();
        app.screen = Screen::Keys;
        app.update(key(KeyCode::Char('r')));
        assert!(matches!(app.dialog, Some(Dialog::RotateKey { .. })));
        assert_eq!(
            app.update(key(KeyCode::Char('!'))),
            Some(Request::RotateKey { now: true })
        );
        app.update(Msg::Link(LinkEvent::Done(Err("too early".into()))));
        assert_eq!(app.dialog, Some(Dialog::Failed("too early".into())));
        app.update(key(KeyCode::Enter));
        assert!(app.dialog.is_none());
    }

    #[test]
    fn losing_the_daemon_mid_action_says_so() {
        let mut app = connected();
        app.screen = Screen::Keys;
        app.update(key(KeyCode::Char('r')));
        assert!(app.update(key(KeyCode::Char('y'))).is_some());
        assert!(matches!(app.dialog, Some(Dialog::Working(_))));
        app.update(Msg::Link(LinkEvent::Disconnected("refused".into())));
        assert_eq!(app.connection, Connection::Disconnected("refused".into()));
        assert!(matches!(app.dialog, Some(Dialog::Failed(_))));
        app.screen = Screen::Clients;
        app.dialog = None;
        app.update(key(KeyCode::Char('a')));
        assert!(app.dialog.is_none(), "no actions while disconnected");
    }

    #[test]
    fn no_second_action_while_one_is_answered() {
        // Esc leaves the waiting dialog; a second add then would get its secret shown
        // over the first one's a moment after it appeared.
        let mut app = connected();
        app.screen = Screen::Clients;
        app.update(key(KeyCode::Char('a')));
        typed(&mut app, "svc");
        assert!(app.update(key(KeyCode::Enter)).is_some());
        app.update(key(KeyCode::Esc));
        assert_eq!(app.dialog, None);
        app.update(key(KeyCode::Char('a')));
        assert_eq!(
            app.dialog, None,
            "no form while the first add is unanswered"
        );
        assert!(app.notice().is_some_and(|n| n.contains("waiting")));
        app.update(Msg::Link(LinkEvent::Done(Ok(Outcome::ClientAdded {
            id: "svc".into(),
            secret: "s3cret".into(),
        }))));
        assert!(matches!(&app.dialog, Some(Dialog::Secret { secret, .. }) if secret == "s3cret"));
        app.update(key(KeyCode::Enter));
        app.update(key(KeyCode::Char('a')));
        assert!(
            matches!(app.dialog, Some(Dialog::AddClient { .. })),
            "answered: actions again"
        );
    }

    /// An add answered but not yet read: Esc has left its waiting dialog.
    fn add_unanswered(app: &mut App) {
        app.screen = Screen::Clients;
        app.update(key(KeyCode::Char('a')));
        typed(app, "svc");
        assert!(app.update(key(KeyCode::Enter)).is_some());
        app.update(key(KeyCode::Esc));
        assert_eq!(app.dialog, None);
    }

    fn added(secret: &str) -> Msg {
        Msg::Link(LinkEvent::Done(Ok(Outcome::ClientAdded {
            id: "svc".into(),
            secret: secret.into(),
        })))
    }

    #[test]
    fn no_action_of_any_kind_while_one_is_answered() {
        let mut app = connected();
        add_unanswered(&mut app);
        app.screen = Screen::Keys;
        for code in [KeyCode::Char('R'), KeyCode::Char('r')] {
            app.update(key(code));
            assert_eq!(app.dialog, None, "{code:?} offered a key rotation");
            assert_eq!(app.notice(), Some(ONE_AT_A_TIME));
        }
        app.screen = Screen::Clients;
        for code in [
            KeyCode::Char('a'),
            KeyCode::Char('r'),
            KeyCode::Char('d'),
            KeyCode::Char('x'),
            KeyCode::Delete,
        ] {
            assert_eq!(app.update(key(code)), None);
            assert_eq!(app.dialog, None, "{code:?} opened a dialog");
        }
        app.update(added("s3cret"));
        assert_eq!(app.notice(), None, "answered: the wait is no longer news");
    }

    #[test]
    fn a_secret_on_screen_is_never_replaced() {
        let mut app = connected();
        add_unanswered(&mut app);
        app.update(added("s3cret"));
        // Whatever comes next waits until the secret is closed.
        app.update(Msg::Link(LinkEvent::Done(Err("too early".into()))));
        app.update(Msg::Link(LinkEvent::Refused("permission denied".into())));
        assert!(matches!(&app.dialog, Some(Dialog::Secret { secret, .. }) if secret == "s3cret"));
        assert!(
            app.notice()
                .is_some_and(|n| n.contains("once the secret is closed"))
        );
        app.update(key(KeyCode::Char('q')));
        assert!(
            !app.quit && matches!(app.dialog, Some(Dialog::Secret { .. })),
            "only Enter or Esc closes a secret"
        );
        app.update(key(KeyCode::Enter));
        assert_eq!(app.dialog, Some(Dialog::Failed("too early".into())));
        app.update(key(KeyCode::Enter));
        assert_eq!(
            app.dialog,
            Some(Dialog::Refused("permission denied".into()))
        );
        app.update(key(KeyCode::Enter));
        assert_eq!(app.dialog, None);
    }

    #[test]
    fn notices_expire_but_the_wait_for_an_answer_is_told_until_it_comes() {
        let mut app = connected();
        add_unanswered(&mut app);
        for _ in 0..NOTICE_SECS * 2 {
            app.update(Msg::Second);
        }
        assert!(
            app.notice()
                .is_some_and(|n| n.contains("still waiting for the daemon's answer"))
        );
        app.update(Msg::Link(LinkEvent::Done(Ok(Outcome::Message(
            "client `svc` removed".into(),
        )))));
        assert_eq!(app.notice(), Some("client `svc` removed"));
        for _ in 1..NOTICE_SECS {
            app.update(Msg::Second);
        }
        assert_eq!(app.notice(), Some("client `svc` removed"));
        app.update(Msg::Second);
        assert_eq!(app.notice(), None);
    }

    #[test]
    fn a_reconnect_leaves_no_wait_behind() {
        let mut app = connected();
        add_unanswered(&mut app);
        app.update(Msg::Link(LinkEvent::Disconnected("gone".into())));
        assert!(matches!(&app.dialog, Some(Dialog::Failed(why)) if why.contains("clients list")));
        app.update(Msg::Link(LinkEvent::Connected));
        assert_eq!(app.notice(), None);
    }

    #[test]
    fn a_silent_daemon_is_told_until_it_speaks() {
        let mut app = connected();
        add_unanswered(&mut app);
        app.update(Msg::Link(LinkEvent::Silent(7)));
        assert_eq!(app.connection, Connection::Silent(7));
        app.update(Msg::Link(LinkEvent::Tick(tick(1000, 3))));
        assert_eq!(app.connection, Connection::Connected);
    }

    #[test]
    fn a_refusal_is_shown_whole_and_q_quits() {
        let mut app = connected();
        app.update(Msg::Link(LinkEvent::Refused(
            "permission denied: uid 65534".into(),
        )));
        assert_eq!(
            app.connection,
            Connection::Refused("permission denied: uid 65534".into())
        );
        assert_eq!(
            app.dialog,
            Some(Dialog::Refused("permission denied: uid 65534".into()))
        );
        app.update(key(KeyCode::Esc));
        assert!(!app.quit && app.dialog.is_none(), "Esc closes the dialog");
        app.screen = Screen::Clients;
        app.update(key(KeyCode::Char('a')));
        assert_eq!(app.dialog, None, "no actions once refused");
        app.update(Msg::Link(LinkEvent::Refused("again".into())));
        app.update(key(KeyCode::Char('q')));
        assert!(app.quit, "q quits from the refusal");
    }

    #[test]
    fn tables_move_by_page_and_to_either_end() {
        let mut app = connected();
        app.update(Msg::Link(LinkEvent::Clients(
            (0..30).map(|i| client(&format!("c{i:02}"), 0)).collect(),
        )));
        // 16 rows: 10 of them table rows.
        app.update(Msg::Resize { height: 16 });
        app.screen = Screen::Clients;
        let mut at = |code| {
            app.update(key(code));
            app.selected_client_id().unwrap_or_default()
        };
        assert_eq!(at(KeyCode::PageDown), "c10");
        assert_eq!(at(KeyCode::PageDown), "c20");
        assert_eq!(at(KeyCode::PageDown), "c29");
        assert_eq!(at(KeyCode::PageUp), "c19");
        assert_eq!(at(KeyCode::Home), "c00");
        assert_eq!(at(KeyCode::End), "c29");
        assert_eq!(at(KeyCode::Char('g')), "c00");
        assert_eq!(at(KeyCode::Char('G')), "c29");
        assert_eq!(at(KeyCode::Char('k')), "c28");

        app.update(Msg::Link(LinkEvent::Keys(
            (0..3).map(|i| key_info(&format!("k{i}"))).collect(),
        )));
        app.screen = Screen::Keys;
        app.update(key(KeyCode::End));
        assert_eq!(app.selected_key, 2);
        app.update(key(KeyCode::PageUp));
        assert_eq!(app.selected_key, 0);
        app.update(key(KeyCode::Char('G')));
        assert_eq!(app.selected_key, 2);
        app.update(key(KeyCode::Char('g')));
        assert_eq!(app.selected_key, 0);
    }

    #[test]
    fn rates_are_per_second_of_the_tick() {
        let mut app = connected();
        let mut long = tick(2_000, 10);
        long.failures = 3;
        long.clients = vec![tokendealer_shared::admin::ClientTick {
            id: "a".into(),
            issued: 10,
            failures: 0,
        }];
        app.update(Msg::Link(LinkEvent::Tick(long)));
        assert_eq!(app.tokens_per_second(), 5);
        assert_eq!(app.client_rate("a"), 5);
        assert_eq!(app.failures_per_second(), 2, "1.5 rounds to 2");
    }

    fn tick(interval_ms: u64, issued: u64) -> StatsTick {
        StatsTick {
            at_ms: 0,
            interval_ms,
            issued,
            failures: 0,
            failures_by_code: vec![],
            clients: vec![],
            p50_us: 0,
            p99_us: 0,
            issued_total: 0,
            failures_total: 0,
        }
    }

    fn key_info(kid: &str) -> KeyInfo {
        KeyInfo {
            kid: kid.into(),
            alg: "RS512".into(),
            state: tokendealer_shared::admin::KeyState::Active,
            created: 0,
            activated: None,
            retire_at: None,
            may_sign_at: None,
        }
    }

    #[test]
    fn history_is_bounded() {
        let mut app = connected();
        for i in 0..(HISTORY as u64 + 10) {
            app.update(Msg::Link(LinkEvent::Tick(tick(1000, i))));
        }
        assert_eq!(app.history.len(), HISTORY);
        assert_eq!(app.last_tick().unwrap().issued, HISTORY as u64 + 9);
    }
}
