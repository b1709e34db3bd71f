//! Against librdkafka's own Kafka-protocol test broker (its mock cluster),
//! the only broker that can be told to answer one produce request with an
//! error that librdkafka treats as fatal.

use super::*;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::Instant;

const TOPIC: &str = "t";

fn producers(bootstrap: String, max_in_flight: usize) -> Arc<Producers> {
    let settings = ProducerSettings {
        brokers: bootstrap,
        extra: vec![],
        max_in_flight,
    };
    Arc::new(Producers::new(settings, Metrics::default()).expect("producer"))
}

fn one_record() -> Vec<(u32, String, Vec<u8>)> {
    vec![(0, "k".to_owned(), b"v".to_vec())]
}

async fn send(p: &Producers) -> Result<(), String> {
    let acks = p.enqueue(TOPIC, &one_record()).map_err(|e| e.to_string())?;
    acks.wait().await.map_err(|e| e.to_string())
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_fatal_producer_is_replaced_and_sends_resume() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, 1, 1).expect("topic");
    let p = producers(mock.bootstrap_servers(), 100);
    let stop = CancellationToken::new();
    let supervisor = tokio::spawn(p.clone().supervise(stop.clone()));
    send(&p).await.expect("first send");

    // The head-of-line produce request answered out-of-order: librdkafka
    // can no longer vouch for idempotence and marks the producer fatal.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let failed = send(&p).await;
    assert!(
        failed.is_err(),
        "the poisoned send must fail, got {failed:?}"
    );
    until("the producer to be replaced", || {
        p.metrics.producer_restarts.get() == 1 && p.is_healthy()
    })
    .await;
    assert_eq!(p.metrics.producer_ready.get(), 1);
    for _ in 0..5 {
        send(&p).await.expect("sends after the restart");
    }
    stop.cancel();
    supervisor.await.expect("supervisor ends");
}

#[tokio::test]
async fn work_in_flight_is_bounded_and_refused_early() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, 1, 1).expect("topic");
    let p = producers(mock.bootstrap_servers(), 3);
    send(&p).await.expect("warm-up send");
    // A slow broker: every request takes a second.
    mock.broker_round_trip_time(1, Duration::from_secs(1))
        .expect("rtt");
    let held: Vec<Acks> = (0..3)
        .map(|_| p.enqueue(TOPIC, &one_record()).expect("within the bound"))
        .collect();
    assert_eq!(p.metrics.produce_in_flight.get(), 3);
    let refused = p.enqueue(TOPIC, &one_record());
    assert!(
        matches!(refused, Err(ProduceError::Overloaded { in_flight: 3 })),
        "the fourth record must be refused at once"
    );
    for acks in held {
        acks.wait().await.expect("slow but acknowledged");
    }
    assert_eq!(p.metrics.produce_in_flight.get(), 0);
    mock.broker_round_trip_time(1, Duration::ZERO).expect("rtt");
    send(&p).await.expect("room again once acknowledged");
}
