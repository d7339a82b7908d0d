//! Kafka's protocol over TCP, as far as this project speaks it: one request at a time on a
//! connection, the messages from `kafka-protocol`, and who leads which partition. The writer's
//! producer ([`crate::Appender`]) and the edge's log reader share it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METADATA_VERSION: i16 = 12;
const LIST_OFFSETS_VERSION: i16 = 7;

/// The largest answer accepted: the log reader's fetches ask for at most 4 MiB, with room for
/// their framing.
const MAX_FRAME: usize = 8 << 20;
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);
/// How long a broker has to answer a request, beyond what the request lets it wait.
const ANSWER_PATIENCE: Duration = Duration::from_secs(10);

/// The pauses before asking a cluster again after failures: doubling from 100 ms to a second,
/// so an outage ends for a client within a second of its end for Kafka.
#[derive(Debug)]
pub struct Backoff {
    pause: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const LONGEST: Duration = Duration::from_secs(1);

    /// The pause before the next attempt.
    pub fn pause(&self) -> Duration {
        self.pause
    }

    /// Takes the current pause and doubles the next one.
    pub fn take(&mut self) -> Duration {
        let pause = self.pause;
        self.pause = (pause * 2).min(Self::LONGEST);
        pause
    }

    /// Starts again from the first pause.
    pub fn reset(&mut self) {
        self.pause = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { pause: Self::FIRST }
    }
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("{address}: no answer within {patience:?}")]
    Timeout { address: String, patience: Duration },
    #[error("an answer that does not decode: {0}")]
    Protocol(String),
    #[error("{0}")]
    Cluster(String),
}

/// An answer that does not decode, or a request that does not encode.
fn protocol(e: impl std::fmt::Display) -> WireError {
    WireError::Protocol(e.to_string())
}

/// `host:port`, with an IPv6 host in brackets.
pub fn address(host: &str, port: i32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The name of a Kafka error code, for logs.
pub fn code_name(code: i16) -> String {
    ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| format!("error code {code}"))
}

/// A request of Kafka's protocol, and its answer. (kafka-protocol's own `Request` needs the
/// broker's side of each message too.)
pub trait Ask: Encodable + HeaderVersion {
    const KEY: ApiKey;
    type Answer: Decodable + HeaderVersion;
}

impl Ask for MetadataRequest {
    const KEY: ApiKey = ApiKey::Metadata;
    type Answer = MetadataResponse;
}

impl Ask for ListOffsetsRequest {
    const KEY: ApiKey = ApiKey::ListOffsets;
    type Answer = ListOffsetsResponse;
}

impl Ask for FetchRequest {
    const KEY: ApiKey = ApiKey::Fetch;
    type Answer = FetchResponse;
}

impl Ask for ProduceRequest {
    const KEY: ApiKey = ApiKey::Produce;
    type Answer = ProduceResponse;
}

impl Ask for InitProducerIdRequest {
    const KEY: ApiKey = ApiKey::InitProducerId;
    type Answer = InitProducerIdResponse;
}

/// One connection to a broker, one request at a time.
pub struct Connection {
    /// The broker's `host:port`.
    pub address: String,
    stream: TcpStream,
    /// What was read and not yet taken: the start of the next answer.
    read: BytesMut,
    correlation: i32,
    client_id: &'static str,
}

impl Connection {
    /// Connects to `address` (`host:port`), naming this client `client_id` in its requests.
    pub async fn open(address: &str, client_id: &'static str) -> Result<Self, WireError> {
        let io = |source| WireError::Io {
            address: address.to_owned(),
            source,
        };
        let stream = tokio::time::timeout(CONNECT_PATIENCE, TcpStream::connect(address))
            .await
            .map_err(|_| WireError::Timeout {
                address: address.to_owned(),
                patience: CONNECT_PATIENCE,
            })?
            .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Ok(Self {
            address: address.to_owned(),
            stream,
            read: BytesMut::new(),
            correlation: 0,
            client_id,
        })
    }

    /// Sends `request` and waits for its answer, for at most `wait` plus [`ANSWER_PATIENCE`].
    pub async fn call<R: Ask>(
        &mut self,
        version: i16,
        request: &R,
        wait: Duration,
    ) -> Result<R::Answer, WireError> {
        self.call_within(version, request, wait + ANSWER_PATIENCE)
            .await
    }

    /// Sends `request` and waits for its answer, for at most `patience`.
    pub async fn call_within<R: Ask>(
        &mut self,
        version: i16,
        request: &R,
        patience: Duration,
    ) -> Result<R::Answer, WireError> {
        tokio::time::timeout(patience, self.exchange(version, request))
            .await
            .unwrap_or_else(|_| {
                Err(WireError::Timeout {
                    address: self.address.clone(),
                    patience,
                })
            })
    }

    async fn exchange<R: Ask>(
        &mut self,
        version: i16,
        request: &R,
    ) -> Result<R::Answer, WireError> {
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str(self.client_id)));
        let mut out = BytesMut::with_capacity(256);
        out.put_i32(0);
        header
            .encode(&mut out, R::header_version(version))
            .map_err(protocol)?;
        request.encode(&mut out, version).map_err(protocol)?;
        let size = i32::try_from(out.len() - 4).map_err(protocol)?;
        out[..4].copy_from_slice(&size.to_be_bytes());
        self.stream
            .write_all(&out)
            .await
            .map_err(|source| WireError::Io {
                address: self.address.clone(),
                source,
            })?;

        let mut answer = self.read_frame().await?;
        let header = ResponseHeader::decode(&mut answer, R::Answer::header_version(version))
            .map_err(protocol)?;
        if header.correlation_id != self.correlation {
            return Err(WireError::Protocol(format!(
                "{}: an answer to request {} where {} was expected",
                self.address, header.correlation_id, self.correlation
            )));
        }
        R::Answer::decode(&mut answer, version).map_err(protocol)
    }

    /// Each of `partitions`' offset at `timestamp` (-2: its first offset, -1: its end), in
    /// the order asked. (A request may name a partition only once.)
    pub async fn offsets(
        &mut self,
        topic: &TopicName,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<i64>, WireError> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic.clone())
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|&p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p)
                                    .with_current_leader_epoch(-1)
                                    .with_timestamp(timestamp)
                            })
                            .collect(),
                    ),
            ]);
        let answer = self
            .call(LIST_OFFSETS_VERSION, &request, Duration::ZERO)
            .await?;
        let mut offsets = vec![None; partitions.len()];
        for p in answer
            .topics
            .iter()
            .filter(|t| &t.name == topic)
            .flat_map(|t| &t.partitions)
        {
            if p.error_code != 0 {
                return Err(WireError::Cluster(format!(
                    "{}: the offsets of partition {}: {}",
                    self.address,
                    p.partition_index,
                    code_name(p.error_code)
                )));
            }
            if let Some(i) = partitions.iter().position(|&q| q == p.partition_index) {
                offsets[i] = Some(p.offset);
            }
        }
        offsets.into_iter().collect::<Option<_>>().ok_or_else(|| {
            WireError::Cluster(format!(
                "{}: no offsets for some of partitions {partitions:?}",
                self.address
            ))
        })
    }

    /// The next size-prefixed answer, without its size.
    async fn read_frame(&mut self) -> Result<Bytes, WireError> {
        while self.read.len() < 4 {
            self.fill(4).await?;
        }
        let size = i32::from_be_bytes(self.read[..4].try_into().expect("four bytes"));
        let size = usize::try_from(size)
            .ok()
            .filter(|&size| size <= MAX_FRAME)
            .ok_or_else(|| {
                WireError::Protocol(format!("{}: an answer of {size} bytes", self.address))
            })?;
        while self.read.len() < 4 + size {
            self.fill(4 + size).await?;
        }
        let mut frame = self.read.split_to(4 + size).freeze();
        frame.advance(4);
        Ok(frame)
    }

    /// Reads what the socket has, with room for at least `want` bytes in all.
    async fn fill(&mut self, want: usize) -> Result<(), WireError> {
        self.read
            .reserve(want.saturating_sub(self.read.len()).max(16 << 10));
        match self.stream.read_buf(&mut self.read).await {
            Ok(0) => Err(WireError::Io {
                address: self.address.clone(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
            Ok(_) => Ok(()),
            Err(source) => Err(WireError::Io {
                address: self.address.clone(),
                source,
            }),
        }
    }
}

/// Who leads each partition of the topic, and where the brokers are.
pub struct Leaders {
    pub addresses: BTreeMap<i32, String>,
    /// Each partition's leader, by partition number.
    pub leaders: Vec<i32>,
}

impl Leaders {
    /// The partitions each broker leads, with its address.
    pub fn by_broker(&self, partitions: usize) -> Result<Vec<(String, Vec<i32>)>, WireError> {
        if self.leaders.len() < partitions {
            return Err(WireError::Cluster(format!(
                "the topic has {} partitions, not {partitions}",
                self.leaders.len()
            )));
        }
        let mut led: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (partition, &leader) in self.leaders.iter().enumerate().take(partitions) {
            led.entry(leader).or_default().push(partition as i32);
        }
        led.into_iter()
            .map(|(broker, partitions)| {
                let address = self.addresses.get(&broker).ok_or_else(|| {
                    WireError::Cluster(format!("partitions {partitions:?} have no leader"))
                })?;
                Ok((address.clone(), partitions))
            })
            .collect()
    }
}

/// Where to ask for the cluster's metadata: the configured brokers first, then those the
/// cluster named.
#[derive(Clone, Debug)]
pub struct Cluster {
    bootstrap: Vec<String>,
    known: Vec<String>,
}

impl Cluster {
    /// The cluster `brokers` (comma-separated `host:port`) lead to.
    pub fn new(brokers: &str) -> Self {
        Self {
            bootstrap: brokers
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(str::to_owned)
                .collect(),
            known: Vec::new(),
        }
    }

    /// Asks the configured brokers, then those the cluster named before, who leads what.
    pub async fn leaders(
        &mut self,
        topic: &TopicName,
        client_id: &'static str,
    ) -> Result<Leaders, WireError> {
        let mut last = WireError::Cluster("no broker is configured".into());
        let candidates: Vec<String> = self
            .bootstrap
            .iter()
            .chain(self.known.iter().filter(|a| !self.bootstrap.contains(a)))
            .cloned()
            .collect();
        for candidate in candidates {
            let attempt = async {
                let mut connection = Connection::open(&candidate, client_id).await?;
                let request = MetadataRequest::default()
                    .with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(topic.clone())),
                    ]))
                    .with_allow_auto_topic_creation(false);
                connection
                    .call(METADATA_VERSION, &request, Duration::ZERO)
                    .await
            };
            match attempt.await {
                Ok(metadata) => {
                    self.known = metadata
                        .brokers
                        .iter()
                        .map(|b| address(b.host.as_str(), b.port))
                        .collect();
                    return Self::leaders_in(topic, metadata);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn leaders_in(
        topic_name: &TopicName,
        metadata: MetadataResponse,
    ) -> Result<Leaders, WireError> {
        let addresses: BTreeMap<i32, String> = metadata
            .brokers
            .iter()
            .map(|b| (b.node_id.0, address(b.host.as_str(), b.port)))
            .collect();
        let topic = metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref() == Some(topic_name))
            .ok_or_else(|| WireError::Cluster(format!("no topic {}", topic_name.as_str())))?;
        if topic.error_code != 0 {
            return Err(WireError::Cluster(format!(
                "topic {}: {}",
                topic_name.as_str(),
                code_name(topic.error_code)
            )));
        }
        let mut leaders = vec![-1; topic.partitions.len()];
        for p in &topic.partitions {
            let leader = usize::try_from(p.partition_index)
                .ok()
                .and_then(|i| leaders.get_mut(i))
                .ok_or_else(|| {
                    WireError::Cluster(format!(
                        "topic {} reports partition {} of {}",
                        topic_name.as_str(),
                        p.partition_index,
                        topic.partitions.len()
                    ))
                })?;
            if p.error_code != 0 && p.leader_id.0 < 0 {
                return Err(WireError::Cluster(format!(
                    "partition {}: {}",
                    p.partition_index,
                    code_name(p.error_code)
                )));
            }
            if !addresses.contains_key(&p.leader_id.0) {
                return Err(WireError::Cluster(format!(
                    "partition {} has no leader",
                    p.partition_index
                )));
            }
            *leader = p.leader_id.0;
        }
        if leaders.is_empty() {
            return Err(WireError::Cluster(format!(
                "topic {} has no partitions",
                topic_name.as_str()
            )));
        }
        // An answer that named a partition twice named another not at all.
        if let Some(missing) = leaders.iter().position(|&leader| leader < 0) {
            return Err(WireError::Cluster(format!(
                "topic {}: no word on partition {missing}",
                topic_name.as_str()
            )));
        }
        Ok(Leaders { addresses, leaders })
    }
}
