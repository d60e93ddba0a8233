//! Arbitrary event sequences into the sender's state machine: no panic,
//! the cursor never moves back, nothing is acked that was not accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringship::fuzzing::drive_machine(data);
});
