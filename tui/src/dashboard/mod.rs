//! The dashboard: `tokendealer` with no subcommand.
//!
//! Three parts that meet only through a channel of [`app::Msg`]: a thread turning key
//! presses into messages, the [`link`] task turning daemon news into messages, and this
//! loop, which applies each message to the [`app::App`] (no I/O), forwards the request it
//! may produce to the link, and redraws.

pub mod app;
mod link;
pub mod ui;

use std::{io, path::PathBuf};

use ratatui::crossterm::event::{self, Event};
use tokio::sync::{mpsc, watch};

use app::{App, Msg, Screen};

/// Runs the dashboard until the user quits. The terminal is restored on the way out, on
/// error and on panic (ratatui's hook) alike.
pub async fn run(socket: PathBuf) -> io::Result<()> {
    let color = std::env::var_os("NO_COLOR").is_none();
    let mut app = App::new(socket.display().to_string(), color);
    let (events_tx, mut events) = mpsc::channel::<Msg>(256);
    let (actions_tx, actions) = mpsc::channel(16);
    // Listing every client is the one read whose cost grows with the registry; the link
    // keeps the list fresh only while it is on screen.
    let (clients_shown_tx, clients_shown) = watch::channel(false);
    // Whether the user still watches an action being answered: a daemon silent while they
    // do is waited for, however long.
    let (watching_tx, watching) = watch::channel(false);

    tokio::spawn(link::run(
        socket,
        events_tx.clone(),
        actions,
        link::Watched {
            clients_shown,
            watching,
        },
        link::Timing::default(),
    ));
    // crossterm's reads block; a plain thread keeps them off the async loop. It ends with
    // the process.
    let keys_tx = events_tx.clone();
    std::thread::spawn(move || {
        loop {
            let msg = match event::read() {
                Ok(Event::Key(key)) => Msg::Key(key),
                // Every message brings a redraw; the height is what a page of a table is.
                Ok(Event::Resize(_, height)) => Msg::Resize { height },
                Ok(_) => continue,
                Err(_) => return,
            };
            if keys_tx.blocking_send(msg).is_err() {
                return;
            }
        }
    });

    // Notices age by the second, whether or not the daemon ticks.
    let seconds_tx = events_tx.clone();
    tokio::spawn(async move {
        let mut second = tokio::time::interval(std::time::Duration::from_secs(1));
        second.tick().await;
        loop {
            second.tick().await;
            if seconds_tx.send(Msg::Second).await.is_err() {
                return;
            }
        }
    });

    // Signals that end a terminal program (the terminal closed, `kill`, `kill -INT`: in raw
    // mode Ctrl-C is a key, not a signal) quit as `q` does, so that the terminal is given
    // back as it was.
    for kind in [
        tokio::signal::unix::SignalKind::terminate(),
        tokio::signal::unix::SignalKind::interrupt(),
        tokio::signal::unix::SignalKind::hangup(),
        tokio::signal::unix::SignalKind::quit(),
    ] {
        let mut signal = tokio::signal::unix::signal(kind)?;
        let events = events_tx.clone();
        tokio::spawn(async move {
            if signal.recv().await.is_some() {
                let _ = events.send(Msg::Quit).await;
            }
        });
    }
    drop(events_tx);

    let mut terminal = ratatui::try_init().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot take over the terminal ({e}); run it in a terminal, or use a subcommand such as `tokendealer status`"),
        )
    })?;
    let result = async {
        app.update(Msg::Resize {
            height: terminal.size()?.height,
        });
        loop {
            terminal.draw(|frame| ui::draw(frame, &app))?;
            let Some(msg) = events.recv().await else {
                return Ok(());
            };
            let mut next = Some(msg);
            // Apply everything already queued before drawing again.
            while let Some(msg) = next {
                if let Some(request) = app.update(msg) {
                    let _ = actions_tx.send(request).await;
                }
                next = events.try_recv().ok();
            }
            clients_shown_tx.send_if_modified(|shown| {
                let now = app.screen == Screen::Clients;
                std::mem::replace(shown, now) != now
            });
            watching_tx.send_if_modified(|watching| {
                let now = app.watching_action();
                std::mem::replace(watching, now) != now
            });
            if app.quit {
                return Ok(());
            }
        }
    }
    .await;
    ratatui::restore();
    result
}
