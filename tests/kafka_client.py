"""The Kafka tests' third-party client (kafka-python): creates topics and
produces lines from stdin.

    kafka_client.py create BROKERS TOPIC PARTITIONS
    kafka_client.py produce BROKERS TOPIC [COMPRESSION]
        (lines on stdin, round-robin over partitions; COMPRESSION e.g. gzip)

Each record is sent and acknowledged on its own: Tansu 0.6 reports the end
of a partition as the first offset of its newest record batch plus one, so
the tail of a multi-record batch would stay invisible to consumers until the
next produce.
"""
import sys

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

TIMEOUT_S = 30


def main():
    cmd, brokers, topic = sys.argv[1:4]
    if cmd == "create":
        admin = KafkaAdminClient(bootstrap_servers=brokers, request_timeout_ms=TIMEOUT_S * 1000)
        admin.create_topics([NewTopic(topic, num_partitions=int(sys.argv[4]), replication_factor=1)])
        admin.close()
    elif cmd == "produce":
        compression = sys.argv[4] if len(sys.argv) > 4 else None
        producer = KafkaProducer(
            bootstrap_servers=brokers, request_timeout_ms=TIMEOUT_S * 1000, compression_type=compression
        )
        partitions = sorted(producer.partitions_for(topic))
        n = 0
        for i, line in enumerate(sys.stdin):
            p = partitions[i % len(partitions)]
            producer.send(topic, line.rstrip("\n").encode(), partition=p).get(timeout=TIMEOUT_S)
            n += 1
        producer.close(timeout=TIMEOUT_S)
        print(n)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
