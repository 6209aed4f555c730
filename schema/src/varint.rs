//! LEB128 varints, the integer encoding of the record codec.

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded, so that small negative numbers stay short.
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Reads an unsigned varint from the front of `buf`, advancing it. Returns
/// `None` if the varint is truncated, longer than ten bytes, overflows, or is
/// not minimally encoded (so that every value has exactly one encoding).
pub fn get_u64(buf: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        if i == 9 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return None;
            }
            return Some(v);
        }
    }
    None
}

/// Reads a zigzag-encoded signed varint.
pub fn get_i64(buf: &mut &[u8]) -> Option<i64> {
    let u = get_u64(buf)?;
    Some(((u >> 1) as i64) ^ -((u & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn u64_round_trips(v: u64) {
            let mut out = Vec::new();
            put_u64(&mut out, v);
            let mut s = &out[..];
            prop_assert_eq!(get_u64(&mut s), Some(v));
            prop_assert!(s.is_empty());
        }

        #[test]
        fn i64_round_trips(v: i64) {
            let mut out = Vec::new();
            put_i64(&mut out, v);
            let mut s = &out[..];
            prop_assert_eq!(get_i64(&mut s), Some(v));
        }
    }

    #[test]
    fn rejects_truncated_overlong_and_non_minimal() {
        assert_eq!(get_u64(&mut &[0x80][..]), None);
        assert_eq!(get_u64(&mut &[0x80, 0x00][..]), None);
        assert_eq!(get_u64(&mut &[0xff; 11][..]), None);
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(get_u64(&mut &max[..]), Some(u64::MAX));
        max[9] = 0x02;
        assert_eq!(get_u64(&mut &max[..]), None);
    }
}
