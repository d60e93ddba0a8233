//! The RELP client's frame parser (responses from a server we do not
//! trust): no panic, no over-read, no unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringship::fuzzing::parse_relp(data);
});
