//! Drawing the dashboard from `&App`. Nothing here waits on anything.
//!
//! Meaning never rests on colour alone: states are words, the selection has a marker, and
//! with `NO_COLOR` the same screens render without any colour.

use std::collections::VecDeque;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap},
};
use tokendealer_shared::admin::{KeyState, ReloadOutcome, StatsTick};

use super::app::{App, Connection, Dialog, FORM_FIELDS, HISTORY, SHORT_WINDOW, Screen, per_second};
use crate::render::time;

/// The screen as a person reads it.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let [tabs, body, bar] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_tabs(frame, app, tabs);
    match app.screen {
        Screen::Overview => draw_overview(frame, app, body),
        Screen::Clients => draw_clients(frame, app, body),
        Screen::Keys => draw_keys(frame, app, body),
    }
    draw_status_bar(frame, app, bar);
    if let Some(dialog) = &app.dialog {
        draw_dialog(frame, app, dialog);
    }
    if app.help {
        draw_help(frame, app);
    }
}

fn style(app: &App, color: Color) -> Style {
    if app.color {
        Style::new().fg(color)
    } else {
        Style::new()
    }
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn draw_tabs(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let mut spans = vec![Span::styled(" tokendealer ", bold())];
    for (i, screen) in Screen::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, screen.title());
        if *screen == app.screen {
            spans.push(Span::styled(
                format!("[{}]", label.trim()),
                bold().add_modifier(Modifier::REVERSED),
            ));
        } else {
            spans.push(Span::raw(label));
        }
    }
    frame.render_widget(Line::from(spans), area);
}

/// The status bar's right end, kept whatever the rest says.
const HELP_HINT: &str = " · ? help · q quit ";

fn draw_status_bar(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let (state, color) = match &app.connection {
        Connection::Connecting => ("connecting…".to_owned(), Color::Yellow),
        Connection::Connected => ("connected".to_owned(), Color::Green),
        Connection::Silent(secs) => (
            format!("no word from the daemon for {secs} s (still waiting for its answer)"),
            Color::Yellow,
        ),
        Connection::Disconnected(why) => (format!("disconnected — retrying ({why})"), Color::Red),
        Connection::Refused(why) => (format!("refused — not retrying ({why})"), Color::Red),
    };
    // Most important first, for narrow terminals: the connection state, then the notice;
    // the way to help and out keeps its place at the right end.
    let mut spans = vec![
        Span::raw(" "),
        Span::styled(state, style(app, color).add_modifier(Modifier::BOLD)),
    ];
    if let Some(notice) = app.notice() {
        spans.push(Span::raw(format!(" · {notice}")));
    }
    spans.push(Span::raw(format!(" · {}", app.socket)));
    let width = spans.iter().map(Span::width).sum::<usize>();
    let hint = u16::try_from(HELP_HINT.chars().count()).unwrap_or(u16::MAX);
    if width + usize::from(hint) <= usize::from(area.width) {
        spans.push(Span::raw(HELP_HINT));
        frame.render_widget(Line::from(spans), area);
    } else {
        let [text, keys] =
            Layout::horizontal([Constraint::Min(0), Constraint::Length(hint)]).areas(area);
        frame.render_widget(Line::from(spans), text);
        frame.render_widget(Line::from(HELP_HINT), keys);
    }
}

fn draw_overview(frame: &mut Frame<'_>, app: &App, area: Rect) {
    // The feed of changes across the whole width, so that a line holds a change: up to
    // five of them, one line when there are none yet.
    let shown_changes = app
        .status
        .as_ref()
        .map_or(1, |s| s.changes.len().clamp(1, CHANGES_SHOWN));
    // The daemon's lines, and two more for a failed load's file, line and reason, which
    // wrap: cut off, the reason is what would be lost.
    let failed = app
        .status
        .as_ref()
        .is_some_and(|s| matches!(s.last_reload, ReloadOutcome::Failed { .. }));
    let info_height = if failed { 9 } else { 7 };
    let [charts, changes, info] = Layout::vertical([
        Constraint::Min(8),
        Constraint::Length(u16::try_from(shown_changes).unwrap_or(1) + 2),
        Constraint::Length(info_height),
    ])
    .areas(area);
    let [rate, failures] =
        Layout::horizontal([Constraint::Percentage(65), Constraint::Percentage(35)]).areas(charts);

    let window = if app.long_window {
        HISTORY
    } else {
        SHORT_WINDOW
    };
    let now = app.tokens_per_second();
    let title = format!(
        " Tokens/s: {now} now · last {} (t: {}) ",
        if app.long_window { "hour" } else { "5 min" },
        if app.long_window { "5 min" } else { "1 h" }
    );
    let block = Block::bordered().title(title);
    let inner = block.inner(rate);
    frame.render_widget(block, rate);
    let bars = rate_bars(&app.history, window, usize::from(inner.width));
    // The newest bar at the right edge, however few the window's seconds are for the width.
    let [_, chart] = Layout::horizontal([
        Constraint::Fill(1),
        Constraint::Length(u16::try_from(bars.len()).unwrap_or(inner.width)),
    ])
    .areas(inner);
    frame.render_widget(
        Sparkline::default()
            .data(&bars)
            .style(style(app, Color::Cyan)),
        chart,
    );

    let mut lines = Vec::new();
    match app.last_tick() {
        Some(tick) => {
            lines.push(Line::from(format!(
                "p50 {}  p99 {}",
                micros(tick.p50_us),
                micros(tick.p99_us)
            )));
            lines.push(Line::from(format!(
                "failures/s: {}",
                app.failures_per_second()
            )));
            for (code, n) in &tick.failures_by_code {
                lines.push(Line::from(Span::styled(
                    format!("  {code}: {}", per_second(*n, tick.interval_ms)),
                    style(app, Color::Red),
                )));
            }
        }
        None => lines.push(Line::from("waiting for the first stats tick…")),
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Failures/s · latency ")),
        failures,
    );
    draw_changes(frame, app, changes);

    let mut lines = Vec::new();
    if let Some(tick) = app.last_tick() {
        lines.push(Line::from(format!(
            "since start: {} tokens issued, {} requests refused",
            tick.issued_total, tick.failures_total
        )));
    }
    match &app.status {
        Some(s) => {
            lines.push(Line::from(format!(
                "tokendealerd {} · up {} · listening on {}",
                s.version,
                tokendealer_shared::duration::format(std::time::Duration::from_secs(
                    s.uptime_secs.max(1)
                )),
                s.listen,
            )));
            lines.push(Line::from(format!(
                "{} clients: {} disabled, {} with an old secret still working",
                s.clients, s.disabled, s.rotating
            )));
            lines.push(Line::from(format!(
                "issuer {} · algorithm {}",
                s.issuer,
                crate::render::algorithm_text(s)
            )));
            lines.push(match &s.last_reload {
                ReloadOutcome::Ok { at, clients } => Line::from(format!(
                    "clients file: loaded OK at {} ({})",
                    time(*at),
                    tokendealer_shared::count(*clients, "client", "clients")
                )),
                ReloadOutcome::Failed {
                    at,
                    file,
                    line,
                    reason,
                } => Line::from(Span::styled(
                    format!(
                        "clients file: RELOAD FAILED at {}: {file}{}: {reason}",
                        time(*at),
                        line.map(|l| format!(" line {l}")).unwrap_or_default()
                    ),
                    style(app, Color::Red).add_modifier(Modifier::BOLD),
                )),
            });
        }
        None => lines.push(Line::from("waiting for the daemon's status…")),
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" Daemon ")),
        info,
    );
}

/// The most changes the overview lists.
const CHANGES_SHOWN: usize = 5;

/// The latest changes to clients and keys, newest first, as many as fit: what was
/// registered, disabled, rotated, and by whom.
fn draw_changes(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let title = match &app.status {
        Some(s) => format!(
            " Changes · since start: {} key rotations, {} secret rotations ",
            s.key_rotations, s.secret_rotations
        ),
        None => " Changes ".to_owned(),
    };
    let now = daemon_now(app);
    let lines: Vec<Line<'_>> = match &app.status {
        Some(s) if s.changes.is_empty() => vec![Line::from("none since the daemon started")],
        Some(s) => s
            .changes
            .iter()
            .take(usize::from(area.height.saturating_sub(2)))
            .map(|c| {
                let by = c.by.map(|uid| format!(" (uid {uid})")).unwrap_or_default();
                Line::from(vec![
                    Span::styled(when(Some(c.at), now), style(app, Color::DarkGray)),
                    Span::raw(format!(" {}{by}", c.what)),
                ])
            })
            .collect(),
        None => Vec::new(),
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

/// Now, in Unix seconds, by the daemon's clock when it ticks: "today" is then the day the
/// times it sends are from.
fn daemon_now(app: &App) -> i64 {
    app.last_tick().map_or_else(
        || jiff::Timestamp::now().as_second(),
        |t| t.at_ms.div_euclid(1000),
    )
}

fn micros(us: u64) -> String {
    if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// Month, day, hours and minutes (UTC): what fits in a table cell.
fn short_time(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map_or_else(
        |_| unix.to_string(),
        |t| t.strftime("%m-%d %H:%M").to_string(),
    )
}

/// When something last happened, in at most 8 cells (UTC, as every time here): the time of
/// day when it was on the day of `now`, else the day, with the year when not this one.
fn when(unix: Option<i64>, now: i64) -> String {
    let Some(at) = unix.and_then(|t| jiff::Timestamp::from_second(t).ok()) else {
        return "-".to_owned();
    };
    let year = |t: jiff::Timestamp| t.strftime("%Y").to_string();
    let format = if at.as_second().div_euclid(86_400) == now.div_euclid(86_400) {
        "%H:%M:%S"
    } else if jiff::Timestamp::from_second(now).is_ok_and(|now| year(now) == year(at)) {
        "%b %d"
    } else {
        "%b %Y"
    };
    at.strftime(format).to_string()
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

/// A table column: its header, its width, the fewest cells it is of any use in, and when
/// it gives way on a narrow terminal (higher first; 0 never).
struct Column {
    header: &'static str,
    width: Constraint,
    least: u16,
    gives_way: u8,
}

impl Column {
    const fn fixed(header: &'static str, width: u16, gives_way: u8) -> Self {
        Self {
            header,
            width: Constraint::Length(width),
            least: width,
            gives_way,
        }
    }

    const fn fill(header: &'static str, share: u16, least: u16, gives_way: u8) -> Self {
        Self {
            header,
            width: Constraint::Fill(share),
            least,
            gives_way,
        }
    }
}

/// The clients table: who, whether it may get tokens and how many it gets stay on any
/// terminal; what it was last given, and when, go first.
const CLIENT_COLUMNS: [Column; 8] = [
    Column::fill("ID", 2, 12, 0),
    Column::fill("AUDIENCES", 2, 10, 4),
    Column::fill("SCOPES", 2, 10, 5),
    Column::fixed("TTL", 7, 6),
    Column::fixed("STATE", 8, 0),
    Column::fixed("TOK/S", 6, 0),
    Column::fixed("TOTAL", 7, 7),
    Column::fixed("LAST", 8, 8),
];

/// The keys table: which key is in which state stays; what happens to it next goes last.
const KEY_COLUMNS: [Column; 6] = [
    Column::fill("KID", 1, 12, 0),
    Column::fixed("ALG", 5, 2),
    Column::fixed("STATE", 8, 0),
    Column::fixed("CREATED", 11, 4),
    Column::fixed("ACTIVATED", 11, 3),
    Column::fixed("NEXT EVENT", 23, 1),
];

/// The indices of the `columns` a bordered table `width` cells wide (with room for the
/// selection marker) shows: all of them when they fit, else without those that give way
/// first. Squeezing every column instead left none readable below 80 cells.
fn fitting(columns: &[Column], width: u16) -> Vec<usize> {
    // Two cells of border, two of the "> " marker, one between each pair of columns.
    let room = width.saturating_sub(4);
    let mut shown: Vec<usize> = (0..columns.len()).collect();
    loop {
        let gaps = u16::try_from(shown.len().saturating_sub(1)).unwrap_or(u16::MAX);
        let need = shown.iter().map(|&i| columns[i].least).sum::<u16>() + gaps;
        let next = shown
            .iter()
            .enumerate()
            .filter(|&(_, &i)| columns[i].gives_way > 0)
            .max_by_key(|&(_, &i)| columns[i].gives_way);
        match next {
            Some((at, _)) if need > room => {
                shown.remove(at);
            }
            _ => return shown,
        }
    }
}

/// The `cells` of the columns in `shown`, in order.
fn kept<'a, const N: usize>(cells: [Cell<'a>; N], shown: &[usize]) -> Vec<Cell<'a>> {
    cells
        .into_iter()
        .enumerate()
        .filter(|(i, _)| shown.contains(i))
        .map(|(_, cell)| cell)
        .collect()
}

fn draw_clients(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let [table_area, hint] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(area);
    let clients = app.visible_clients();
    let count = clients.len();
    // Rows are made only for the window on screen (borders and header take three lines),
    // scrolled as the table itself would scroll to keep the selection in view: a registry
    // of 100 000 clients is not 100 000 rows built every second.
    let height = usize::from(table_area.height.saturating_sub(3)).max(1);
    let first = app.selected_client.saturating_sub(height - 1);
    let columns = fitting(&CLIENT_COLUMNS, table_area.width);
    let now = daemon_now(app);
    let rows: Vec<Row<'_>> = clients
        .iter()
        .skip(first)
        .take(height)
        .map(|c| {
            let state = if c.disabled {
                Cell::from("disabled").style(style(app, Color::Red))
            } else if c.old_secret_until.is_some() {
                Cell::from("rotating").style(style(app, Color::Yellow))
            } else {
                Cell::from("enabled")
            };
            let cells = [
                Cell::from(c.id.clone()),
                Cell::from(list(&c.audiences)),
                Cell::from(list(&c.scopes)),
                Cell::from(c.ttl_secs.map_or_else(
                    || "default".into(),
                    |s| tokendealer_shared::duration::format(std::time::Duration::from_secs(s)),
                )),
                state,
                Cell::from(app.client_rate(&c.id).to_string()),
                Cell::from(c.issued.to_string()),
                Cell::from(when(c.last_issued, now)),
            ];
            Row::new(kept(cells, &columns))
        })
        .collect();
    let header = Row::new(columns.iter().map(|&i| CLIENT_COLUMNS[i].header)).style(bold());
    let widths = columns.iter().map(|&i| CLIENT_COLUMNS[i].width);
    let order = if app.sort_descending { "↓" } else { "↑" };
    let mut title = format!(
        " Clients: {count} shown · sorted by {} {order} ",
        app.sort.label()
    );
    if app.filtering || !app.filter.is_empty() {
        title.push_str(&format!(
            "· filter: {}{} ",
            app.filter,
            if app.filtering { "▏" } else { "" }
        ));
    }
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state =
        TableState::default().with_selected((count > 0).then_some(app.selected_client - first));
    frame.render_stateful_widget(table, table_area, &mut state);
    frame.render_widget(
        Line::from(" a register · r rotate secret · d disable/enable · x remove · / filter · s sort · S reverse"),
        hint,
    );
}

fn draw_keys(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let [table_area, hint] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(area);
    let columns = fitting(&KEY_COLUMNS, table_area.width);
    let rows: Vec<Row<'_>> = app
        .keys
        .iter()
        .map(|k| {
            let (state, color) = match k.state {
                KeyState::Next => ("next", Color::Yellow),
                KeyState::Active => ("active", Color::Green),
                KeyState::Retiring => ("retiring", Color::DarkGray),
            };
            let when = match (k.may_sign_at, k.retire_at) {
                (Some(at), _) => format!("signs from {}", short_time(at)),
                (_, Some(at)) => format!("leaves {}", short_time(at)),
                _ => "-".to_owned(),
            };
            let cells = [
                Cell::from(k.kid.clone()),
                Cell::from(k.alg.clone()),
                Cell::from(state).style(style(app, color)),
                Cell::from(short_time(k.created)),
                Cell::from(k.activated.map_or_else(|| "-".into(), short_time)),
                Cell::from(when),
            ];
            Row::new(kept(cells, &columns))
        })
        .collect();
    let count = rows.len();
    let table = Table::new(rows, columns.iter().map(|&i| KEY_COLUMNS[i].width))
        .header(Row::new(columns.iter().map(|&i| KEY_COLUMNS[i].header)).style(bold()))
        .block(Block::bordered().title(format!(" Signing keys: {count} published ")))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = TableState::default().with_selected((count > 0).then_some(app.selected_key));
    frame.render_stateful_widget(table, table_area, &mut state);
    frame.render_widget(Line::from(" r rotate keys (asks first)"), hint);
}

/// A centred rectangle of at most `width` × `height` cells.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn popup(frame: &mut Frame<'_>, title: &str, lines: Vec<Line<'_>>, width: u16) {
    // As tall as the text once wrapped to the popup's inner width, plus the border.
    let inner = usize::from(width.min(frame.area().width).saturating_sub(2)).max(1);
    let rows: usize = lines.iter().map(|l| l.width().div_ceil(inner).max(1)).sum();
    let height = u16::try_from(rows).unwrap_or(u16::MAX).saturating_add(2);
    let area = centered(frame.area(), width, height);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(format!(" {title} "))),
        area,
    );
}

fn draw_dialog(frame: &mut Frame<'_>, app: &App, dialog: &Dialog) {
    match dialog {
        Dialog::AddClient {
            fields,
            focus,
            error,
        } => {
            let mut lines = vec![Line::from(
                "Comma-separated lists; an empty ttl uses the daemon's default.",
            )];
            for (i, (label, value)) in FORM_FIELDS.iter().zip(fields).enumerate() {
                let marker = if i == *focus { "> " } else { "  " };
                let cursor = if i == *focus { "▏" } else { "" };
                lines.push(Line::from(vec![
                    Span::styled(
                        format!("{marker}{label:<10}"),
                        if i == *focus { bold() } else { Style::new() },
                    ),
                    Span::raw(format!("{value}{cursor}")),
                ]));
            }
            if let Some(error) = error {
                lines.push(Line::from(Span::styled(
                    format!("error: {error}"),
                    style(app, Color::Red),
                )));
            }
            lines.push(Line::from("Tab next field · Enter register · Esc cancel"));
            popup(frame, "Register a client", lines, 70);
        }
        Dialog::RotateSecret { id, overlap, error } => {
            let mut lines = vec![
                Line::from(format!("Give `{id}` a new secret.")),
                Line::from("How long may the old secret keep working? (0 = stop now)"),
                Line::from(format!("> overlap: {overlap}▏")),
            ];
            if let Some(error) = error {
                lines.push(Line::from(Span::styled(
                    format!("error: {error}"),
                    style(app, Color::Red),
                )));
            }
            lines.push(Line::from("Enter rotate · Esc cancel"));
            popup(frame, "Rotate secret", lines, 64);
        }
        Dialog::ToggleClient { id, disable } => {
            let what = if *disable {
                format!("Disable `{id}`? It will be refused tokens until enabled again.")
            } else {
                format!("Enable `{id}`? It will get tokens again.")
            };
            popup(
                frame,
                "Confirm",
                vec![Line::from(what), Line::from("y/Enter yes · n/Esc no")],
                64,
            );
        }
        Dialog::RemoveClient { id } => popup(
            frame,
            "Remove client",
            vec![
                Line::from(format!(
                    "Remove client `{id}`? Its registration and secrets are deleted."
                )),
                Line::from("y remove · n/Esc keep it"),
            ],
            64,
        ),
        Dialog::RotateKey { next } => {
            let mut lines = vec![
                Line::from("The next key becomes the active key and signs new tokens;"),
                Line::from("the active key retires and stays in the JWKS until every"),
                Line::from("token it signed has expired; a new next key is published."),
            ];
            lines.push(Line::from(match next {
                Some((kid, at)) => format!("Next key {kid} may sign from {}.", time(*at)),
                None => "The next key's publication time is not known yet.".to_owned(),
            }));
            lines.push(Line::from(
                "y/Enter rotate (refused if too early) · ! rotate now anyway · Esc cancel",
            ));
            popup(frame, "Rotate signing keys", lines, 76);
        }
        Dialog::Secret { id, secret, note } => popup(
            frame,
            "New secret — shown once",
            vec![
                Line::from(format!("The secret of `{id}` is:")),
                Line::from(Span::styled(secret.clone(), bold())),
                Line::from(note.clone()),
                Line::from("Copy it now: it will not be shown again (only its hash is stored)."),
                Line::from("Enter close"),
            ],
            72,
        ),
        Dialog::Working(what) => popup(frame, "Working", vec![Line::from(what.clone())], 50),
        Dialog::Refused(reason) => popup(
            frame,
            "Refused by the daemon",
            vec![
                Line::from(Span::styled(reason.clone(), style(app, Color::Red))),
                Line::from(
                    "Asking again would get the same answer: the dashboard has stopped trying.",
                ),
                Line::from("q quit · any other key to close"),
            ],
            76,
        ),
        Dialog::Failed(reason) => popup(
            frame,
            "Refused",
            vec![
                Line::from(Span::styled(reason.clone(), style(app, Color::Red))),
                Line::from("any key to close"),
            ],
            70,
        ),
    }
}

/// The rate chart's bars, oldest first: the `window` seconds up to the newest tick, each bar
/// the mean rate of the ticks in its share of them, placed by their time, so that the axis
/// is the window whatever the dashboard has seen (a time with no tick, as while it was
/// disconnected, shows as nothing). At most one bar a second, and at most `width`.
fn rate_bars(history: &VecDeque<StatsTick>, window: usize, width: usize) -> Vec<u64> {
    let count = width.clamp(1, window.max(1));
    let Some(newest) = history.back().map(|t| t.at_ms) else {
        return vec![0; count];
    };
    let window_ms = i64::try_from(window)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let count_ms = i64::try_from(count).unwrap_or(1);
    // Rounded up, so that the oldest second of the window still has a bar.
    let per_bar_ms = ((window_ms + count_ms - 1) / count_ms).max(1);
    let mut sums = vec![(0u64, 0u64); count];
    for tick in history.iter().rev() {
        let age = newest - tick.at_ms;
        if age >= window_ms {
            break;
        }
        // A clock that stepped back puts a tick in the future: it counts as the newest.
        let bar = usize::try_from(age.max(0) / per_bar_ms).unwrap_or(0);
        if let Some((sum, n)) = sums.get_mut(bar) {
            *sum += per_second(tick.issued, tick.interval_ms);
            *n += 1;
        }
    }
    sums.iter()
        .rev()
        .map(|&(sum, n)| sum.checked_div(n).unwrap_or(0))
        .collect()
}

fn draw_help(frame: &mut Frame<'_>, _app: &App) {
    let keys = [
        ("Tab / Shift-Tab, 1 2 3", "switch screen"),
        ("↑ ↓ or k j", "move the selection"),
        (
            "PgUp PgDn Home End g G",
            "a page up or down, to the first or last",
        ),
        ("t", "overview: 5-minute / 1-hour chart"),
        ("a", "clients: register a client"),
        ("r", "clients: rotate the secret · keys: rotate keys"),
        ("!", "in the key rotation dialog: rotate at once"),
        ("d", "clients: disable or enable"),
        ("x / Delete", "clients: remove (asks first)"),
        ("/", "clients: filter (Enter keeps it, Esc clears)"),
        ("s / S", "clients: sort by next column / reverse"),
        ("?", "this help"),
        ("q / Esc / Ctrl-C", "quit (Esc closes a dialog first)"),
    ];
    let notes = [
        "TOTAL and LAST count since the daemon started; LAST is a time",
        "today, else a day (UTC).",
    ];
    let lines: Vec<Line<'_>> = keys
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<24}"), bold()),
                Span::raw(*what),
            ])
        })
        .chain([Line::from("")])
        .chain(notes.map(Line::from))
        .chain([Line::from(""), Line::from("any key to close")])
        .collect();
    popup(frame, "Help", lines, 76);
}

#[cfg(test)]
mod tests {
    //! Every screen and dialog at 80×24, the smallest size the dashboard promises to be
    //! readable at. The fixtures fix every value a screen shows (times, uptime, rates), so
    //! nothing volatile reaches a snapshot.

    use ratatui::{Terminal, backend::TestBackend};
    use tokendealer_shared::admin::{
        AdminError, Change, ChangeKind, ClientInfo, ClientTick, KeyInfo, KeyState, ReloadOutcome,
        StatsTick, Status,
    };

    use super::*;

    use crate::dashboard::app::{Dialog, LinkEvent, Msg, Outcome};

    const T0: i64 = 1_795_780_800; // 2026-11-27T12:00:00Z

    fn keys() -> Vec<KeyInfo> {
        vec![
            KeyInfo {
                kid: "oldkey-retiring-aaaaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
                alg: "RS512".into(),
                state: KeyState::Retiring,
                created: T0 - 86_400,
                activated: Some(T0 - 86_000),
                retire_at: Some(T0 + 3_600),
                may_sign_at: None,
            },
            KeyInfo {
                kid: "active-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".into(),
                alg: "RS512".into(),
                state: KeyState::Active,
                created: T0 - 3_600,
                activated: Some(T0),
                retire_at: None,
                may_sign_at: None,
            },
            KeyInfo {
                kid: "next-key-cccccccccccccccccccccccccccccccccccc".into(),
                alg: "RS512".into(),
                state: KeyState::Next,
                created: T0,
                activated: None,
                retire_at: None,
                may_sign_at: Some(T0 + 900),
            },
        ]
    }

    fn client(id: &str, issued: u64, disabled: bool, rotating: bool) -> ClientInfo {
        ClientInfo {
            id: id.into(),
            audiences: vec!["https://api.example".into()],
            scopes: vec!["read".into(), "write".into()],
            ttl_secs: (id == "billing").then_some(3_600),
            disabled,
            old_secret_until: rotating.then_some(T0 + 7_200),
            issued,
            last_issued: (issued > 0).then_some(T0 + 42),
        }
    }

    fn tick(issued: u64, failures: u64) -> StatsTick {
        StatsTick {
            at_ms: T0 * 1000,
            interval_ms: 1000,
            issued,
            failures,
            failures_by_code: if failures > 0 {
                vec![("invalid_client".into(), failures)]
            } else {
                vec![]
            },
            clients: vec![ClientTick {
                id: "billing".into(),
                issued,
                failures,
            }],
            p50_us: 850,
            p99_us: 4_100,
            issued_total: 123_456,
            failures_total: 78,
        }
    }

    fn status(last_reload: ReloadOutcome) -> Status {
        Status {
            version: "0.1.0".into(),
            pid: 4242,
            uptime_secs: 3_725,
            config_path: Some("/etc/tokendealer/config.toml".into()),
            listen: "127.0.0.1:8080".into(),
            issuer: "https://tokens.example".into(),
            algorithm: "RS512".into(),
            clients_file: "/etc/tokendealer/clients.toml".into(),
            clients: 3,
            disabled: 1,
            rotating: 1,
            last_reload,
            keys: keys(),
            key_rotations: 1,
            secret_rotations: 2,
            changes: vec![
                Change {
                    at: T0 + 30,
                    by: Some(0),
                    what: ChangeKind::ClientDisabled { id: "audit".into() },
                },
                Change {
                    at: T0 + 20,
                    by: None,
                    what: ChangeKind::KeyRotated {
                        active: "k2".into(),
                    },
                },
                Change {
                    at: T0 + 10,
                    by: Some(1000),
                    what: ChangeKind::SecretRotated {
                        id: "billing".into(),
                        old_valid_until: Some(T0 + 86_400),
                    },
                },
            ],
        }
    }

    fn app(color: bool) -> App {
        let mut app = App::new("/run/tokendealer/admin.sock".into(), color);
        let ok = ReloadOutcome::Ok { at: T0, clients: 3 };
        for event in [
            LinkEvent::Connected,
            LinkEvent::Status(Box::new(status(ok))),
            LinkEvent::Keys(keys()),
            LinkEvent::Clients(vec![
                client("billing", 9_000, false, true),
                client("audit", 0, true, false),
                client("search", 120, false, false),
            ]),
        ] {
            app.update(Msg::Link(event));
        }
        // The last 400 seconds, one tick each.
        for i in 0..400 {
            let mut tick = tick(100 + (i % 50), i % 3);
            tick.at_ms = (T0 - 399 + i64::try_from(i).expect("small")) * 1000;
            app.update(Msg::Link(LinkEvent::Tick(tick)));
        }
        app
    }

    /// After a reload that changed `algorithm`, the old one signs until the next rotation:
    /// the overview says both.
    #[test]
    fn a_new_algorithm_is_shown_beside_the_one_that_signs() {
        let mut app = app(false);
        let mut changed = status(ReloadOutcome::Ok { at: T0, clients: 3 });
        if let Some(next) = changed.keys.iter_mut().find(|k| k.state == KeyState::Next) {
            next.alg = "ES256".into();
        }
        app.update(Msg::Link(LinkEvent::Status(Box::new(changed))));
        let screen = render(&app);
        assert!(
            screen.contains("algorithm RS512 (ES256 from the next rotation)"),
            "{screen}"
        );
    }

    /// The chart's axis is its window, not what the dashboard has seen: ticks are placed
    /// by their time, a stretch with none (the dashboard disconnected) shows as nothing, and
    /// there is never more than a bar a second.
    #[test]
    fn rate_bars_are_placed_by_time() {
        let at = |secs_ago: i64, issued: u64| {
            let mut t = tick(issued, 0);
            t.at_ms = (T0 - secs_ago) * 1000;
            t
        };
        // 10 s of 100/s, 20 s without a tick, then 10 s of 300/s up to now.
        let history: VecDeque<StatsTick> = (30..40)
            .rev()
            .map(|s| at(s, 100))
            .chain((0..10).rev().map(|s| at(s, 300)))
            .collect();
        let bars = rate_bars(&history, 40, 4);
        assert_eq!(bars, [100, 0, 0, 300]);
        let bars = rate_bars(&history, 3600, 60);
        assert_eq!(bars.len(), 60);
        assert_eq!(
            bars[59], 200,
            "an hour's bar is a minute: the mean of its ticks"
        );
        assert!(bars[..59].iter().all(|&b| b == 0), "{bars:?}");
        assert_eq!(
            rate_bars(&history, 40, 80).len(),
            40,
            "a bar a second at most"
        );
        assert_eq!(rate_bars(&VecDeque::new(), 300, 50), [0; 50]);
    }

    fn render(app: &App) -> String {
        render_at(app, 80, 24)
    }

    fn render_at(app: &App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| draw(frame, app)).unwrap();
        terminal.backend().to_string()
    }

    #[test]
    fn overview() {
        insta::assert_snapshot!(render(&app(false)));
    }

    #[test]
    fn overview_hour_window_with_a_failed_reload() {
        let mut app = app(false);
        app.long_window = true;
        app.update(Msg::Link(LinkEvent::Status(Box::new(status(
            ReloadOutcome::Failed {
                at: T0 + 60,
                file: "/etc/tokendealer/clients.toml".into(),
                line: Some(7),
                reason: "unknown field `scope`".into(),
            },
        )))));
        let screen = render(&app);
        assert!(
            screen.contains("line 7: unknown field `scope`"),
            "the reason is shown whole:\n{screen}"
        );
        insta::assert_snapshot!(screen);
    }

    #[test]
    fn clients() {
        let mut app = app(false);
        app.screen = Screen::Clients;
        insta::assert_snapshot!(render(&app));
    }

    #[test]
    fn clients_filtered() {
        let mut app = app(false);
        app.screen = Screen::Clients;
        app.filter = "bill".into();
        app.filtering = true;
        insta::assert_snapshot!(render(&app));
    }

    /// Below 80 cells the tables drop their least needed columns rather than squeeze every
    /// one to a few letters.
    #[test]
    fn narrow_tables_keep_what_matters() {
        let mut app = app(false);
        app.screen = Screen::Clients;
        insta::assert_snapshot!("clients_at_40", render_at(&app, 40, 12));
        insta::assert_snapshot!("clients_at_60", render_at(&app, 60, 12));
        app.screen = Screen::Keys;
        insta::assert_snapshot!("keys_at_40", render_at(&app, 40, 12));
    }

    #[test]
    fn columns_give_way_in_order_and_all_fit_at_80() {
        let all: Vec<usize> = (0..CLIENT_COLUMNS.len()).collect();
        assert_eq!(fitting(&CLIENT_COLUMNS, 80), all);
        assert_eq!(
            fitting(&KEY_COLUMNS, 80),
            (0..KEY_COLUMNS.len()).collect::<Vec<_>>()
        );
        // LAST goes first, then TOTAL, TTL, SCOPES, AUDIENCES; ID, STATE and TOK/S stay.
        assert_eq!(fitting(&CLIENT_COLUMNS, 78), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(fitting(&CLIENT_COLUMNS, 20), [0, 4, 5]);
        assert_eq!(fitting(&KEY_COLUMNS, 50), [0, 2, 5]);
        assert_eq!(fitting(&KEY_COLUMNS, 10), [0, 2]);
    }

    #[test]
    fn keys_screen() {
        let mut app = app(false);
        app.screen = Screen::Keys;
        insta::assert_snapshot!(render(&app));
    }

    #[test]
    fn disconnected() {
        let mut app = app(false);
        app.update(Msg::Link(LinkEvent::Disconnected(
            "no tokendealer daemon at /run/tokendealer/admin.sock (is it running?)".into(),
        )));
        insta::assert_snapshot!(render(&app));
    }

    #[test]
    fn help() {
        let mut app = app(false);
        app.help = true;
        insta::assert_snapshot!(render(&app));
    }

    #[test]
    fn dialogs() {
        let dialogs = [
            (
                "add_client",
                Dialog::AddClient {
                    fields: [
                        "svc".into(),
                        "https://a, https://b".into(),
                        "read".into(),
                        "1x".into(),
                    ],
                    focus: 3,
                    error: Some("token ttl: `1x` is not a duration".into()),
                },
            ),
            (
                "rotate_secret",
                Dialog::RotateSecret {
                    id: "billing".into(),
                    overlap: "24h".into(),
                    error: None,
                },
            ),
            (
                "disable",
                Dialog::ToggleClient {
                    id: "billing".into(),
                    disable: true,
                },
            ),
            (
                "remove",
                Dialog::RemoveClient {
                    id: "billing".into(),
                },
            ),
            (
                "rotate_key",
                Dialog::RotateKey {
                    next: Some(("next-key-cccc".into(), T0 + 900)),
                },
            ),
            (
                "secret",
                Dialog::Secret {
                    id: "billing".into(),
                    secret: "0123456789abcdef0123456789abcdef0123456789abcdef".into(),
                    note: "The old secret of `billing` keeps working until 2026-11-28T08:00:00Z."
                        .into(),
                },
            ),
            ("working", Dialog::Working("registering `svc`…".into())),
            (
                "failed",
                Dialog::Failed("client `svc` already exists".into()),
            ),
            (
                "refused",
                Dialog::Refused(AdminError::PermissionDenied { uid: 65_534 }.to_string()),
            ),
        ];
        for (name, dialog) in dialogs {
            let mut app = app(false);
            app.screen = Screen::Clients;
            app.dialog = Some(dialog);
            insta::assert_snapshot!(format!("dialog_{name}"), render(&app));
        }
    }

    /// A last issuance of another day shows that day (with its year if not this one), not a
    /// time that reads as today's.
    #[test]
    fn last_issuance_shows_the_day_when_not_today() {
        let mut app = app(false);
        app.screen = Screen::Clients;
        let mut older = client("older", 5, false, false);
        older.last_issued = Some(T0 - 2 * 86_400);
        let mut oldest = client("oldest", 5, false, false);
        oldest.last_issued = Some(T0 - 365 * 86_400);
        app.update(Msg::Link(LinkEvent::Clients(vec![
            client("billing", 9_000, false, false),
            older,
            oldest,
        ])));
        let screen = render(&app);
        let last = |id: &str| {
            screen
                .lines()
                .find(|l| l.contains(&format!(" {id} ")))
                .map(|l| {
                    // The LAST column: the row's last 8 cells inside the border.
                    let cells: Vec<char> = l.trim_end_matches(['"', '│']).chars().collect();
                    cells[cells.len().saturating_sub(8)..]
                        .iter()
                        .collect::<String>()
                        .trim()
                        .to_owned()
                })
                .unwrap_or_default()
        };
        assert_eq!(last("billing"), "12:00:42", "{screen}");
        assert_eq!(last("older"), "Nov 25", "{screen}");
        assert_eq!(last("oldest"), "Nov 2025", "{screen}");
    }

    #[test]
    fn a_long_notice_leaves_the_help_hint() {
        let mut app = app(false);
        app.update(Msg::Link(LinkEvent::Done(Ok(Outcome::Message(format!(
            "keys rotated: {} signs now",
            "k".repeat(60)
        ))))));
        let screen = render(&app);
        let bar = screen.lines().last().unwrap_or_default();
        assert!(bar.contains("keys rotated"), "{bar}");
        assert!(bar.ends_with(" ? help · q quit \""), "{bar}");
    }

    #[test]
    fn a_silent_daemon_is_not_shown_as_connected() {
        let mut app = app(false);
        app.update(Msg::Link(LinkEvent::Silent(12)));
        let screen = render(&app);
        let bar = screen.lines().last().unwrap_or_default();
        assert!(
            bar.starts_with("\" no word from the daemon for 12 s"),
            "{bar}"
        );
        assert!(bar.ends_with(" ? help · q quit \""), "{bar}");
    }

    /// The headline figures are per second, as the clients' rates are, whatever the tick's
    /// length.
    #[test]
    fn headline_rates_are_per_second() {
        let mut app = app(false);
        let mut long = tick(300, 30);
        long.interval_ms = 2_000;
        app.update(Msg::Link(LinkEvent::Tick(long)));
        let screen = render(&app);
        assert!(screen.contains("Tokens/s: 150 now"), "{screen}");
        assert!(screen.contains("failures/s: 15 "), "{screen}");
        assert!(screen.contains("invalid_client: 15 "), "{screen}");
    }

    #[test]
    fn colour_changes_no_text() {
        // With NO_COLOR the same characters are drawn: meaning never rests on colour.
        assert_eq!(render(&app(true)), render(&app(false)));
    }
}
