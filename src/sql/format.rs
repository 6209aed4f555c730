//! Answers of `POST /v1/sql` in the formats `Accept` asks for: JSON
//! (`{"columns", "types", "rows"}`), CSV, or an Arrow IPC stream.

use arrow::array::{
    Array, AsArray, BooleanArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, Int8Array,
    LargeStringArray, StringArray, StringViewArray, UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{json, Value};

use super::SqlOutput;

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// One cell as JSON: numbers and booleans as themselves, timestamps in
/// RFC 3339, lists as arrays, anything else as its display text.
fn cell(array: &dyn Array, i: usize) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    macro_rules! num {
        ($t:ty) => {
            if let Some(a) = array.as_any().downcast_ref::<$t>() {
                return json!(a.value(i));
            }
        };
    }
    num!(Int8Array);
    num!(Int16Array);
    num!(Int32Array);
    num!(Int64Array);
    num!(UInt8Array);
    num!(UInt16Array);
    num!(UInt32Array);
    num!(UInt64Array);
    num!(Float32Array);
    num!(Float64Array);
    num!(BooleanArray);
    if let Some(a) = array.as_any().downcast_ref::<StringArray>() {
        return Value::String(a.value(i).to_string());
    }
    if let Some(a) = array.as_any().downcast_ref::<LargeStringArray>() {
        return Value::String(a.value(i).to_string());
    }
    if let Some(a) = array.as_any().downcast_ref::<StringViewArray>() {
        return Value::String(a.value(i).to_string());
    }
    match array.data_type() {
        DataType::List(_) => {
            let l = array.as_list::<i32>().value(i);
            return Value::Array((0..l.len()).map(|j| cell(l.as_ref(), j)).collect());
        }
        DataType::LargeList(_) => {
            let l = array.as_list::<i64>().value(i);
            return Value::Array((0..l.len()).map(|j| cell(l.as_ref(), j)).collect());
        }
        _ => {}
    }
    let options = FormatOptions::default().with_timestamp_tz_format(Some("%Y-%m-%dT%H:%M:%S%.f%:z"));
    match ArrayFormatter::try_new(array, &options) {
        Ok(f) => Value::String(f.value(i).to_string()),
        Err(e) => Value::String(format!("<{e}>")),
    }
}

/// The name of a column's type as answers show it.
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Int32 => "integer".into(),
        DataType::UInt64 => "numeric".into(),
        DataType::Float64 => "double".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(TimeUnit::Nanosecond, Some(_)) => "timestamptz".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("{}[]", type_name(f.data_type())),
        other => other.to_string().to_lowercase(),
    }
}

pub fn to_json(out: &SqlOutput) -> Value {
    let columns: Vec<&str> = out.schema.fields().iter().map(|f| f.name().as_str()).collect();
    let types: Vec<String> = out.schema.fields().iter().map(|f| type_name(f.data_type())).collect();
    let mut rows = Vec::with_capacity(out.rows);
    for b in &out.batches {
        for i in 0..b.num_rows() {
            rows.push(Value::Array(b.columns().iter().map(|c| cell(c.as_ref(), i)).collect()));
        }
    }
    json!({"columns": columns, "types": types, "rows": rows, "row_count": out.rows})
}

pub fn to_csv(out: &SqlOutput) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.f%:z".into())
            .build(&mut buf);
        if out.batches.is_empty() {
            w.write(&arrow::array::RecordBatch::new_empty(out.schema.clone()))?;
        }
        for b in &out.batches {
            w.write(b)?;
        }
    }
    Ok(buf)
}

pub fn to_arrow(out: &SqlOutput) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &out.schema)?;
        for b in &out.batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(buf)
}
