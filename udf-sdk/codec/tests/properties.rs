//! Property tests of the record codec (proptest, a bounded number of cases
//! in every `cargo test`): any value round-trips byte for byte through a
//! batch, and on any bytes at all — random or a valid batch mutated — the
//! validator, the record iterator and the decoder never panic and agree on
//! what is valid. (The unit tests hold the hand-written cases.)

use proptest::prelude::*;
use weir_codec::{display, validate_batch, Records, Value};

/// Any value, nested up to 6 levels (the codec's own limit is 64).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::I64),
        any::<f64>().prop_map(Value::F64),
        ".{0,12}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(6, 64, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Tuple),
            proptest::collection::vec(inner, 0..5).prop_map(Value::List),
        ]
    })
}

/// The count the validator, the iterator and the decoder each give `buf`
/// (`None` when that reader refuses it).
fn readings(buf: &[u8]) -> (Option<u32>, Option<u32>, Option<u32>) {
    let decoded = Value::decode_batch(buf).ok().map(|v| v.len() as u32);
    let iterated = Records::new(buf)
        .ok()
        .and_then(|recs| recs.map(|r| r.map(|r| display::render(r).len())).collect::<Result<Vec<_>, _>>().ok())
        .map(|v| v.len() as u32);
    let validated = validate_batch(&mut buf.to_vec()).ok();
    (validated, iterated, decoded)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_batch_round_trips_byte_for_byte(values in proptest::collection::vec(value(), 0..8)) {
        let batch = Value::encode_batch(&values);
        let n = values.len() as u32;
        prop_assert_eq!(readings(&batch), (Some(n), Some(n), Some(n)));
        // Decoding then encoding again gives the same bytes (NaN payloads
        // included: the comparison is of encodings, not of floats).
        let again = Value::encode_batch(&Value::decode_batch(&batch).unwrap());
        prop_assert_eq!(again, batch);
    }

    #[test]
    fn any_bytes_are_read_alike_by_every_reader(buf in proptest::collection::vec(any::<u8>(), 0..96)) {
        let (validated, iterated, decoded) = readings(&buf);
        // The decoder and the validator accept the same batches, with one
        // count. The iterator reads `count` records and stops: trailing
        // bytes are the validator's to refuse (the engine validates a UDF's
        // output before iterating it), so it must accept what validates.
        prop_assert_eq!(decoded, validated);
        if let Some(n) = validated {
            prop_assert_eq!(iterated, Some(n));
        }
    }

    #[test]
    fn a_mutated_batch_is_read_alike_by_every_reader(
        values in proptest::collection::vec(value(), 1..6),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut buf = Value::encode_batch(&values);
        for (at, byte, how) in edits {
            if buf.is_empty() {
                break;
            }
            let i = at.index(buf.len());
            match how {
                0 => buf[i] = byte,
                1 => buf.truncate(i),
                _ => buf.insert(i, byte),
            }
        }
        let (validated, iterated, decoded) = readings(&buf);
        // The decoder and the validator accept the same batches, with one
        // count. The iterator reads `count` records and stops: trailing
        // bytes are the validator's to refuse (the engine validates a UDF's
        // output before iterating it), so it must accept what validates.
        prop_assert_eq!(decoded, validated);
        if let Some(n) = validated {
            prop_assert_eq!(iterated, Some(n));
        }
    }
}
