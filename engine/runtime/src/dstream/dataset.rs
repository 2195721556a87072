//! Static datasets in the Rust API and job files (`[datasets]`): records
//! loaded once when the job is built, cut into the job's `parallelism`
//! partitions as a source's batch is (Spark's `makeRDD` slicing), and used
//! in every batch inside `transform` (`rdd.join(users)`) or handed to UDFs
//! as a parameter (a lookup table). The records travel in the lineage, so
//! every executor (threads or processes) gets them with the tasks that read
//! them, bounded by [`MAX_DATASET_BYTES`]; their content hash is part of the
//! job's identity (`weir_plan::identity`).

use std::path::Path;

use weir_codec::Value;
pub use weir_plan::dataset::{Dataset, MAX_DATASET_BYTES};

use super::{transform::BatchRdd, DStream, StreamingContext};
use crate::source::SourceError;
use crate::EngineError;

/// A dataset of a [`StreamingContext`]: use it inside a transform with
/// [`BatchRdd::dataset`], or as a UDF parameter with
/// [`DatasetHandle::as_param`].
#[derive(Clone, Debug)]
pub struct DatasetHandle {
    pub(super) dataset: Dataset,
}

impl DatasetHandle {
    pub fn name(&self) -> &str {
        self.dataset.name()
    }

    /// The hex SHA-256 of its content.
    pub fn hash(&self) -> &str {
        self.dataset.hash()
    }

    /// Its records, in order, as a list: the value a UDF receives when the
    /// dataset is one of its parameters (`docs/udf-abi.md` §3a).
    pub fn as_param(&self) -> Result<Value, EngineError> {
        let mut all = Vec::new();
        for p in self.dataset.partitions() {
            all.extend(Value::decode_batch(p).map_err(|e| invalid(self.name(), e.to_string()))?);
        }
        Ok(Value::List(all))
    }
}

impl DatasetHandle {
    /// The parameters `(dataset's records)` for a UDF that reads the
    /// dataset as a lookup table (`udf.with_params(users.params()?)`): one
    /// positional value, the records as a list; shown as the name.
    pub fn params(&self) -> Result<crate::rdd::UdfParams, EngineError> {
        let p = crate::rdd::UdfParams::new(vec![self.as_param()?], vec![]).map_err(|m| invalid(self.name(), m))?;
        Ok(p.with_shown(self.name().to_string()))
    }
}

/// The records of a dataset file or directory (the formats of
/// [`StreamingContext::dataset_from_path`]), as the list a UDF receives
/// when the dataset is one of its parameters: what `weir udf call --param
/// NAME=@PATH` hands over. At most [`MAX_DATASET_BYTES`] of records.
pub fn dataset_param_from_path(path: &Path) -> Result<Value, EngineError> {
    let name = path.display().to_string();
    let batch = read_path(path).map_err(|e| invalid(&name, e.to_string()))?;
    if batch.len() as u64 > MAX_DATASET_BYTES {
        return Err(invalid(
            &name,
            format!("{} bytes of records, over the limit of {MAX_DATASET_BYTES} bytes", batch.len()),
        ));
    }
    let records = Value::decode_batch(&batch).map_err(|e| invalid(&name, e.to_string()))?;
    Ok(Value::List(records))
}

fn invalid(name: &str, message: String) -> EngineError {
    EngineError::Dataset(format!("dataset {name}: {message}"))
}

impl StreamingContext {
    /// A dataset of `records`, cut into the job's `parallelism` partitions
    /// (set the parallelism first). At most [`MAX_DATASET_BYTES`] encoded.
    pub fn dataset(&self, name: &str, records: &[Value]) -> Result<DatasetHandle, EngineError> {
        self.dataset_of_batch(name, Value::encode_batch(records), "records given by the program".into())
    }

    /// A dataset read from `path` (relative to the base directory): a file
    /// in the format of a `batches` source (every line's records, in order)
    /// or a directory of text files (one string record per line, files in
    /// name order; names starting with `.` or `_` skipped). At most
    /// [`MAX_DATASET_BYTES`] of files.
    pub fn dataset_from_path(&self, name: &str, path: impl AsRef<Path>) -> Result<DatasetHandle, EngineError> {
        let full = self.base_dir.join(path.as_ref());
        let batch = read_path(&full).map_err(|e| invalid(name, e.to_string()))?;
        // As written (relative to the job's directory), as the job file
        // names it.
        let what = if full.is_dir() { "directory" } else { "file" };
        self.dataset_of_batch(name, batch, format!("{what} {}", path.as_ref().display()))
    }

    fn dataset_of_batch(&self, name: &str, batch: Vec<u8>, source: String) -> Result<DatasetHandle, EngineError> {
        if batch.len() as u64 > MAX_DATASET_BYTES {
            return Err(invalid(
                name,
                format!("{} bytes of records, over the limit of {MAX_DATASET_BYTES} bytes", batch.len()),
            ));
        }
        let n = self.inner.borrow().graph.parallelism;
        let parts = crate::source::split_batch(batch, n).map_err(|e| invalid(name, e.to_string()))?;
        let dataset = Dataset::new(name, parts);
        let loaded = weir_plan::identity::LoadedDataset { source, hash: dataset.hash().to_string() };
        self.inner.borrow_mut().datasets.insert(name.to_string(), loaded);
        Ok(DatasetHandle { dataset })
    }
}

/// The records of a dataset file or directory, as one encoded batch.
fn read_path(path: &Path) -> Result<Vec<u8>, SourceError> {
    let meta = std::fs::metadata(path).map_err(|e| SourceError::Io { path: path.into(), source: e })?;
    if !meta.is_dir() {
        let batches = crate::source::read_batches_file_limited(path, MAX_DATASET_BYTES)?;
        let mut b = weir_codec::BatchBuilder::new();
        for batch in &batches {
            b.append_batch(batch).map_err(|e| SourceError::Custom(format!("{}: {e}", path.display())))?;
        }
        return Ok(b.finish());
    }
    let io = |e: std::io::Error| SourceError::Io { path: path.into(), source: e };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        // Symlinks followed; subdirectories and special files are not read.
        if std::fs::metadata(entry.path()).map(|m| m.is_file()).unwrap_or(false) {
            names.push(name);
        }
        if names.len() > 100_000 {
            return Err(SourceError::Invalid(format!("{}: more than 100000 files", path.display())));
        }
    }
    names.sort();
    let mut total = 0u64;
    let mut b = weir_codec::BatchBuilder::new();
    for name in names {
        let file = path.join(&name);
        let left = MAX_DATASET_BYTES.saturating_sub(total);
        let bytes =
            crate::files::read_data(&file, left).map_err(|e| SourceError::File { path: file.clone(), source: e })?;
        total += bytes.len() as u64;
        let text = String::from_utf8(bytes).map_err(|e| SourceError::Parse {
            path: file.clone(),
            line: e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1,
            what: "not UTF-8 text".into(),
        })?;
        for line in text.lines() {
            b.push_with(|w| w.str(line));
        }
    }
    Ok(b.finish())
}

impl BatchRdd {
    /// The dataset `d` as an RDD of this batch (the same records every
    /// batch), to combine with this one: `rdd.join(&rdd.dataset(&users)?)`.
    pub fn dataset(&self, d: &DatasetHandle) -> Result<BatchRdd, EngineError> {
        self.stream().dataset_rdd(d).map(BatchRdd::of)
    }
}

impl DStream {
    /// A stream whose RDD at each of this stream's slides is dataset `d`.
    pub(crate) fn dataset_rdd(&self, d: &DatasetHandle) -> Result<DStream, EngineError> {
        let label = format!("dataset {} (sha256 {})", d.name(), d.dataset.short_hash());
        let op = super::graph::NodeOp::Dataset { dataset: d.dataset.clone(), slide_ms: self.slide_ms() };
        self.add(vec![], op, label)
    }
}
