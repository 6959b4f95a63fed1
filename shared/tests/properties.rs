//! Admin frames round-trip: any message either side may send comes out of `frame::write`
//! and `frame::read` equal to what went in, and the bytes on the wire have the documented
//! layout (a big-endian length, then exactly that many bytes of body).
//!
//! The strategies cover every variant. The `*_covered` functions below match without a
//! wildcard, so a new variant fails to compile until it has a strategy here too.

use proptest::{
    collection::vec,
    option,
    prelude::{Just, Strategy, any, prop_oneof, proptest},
    prop_assert_eq,
};
use serde::{Serialize, de::DeserializeOwned};
use tokendealer_shared::{
    admin::{
        AdminError, Change, ChangeKind, ClientFrame, ClientInfo, ClientTick, Event, Hello, KeyInfo,
        KeyState, ReloadOutcome, Request, Response, ServerFrame, StatsTick, Status,
    },
    frame,
};

/// Writes `message` as a frame into memory and reads it back.
fn through_frame<T: Serialize + DeserializeOwned>(message: &T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let mut wire: Vec<u8> = Vec::new();
        frame::write(&mut wire, message)
            .await
            .expect("a message encodes into a frame");
        let len = u32::from_be_bytes(wire[..4].try_into().expect("a length prefix"));
        assert_eq!(
            len as usize,
            wire.len() - 4,
            "the prefix is the body's length"
        );

        let mut reader = &wire[..];
        let decoded = frame::read(&mut reader)
            .await
            .expect("a written frame reads back")
            .expect("one frame, not a clean close");
        assert!(reader.is_empty(), "the frame was read to its end");
        assert!(
            frame::read::<T, _>(&mut reader)
                .await
                .expect("the end of the stream is a clean close")
                .is_none()
        );
        decoded
    })
}

fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..4)
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u32>(), text()).prop_map(|(protocol_version, software_version)| Hello {
        protocol_version,
        software_version,
    })
}

fn request_covered(request: &Request) {
    match request {
        Request::Status
        | Request::ListClients { .. }
        | Request::AddClient { .. }
        | Request::RotateSecret { .. }
        | Request::DisableClient { .. }
        | Request::EnableClient { .. }
        | Request::RemoveClient { .. }
        | Request::ImportClients { .. }
        | Request::ListKeys
        | Request::RotateKey { .. }
        | Request::RevokeKey { .. }
        | Request::Reload
        | Request::Subscribe => {}
    }
}

fn request() -> impl Strategy<Value = Request> {
    let about_clients = prop_oneof![
        (option::of(text()), any::<u32>())
            .prop_map(|(after, limit)| Request::ListClients { after, limit }),
        (text(), texts(), texts(), option::of(any::<u64>())).prop_map(
            |(id, audiences, scopes, ttl_secs)| Request::AddClient {
                id,
                audiences,
                scopes,
                ttl_secs,
            }
        ),
        (text(), any::<u64>())
            .prop_map(|(id, keep_old_secs)| Request::RotateSecret { id, keep_old_secs }),
        text().prop_map(|id| Request::DisableClient { id }),
        text().prop_map(|id| Request::EnableClient { id }),
        text().prop_map(|id| Request::RemoveClient { id }),
        vec((text(), any::<[u8; 32]>()), 0..4)
            .prop_map(|clients| Request::ImportClients { clients }),
    ];
    let others = prop_oneof![
        Just(Request::Status),
        Just(Request::ListKeys),
        any::<bool>().prop_map(|now| Request::RotateKey { now }),
        text().prop_map(|kid| Request::RevokeKey { kid }),
        Just(Request::Reload),
        Just(Request::Subscribe),
    ];
    prop_oneof![about_clients, others]
}

fn key_state() -> impl Strategy<Value = KeyState> {
    prop_oneof![
        Just(KeyState::Next),
        Just(KeyState::Active),
        Just(KeyState::Retiring)
    ]
}

fn key_info() -> impl Strategy<Value = KeyInfo> {
    (
        text(),
        text(),
        key_state(),
        any::<i64>(),
        option::of(any::<i64>()),
        option::of(any::<i64>()),
        option::of(any::<i64>()),
    )
        .prop_map(
            |(kid, alg, state, created, activated, retire_at, may_sign_at)| KeyInfo {
                kid,
                alg,
                state,
                created,
                activated,
                retire_at,
                may_sign_at,
            },
        )
}

fn client_info() -> impl Strategy<Value = ClientInfo> {
    (
        text(),
        texts(),
        texts(),
        option::of(any::<u64>()),
        any::<bool>(),
        option::of(any::<i64>()),
        any::<u64>(),
        option::of(any::<i64>()),
    )
        .prop_map(
            |(id, audiences, scopes, ttl_secs, disabled, old_secret_until, issued, last_issued)| {
                ClientInfo {
                    id,
                    audiences,
                    scopes,
                    ttl_secs,
                    disabled,
                    old_secret_until,
                    issued,
                    last_issued,
                }
            },
        )
}

fn reload_outcome() -> impl Strategy<Value = ReloadOutcome> {
    prop_oneof![
        (any::<i64>(), any::<u64>()).prop_map(|(at, clients)| ReloadOutcome::Ok { at, clients }),
        (any::<i64>(), text(), option::of(any::<u32>()), text()).prop_map(
            |(at, file, line, reason)| ReloadOutcome::Failed {
                at,
                file,
                line,
                reason,
            }
        ),
    ]
}

fn change_kind_covered(kind: &ChangeKind) {
    match kind {
        ChangeKind::ClientAdded { .. }
        | ChangeKind::ClientRemoved { .. }
        | ChangeKind::ClientDisabled { .. }
        | ChangeKind::ClientEnabled { .. }
        | ChangeKind::SecretRotated { .. }
        | ChangeKind::ClientsImported { .. }
        | ChangeKind::ClientsFileLoaded { .. }
        | ChangeKind::KeyRotated { .. }
        | ChangeKind::KeyRevoked { .. } => {}
    }
}

fn change() -> impl Strategy<Value = Change> {
    let what = prop_oneof![
        text().prop_map(|id| ChangeKind::ClientAdded { id }),
        text().prop_map(|id| ChangeKind::ClientRemoved { id }),
        text().prop_map(|id| ChangeKind::ClientDisabled { id }),
        text().prop_map(|id| ChangeKind::ClientEnabled { id }),
        (text(), option::of(any::<i64>())).prop_map(|(id, old_valid_until)| {
            ChangeKind::SecretRotated {
                id,
                old_valid_until,
            }
        }),
        any::<u64>().prop_map(|count| ChangeKind::ClientsImported { count }),
        any::<u64>().prop_map(|clients| ChangeKind::ClientsFileLoaded { clients }),
        text().prop_map(|active| ChangeKind::KeyRotated { active }),
        text().prop_map(|kid| ChangeKind::KeyRevoked { kid }),
    ];
    (any::<i64>(), option::of(any::<u32>()), what).prop_map(|(at, by, what)| {
        change_kind_covered(&what);
        Change { at, by, what }
    })
}

fn status() -> impl Strategy<Value = Status> {
    (
        (text(), any::<u32>(), any::<u64>(), option::of(text())),
        (text(), text(), text(), text()),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        (reload_outcome(), vec(key_info(), 0..3)),
        (any::<u64>(), any::<u64>(), vec(change(), 0..4)),
    )
        .prop_map(
            |(
                (version, pid, uptime_secs, config_path),
                (listen, issuer, algorithm, clients_file),
                (clients, disabled, rotating),
                (last_reload, keys),
                (key_rotations, secret_rotations, changes),
            )| Status {
                version,
                pid,
                uptime_secs,
                config_path,
                listen,
                issuer,
                algorithm,
                clients_file,
                clients,
                disabled,
                rotating,
                last_reload,
                keys,
                key_rotations,
                secret_rotations,
                changes,
            },
        )
}

fn admin_error_covered(error: &AdminError) {
    match error {
        AdminError::PermissionDenied { .. }
        | AdminError::ProtocolMismatch { .. }
        | AdminError::BadRequest
        | AdminError::NoSuchClient(_)
        | AdminError::ClientExists(_)
        | AdminError::InvalidInput(_)
        | AdminError::ClientsFileInvalid { .. }
        | AdminError::WriteFailed(_)
        | AdminError::RotationTooEarly { .. }
        | AdminError::NoSuchKey(_)
        | AdminError::KeyStoreFailed(_)
        | AdminError::Internal(_)
        | AdminError::TooManySubscribers { .. } => {}
    }
}

fn admin_error() -> impl Strategy<Value = AdminError> {
    let structured = prop_oneof![
        any::<u32>().prop_map(|uid| AdminError::PermissionDenied { uid }),
        (any::<u32>(), any::<u32>(), text()).prop_map(|(daemon, tool, daemon_version)| {
            AdminError::ProtocolMismatch {
                daemon,
                tool,
                daemon_version,
            }
        }),
        Just(AdminError::BadRequest),
        any::<u32>().prop_map(|max| AdminError::TooManySubscribers { max }),
        (text(), text()).prop_map(|(file, reason)| AdminError::ClientsFileInvalid { file, reason }),
        (text(), any::<i64>()).prop_map(|(message, possible_at)| {
            AdminError::RotationTooEarly {
                message,
                possible_at,
            }
        }),
    ];
    let worded = prop_oneof![
        text().prop_map(AdminError::NoSuchClient),
        text().prop_map(AdminError::ClientExists),
        text().prop_map(AdminError::InvalidInput),
        text().prop_map(AdminError::WriteFailed),
        text().prop_map(AdminError::NoSuchKey),
        text().prop_map(AdminError::KeyStoreFailed),
        text().prop_map(AdminError::Internal),
    ];
    prop_oneof![structured, worded]
}

fn response_covered(response: &Response) {
    match response {
        Response::Status(_)
        | Response::Clients { .. }
        | Response::ClientAdded { .. }
        | Response::SecretRotated { .. }
        | Response::Done
        | Response::Imported { .. }
        | Response::Keys(_)
        | Response::KeyRotated { .. }
        | Response::KeyRevoked { .. }
        | Response::Reloaded(_)
        | Response::Subscribed
        | Response::Error(_) => {}
    }
}

fn response() -> impl Strategy<Value = Response> {
    let about_clients = prop_oneof![
        status().prop_map(|s| Response::Status(Box::new(s))),
        (vec(client_info(), 0..3), any::<u64>())
            .prop_map(|(clients, total)| Response::Clients { clients, total }),
        (text(), text()).prop_map(|(id, secret)| Response::ClientAdded { id, secret }),
        (text(), text(), option::of(any::<i64>())).prop_map(|(id, secret, old_valid_until)| {
            Response::SecretRotated {
                id,
                secret,
                old_valid_until,
            }
        }),
        any::<u64>().prop_map(|count| Response::Imported { count }),
        reload_outcome().prop_map(Response::Reloaded),
    ];
    let about_keys = prop_oneof![
        vec(key_info(), 0..4).prop_map(Response::Keys),
        (
            text(),
            option::of((text(), any::<i64>())),
            text(),
            any::<i64>()
        )
            .prop_map(
                |(active, retiring, next, next_may_sign_at)| Response::KeyRotated {
                    active,
                    retiring,
                    next,
                    next_may_sign_at,
                }
            ),
        (text(), key_state(), text()).prop_map(|(kid, former_state, active)| {
            Response::KeyRevoked {
                kid,
                former_state,
                active,
            }
        }),
    ];
    let others = prop_oneof![
        Just(Response::Done),
        Just(Response::Subscribed),
        admin_error().prop_map(Response::Error),
    ];
    prop_oneof![about_clients, about_keys, others]
}

fn stats_tick() -> impl Strategy<Value = StatsTick> {
    let client_tick =
        (text(), any::<u64>(), any::<u64>()).prop_map(|(id, issued, failures)| ClientTick {
            id,
            issued,
            failures,
        });
    (
        (any::<i64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        (vec((text(), any::<u64>()), 0..4), vec(client_tick, 0..4)),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(
                (at_ms, interval_ms, issued, failures),
                (failures_by_code, clients),
                (p50_us, p99_us, issued_total, failures_total),
            )| StatsTick {
                at_ms,
                interval_ms,
                issued,
                failures,
                failures_by_code,
                clients,
                p50_us,
                p99_us,
                issued_total,
                failures_total,
            },
        )
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        hello().prop_map(ClientFrame::Hello),
        request().prop_map(ClientFrame::Request),
    ]
}

fn server_frame_covered(frame: &ServerFrame) {
    match frame {
        ServerFrame::Hello(_)
        | ServerFrame::Response(_)
        | ServerFrame::Refused(_)
        | ServerFrame::Event(Event::Stats(_)) => {}
    }
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        hello().prop_map(ServerFrame::Hello),
        response().prop_map(ServerFrame::Response),
        admin_error().prop_map(ServerFrame::Refused),
        stats_tick().prop_map(|tick| ServerFrame::Event(Event::Stats(tick))),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip(message in client_frame()) {
        if let ClientFrame::Request(request) = &message {
            request_covered(request);
        }
        prop_assert_eq!(through_frame(&message), message);
    }

    #[test]
    fn server_frames_round_trip(message in server_frame()) {
        server_frame_covered(&message);
        match &message {
            ServerFrame::Response(response) => {
                response_covered(response);
                if let Response::Error(error) = response {
                    admin_error_covered(error);
                }
            }
            ServerFrame::Refused(error) => admin_error_covered(error),
            ServerFrame::Hello(_) | ServerFrame::Event(_) => {}
        }
        prop_assert_eq!(through_frame(&message), message);
    }

    /// `Hello` is variant 0 of both frame enums, so peers of any version read each other's
    /// greeting (see the crate docs); the same greeting is the same bytes either way.
    #[test]
    fn hello_has_the_same_bytes_from_either_side(hello in hello()) {
        let from_client = tokendealer_shared::codec::encode(&ClientFrame::Hello(hello.clone()))
            .expect("a hello encodes");
        let from_server = tokendealer_shared::codec::encode(&ServerFrame::Hello(hello))
            .expect("a hello encodes");
        prop_assert_eq!(from_client.first(), Some(&0));
        prop_assert_eq!(from_client, from_server);
    }
}
