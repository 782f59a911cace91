//! The known-answer vectors of docs/PROTOCOL.md, shared with the Python tests.

use _core::{LinkKey, Session, SessionLimits};
use serde_json::Value;

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn vectors() -> Value {
    serde_json::from_str(include_str!("../../tests/vectors/frame_path.json")).unwrap()
}

/// Both ends of the session a vector case describes: (sender's, receiver's).
fn sessions(vectors: &Value, case: &Value) -> (Session, Session) {
    let link = &vectors["links"][text(&case["link"])];
    let dh = link["dh_secret"].as_str().map(|h| hex::decode(h).unwrap());
    let key = LinkKey::derive(
        &unhex(&link["half_a"]),
        text(&link["id_a"]),
        &unhex(&link["half_b"]),
        text(&link["id_b"]),
        dh.as_deref(),
    )
    .unwrap();
    let (sender, receiver) = (text(&case["sender"]), text(&case["receiver"]));
    let (ns, nr) = (unhex(&case["sender_nonce"]), unhex(&case["receiver_nonce"]));
    let limits = SessionLimits::default();
    (
        Session::new(&key, sender, receiver, &ns, &nr, limits).unwrap(),
        Session::new(&key, receiver, sender, &nr, &ns, limits).unwrap(),
    )
}

#[test]
fn every_worked_example_seals_and_opens_to_the_documented_bytes() {
    let vectors = vectors();
    for frame in vectors["frames"].as_array().unwrap() {
        let (mut tx, mut rx) = sessions(&vectors, frame);
        let can_id = u32::try_from(frame["can_id"].as_u64().unwrap()).unwrap();
        let payload = unhex(&frame["payload"]);
        let fd = frame["fd"].as_bool().unwrap();
        for _ in 0..frame["freshness"].as_u64().unwrap() {
            tx.seal(can_id, &payload, fd).unwrap();
        }
        let sealed = tx.seal(can_id, &payload, fd).unwrap();
        let wire: Vec<(u64, String)> = sealed
            .frames()
            .iter()
            .map(|f| (u64::from(f.id), hex::encode(f.payload())))
            .collect();
        let expected: Vec<(u64, String)> = frame["wire"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["can_id"].as_u64().unwrap(), text(&w["data"]).to_owned()))
            .collect();
        assert_eq!(wire, expected, "{}", text(&frame["name"]));
        let mut opened = None;
        for f in sealed.frames() {
            opened = rx.open(f.id, f.payload()).unwrap();
        }
        assert_eq!(
            opened.unwrap().payload(),
            &payload[..],
            "{}",
            text(&frame["name"])
        );
    }
}

#[test]
fn the_sealed_message_example_matches() {
    let vectors = vectors();
    for message in vectors["messages"].as_array().unwrap() {
        let (mut tx, mut rx) = sessions(&vectors, message);
        let stream = u32::try_from(message["stream"].as_u64().unwrap()).unwrap();
        let payload = unhex(&message["payload"]);
        for _ in 0..message["freshness"].as_u64().unwrap() {
            tx.seal_message(stream, &payload).unwrap();
        }
        let sealed = tx.seal_message(stream, &payload).unwrap();
        assert_eq!(hex::encode(&sealed), text(&message["sealed"]));
        assert_eq!(rx.open_message(stream, &sealed).unwrap(), payload);
    }
}
