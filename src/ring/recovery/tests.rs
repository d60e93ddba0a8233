use super::window::CheckpointJump;

/// Overlapping loss ranges (a hostile checkpoint with a valid CRC; the
/// ring never writes them) whose counts add up past `u64::MAX` refuse
/// the jump instead of overflowing.
#[test]
fn a_skip_over_ranges_whose_counts_overflow_is_refused() {
    let huge = (1 << 62) - 1;
    let skip = CheckpointJump { first_seq: 1, last_seq: 1 << 62, through: 0, ack: None, lost: vec![(2, 100, huge); 5] };
    assert_eq!(skip.passed(1), None);
    let skip = CheckpointJump { lost: vec![(2, 100, 99)], ..skip };
    assert_eq!(skip.passed(1), Some((1 << 62) - 1 - 99));
}
