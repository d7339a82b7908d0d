//! The edge's reader of the log against a real broker: every record once, each partition's in
//! log order, whatever compression its producer chose, including records that arrive while a
//! fetch waits; and its bounds are the partitions' first offsets and ends. A position the log
//! does not hold (past its end: the log was made again) moves to the end, and reading goes on.
//! (Broker loss under it: the chaos test and the replicated log's leader kill, which count every
//! echo the edge delivers from the log.)

use std::collections::BTreeMap;
use std::time::Duration;

use chat_tests::TestEnv;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use socket_edge::log_reader::{LogReader, Record};

/// Produces `count` records named `{tag}-{i}` with `compression`, spread over the partitions by
/// key; returns each record's place and payload, as Kafka acknowledged it.
async fn produce(env: &TestEnv, compression: &str, tag: &str, count: usize) -> Vec<Record> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("compression.type", compression)
        // Batches of several records, so that a fetch gets whole and cut batches.
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends = (0..count).map(|i| {
        let producer = producer.clone();
        let topic = env.topic.clone();
        let payload = format!("{tag}-{i}");
        async move {
            let key = format!("k{}", i % 7);
            let delivery = producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .expect("acknowledged");
            Record {
                partition: delivery.partition as usize,
                offset: delivery.offset,
                timestamp: delivery.timestamp.to_millis(),
                payload: Some(payload.into_bytes().into()),
            }
        }
    });
    futures_util::future::join_all(sends).await
}

fn by_partition(records: impl IntoIterator<Item = Record>) -> BTreeMap<usize, Vec<Record>> {
    let mut map: BTreeMap<usize, Vec<Record>> = BTreeMap::new();
    for r in records {
        map.entry(r.partition).or_default().push(r);
    }
    for records in map.values_mut() {
        records.sort_by_key(|r| r.offset);
    }
    map
}

/// Reads until `want` records came, then for a little longer to see that nothing else does.
async fn read_exactly(reader: &mut LogReader, want: usize) -> Vec<Record> {
    let mut read = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while read.len() < want {
            reader.read(&mut read).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {want} records read in 30 s", read.len()));
    // (A read may also end with no records, when a position moved past something else.)
    let more = tokio::time::timeout(Duration::from_millis(500), async {
        let mut more = Vec::new();
        while more.is_empty() {
            reader.read(&mut more).await;
        }
        more
    })
    .await;
    assert!(
        more.is_err(),
        "records read twice or from nowhere: {more:?}"
    );
    read
}

#[tokio::test]
async fn every_record_is_read_once_in_log_order_whatever_its_compression() {
    let env = TestEnv::new().await;
    let mut written = Vec::new();
    for compression in ["none", "gzip", "snappy", "lz4"] {
        written.extend(produce(&env, compression, compression, 150).await);
    }
    let written = by_partition(written);

    let mut reader = LogReader::new(&env.brokers, &env.topic);
    let bounds = reader.bounds().await.expect("bounds");
    assert_eq!(bounds.len(), 4, "the test topic's partitions");
    for (partition, &(first, end)) in bounds.iter().enumerate() {
        let count = written.get(&partition).map_or(0, Vec::len) as i64;
        assert_eq!((first, end), (0, count), "partition {partition}'s bounds");
    }

    // From the start of each partition, then from a position in its middle.
    reader.start_at(vec![0; 4]);
    let total = written.values().map(Vec::len).sum();
    let read = read_exactly(&mut reader, total).await;
    // Each partition's records come in log order (the reader hands them out as they come).
    for (partition, records) in by_partition(read.iter().cloned()) {
        let in_order: Vec<_> = read.iter().filter(|r| r.partition == partition).collect();
        assert!(in_order.windows(2).all(|w| w[0].offset < w[1].offset));
        assert_eq!(records, written[&partition], "partition {partition}");
    }

    let middle: Vec<i64> = bounds.iter().map(|&(_, end)| end / 2).collect();
    reader.start_at(middle.clone());
    let expected: usize = bounds
        .iter()
        .map(|&(_, end)| (end - end / 2) as usize)
        .sum();
    let read = by_partition(read_exactly(&mut reader, expected).await);
    for (partition, records) in read {
        assert_eq!(records, written[&partition][middle[partition] as usize..]);
    }

    // Records that arrive while the reader waits on its fetches.
    let waiting = tokio::spawn(async move {
        let late = read_exactly(&mut reader, 40).await;
        (reader, late)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = by_partition(produce(&env, "none", "late", 40).await);
    let (_, read) = waiting.await.expect("the reading task");
    assert_eq!(by_partition(read), late);
}

#[tokio::test]
async fn a_missing_topic_is_an_error_not_a_wait() {
    let env = TestEnv::new().await;
    let mut reader = LogReader::new(&env.brokers, &format!("{}.missing", env.topic));
    let error = tokio::time::timeout(Duration::from_secs(10), reader.bounds())
        .await
        .expect("an answer within 10 s")
        .expect_err("no such topic");
    assert!(
        error.to_string().contains("UnknownTopicOrPartition"),
        "{error}"
    );
}

#[tokio::test]
async fn a_position_past_the_end_moves_to_the_end_and_reading_goes_on() {
    let env = TestEnv::new().await;
    let before = produce(&env, "none", "before", 20).await;
    let mut reader = LogReader::new(&env.brokers, &env.topic);
    let bounds = reader.bounds().await.expect("bounds");
    assert_eq!(
        bounds.iter().map(|&(_, end)| end).sum::<i64>(),
        before.len() as i64
    );
    // Positions from a longer log of the same name, deleted since.
    reader.start_at(bounds.iter().map(|&(_, end)| end + 1_000).collect());
    let moved = tokio::time::timeout(Duration::from_secs(30), async {
        let mut read = Vec::new();
        loop {
            reader.read(&mut read).await;
            let ends: Vec<_> = (0..bounds.len()).map(|p| reader.position(p)).collect();
            if ends == bounds.iter().map(|&(_, end)| Some(end)).collect::<Vec<_>>() {
                return read;
            }
        }
    })
    .await
    .expect("every position moved to its partition's end within 30 s");
    assert!(moved.is_empty(), "records from nowhere: {moved:?}");

    let waiting = tokio::spawn(async move { read_exactly(&mut reader, 30).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = by_partition(produce(&env, "none", "after", 30).await);
    assert_eq!(
        by_partition(waiting.await.expect("the reading task")),
        after
    );
}
