"""The Kafka tests' third-party client (kafka-python): creates topics and
produces lines from stdin.

    kafka_client.py create BROKERS TOPIC PARTITIONS
    kafka_client.py produce BROKERS TOPIC [COMPRESSION]
        (lines on stdin, round-robin over partitions; COMPRESSION e.g. gzip)
    kafka_client.py produce-kv BROKERS TOPIC
        (one record a line on stdin: KEY VALUE, each hex-encoded, `-` for
        none; round-robin over partitions)
    kafka_client.py produce-backlog BROKERS TOPIC
        (lines on stdin, round-robin, sent without waiting for each
        acknowledgement, so the client packs many into one request; the
        last line of each partition is then sent on its own, see below)
    kafka_client.py consume BROKERS TOPIC N
        (the first N records of every partition from the start, one JSON
        object a line: partition, value, headers)
    kafka_client.py ends BROKERS TOPIC
        (the end offset the broker reports for every partition, as one JSON
        object: {"<partition>": <end>, ...})

With WEIR_TEST_KAFKA_CA (and WEIR_TEST_KAFKA_CERT, WEIR_TEST_KAFKA_KEY) set,
every connection is TLS (`security_protocol="SSL"`) trusting that CA and
presenting that client certificate.

Each record is sent and acknowledged on its own: Tansu 0.6 reports the end
of a partition as the first offset of its newest record batch plus one, so
the tail of a multi-record batch would stay invisible to consumers until the
next produce. `produce-backlog` packs records into few requests (fast
enough for tens of thousands of records) and then sends its last
line-per-partition one at a time, so each partition's newest record batch
holds a single record and the whole backlog is visible.
"""
import json
import os
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

TIMEOUT_S = 30


def tls():
    """The TLS settings of every client, from the environment (none without)."""
    ca = os.environ.get("WEIR_TEST_KAFKA_CA")
    if not ca:
        return {}
    return dict(
        security_protocol="SSL",
        ssl_cafile=ca,
        ssl_certfile=os.environ.get("WEIR_TEST_KAFKA_CERT"),
        ssl_keyfile=os.environ.get("WEIR_TEST_KAFKA_KEY"),
        ssl_check_hostname=True,
    )


def main():
    cmd, brokers, topic = sys.argv[1:4]
    if cmd == "create":
        admin = KafkaAdminClient(bootstrap_servers=brokers, **tls(), request_timeout_ms=TIMEOUT_S * 1000)
        admin.create_topics([NewTopic(topic, num_partitions=int(sys.argv[4]), replication_factor=1)])
        admin.close()
    elif cmd == "produce":
        compression = sys.argv[4] if len(sys.argv) > 4 else None
        producer = KafkaProducer(
            bootstrap_servers=brokers, **tls(), request_timeout_ms=TIMEOUT_S * 1000, compression_type=compression
        )
        partitions = sorted(producer.partitions_for(topic))
        n = 0
        for i, line in enumerate(sys.stdin):
            p = partitions[i % len(partitions)]
            producer.send(topic, line.rstrip("\n").encode(), partition=p).get(timeout=TIMEOUT_S)
            n += 1
        producer.close(timeout=TIMEOUT_S)
        print(n)
    elif cmd == "produce-kv":
        producer = KafkaProducer(bootstrap_servers=brokers, **tls(), request_timeout_ms=TIMEOUT_S * 1000)
        partitions = sorted(producer.partitions_for(topic))
        n = 0
        for i, line in enumerate(sys.stdin):
            k, v = (None if f == "-" else bytes.fromhex(f) for f in line.split())
            p = partitions[i % len(partitions)]
            producer.send(topic, v, key=k, partition=p).get(timeout=TIMEOUT_S)
            n += 1
        producer.close(timeout=TIMEOUT_S)
        print(n)
    elif cmd == "produce-backlog":
        producer = KafkaProducer(
            bootstrap_servers=brokers, **tls(), request_timeout_ms=TIMEOUT_S * 1000, linger_ms=20, batch_size=256 * 1024
        )
        partitions = sorted(producer.partitions_for(topic))
        lines = [l.rstrip("\n").encode() for l in sys.stdin]
        tail = len(partitions)
        for i, line in enumerate(lines[:-tail]):
            producer.send(topic, line, partition=partitions[i % len(partitions)])
        producer.flush(timeout=TIMEOUT_S)
        for i in range(max(0, len(lines) - tail), len(lines)):
            producer.send(topic, lines[i], partition=partitions[i % len(partitions)]).get(timeout=TIMEOUT_S)
        producer.close(timeout=TIMEOUT_S)
        print(len(lines))
    elif cmd == "consume":
        want = int(sys.argv[4])
        consumer = KafkaConsumer(bootstrap_servers=brokers, **tls(), enable_auto_commit=False)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got = []
        deadline = time.monotonic() + TIMEOUT_S
        while len(got) < want and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                got.extend(recs)
        consumer.close()
        for r in got:
            headers = {k: v.decode() for k, v in r.headers}
            print(json.dumps({"partition": r.partition, "value": r.value.decode(), "headers": headers}))
        if len(got) < want:
            sys.exit(f"only {len(got)} of {want} records within {TIMEOUT_S} s")
    elif cmd == "ends":
        consumer = KafkaConsumer(bootstrap_servers=brokers, **tls(), enable_auto_commit=False)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        ends = consumer.end_offsets(tps)
        consumer.close()
        print(json.dumps({str(tp.partition): end for tp, end in sorted(ends.items())}))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
