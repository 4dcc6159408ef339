//! Whole RESP values, off the hot path: replies to the proxy's own commands (ROLE, INFO, SENTINEL,
//! COMMAND), events, and the rare request the proxy must read in full. One decoder for all of them
//! (redis-protocol's, RESP2: every connection the proxy makes for itself speaks RESP2), and one encoder
//! for the commands the proxy sends. Data-path frames are never decoded: they are scanned (see
//! [`super::ReplyScanner`]) and forwarded as bytes.

pub use redis_protocol::resp2::types::OwnedFrame as Value;

/// Bytes that are not RESP. The peer that sent them is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not RESP: {0}")]
pub struct DecodeError(String);

/// Decodes the value at the start of `bytes` and its length; `Ok(None)` while it is incomplete.
pub fn decode(bytes: &[u8]) -> Result<Option<(Value, usize)>, DecodeError> {
    redis_protocol::resp2::decode::decode(bytes).map_err(|e| DecodeError(e.to_string()))
}

/// The one complete value at the start of `bytes`, if there is one.
pub fn decode_one(bytes: &[u8]) -> Option<Value> {
    decode(bytes).ok().flatten().map(|(v, _)| v)
}

/// The text of a bulk or simple string, lossily decoded.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) | Value::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

/// An integer value.
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(n) => Some(*n),
        _ => None,
    }
}

/// The arguments of a request frame (an array of bulk strings); `None` if it is not one.
pub fn request_args(frame: &[u8]) -> Option<Vec<Vec<u8>>> {
    match decode_one(frame)? {
        Value::Array(items) => items
            .into_iter()
            .map(|f| match f {
                Value::BulkString(b) => Some(b),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Appends `args` as a RESP multibulk command.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_command_decodes_to_its_arguments() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SELECT", b"3"]);
        assert_eq!(out, b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n");
        assert_eq!(
            request_args(&out),
            Some(vec![b"SELECT".to_vec(), b"3".to_vec()])
        );
        assert_eq!(decode(b"$3\r\nab"), Ok(None));
        assert!(decode(b"?x\r\n").is_err());
        assert_eq!(
            text(&decode_one(b"+OK\r\n").expect("complete")).as_deref(),
            Some("OK")
        );
    }
}
