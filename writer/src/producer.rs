//! A Kafka producer whose acknowledgements are served on the Tokio runtime, not on a polling
//! thread: [`Producer::send`] returns once Kafka acknowledged the record, with its position.
//!
//! librdkafka puts each acknowledgement on the producer's main queue, which someone must poll.
//! rdkafka's `FutureProducer` keeps a thread for it: every acknowledgement wakes that thread,
//! which then wakes the task waiting for the append, two cross-thread wake-ups per produce
//! request (and its poll loop spins through the last millisecond of every 100 ms wait). Here
//! librdkafka calls back when the queue turns non-empty; the callback wakes a task on the
//! runtime, which serves the queue and completes the appends on their own thread.

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::client::Client;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::Producer as _;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, FutureRecord, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Message};
use tokio::sync::{Notify, oneshot};

use crate::Position;

/// A producer of acknowledged records. Cloning shares it.
#[derive(Clone)]
pub struct Producer {
    served: ServedProducer,
}

/// How long a send waits before it tries again to queue its record in a full queue.
const QUEUE_RETRY: Duration = Duration::from_millis(100);

impl Producer {
    /// Creates the producer. Must be called within a Tokio runtime, which serves its
    /// acknowledgements and must outlive it.
    pub fn new(config: &ClientConfig) -> KafkaResult<Self> {
        let context = Acknowledging {
            brokers_down: AtomicBool::new(false),
        };
        Ok(Self {
            served: ServedProducer::create(config, context)?,
        })
    }

    /// Queues `record` (waiting up to `queue_timeout` for room in a full queue) and waits for
    /// Kafka's acknowledgement, as long as librdkafka's `message.timeout.ms` allows.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> Result<Position, KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        if self.served.shared.server.is_finished() {
            // The runtime that served the acknowledgements has shut down: nothing would
            // answer this record.
            return Err(KafkaError::Canceled);
        }
        let started = Instant::now();
        let (acknowledgement, acknowledged) = oneshot::channel();
        let mut record = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: Box::new(acknowledgement),
        };
        loop {
            match self.served.producer().send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if started.elapsed() < queue_timeout =>
                {
                    record = returned;
                    tokio::time::sleep(QUEUE_RETRY).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
        // Every queued record is answered: its delivery, its time-out, or the purge of a
        // dropped producer (which cannot happen while `self` is borrowed).
        acknowledged.await.unwrap_or(Err(KafkaError::Canceled))
    }

    pub fn client(&self) -> &Client<Acknowledging> {
        self.served.producer().client()
    }

    /// librdkafka reported every broker down, and nothing cleared the mark since.
    pub fn brokers_down(&self) -> bool {
        self.client().context().brokers_down.load(Ordering::Acquire)
    }

    /// Clears the mark of [`Producer::brokers_down`]: a broker answered.
    pub fn mark_reachable(&self) {
        self.client()
            .context()
            .brokers_down
            .store(false, Ordering::Release);
    }
}

/// Completes each send with Kafka's answer, and hears librdkafka's error reports: "all brokers
/// down" marks the log unreachable.
pub struct Acknowledging {
    brokers_down: AtomicBool,
}

/// Where a send waits for Kafka's answer about its record.
type Acknowledgement = oneshot::Sender<Result<Position, KafkaError>>;

impl ClientContext for Acknowledging {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.brokers_down.store(true, Ordering::Release);
        }
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

impl ProducerContext for Acknowledging {
    type DeliveryOpaque = Box<Acknowledgement>;

    fn delivery(&self, result: &DeliveryResult<'_>, acknowledgement: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(message) => Ok(Position {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, _)) => Err(error.clone()),
        };
        // The sender may have given up waiting; then nobody listens.
        let _ = acknowledgement.send(outcome);
    }
}

/// A [`BaseProducer`] served by a task of the runtime it was created on. Cloning shares it; the
/// task ends when the last clone is dropped.
#[derive(Clone)]
struct ServedProducer {
    shared: Arc<Shared>,
}

struct Shared {
    /// Our own reference to the producer's main queue, which the callback watches.
    queue: MainQueue,
    /// What the callback wakes. Declared before `producer`, and the callback is switched off in
    /// `drop` before either goes.
    ready: Arc<Notify>,
    server: tokio::task::AbortHandle,
    producer: BaseProducer<Acknowledging>,
}

/// A queue handle from `rd_kafka_queue_get_main`, released in [`Shared`]'s `drop`.
struct MainQueue(*mut rdsys::rd_kafka_queue_t);

// SAFETY: librdkafka's queues are thread-safe: every operation takes the queue's lock.
unsafe impl Send for MainQueue {}
unsafe impl Sync for MainQueue {}

impl MainQueue {
    fn len(&self) -> usize {
        // SAFETY: the handle is valid until `Shared::drop` destroys it.
        unsafe { rdsys::rd_kafka_queue_length(self.0) }
    }
}

/// Called by librdkafka, on whichever thread enqueued, with the queue locked, when the queue
/// goes from empty to non-empty.
unsafe extern "C" fn queue_nonempty(_rk: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Notify` of a live `Shared`: its `drop` switches the callback off
    // (under the same lock) before the `Notify` is freed.
    let ready = unsafe { &*(opaque as *const Notify) };
    ready.notify_one();
}

impl ServedProducer {
    /// Creates the producer and its serving task. Must be called within a Tokio runtime, which
    /// must outlive the producer.
    fn create(config: &ClientConfig, context: Acknowledging) -> KafkaResult<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            KafkaError::ClientCreation("a producer must be created within a Tokio runtime".into())
        })?;
        let producer = BaseProducer::from_config_and_context(config, context)?;
        // SAFETY: the client is live; the returned handle is ours to destroy.
        let queue =
            MainQueue(unsafe { rdsys::rd_kafka_queue_get_main(producer.client().native_ptr()) });
        let ready = Arc::new(Notify::new());
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            let server = runtime
                .spawn(serve(weak.clone(), ready.clone()))
                .abort_handle();
            Shared {
                queue,
                ready: ready.clone(),
                server,
                producer,
            }
        });
        // SAFETY: the queue handle is valid, and the `Notify` outlives the callback (above).
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(
                shared.queue.0,
                Some(queue_nonempty),
                Arc::as_ptr(&shared.ready) as *mut c_void,
            );
        }
        // Anything queued before the callback was on (nothing, normally) is served now.
        shared.ready.notify_one();
        Ok(Self { shared })
    }

    fn producer(&self) -> &BaseProducer<Acknowledging> {
        &self.shared.producer
    }
}

/// Serves the queue each time the callback says it has something, until it is empty again.
async fn serve(shared: Weak<Shared>, ready: Arc<Notify>) {
    loop {
        ready.notified().await;
        // The callback fires only on the empty → non-empty turn, so the queue is emptied here;
        // an event queued after the last look notifies again (the permit is kept).
        loop {
            // Held only for one event: the last producer's drop (a flush) belongs to whoever
            // drops it, not to this task.
            let Some(producer) = shared.upgrade() else {
                return;
            };
            if producer.queue.len() == 0 {
                break;
            }
            producer.producer.poll(Duration::ZERO);
            drop(producer);
            // A backlog (a flush, a broker back after an outage) must not hold the thread.
            tokio::task::consume_budget().await;
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.server.abort();
        // SAFETY: switching the callback off takes the queue's lock, so no call is running once
        // this returns; the handle is not used after it is destroyed.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue.0, None, ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue.0);
        }
        self.queue.0 = ptr::null_mut();
        // `producer` is dropped next: it purges and flushes, serving the queue itself.
    }
}
