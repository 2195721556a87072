//! WordCount's three functions: the classic Spark example as WASM UDFs.

/// One line -> its words (split on ASCII whitespace, empty words dropped).
#[weir_udf::flat_map]
fn split(line: &str) -> impl Iterator<Item = &str> {
    line.split_ascii_whitespace()
}

/// A word -> `(word, 1)`.
#[weir_udf::map]
fn pair(word: &str) -> (&str, i64) {
    (word, 1)
}

/// Adds two counts.
#[weir_udf::reduce]
fn sum(a: i64, b: i64) -> i64 {
    a + b
}

/// The inverse of `sum`, for windows with an inverse function.
#[weir_udf::reduce]
fn subtract(a: i64, b: i64) -> i64 {
    a - b
}

/// Running totals for update_state_by_key: previous total + this batch's counts.
#[weir_udf::update]
fn running_total(values: Vec<i64>, state: Option<i64>) -> Option<i64> {
    Some(state.unwrap_or(0) + values.iter().sum::<i64>())
}
