//! Drawing the dashboard from `&App`. Nothing here waits on anything.
//!
//! Meaning never rests on colour alone: states are words, the selection has a marker, and
//! with `NO_COLOR` the same screens render without any colour.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap},
};
use tokendealer_shared::admin::{KeyState, ReloadOutcome};

use super::app::{App, Connection, Dialog, FORM_FIELDS, SHORT_WINDOW, Screen};
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

fn draw_status_bar(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let (state, color) = match &app.connection {
        Connection::Connecting => ("connecting…".to_owned(), Color::Yellow),
        Connection::Connected => ("connected".to_owned(), Color::Green),
        Connection::Disconnected(why) => (format!("disconnected — retrying ({why})"), Color::Red),
    };
    let mut spans = vec![
        Span::raw(format!(" {} · ", app.socket)),
        Span::styled(state, style(app, color).add_modifier(Modifier::BOLD)),
    ];
    if let Some(notice) = &app.notice {
        spans.push(Span::raw(format!(" · {notice}")));
    }
    spans.push(Span::raw(" · ? help · q quit"));
    frame.render_widget(Line::from(spans), area);
}

fn draw_overview(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let [charts, info] = Layout::vertical([Constraint::Min(8), Constraint::Length(7)]).areas(area);
    let [rate, failures] =
        Layout::horizontal([Constraint::Percentage(65), Constraint::Percentage(35)]).areas(charts);

    let window = if app.long_window {
        app.history.len()
    } else {
        SHORT_WINDOW
    };
    let width = usize::from(rate.width.saturating_sub(2)).max(1);
    let points: Vec<u64> = app
        .history
        .iter()
        .rev()
        .take(window)
        .map(|t| t.issued)
        .collect();
    // One bar per column: each averages as many seconds as the window needs.
    let per_bar = points.len().div_ceil(width).max(1);
    let mut bars: Vec<u64> = points
        .chunks(per_bar)
        .map(|c| c.iter().sum::<u64>() / c.len() as u64)
        .collect();
    bars.reverse();
    let now = app.last_tick().map_or(0, |t| t.issued);
    let title = format!(
        " Tokens/s: {now} now · last {} (t: {}) ",
        if app.long_window { "hour" } else { "5 min" },
        if app.long_window { "5 min" } else { "1 h" }
    );
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(title))
            .data(&bars)
            .style(style(app, Color::Cyan)),
        rate,
    );

    let mut lines = Vec::new();
    match app.last_tick() {
        Some(tick) => {
            lines.push(Line::from(format!(
                "p50 {}  p99 {}",
                micros(tick.p50_us),
                micros(tick.p99_us)
            )));
            lines.push(Line::from(format!("failures/s: {}", tick.failures)));
            for (code, n) in &tick.failures_by_code {
                lines.push(Line::from(Span::styled(
                    format!("  {code}: {n}"),
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
                "tokendealerd {} · up {} · listening on {} · {} clients",
                s.version,
                tokendealer_shared::duration::format(std::time::Duration::from_secs(
                    s.uptime_secs.max(1)
                )),
                s.listen,
                s.clients
            )));
            lines.push(Line::from(format!(
                "issuer {} · algorithm {}",
                s.issuer, s.algorithm
            )));
            lines.push(match &s.last_reload {
                ReloadOutcome::Ok { at, clients } => Line::from(format!(
                    "clients file: loaded OK at {} ({clients} clients)",
                    time(*at)
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

fn micros(us: u64) -> String {
    if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn clock(unix: Option<i64>) -> String {
    unix.and_then(|t| jiff::Timestamp::from_second(t).ok())
        .map_or_else(|| "-".to_owned(), |t| t.strftime("%H:%M:%S").to_string())
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

fn draw_clients(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let [table_area, hint] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(area);
    let rows: Vec<Row<'_>> = app
        .visible_clients()
        .into_iter()
        .map(|c| {
            let state = if c.disabled {
                Cell::from("disabled").style(style(app, Color::Red))
            } else if c.old_secret_until.is_some() {
                Cell::from("rotating").style(style(app, Color::Yellow))
            } else {
                Cell::from("enabled")
            };
            Row::new(vec![
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
                Cell::from(clock(c.last_issued)),
            ])
        })
        .collect();
    let count = rows.len();
    let header = Row::new([
        "ID",
        "AUDIENCES",
        "SCOPES",
        "TTL",
        "STATE",
        "TOK/S",
        "TOTAL",
        "LAST",
    ])
    .style(bold());
    let widths = [
        Constraint::Fill(2),
        Constraint::Fill(2),
        Constraint::Fill(2),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(8),
    ];
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
    let mut state = TableState::default().with_selected((count > 0).then_some(app.selected_client));
    frame.render_stateful_widget(table, table_area, &mut state);
    frame.render_widget(
        Line::from(" a register · r rotate secret · d disable/enable · x remove · / filter · s sort · S reverse"),
        hint,
    );
}

fn draw_keys(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let [table_area, hint] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(area);
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
                (Some(at), _) => format!("signs from {}", time(at)),
                (_, Some(at)) => format!("leaves {}", time(at)),
                _ => "-".to_owned(),
            };
            Row::new(vec![
                Cell::from(k.kid.clone()),
                Cell::from(k.alg.clone()),
                Cell::from(state).style(style(app, color)),
                Cell::from(time(k.created)),
                Cell::from(k.activated.map_or_else(|| "-".into(), time)),
                Cell::from(when),
            ])
        })
        .collect();
    let count = rows.len();
    let table = Table::new(
        rows,
        [
            Constraint::Fill(3),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(20),
            Constraint::Length(20),
            Constraint::Fill(3),
        ],
    )
    .header(Row::new(["KID", "ALG", "STATE", "CREATED", "ACTIVATED", "NEXT EVENT"]).style(bold()))
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
    let height = u16::try_from(lines.len())
        .unwrap_or(u16::MAX)
        .saturating_add(2);
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

fn draw_help(frame: &mut Frame<'_>, _app: &App) {
    let keys = [
        ("Tab / Shift-Tab, 1 2 3", "switch screen"),
        ("↑ ↓ or k j", "move the selection"),
        ("t", "overview: 5-minute / 1-hour chart"),
        ("a", "clients: register a client"),
        ("r", "clients: rotate the secret · keys: rotate keys"),
        ("d", "clients: disable or enable"),
        ("x / Delete", "clients: remove (asks first)"),
        ("/", "clients: filter by typing (Enter keeps, Esc clears)"),
        ("s / S", "clients: sort by next column / reverse"),
        ("?", "this help"),
        ("q / Esc / Ctrl-C", "quit (Esc closes a dialog first)"),
    ];
    let lines: Vec<Line<'_>> = keys
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<24}"), bold()),
                Span::raw(*what),
            ])
        })
        .chain([Line::from(""), Line::from("any key to close")])
        .collect();
    popup(frame, "Keys", lines, 76);
}
