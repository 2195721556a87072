//! Weir's end-to-end tests, folded into one test binary (one link instead of
//! one per file). They run the `weir` binary and the library, kill real
//! processes, and compare real outputs.

mod common;
mod drivers;

mod backpressure;
mod checkpoint_bounds;
mod checkpoint_failures;
mod cli;
mod cluster;
mod crash_recovery;
mod datasets;
mod dstream_api;
mod fencing;
mod hardening_directory;
mod hardening_jobs;
mod hardening_outputs;
mod hardening_ports;
mod hardening_signals;
mod hardening_socket;
mod kafka;
mod kafka_records;
mod kafka_s3;
mod kafka_secrets;
mod kafka_tls;
mod netns;
mod netns_hosts;
mod object_store;
mod observability;
mod recovery_checks;
mod serve;
mod serve_kubernetes;
mod socket_wal_recovery;
mod socket_wordcount;
mod udf_dev;
mod udf_params;
