//! UDFs for the engine's operation tests: one or more of every kind, plus
//! functions that fail on purpose and a float-heavy one for determinism.

use weir_udf::{Raw, Records, State, Value};

#[weir_udf::map]
fn upper(s: &str) -> String {
    s.to_uppercase()
}

/// `x -> x * 2` on integers.
#[weir_udf::map]
fn double(x: i64) -> i64 {
    x * 2
}

/// Parses an integer from a string record.
#[weir_udf::map]
fn parse_int(s: &str) -> Result<i64, String> {
    s.trim().parse::<i64>().map_err(|e| format!("cannot parse {s:?} as an integer: {e}"))
}

/// Fails with a guest error on the record "boom".
#[weir_udf::map]
fn fail_on_boom(s: &str) -> Result<String, String> {
    if s == "boom" {
        Err("refusing to process record \"boom\"".into())
    } else {
        Ok(s.to_string())
    }
}

/// Panics (a trap) on the record "panic".
#[weir_udf::map]
fn panic_on_panic(s: &str) -> String {
    if s == "panic" {
        panic!("asked to panic")
    }
    s.to_string()
}

/// Repeats each integer n n times.
#[weir_udf::flat_map]
fn repeat(n: i64) -> Vec<i64> {
    vec![n; n.max(0) as usize]
}

/// Characters of a string, as one-char strings.
#[weir_udf::flat_map]
fn chars(s: &str) -> Vec<String> {
    s.chars().map(String::from).collect()
}

#[weir_udf::filter]
fn is_even(x: i64) -> bool {
    x % 2 == 0
}

#[weir_udf::filter]
fn is_long(s: &str) -> bool {
    s.chars().count() > 3
}

/// A record's first character, as the key.
#[weir_udf::key_by]
fn first_char(s: &str) -> String {
    s.chars().next().map(String::from).unwrap_or_default()
}

/// A whole partition -> `[count, sum]` of its integers.
#[weir_udf::map_partitions]
fn count_and_sum(records: Records<i64>) -> Vec<i64> {
    let (mut n, mut s) = (0, 0);
    for x in records {
        n += 1;
        s += x;
    }
    vec![n, s]
}

#[weir_udf::reduce]
fn max(a: i64, b: i64) -> i64 {
    a.max(b)
}

/// String concatenation: order-sensitive, so it shows the fold order.
#[weir_udf::reduce]
fn concat(a: String, b: String) -> String {
    a + &b
}

/// update_state_by_key that drops a key whose batch brought no values.
#[weir_udf::update]
fn total_or_drop(key: Raw, values: Vec<i64>, state: Option<i64>) -> Option<i64> {
    let _ = key;
    if values.is_empty() {
        None
    } else {
        Some(state.unwrap_or(0) + values.iter().sum::<i64>())
    }
}

/// map_with_state: emits (key, running count) and keeps the count.
#[weir_udf::map_with_state]
fn count_seen(key: &str, value: Option<i64>, state: &mut State<i64>) -> (String, i64) {
    if state.is_timing_out() {
        return (key.to_string(), -1);
    }
    let n = state.get().copied().unwrap_or(0) + value.unwrap_or(0);
    state.update(n);
    (key.to_string(), n)
}

/// Float-heavy: produces NaNs and signed zeros in many ways.
#[weir_udf::map]
fn float_chaos(x: f64) -> Vec<f64> {
    let inf = f64::INFINITY;
    vec![
        x / 0.0 - inf,                                                  // NaN for finite x
        (x - x) / (x - x),                                              // 0/0
        (-x).sqrt(),                                                    // NaN for x > 0
        f64::from_bits(0x7ff0_0000_0000_0001 | (x.to_bits() & 0xffff)), // signalling NaN payloads
        x.sin() * x.cos() / x.tan(),
        (x * 1e308) * 10.0,
        x.mul_add(-0.0, -0.0),
    ]
}

/// Echoes a value of any type (a pass-through for encoding tests).
#[weir_udf::map]
fn identity(v: Value) -> Value {
    v
}

/// map_with_state that emits only on a key's first value and on its
/// timeout (Spark's `Option` return: `None` emits nothing), counting values.
#[weir_udf::map_with_state(optional)]
fn first_seen(key: &str, value: Option<i64>, state: &mut State<i64>) -> Option<(String, i64)> {
    if state.is_timing_out() {
        return Some((format!("{key} timed out"), state.get().copied().unwrap_or(0)));
    }
    let seen = state.get().copied();
    state.update(seen.unwrap_or(0) + 1);
    match seen {
        None => Some((key.to_string(), value.unwrap_or(0))),
        Some(_) => None,
    }
}

/// A filter over `(key, count)` pairs: keeps positive counts (Spark's usual
/// `filterFunc` of reduceByKeyAndWindow with an inverse).
#[weir_udf::filter]
fn positive_value(kv: (&str, i64)) -> bool {
    kv.1 > 0
}

/// A filter over `(key, count)` pairs that drops a key whose count reaches
/// 2, while values of it may still be in the window (a misuse Spark fails).
#[weir_udf::filter]
fn below_two(kv: (&str, i64)) -> bool {
    kv.1 < 2
}

/// The line unchanged, after a fixed amount of work (tens of microseconds):
/// a UDF slower than its input, for the backpressure tests.
#[weir_udf::map]
fn spin(s: &str) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ s.len() as u64;
    for _ in 0..40_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = core::hint::black_box(x);
    }
    // Never true (xorshift never reaches 0 from a non-zero seed): keeps the
    // loop's result used.
    if x == 0 {
        return String::new();
    }
    s.to_string()
}

/// `ops.plus(4)`: the job file's parameter, added to each integer.
#[weir_udf::params]
struct Plus {
    n: i64,
}

#[weir_udf::map(params)]
fn plus(x: i64, p: &Plus) -> i64 {
    x + p.n
}

/// `ops.level_is("ERROR")`: keeps log lines whose first word is the level.
#[weir_udf::params]
struct Level(String);

#[weir_udf::filter(params)]
fn level_is(line: &str, p: &Level) -> bool {
    line.split_whitespace().next() == Some(p.0.as_str())
}

/// `ops.within(lat = 52.5, lon = 13.4, km = 10)`: keeps `(lat, lon)` points
/// within `km` of the centre (equirectangular distance: enough for a test).
#[weir_udf::params]
struct Within {
    lat: f64,
    lon: f64,
    km: f64,
}

#[weir_udf::filter(params)]
fn within(point: (f64, f64), p: &Within) -> bool {
    let r = 6371.0_f64;
    let (la1, la2) = (p.lat.to_radians(), point.0.to_radians());
    let x = (point.1 - p.lon).to_radians() * ((la1 + la2) / 2.0).cos();
    let y = la2 - la1;
    (x * x + y * y).sqrt() * r <= p.km
}

/// Spark's `updateStateByKey((time, key, values, state) => ...)`: the state
/// is `(sum, [batch times that brought values])`, so the batch time each
/// call saw is in the output.
#[weir_udf::update(time)]
fn sum_with_times(time: i64, key: Raw, values: Vec<i64>, state: Option<(i64, Vec<i64>)>) -> Option<(i64, Vec<i64>)> {
    let _ = key;
    let (mut sum, mut times) = state.unwrap_or((0, Vec::new()));
    if !values.is_empty() {
        sum += values.iter().sum::<i64>();
        times.push(time);
    }
    Some((sum, times))
}

/// Parameters and the batch time together: `ops.scaled_at(factor = 10)`
/// maps `x` to `(x * factor, batch time)`.
#[weir_udf::params]
struct Factor {
    factor: i64,
}

#[weir_udf::map(time, params)]
fn scaled_at(time: i64, x: i64, p: &Factor) -> (i64, i64) {
    (x * p.factor, time)
}

/// map_with_state with the batch time: emits `(key, time)` per value.
#[weir_udf::map_with_state(time)]
fn stamp(time: i64, key: &str, value: Option<i64>, state: &mut State<i64>) -> (String, i64) {
    let _ = value;
    state.update(time);
    (key.to_string(), time)
}

/// `ops.lookup(users)`: a static dataset (`[datasets]` in a job file) of
/// `[key, name]` pairs, handed over as a parameter, used as a lookup
/// table: maps `key` to `(key, name)`, `name` null for a key it lacks.
#[weir_udf::params]
struct Table(Vec<(String, String)>);

#[weir_udf::map(params)]
fn lookup(key: &str, p: &Table) -> (String, Option<String>) {
    let name = p.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    (key.to_string(), name)
}
