//! The `kafka` output: each record's text (as `save_as_text_files` writes
//! it) produced to a topic, the Kafka partition chosen by the output's
//! partition index (`index % partitions`, so a key's records keep one
//! partition across batches while the topic's partition count stays).
//!
//! At-least-once, honestly: a batch re-run after a driver crash, or after a
//! produce that failed half-way, produces its records again. Every record
//! carries headers that identify it — `weir-job`, `weir-batch-time` (ms),
//! `weir-partition`, `weir-seq` (its index in the partition) — so a reader
//! can drop the copies; its Kafka timestamp is the batch time. A batch whose
//! produce fails (an unreachable broker past `timeout_ms`, a refused
//! request) fails, so it is not recorded as done and is re-run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use weir_codec::{display::render, Records};

use super::{Sink, SinkError};
use crate::source::kafka::{client_backoff, with_retries, MAX_FRAME_BYTES};

/// The most bytes of record text in one produce request (under Kafka's
/// default 1 MB message limit, with room for headers).
const MAX_REQUEST_BYTES: usize = 900 << 10;

pub(crate) struct KafkaSink {
    brokers: Vec<String>,
    topic: String,
    client_id: Option<String>,
    timeout: Duration,
    job: String,
    security: crate::kafka_security::KafkaSecurity,
    rt: tokio::runtime::Runtime,
    /// Connected on the first write (a job starts without its output's
    /// broker being up yet); one write at a time.
    conn: Mutex<Option<Conn>>,
}

struct Conn {
    client: Client,
    partitions: BTreeMap<i32, Arc<PartitionClient>>,
}

impl KafkaSink {
    pub(crate) fn new(
        brokers: &str,
        topic: &str,
        client_id: Option<String>,
        timeout: Duration,
        job: &str,
        security: crate::kafka_security::KafkaSecurity,
    ) -> Result<Self, SinkError> {
        let brokers: Vec<String> = brokers.split(',').map(|b| b.trim().to_string()).filter(|b| !b.is_empty()).collect();
        if brokers.is_empty() || topic.is_empty() {
            return Err(SinkError::Kafka("a kafka output needs brokers = \"host:port\" and a topic".into()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SinkError::Kafka(format!("cannot start the kafka client's runtime: {e}")))?;
        Ok(KafkaSink {
            brokers,
            topic: topic.into(),
            client_id,
            timeout,
            job: job.into(),
            security,
            rt,
            conn: Mutex::new(None),
        })
    }

    fn retry<T, F, Fut>(&self, what: &str, f: F) -> Result<T, SinkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, rskafka::client::error::Error>>,
    {
        with_retries(&self.rt, &self.brokers.join(","), self.timeout, what, f).map_err(SinkError::Kafka)
    }

    /// The topic's partitions, connecting first if needed.
    fn partitions(&self, conn: &mut Option<Conn>) -> Result<Vec<i32>, SinkError> {
        if conn.is_none() {
            let client = self.retry("connect", || {
                let mut b = ClientBuilder::new(self.brokers.clone())
                    .max_message_size(MAX_FRAME_BYTES)
                    .backoff_config(client_backoff(self.timeout));
                b = self.security.apply(b);
                if let Some(id) = &self.client_id {
                    b = b.client_id(id.as_str());
                }
                b.build()
            })?;
            *conn = Some(Conn { client, partitions: BTreeMap::new() });
        }
        let Some(c) = conn.as_ref() else { return Err(SinkError::Kafka("kafka output not connected".into())) };
        let topics = self.retry("list topics", || c.client.list_topics())?;
        let Some(t) = topics.iter().find(|t| t.name == self.topic) else {
            return Err(SinkError::Kafka(format!(
                "kafka output topic {:?} does not exist on {} (create it first)",
                self.topic,
                self.brokers.join(",")
            )));
        };
        Ok(t.partitions.iter().copied().collect())
    }

    fn partition_client(&self, conn: &mut Conn, p: i32) -> Result<Arc<PartitionClient>, SinkError> {
        if let Some(pc) = conn.partitions.get(&p) {
            return Ok(pc.clone());
        }
        let client = &conn.client;
        let pc = Arc::new(self.retry("connect to a partition's leader", || {
            client.partition_client(self.topic.clone(), p, UnknownTopicHandling::Error)
        })?);
        conn.partitions.insert(p, pc.clone());
        Ok(pc)
    }
}

impl Sink for KafkaSink {
    fn write(&self, time: i64, partitions: &[Vec<u8>]) -> Result<(), SinkError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let targets = self.partitions(&mut guard)?;
        let Some(conn) = guard.as_mut() else { return Err(SinkError::Kafka("kafka output not connected".into())) };
        if targets.is_empty() {
            return Err(SinkError::Kafka(format!("kafka output topic {:?} has no partitions", self.topic)));
        }
        let timestamp = DateTime::<Utc>::from_timestamp_millis(time).unwrap_or_default();
        for (i, part) in partitions.iter().enumerate() {
            let pc = self.partition_client(conn, targets[i % targets.len()])?;
            let recs = Records::new(part).map_err(|e| SinkError::Malformed(e.to_string()))?;
            let mut chunk: Vec<Record> = Vec::new();
            let mut bytes = 0;
            for (seq, r) in recs.enumerate() {
                let r = r.map_err(|e| SinkError::Malformed(e.to_string()))?;
                let text = render(r).into_bytes();
                bytes += text.len();
                let headers = BTreeMap::from([
                    ("weir-job".to_string(), self.job.clone().into_bytes()),
                    ("weir-batch-time".to_string(), time.to_string().into_bytes()),
                    ("weir-partition".to_string(), i.to_string().into_bytes()),
                    ("weir-seq".to_string(), seq.to_string().into_bytes()),
                ]);
                chunk.push(Record { key: None, value: Some(text), headers, timestamp });
                if bytes >= MAX_REQUEST_BYTES {
                    let records = std::mem::take(&mut chunk);
                    self.retry("produce", || pc.produce(records.clone(), Compression::NoCompression))?;
                    bytes = 0;
                }
            }
            if !chunk.is_empty() {
                self.retry("produce", || pc.produce(chunk.clone(), Compression::NoCompression))?;
            }
        }
        Ok(())
    }
}
