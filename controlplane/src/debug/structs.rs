//! JSON as `google.protobuf.Struct`, both ways: how the Debug gRPC API carries payloads and
//! diffs (the same JSON the HTTP routes return), and how `luthien calls` reads them back.

use prost_types::value::Kind;
use serde_json::{Map, Value};

/// A JSON object as a protobuf `Struct` (non-objects are wrapped as `{"value": …}`).
pub fn to_struct(value: Value) -> prost_types::Struct {
    match value {
        Value::Object(map) => prost_types::Struct {
            fields: map
                .into_iter()
                .map(|(key, value)| (key, to_value(value)))
                .collect(),
        },
        other => prost_types::Struct {
            fields: [("value".to_owned(), to_value(other))]
                .into_iter()
                .collect(),
        },
    }
}

fn to_value(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(flag) => Kind::BoolValue(flag),
        Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or_default()),
        Value::String(text) => Kind::StringValue(text),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(_) => Kind::StructValue(to_struct(value)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A `Struct` back as JSON. A `Struct` carries every number as a double, so whole numbers that
/// a double holds exactly come back as integers: counts and indexes read back into their Rust
/// types.
pub fn from_struct(value: prost_types::Struct) -> Value {
    Value::Object(
        value
            .fields
            .into_iter()
            .map(|(key, value)| (key, from_value(value)))
            .collect::<Map<_, _>>(),
    )
}

fn from_value(value: prost_types::Value) -> Value {
    /// 2^53: past it a double skips integers.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(flag)) => Value::Bool(flag),
        Some(Kind::NumberValue(number)) if number.fract() == 0.0 && number.abs() < EXACT => {
            Value::from(number as i64)
        }
        Some(Kind::NumberValue(number)) => Value::from(number),
        Some(Kind::StringValue(text)) => Value::String(text),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.into_iter().map(from_value).collect())
        }
        Some(Kind::StructValue(inner)) => from_struct(inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_survives_the_round_trip_with_its_integers() {
        let value = json!({"chunks": 3, "ratio": 0.5, "big": 1e300, "nested": [{"index": 1}, null, "x", true]});
        assert_eq!(from_struct(to_struct(value.clone())), value);
    }
}
