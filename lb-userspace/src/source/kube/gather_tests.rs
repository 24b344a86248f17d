//! When the kube source's change sets leave, on tokio's paused clock: time
//! moves only when the test says so (or every task waits), so "at once"
//! is checked exactly, not measured.

use std::time::Duration;

use futures::channel::mpsc::{UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::Service;
use tokio::{sync::mpsc, time::Instant};

use super::{assembler::NEEDED_FOR_SYNC, *};
use crate::{model::snapshot::Change, source::file::object_id};

type Event = (&'static str, Result<Ev, String>);

fn svc(name: &str) -> Object {
    let mut s = Service::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some("default".into());
    Object::Service(Box::new(s))
}

fn upserted(b: &Batch) -> Vec<String> {
    b.changes
        .iter()
        .filter_map(|c| match c {
            Change::Upsert(o) => object_id(o).map(|(_, key)| key.name.to_string()),
            _ => None,
        })
        .collect()
}

/// The gathering loop on its own task, fed by the returned sender.
fn start() -> (UnboundedSender<Event>, mpsc::Receiver<Batch>, Arc<Health>) {
    let (events, rx_events) = unbounded();
    let (tx, batches) = mpsc::channel(crate::source::QUEUED);
    let health = Health::new();
    let h = health.clone();
    tokio::spawn(async move {
        gather(rx_events, &h, tx).await;
    });
    (events, batches, health)
}

/// Sends `ev` and lets the gathering task take it at the current instant.
async fn send(events: &UnboundedSender<Event>, kind: &'static str, ev: Result<Ev, String>) {
    events.unbounded_send((kind, ev)).unwrap();
    tokio::task::yield_now().await;
}

async fn list_everything(events: &UnboundedSender<Event>) {
    for kind in NEEDED_FOR_SYNC {
        send(events, kind, Ok(Ev::Init)).await;
        send(events, kind, Ok(Ev::InitDone)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_agent_gets_each_change_at_once() {
    let (events, mut batches, _) = start();
    let t0 = Instant::now();
    list_everything(&events).await;
    let first = batches.recv().await.unwrap();
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "the listings leave when complete"
    );
    assert!(first.full && first.changes.is_empty());
    let counts = first.counts.expect("counts sent with the change set");
    assert_eq!(counts.get("Service"), Some(&0), "{counts:?}");

    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(batches.try_recv().is_err(), "nothing to send, nothing sent");
    let t1 = Instant::now();
    send(&events, "Service", Ok(Ev::Upsert(svc("a")))).await;
    let next = batches.recv().await.unwrap();
    assert_eq!(t1.elapsed(), Duration::ZERO, "no wait for more events");
    assert_eq!(upserted(&next), ["a"]);
    assert!(!next.full);
    assert_eq!(next.counts.unwrap().get("Service"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn what_comes_while_the_agent_is_busy_gathers_into_one_change_set() {
    let (events, mut batches, _) = start();
    list_everything(&events).await;
    // The listing's change set waits in the queue: the agent is busy.
    send(&events, "Service", Ok(Ev::Upsert(svc("a")))).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    send(&events, "Service", Ok(Ev::Upsert(svc("b")))).await;
    send(&events, "Service", Ok(Ev::Upsert(svc("c")))).await;
    let first = batches.recv().await.unwrap();
    assert!(first.full && first.changes.is_empty());
    let burst = batches.recv().await.unwrap();
    assert_eq!(
        upserted(&burst),
        ["a", "b", "c"],
        "one change set for what came meanwhile"
    );
    assert!(batches.try_recv().is_err(), "and nothing more");
}

#[tokio::test(start_paused = true)]
async fn a_failed_watch_is_counted_and_starts_no_change_set() {
    let (events, mut batches, health) = start();
    list_everything(&events).await;
    batches.recv().await.unwrap();
    send(&events, "Pod", Err("connection reset".into())).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(batches.try_recv().is_err(), "an error is no change");
    assert_eq!(health.metrics.watch_restarts.get(), 1);
}
