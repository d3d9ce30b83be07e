//! The body protocol on `WS /ws/body`, with a scripted body and with `body-sim`.

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::{TestBrain, assert_schema, eventually, start};
use creature::body_sim::{self, BodySimArgs};
use creature::config::DEV_BODY_TOKEN;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    brain: &TestBrain,
    token: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut req = brain.ws_url("/ws/body").into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.map(|(s, _)| s)
}

async fn recv(socket: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a message")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_schema("brain_to_body.schema.json", &v);
            return v;
        }
    }
}

async fn status(socket: &mut Socket, id: &str, state: &str) {
    let msg = json!({"type": "status", "id": id, "state": state});
    assert_schema("body_to_brain.schema.json", &msg);
    socket.send(Message::text(msg.to_string())).await.unwrap();
}

async fn task_state(brain: &TestBrain, id: &str) -> String {
    brain.get(&format!("/api/tasks/{id}")).await.1["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_needs_the_token_and_the_newest_body_takes_the_seat() {
    let brain = start().await;
    for token in [None, Some("guess")] {
        match connect(&brain, token).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401)
            }
            other => panic!("{token:?} should be refused: {other:?}"),
        }
    }
    let mut body = connect(&brain, Some(DEV_BODY_TOKEN)).await.unwrap();
    let first = recv(&mut body).await;
    assert_eq!(first["type"], "hello");
    // A second body (the robot, reconnecting) replaces the first, which is told why.
    let mut second = connect(&brain, Some(DEV_BODY_TOKEN))
        .await
        .expect("the newest body is let in");
    let hello = recv(&mut second).await;
    assert_eq!(hello["type"], "hello");
    assert_ne!(hello["session"], first["session"]);
    let closed = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the old body is closed");
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "replaced by a newer connection");
        }
        other => panic!("expected a close frame with a reason, got {other:?}"),
    }
    let (_, state) = brain.get("/api/state").await;
    assert_schema("state.schema.json", &state);
    assert_eq!(state["body"]["attached"], true);
    assert_eq!(state["body"]["refused_auth"], 2);
    assert_eq!(state["body"]["sessions"], 2);
    drop(second);
    eventually(Duration::from_secs(3), "the body to detach", || async {
        let (_, state) = brain.get("/api/state").await;
        (state["body"]["attached"] == false).then_some(())
    })
    .await;
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_go_out_and_statuses_come_back_into_the_history() {
    let brain = start().await;
    let (s, waiting) = brain
        .post("/api/tasks", json!({"utterance": "bring me the cup"}))
        .await;
    assert_eq!(s, 201);
    let mut body = connect(&brain, Some(DEV_BODY_TOKEN)).await.unwrap();
    recv(&mut body).await; // hello
    let call = recv(&mut body).await;
    assert_eq!(call["type"], "tool_call");
    assert_eq!(call["id"], waiting["id"]);
    assert_eq!(call["arguments"]["object"], "cup");
    let id = call["id"].as_str().unwrap().to_string();
    assert_eq!(task_state(&brain, &id).await, "dispatched");

    for state in ["accepted", "running"] {
        status(&mut body, &id, state).await;
    }
    body.send(Message::text(json!({"type": "status", "id": id, "state": "progress", "progress": 0.5, "detail": "at the table"}).to_string())).await.unwrap();
    status(&mut body, &id, "succeeded").await;
    let task = eventually(Duration::from_secs(3), "success", || async {
        let (_, t) = brain.get(&format!("/api/tasks/{id}")).await;
        (t["state"] == "succeeded").then_some(t)
    })
    .await;
    assert_schema("task.schema.json", &task);
    let history = common::history(&task);
    assert_eq!(
        history,
        ["pending", "dispatched", "accepted", "running", "succeeded"]
    );
    assert_eq!(task["progress"]["detail"], "at the table");
    // Success shows on the face.
    eventually(Duration::from_secs(2), "a happy creature", || async {
        let (_, a) = brain.get("/api/actors/affect").await;
        (a["state"]["emotion"] == "happy").then_some(())
    })
    .await;

    // Filed while the body is here: it goes out at once.
    let (_, live) = brain
        .post("/api/tasks", json!({"action": "open", "object": "door"}))
        .await;
    let call = recv(&mut body).await;
    assert_eq!(call["id"], live["id"]);
    // Cancelling tells the body.
    let (s, cancelled) = brain
        .post(
            &format!("/api/tasks/{}/cancel", live["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let cancel = recv(&mut body).await;
    assert_eq!(
        (cancel["type"].as_str(), &cancel["id"]),
        (Some("cancel"), &live["id"])
    );
    let (s, again) = brain
        .post(
            &format!("/api/tasks/{}/cancel", live["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(s, 409, "{again}");
    brain.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_sends_garbage_gets_errors_and_breaks_nothing() {
    let brain = start_with_rate(20).await;
    let (_, t) = brain
        .post("/api/tasks", json!({"utterance": "pick up the red ball"}))
        .await;
    let id = t["id"].as_str().unwrap().to_string();
    let mut body = connect(&brain, Some(DEV_BODY_TOKEN)).await.unwrap();
    recv(&mut body).await; // hello
    recv(&mut body).await; // the tool call

    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{not json"), "malformed_message"),
        (
            Message::text(json!({"type": "dance"}).to_string()),
            "malformed_message",
        ),
        (
            Message::text(json!({"type": "status", "id": id, "state": "teleported"}).to_string()),
            "malformed_message",
        ),
        (Message::binary(vec![1, 2, 3]), "malformed_message"),
        (
            Message::text(
                json!({"type": "status", "id": "task-999999", "state": "accepted"}).to_string(),
            ),
            "unknown_task",
        ),
        (
            Message::text(
                json!({"type": "status", "id": id, "state": "progress", "progress": 9}).to_string(),
            ),
            "invalid_status",
        ),
    ];
    for (msg, code) in cases {
        body.send(msg).await.unwrap();
        let err = recv(&mut body).await;
        assert_eq!(
            (err["type"].as_str(), err["error"].as_str()),
            (Some("error"), Some(code)),
            "{err}"
        );
    }
    status(&mut body, &id, "succeeded").await;
    eventually(Duration::from_secs(2), "success", || async {
        (task_state(&brain, &id).await == "succeeded").then_some(())
    })
    .await;
    status(&mut body, &id, "running").await;
    let err = recv(&mut body).await;
    assert_eq!(err["error"], "out_of_order", "{err}");
    assert_eq!(err["id"], id.as_str());

    let (_, before) = brain.get("/api/state").await;
    let bad_before = before["body"]["bad_messages"].as_u64().unwrap();
    assert!(bad_before >= 7, "{before}");

    // A body far over the rate (20/s here): it is told once, then paced, and nothing it
    // said is dropped: the last report of the burst, `succeeded`, still lands.
    let (_, t) = brain
        .post("/api/tasks", json!({"utterance": "bring me the cup"}))
        .await;
    let fast = t["id"].as_str().unwrap().to_string();
    let call = recv(&mut body).await;
    assert_eq!(call["id"], fast.as_str(), "{call}");
    status(&mut body, &fast, "accepted").await;
    status(&mut body, &fast, "running").await;
    for step in 1..=60 {
        let msg = json!({"type": "status", "id": fast, "state": "progress", "progress": step as f64 / 100.0});
        body.send(Message::text(msg.to_string())).await.unwrap();
    }
    status(&mut body, &fast, "succeeded").await;
    let err = recv(&mut body).await;
    assert_eq!(err["error"], "rate_limited", "{err}");
    eventually(
        Duration::from_secs(10),
        "the burst's last report",
        || async { (task_state(&brain, &fast).await == "succeeded").then_some(()) },
    )
    .await;
    let (status_code, health) = brain.get("/healthz").await;
    assert_eq!(status_code, 200, "{health}");
    let (_, state) = brain.get("/api/state").await;
    assert!(
        state["body"]["rate_limited"].as_u64().unwrap() >= 20,
        "{state}"
    );
    assert_eq!(
        state["body"]["bad_messages"].as_u64().unwrap(),
        bad_before,
        "every paced report was applied in order: {state}"
    );
    assert_eq!(
        task_state(&brain, &id).await,
        "succeeded",
        "nothing the garbage said changed the ledger"
    );
    assert!(
        brain
            .service
            .brain()
            .actors()
            .iter()
            .all(|a| a.restarts == 0)
    );
    brain.service.shutdown().await;
}

async fn start_with_rate(rate: u32) -> TestBrain {
    common::start_with(|c| c.body.max_messages_per_sec = rate).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_sim_carries_out_what_the_creature_promised() {
    let brain = start().await;
    let args = BodySimArgs {
        url: brain.ws_url("/ws/body"),
        token: DEV_BODY_TOKEN.into(),
        failure_rate: 0.0,
        speed: 10.0,
        seed: 3,
    };
    let sim = tokio::spawn(body_sim::run(args));
    // Spoken, heard, promised, planned, filed, delivered, done.
    brain
        .post("/api/hear", json!({"text": "bring me the cup"}))
        .await;
    let task = eventually(Duration::from_secs(10), "the task to succeed", || async {
        let (_, page) = brain.get("/api/tasks?order=asc").await;
        page["tasks"]
            .as_array()
            .and_then(|l| l.first().cloned())
            .filter(|t| t["state"] == "succeeded")
    })
    .await;
    assert_eq!(task["source"], "monologue");
    assert_eq!(task["arguments"]["object"], "cup");
    let history = task["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["detail"], "brought the cup");
    assert_eq!(
        task["progress"]["fraction"], 0.75,
        "the last progress report before it finished"
    );
    let states = common::history(&task);
    assert_eq!(
        states,
        ["pending", "dispatched", "accepted", "running", "succeeded"]
    );

    // The moon is out of reach.
    let (_, moon) = brain
        .post("/api/tasks", json!({"action": "bring", "object": "moon"}))
        .await;
    let id = moon["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(5), "a refusal", || async {
        (task_state(&brain, &id).await == "rejected").then_some(())
    })
    .await;
    sim.abort();
    brain.service.shutdown().await;
}
