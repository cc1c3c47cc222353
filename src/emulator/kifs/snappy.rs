//! Raw Snappy block decompression, for requests sent with `Content-type:
//! application/x-snappy` (protocols/kifs.md §1.2, §6 item 2). Written by hand because only
//! decompression of the raw block format is needed (about forty lines) and no Snappy crate
//! is among the project's dependencies.

/// Decompresses one raw Snappy block; the error says where the block is malformed.
pub(crate) fn decompress(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut pos = 0;
    let take = |pos: &mut usize, n: usize| -> Result<u64, String> {
        let bytes = input
            .get(*pos..*pos + n)
            .ok_or_else(|| format!("snappy block truncated at byte {}", *pos))?;
        *pos += n;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    };
    let mut expected: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = take(&mut pos, 1)?;
        if shift > 35 {
            return Err("snappy length preamble is too long".to_string());
        }
        expected |= (byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    // Every input byte expands to at most a few dozen output bytes; a larger claim is corrupt.
    if expected > (input.len() as u64).saturating_mul(64) + 64 {
        return Err(format!(
            "snappy block claims {expected} bytes from {} compressed bytes",
            input.len()
        ));
    }
    let mut out: Vec<u8> = Vec::with_capacity(expected as usize);
    while pos < input.len() {
        let tag = take(&mut pos, 1)? as usize;
        let (len, offset) = match tag & 3 {
            0 => {
                let mut len = tag >> 2;
                if len >= 60 {
                    len = take(&mut pos, len - 59)? as usize;
                }
                let literal = input
                    .get(pos..pos + len + 1)
                    .ok_or_else(|| format!("snappy literal truncated at byte {pos}"))?;
                out.extend_from_slice(literal);
                pos += len + 1;
                continue;
            }
            1 => (
                4 + ((tag >> 2) & 7),
                ((tag >> 5) << 8) | take(&mut pos, 1)? as usize,
            ),
            2 => (1 + (tag >> 2), take(&mut pos, 2)? as usize),
            _ => (1 + (tag >> 2), take(&mut pos, 4)? as usize),
        };
        if offset == 0 || offset > out.len() {
            return Err(format!(
                "snappy copy at byte {pos} reaches {offset} bytes back, only {} written",
                out.len()
            ));
        }
        // Copies may overlap their own output (run-length style), so go byte by byte.
        let start = out.len() - offset;
        for i in 0..len {
            out.push(out[start + i]);
        }
    }
    if out.len() as u64 != expected {
        return Err(format!(
            "snappy block decompressed to {} bytes, its header says {expected}",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_overlapping_copy_decompress() {
        // "abc" literal, then a 9-byte copy from 3 back (1-byte-offset form).
        let block = [0x0c, 0x08, b'a', b'b', b'c', 0x15, 0x03];
        assert_eq!(decompress(&block).unwrap(), b"abcabcabcabc");
        // The same with the 2-byte-offset form: tag (9-1)<<2 | 2.
        let block = [0x0c, 0x08, b'a', b'b', b'c', 0x22, 0x03, 0x00];
        assert_eq!(decompress(&block).unwrap(), b"abcabcabcabc");
    }

    #[test]
    fn long_literal_uses_the_extra_length_bytes() {
        let data = vec![7u8; 100];
        let mut block = vec![100, 60 << 2, 99];
        block.extend_from_slice(&data);
        assert_eq!(decompress(&block).unwrap(), data);
    }

    #[test]
    fn malformed_blocks_are_errors() {
        assert!(decompress(&[]).is_err());
        assert!(
            decompress(&[0x05, 0x08, b'a']).is_err(),
            "truncated literal"
        );
        assert!(
            decompress(&[0x04, 0x15, 0x03]).is_err(),
            "copy before any output"
        );
        assert!(
            decompress(&[0x09, 0x08, b'a', b'b', b'c']).is_err(),
            "length mismatch"
        );
    }
}
