//! The Kafka direct source (Spark's Direct approach, no receiver): every
//! batch, the driver decides an offset range per partition (bounded by
//! `max_rate_per_partition`), the ranges are recorded in the metadata
//! checkpoint before the batch runs, and a re-run batch re-fetches exactly
//! those ranges. The source never commits offsets to Kafka: the checkpoint is
//! the only position, so outputs are exactly-once with idempotent sinks.
//!
//! The client is `rskafka` (pure Rust, no librdkafka): it runs on a small
//! private current-thread tokio runtime owned by the source, so the rest of
//! the engine stays synchronous. Records are read in the driver and stored
//! as input blocks (a first version; executors do not fetch from Kafka).
//!
//! Every network wait is bounded: a single request by [`ATTEMPT_TIMEOUT`], an
//! unreachable broker by the spec's `broker_timeout_ms` (retried with backoff
//! and a warning naming the brokers, then the job fails: nothing is skipped).
//! Frames from brokers are bounded by [`MAX_FRAME_BYTES`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rskafka::client::error::{Error as KafkaError, ProtocolError, RequestError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;
use weir_codec::{BatchBuilder, Value};
use weir_plan::source::{
    KafkaOffset, KafkaRange, KafkaValueFormat, OffsetOutOfRangePolicy, StartingOffsets, KAFKA_MAX_RECORDS_PER_PARTITION,
};

use super::{json_to_value, InputDescriptor, Source, SourceCursor, SourceError};
use crate::listener::SourcePosition;

/// The longest one request to a broker may take before it is retried (a
/// quarter of the broker timeout when that is shorter, so a hung broker is
/// retried, and warned about, more than once).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest frame accepted from a broker.
pub(crate) const MAX_FRAME_BYTES: usize = 16 << 20;
/// The most bytes one fetch request asks for.
const FETCH_MAX_BYTES: i32 = 4 << 20;
/// How long a fetch waits at the broker for records (they are known to be
/// there: the range ends at the high watermark).
const FETCH_MAX_WAIT_MS: i32 = 500;
/// The first pause after a fetch that returned nothing (doubling up to
/// [`MAX_BACKOFF`]).
const EMPTY_FETCH_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two attempts to reach a broker.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a job file says of a Kafka source, checked.
#[derive(Debug, Clone)]
pub(super) struct KafkaConfig {
    pub brokers: Vec<String>,
    pub topics: Vec<String>,
    pub starting_offsets: StartingOffsets,
    pub max_rate_per_partition: Option<u64>,
    pub value_format: KafkaValueFormat,
    pub key: bool,
    pub client_id: Option<String>,
    pub on_offset_out_of_range: OffsetOutOfRangePolicy,
    pub broker_timeout: Duration,
    /// The most one fetch response's compressed batches may inflate to.
    pub max_decompressed_bytes: u64,
    pub batch_interval_ms: i64,
    /// TLS and SASL, loaded when the job starts.
    pub security: crate::kafka_security::KafkaSecurity,
}

type PartitionKey = (String, i32);

/// The most records a batch takes from one partition: `max_rate_per_partition`
/// and the source's rate limit (backpressure, `[rate] max`) split evenly over
/// its `partitions`, the lower of the two, over one batch interval; at least
/// one record (so a slow job still moves, as Spark's `minRatePerPartition`)
/// and at most [`KAFKA_MAX_RECORDS_PER_PARTITION`].
fn per_partition_limit(
    max_rate_per_partition: Option<u64>,
    rate_limit: Option<f64>,
    partitions: usize,
    batch_interval_ms: i64,
) -> i64 {
    let cap = KAFKA_MAX_RECORDS_PER_PARTITION as f64;
    let split = rate_limit.map(|r| r / partitions.max(1) as f64);
    let rate = match (max_rate_per_partition.map(|m| m as f64), split) {
        (Some(m), Some(s)) => m.min(s),
        (Some(m), None) => m,
        (None, Some(s)) => s,
        (None, None) => return cap as i64,
    };
    (rate * batch_interval_ms.max(1) as f64 / 1000.0).floor().clamp(1.0, cap) as i64
}

pub(super) struct KafkaSource {
    cfg: KafkaConfig,
    rt: tokio::runtime::Runtime,
    client: Client,
    /// One client per partition, made on first use (replay needs `&self`).
    partitions: Mutex<BTreeMap<PartitionKey, Arc<PartitionClient>>>,
    /// The next offset of every partition seen: everything before it has
    /// been given to a batch.
    next: BTreeMap<PartitionKey, i64>,
    /// The rate limit the driver set (records per second over all partitions).
    rate: Option<f64>,
    /// False until the first batch: partitions found then start at
    /// `starting_offsets`, partitions found later (added to a topic) at the
    /// earliest offset so none of their records is missed.
    started: bool,
    /// Each partition's high watermark when the last batch was cut (for
    /// the lag shown on the status page).
    ends: BTreeMap<PartitionKey, i64>,
}

impl KafkaSource {
    /// Connects (retrying up to the broker timeout) and checks that every
    /// topic exists.
    pub(super) fn start(cfg: KafkaConfig) -> Result<Self, SourceError> {
        if cfg.brokers.is_empty() {
            return Err(SourceError::Kafka(
                "a kafka source needs at least one broker (brokers = \"host:port\")".into(),
            ));
        }
        if cfg.topics.is_empty() {
            return Err(SourceError::Kafka("a kafka source needs at least one topic".into()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SourceError::Kafka(format!("cannot start the kafka client's runtime: {e}")))?;
        let backoff = client_backoff(cfg.broker_timeout);
        let brokers = cfg.brokers.clone();
        let client_id = cfg.client_id.clone();
        let security = cfg.security.clone();
        let client = retry(&rt, &cfg, "connect", || {
            let mut b =
                ClientBuilder::new(brokers.clone()).max_message_size(MAX_FRAME_BYTES).backoff_config(backoff.clone());
            b = security.apply(b);
            if let Some(id) = &client_id {
                b = b.client_id(id.as_str());
            }
            b.build()
        })?;
        let src = KafkaSource {
            cfg,
            rt,
            client,
            partitions: Mutex::new(BTreeMap::new()),
            next: BTreeMap::new(),
            rate: None,
            started: false,
            ends: BTreeMap::new(),
        };
        src.topic_partitions()?;
        Ok(src)
    }

    /// The partitions of every topic of the spec; a missing topic is an error.
    fn topic_partitions(&self) -> Result<Vec<PartitionKey>, SourceError> {
        let listed = retry(&self.rt, &self.cfg, "list topics", || self.client.list_topics())?;
        let mut out = Vec::new();
        for t in &self.cfg.topics {
            let Some(topic) = listed.iter().find(|l| &l.name == t) else {
                return Err(SourceError::Kafka(format!(
                    "kafka topic {t:?} does not exist on {} (create it first; the source does not create topics)",
                    self.cfg.brokers.join(",")
                )));
            };
            out.extend(topic.partitions.iter().map(|p| (t.clone(), *p)));
        }
        Ok(out)
    }

    fn partition(&self, key: &PartitionKey) -> Result<Arc<PartitionClient>, SourceError> {
        // A poisoned lock only means another caller panicked while inserting:
        // the map is still a valid cache.
        if let Some(p) = self.partitions.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(p.clone());
        }
        let pc = retry(&self.rt, &self.cfg, "connect to a partition's leader", || {
            self.client.partition_client(key.0.clone(), key.1, UnknownTopicHandling::Error)
        })?;
        let pc = Arc::new(pc);
        self.partitions.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), pc.clone());
        Ok(pc)
    }

    fn offset(&self, key: &PartitionKey, at: OffsetAt) -> Result<i64, SourceError> {
        let pc = self.partition(key)?;
        retry(&self.rt, &self.cfg, "list offsets", || pc.get_offset(at))
    }

    /// The most records a batch takes from one partition of `partitions`.
    fn limit(&self, partitions: usize) -> i64 {
        per_partition_limit(self.cfg.max_rate_per_partition, self.rate, partitions, self.cfg.batch_interval_ms)
    }

    /// Reads the records of `ranges`, in order, into one batch.
    fn fetch(&self, ranges: &[KafkaRange]) -> Result<Vec<u8>, SourceError> {
        let mut b = BatchBuilder::new();
        let max_inflated = self.cfg.max_decompressed_bytes;
        for r in ranges {
            let key = (r.topic.clone(), r.partition);
            let pc = self.partition(&key)?;
            let mut off = r.from;
            let deadline = Instant::now() + self.cfg.broker_timeout;
            let mut idle = EMPTY_FETCH_PAUSE;
            while off < r.until {
                let (recs, high) = retry(&self.rt, &self.cfg, "fetch", || {
                    rskafka::with_max_inflated_bytes_per_fetch(
                        max_inflated,
                        pc.fetch_records(off, 1..FETCH_MAX_BYTES, FETCH_MAX_WAIT_MS),
                    )
                })
                .map_err(|e| match e {
                    SourceError::Kafka(m) if m.contains("OffsetOutOfRange") => SourceError::Kafka(format!(
                        "kafka {}/{}: offset {off} is no longer in the log (deleted by retention?): {m}",
                        r.topic, r.partition
                    )),
                    // Where it failed: a broken or hostile answer (say, a
                    // decompression bomb) is about one partition and offset.
                    SourceError::Kafka(m) => SourceError::Kafka(format!(
                        "kafka {}/{}: fetch at offset {off} (range {}..{}): {m}",
                        r.topic, r.partition, r.from, r.until
                    )),
                    e => e,
                })?;
                if recs.is_empty() && high <= off {
                    // The log ends before the range does: its records are
                    // gone (the topic was recreated, or the broker lost them).
                    return Err(SourceError::Kafka(format!(
                        "kafka {}/{}: the log ends at offset {high}, before the recorded range {}..{}: its \
                         records can no longer be read",
                        r.topic, r.partition, r.from, r.until
                    )));
                }
                let before = off;
                for rec in recs {
                    if rec.offset >= off && rec.offset < r.until {
                        let v = self.record(&r.topic, r.partition, rec.offset, rec.record.key, rec.record.value)?;
                        b.push_raw(&v);
                    }
                    off = off.max(rec.offset + 1);
                }
                if off == before {
                    // Nothing came back: the range holds only control records
                    // (transactions), the broker lags, or it answers with a
                    // record batch cut off or claiming more bytes than the
                    // response holds (the client drops such a tail as "cut
                    // off by max_bytes"). Bounded like any wait, and paced:
                    // a broker answering at once must not make this spin.
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(SourceError::Kafka(format!(
                            "kafka {}/{}: broker(s) {} returned no records at offset {off} (range {}..{}, high \
                             watermark {high}) within {} ms (only control records there, or the broker sends \
                             a record batch cut off or claiming more bytes than it holds)",
                            r.topic,
                            r.partition,
                            self.cfg.brokers.join(","),
                            r.from,
                            r.until,
                            self.cfg.broker_timeout.as_millis(),
                        )));
                    }
                    std::thread::sleep(idle.min(deadline - now));
                    idle = (idle * 2).min(MAX_BACKOFF);
                } else {
                    idle = EMPTY_FETCH_PAUSE;
                }
            }
        }
        Ok(b.finish())
    }

    /// One Kafka record as an encoded, validated record of the stream.
    fn record(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, SourceError> {
        let at = || format!("kafka {topic}/{partition} offset {offset}");
        let v = match (value, self.cfg.value_format) {
            (None, _) => Value::Null,
            (Some(b), KafkaValueFormat::String) => Value::Str(String::from_utf8_lossy(&b).into_owned()),
            (Some(b), KafkaValueFormat::Bytes) => Value::Bytes(b),
            (Some(b), KafkaValueFormat::Json) => {
                let j: serde_json::Value = serde_json::from_slice(&b)
                    .map_err(|e| SourceError::Kafka(format!("{}: invalid JSON value: {e}", at())))?;
                json_to_value(&j).map_err(|e| SourceError::Kafka(format!("{}: {e}", at())))?
            }
        };
        let v = if self.cfg.key {
            let k = match (key, self.cfg.value_format) {
                (None, _) => Value::Null,
                (Some(b), KafkaValueFormat::Bytes) => Value::Bytes(b),
                (Some(b), _) => Value::Str(String::from_utf8_lossy(&b).into_owned()),
            };
            Value::pair(k, v)
        } else {
            v
        };
        let mut enc = v.encode();
        // Checked as every reader will check it, so a record readers would
        // refuse fails here, naming its offset.
        weir_codec::validate_value(&mut enc, 0).map_err(|e| SourceError::Kafka(format!("{}: {}", at(), e.what)))?;
        Ok(enc)
    }
}

impl Source for KafkaSource {
    fn set_rate_limit(&mut self, records_per_second: Option<f64>) {
        self.rate = records_per_second;
    }
    fn poll(&mut self, time: i64, _wall_clock: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError> {
        // Partitions added to a topic since the last batch join here.
        for key in self.topic_partitions()? {
            if self.next.contains_key(&key) {
                continue;
            }
            let at = match (self.started, self.cfg.starting_offsets) {
                (false, StartingOffsets::Latest) => OffsetAt::Latest,
                _ => OffsetAt::Earliest,
            };
            let off = self.offset(&key, at)?;
            tracing::info!(topic = %key.0, partition = key.1, offset = off, "kafka partition starts");
            self.next.insert(key, off);
        }
        self.started = true;
        let limit = self.limit(self.next.len());
        let mut ranges = Vec::new();
        for ((topic, partition), &next) in &self.next {
            let key = (topic.clone(), *partition);
            let earliest = self.offset(&key, OffsetAt::Earliest)?;
            let latest = self.offset(&key, OffsetAt::Latest)?;
            let mut from = next;
            if from < earliest || from > latest {
                let (to, skipped) = match self.cfg.on_offset_out_of_range {
                    OffsetOutOfRangePolicy::Error => {
                        return Err(SourceError::Kafka(format!(
                            "kafka {topic}/{partition}: next offset {from} is out of range (the log holds \
                             {earliest}..{latest}); set on_offset_out_of_range = \"earliest\" or \"latest\" \
                             to skip ahead"
                        )))
                    }
                    OffsetOutOfRangePolicy::Earliest => (earliest, (earliest - from).max(0)),
                    OffsetOutOfRangePolicy::Latest => (latest, (latest - from).max(0)),
                };
                tracing::warn!(
                    topic = %topic, partition, from, to, skipped,
                    "kafka offset out of range (the log holds {earliest}..{latest}): {skipped} record(s) skipped"
                );
                from = to;
            }
            let until = latest.min(from.saturating_add(limit));
            self.ends.insert(key.clone(), latest);
            ranges.push(KafkaRange { topic: topic.clone(), partition: *partition, from, until });
        }
        let batch = self.fetch(&ranges)?;
        // Only now, with every record read, does the position move.
        for r in &ranges {
            self.next.insert((r.topic.clone(), r.partition), r.until);
        }
        ranges.retain(|r| r.from < r.until);
        tracing::debug!(time, ranges = ranges.len(), "kafka batch");
        Ok((batch, InputDescriptor::KafkaRanges(ranges)))
    }

    fn positions(&self) -> Vec<SourcePosition> {
        self.next
            .iter()
            .map(|((t, p), n)| SourcePosition {
                partition: format!("{t}/{p}"),
                next: *n,
                end: self.ends.get(&(t.clone(), *p)).copied().unwrap_or(*n),
            })
            .collect()
    }

    fn replay(&self, _time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError> {
        match d {
            InputDescriptor::KafkaRanges(ranges) => self.fetch(ranges),
            other => Err(SourceError::Replay(format!("a kafka source cannot replay {other:?}"))),
        }
    }

    fn cursor(&self) -> SourceCursor {
        SourceCursor::Kafka(
            self.next.iter().map(|((t, p), n)| KafkaOffset { topic: t.clone(), partition: *p, next: *n }).collect(),
        )
    }

    fn restore(&mut self, c: &SourceCursor) -> Result<(), SourceError> {
        match c {
            SourceCursor::Kafka(offs) => {
                self.next = offs.iter().map(|o| ((o.topic.clone(), o.partition), o.next)).collect();
                // A checkpoint taken before the first batch holds no position:
                // the run starts as a fresh one would.
                self.started = !offs.is_empty();
                Ok(())
            }
            other => Err(SourceError::Replay(format!("a kafka source cannot resume at {other:?}"))),
        }
    }

    fn exhausted(&self) -> bool {
        false
    }

    /// With `max_rate_per_partition`, a batch takes a fixed number of
    /// records from each partition; once every partition held at least that
    /// many past its position when the last batch was cut, the next batch's
    /// ranges are fixed (a log only grows), so it may be read early and
    /// takes exactly what it would at its time. Without the cap a batch
    /// takes what is there when it is cut, and is not read early; under a
    /// driver rate limit the driver reads nothing early anyway.
    fn has_backlog(&self) -> bool {
        if self.cfg.max_rate_per_partition.is_none() || self.rate.is_some() || self.next.is_empty() {
            return false;
        }
        let limit = self.limit(self.next.len());
        self.next.iter().all(|(key, next)| self.ends.get(key).is_some_and(|end| end - next >= limit))
    }
}

/// The client's own retries end quickly so that [`with_retries`] (which
/// warns and keeps to the caller's timeout) decides.
pub(crate) fn client_backoff(timeout: Duration) -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(Duration::from_secs(3).min(timeout)),
    }
}

/// What rustls says when the broker's certificate does not verify
/// (`invalid peer certificate: UnknownIssuer`, a name mismatch, expiry) or
/// when the broker refuses ours with a TLS alert (`received fatal alert:
/// CertificateRequired`, `BadCertificate`, `UnknownCA`, ...): the TLS
/// settings are wrong, and another attempt would fail the same way. The
/// client keeps them only in its messages (no typed cause reaches here).
const TLS_REFUSALS: [&str; 2] = ["invalid peer certificate", "received fatal alert"];

/// True for errors that a later attempt may not have: the broker is
/// unreachable, a request failed or timed out. A TLS handshake refused
/// for its certificates is not (the job fails at once, naming the reason).
fn transient(e: &KafkaError) -> bool {
    let text = e.to_string();
    if TLS_REFUSALS.iter().any(|r| text.contains(r)) {
        return false;
    }
    match e {
        KafkaError::Connection(_) | KafkaError::RetryFailed(_) | KafkaError::Timeout => true,
        // A connection that broke is worth another attempt; a response that
        // does not decode (a compression codec not built in, a malformed
        // frame) would only fail again.
        KafkaError::Request(r) => {
            matches!(r, RequestError::IO(_) | RequestError::Poisoned(_) | RequestError::ReadFramedMessageError(_))
        }
        KafkaError::ServerError { protocol_error, .. } => matches!(
            protocol_error,
            ProtocolError::NotLeaderOrFollower
                | ProtocolError::LeaderNotAvailable
                | ProtocolError::RequestTimedOut
                | ProtocolError::NetworkException
                | ProtocolError::CoordinatorNotAvailable
                | ProtocolError::BrokerNotAvailable
        ),
        _ => false,
    }
}

/// Runs `f` until it succeeds, retrying transient failures with backoff (a
/// warning naming the brokers each time) for at most the broker timeout.
fn retry<T, F, Fut>(rt: &tokio::runtime::Runtime, cfg: &KafkaConfig, what: &str, f: F) -> Result<T, SourceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KafkaError>>,
{
    with_retries(rt, &cfg.brokers.join(","), cfg.broker_timeout, what, f).map_err(SourceError::Kafka)
}

/// [`retry`] for any Kafka client (the source's and the sink's): the error
/// is a message naming the brokers.
pub(crate) fn with_retries<T, F, Fut>(
    rt: &tokio::runtime::Runtime,
    brokers: &str,
    timeout: Duration,
    what: &str,
    mut f: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KafkaError>>,
{
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(100);
    let attempt = (timeout / 4).clamp(Duration::from_millis(250), ATTEMPT_TIMEOUT);
    loop {
        let err = match rt.block_on(async { tokio::time::timeout(attempt, f()).await }) {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if !transient(&e) => return Err(format!("kafka {what} failed (brokers {brokers}): {e}")),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", attempt.as_millis()),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "kafka broker(s) {brokers} unreachable for {} ms ({what}): {err}",
                timeout.as_millis()
            ));
        }
        tracing::warn!(
            "kafka broker(s) {brokers} unreachable ({what}): {err}; the batch waits, retrying for up to {} ms more",
            (deadline - now).as_millis()
        );
        std::thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_partition_bound_is_the_lower_of_the_fixed_and_the_split_rate() {
        // Nothing bounds it: the hard cap.
        assert_eq!(per_partition_limit(None, None, 4, 1000), KAFKA_MAX_RECORDS_PER_PARTITION as i64);
        // 100/s per partition over 500 ms.
        assert_eq!(per_partition_limit(Some(100), None, 4, 500), 50);
        // 1000/s over 4 partitions = 250/s each, over 200 ms = 50.
        assert_eq!(per_partition_limit(None, Some(1000.0), 4, 200), 50);
        // The lower of 100/s and 1000/4 = 250/s.
        assert_eq!(per_partition_limit(Some(100), Some(1000.0), 4, 1000), 100);
        assert_eq!(per_partition_limit(Some(400), Some(1000.0), 4, 1000), 250);
        // At least one record a batch, however slow.
        assert_eq!(per_partition_limit(None, Some(1.0), 8, 100), 1);
    }
}
