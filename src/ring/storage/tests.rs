use std::fs::File;
use std::os::unix::fs::FileExt;

use super::mapped::{POPULATED_FOR_MS, RELEASE_CHUNK};
use super::*;

/// A file of `len` bytes in a fresh directory (kept alive by the first
/// element), its path, and an open handle for reading and writing.
fn sized_file(len: u64) -> (tempfile::TempDir, std::path::PathBuf, File) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    FileStorage { file: file.try_clone().unwrap() }.set_len(len).unwrap();
    (dir, path, file)
}

#[test]
fn mapped_file_writes_reach_the_file_and_past_the_map() {
    let (_dir, path, file) = sized_file(8192);
    let m = MappedFile::new(file).unwrap();
    m.write_at(b"mapped", 4090).unwrap();
    // Past the map (the file grew after it was mapped): pwrite.
    m.set_len(16384).unwrap();
    m.write_at(b"grown", 8190).unwrap();
    m.write_at(b"far", 16000).unwrap();
    m.sync_data().unwrap();
    let mut buf = [0u8; 6];
    m.read_at(&mut buf, 4090).unwrap();
    assert_eq!(&buf, b"mapped");
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), 16384);
    assert_eq!(&on_disk[4090..4096], b"mapped");
    assert_eq!(&on_disk[8190..8195], b"grown");
    assert_eq!(&on_disk[16000..16003], b"far");
}

/// Prefetching changes no byte, on either storage, wherever it starts
/// and however far it runs: past the end of the map or of the file
/// is no error and no panic.
#[test]
fn prefetch_changes_no_bytes_and_tolerates_any_range() {
    let len = 64 << 10;
    let (_dir, _, file) = sized_file(len);
    let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    file.write_all_at(&pattern, 0).unwrap();
    let plain = FileStorage { file: file.try_clone().unwrap() };
    let mapped = MappedFile::new(file.try_clone().unwrap()).unwrap();
    for storage in [&plain as &dyn Storage, &mapped] {
        for (offset, n) in [(0, len), (100, 5000), (len - 1, 1 << 20), (len, 4096), (len + 8192, 1), (3, 0)] {
            storage.prefetch(offset, n);
            storage.prefetch_for_write(offset, n);
        }
        let mut back = vec![0; len as usize];
        storage.read_at(&mut back, 0).unwrap();
        assert!(back == pattern, "prefetch changed bytes");
        assert_eq!(storage.len().unwrap(), len, "prefetch changed the length");
    }
    // A write after a prefetch lands as any other.
    mapped.prefetch_for_write(4096, 8192);
    mapped.write_at(b"after", 5000).unwrap();
    let mut back = [0; 5];
    plain.read_at(&mut back, 5000).unwrap();
    assert_eq!(&back, b"after");
}

#[test]
fn mapped_copies_of_every_length_at_every_alignment_are_exact() {
    // `copy_forward` switches between byte, word and vector stores by
    // alignment and length: each copy must land exactly, touching
    // nothing around it.
    let (_dir, _, file) = sized_file(8192);
    let m = MappedFile::new(file).unwrap();
    let src: Vec<u8> = (0..100u8).map(|b| b.wrapping_mul(37).wrapping_add(1)).collect();
    for start in 4000..4032u64 {
        for len in 0..=src.len() {
            m.write_at(&[0xee; 160], 3980).unwrap();
            m.write_at(&src[..len], start).unwrap();
            let mut got = [0u8; 160];
            m.read_at(&mut got, 3980).unwrap();
            let at = (start - 3980) as usize;
            assert_eq!(&got[at..at + len], &src[..len], "start {start} len {len}");
            assert!(got[..at].iter().chain(&got[at + len..]).all(|&b| b == 0xee), "start {start} len {len}");
        }
    }
}

#[test]
fn a_page_the_kernel_cannot_bring_in_fails_the_write_instead_of_raising_sigbus() {
    // The file is cut short under the map, as another process ignoring
    // the ring's lock could do: a store past the end of the file would
    // raise SIGBUS and kill this test. The write must fail instead, and
    // writes to pages that still exist must go on working.
    let (_dir, path, file) = sized_file(1 << 20);
    let m = MappedFile::new(file).unwrap();
    m.write_at(&[1; 100], 0).unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(8192).unwrap();
    // Inside the range the first write populated, once that is old
    // enough to be populated again.
    std::thread::sleep(std::time::Duration::from_millis(POPULATED_FOR_MS + 20));
    assert!(m.write_at(&[2; 100], 20_000).is_err());
    // Past it.
    assert!(m.write_at(&[2; 100], 600_000).is_err());
    m.write_at(&[3; 100], 4096).unwrap();
    let mut buf = [0u8; 100];
    m.read_at(&mut buf, 4096).unwrap();
    assert_eq!(buf, [3; 100]);
}

#[test]
fn released_chunks_keep_their_bytes() {
    let (_dir, _, file) = sized_file(3 * RELEASE_CHUNK as u64);
    let m = MappedFile::new(file).unwrap();
    let at = |chunk: usize, k: usize| (chunk * RELEASE_CHUNK + k * 4096) as u64;
    // Chunk 0, then 1 (chunk 0 released), then 2, then 0 again (a lap).
    for (round, chunk) in [0, 1, 2, 0].into_iter().enumerate() {
        for k in 0..8 {
            m.write_at(&[round as u8 + 1; 100], at(chunk, k)).unwrap();
        }
    }
    let expect = [4u8, 2, 3];
    for (chunk, &byte) in expect.iter().enumerate() {
        for k in 0..8 {
            let mut buf = [0u8; 100];
            m.read_at(&mut buf, at(chunk, k)).unwrap();
            assert_eq!(buf, [byte; 100], "chunk {chunk} page {k}");
        }
    }
}

/// Resident KiB of `m`'s map in this process (`/proc/self/smaps`).
fn mapped_kib(m: &MappedFile) -> u64 {
    let header = format!("{:x}-", m.map.as_ptr() as usize);
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let rss = smaps.lines().skip_while(|l| !l.starts_with(&header)).find_map(|l| l.strip_prefix("Rss:"));
    rss.expect("the map in smaps").trim().trim_end_matches("kB").trim().parse().unwrap()
}

#[test]
fn prefetch_for_write_maps_pages_ahead_of_the_writer_and_unmaps_those_it_left_behind() {
    let chunk = RELEASE_CHUNK as u64;
    let (_dir, _, file) = sized_file(4 * chunk);
    let m = MappedFile::new(file).unwrap();
    let mib = 1 << 20;
    // For reading: into the page cache, not into the map.
    m.prefetch(4096, mib);
    assert_eq!(mapped_kib(&m), 0);
    // For writing, before any write: mapped, kept.
    m.prefetch_for_write(4096, mib);
    assert!(mapped_kib(&m) >= 1024, "{} KiB", mapped_kib(&m));
    // Ahead of a writer in chunk 1 (clear of the 64 KiB its write
    // populated): mapped, kept.
    m.write_at(&[1; 100], chunk).unwrap();
    let before = mapped_kib(&m);
    m.prefetch_for_write(chunk + mib / 4, mib);
    assert!(mapped_kib(&m) >= before + 1000, "{before} -> {} KiB", mapped_kib(&m));
    // Asked for at a head the writer has left since: it moved on to
    // chunk 2 and unmapped chunk 1. What the prefetch maps there is
    // unmapped again.
    m.write_at(&[2; 100], 2 * chunk).unwrap();
    let before = mapped_kib(&m);
    m.prefetch_for_write(chunk + 2 * mib, mib);
    assert!(mapped_kib(&m) < before + 256, "{before} -> {} KiB", mapped_kib(&m));
    // Across the end of chunk 2 into chunk 3, the writer in 2: both kept.
    let before = mapped_kib(&m);
    m.prefetch_for_write(3 * chunk - mib / 2, mib);
    assert!(mapped_kib(&m) >= before + 1000, "{before} -> {} KiB", mapped_kib(&m));
    // The writer's last write ended just short of the range (in the
    // chunk before it): the range is ahead, kept.
    m.write_at(&[3; 100], 4 * chunk - 4096).unwrap();
    let before = mapped_kib(&m);
    m.prefetch_for_write(3 * mib, mib);
    assert!(mapped_kib(&m) >= before + 1000, "{before} -> {} KiB", mapped_kib(&m));
    // Around the end of the map: the writer went on to chunk 1, past
    // chunk 0, which the range is in.
    m.write_at(&[4; 100], chunk).unwrap();
    let before = mapped_kib(&m);
    m.prefetch_for_write(mib, mib);
    assert!(mapped_kib(&m) < before + 256, "{before} -> {} KiB", mapped_kib(&m));
}

#[test]
fn dropping_the_cache_keeps_synced_and_unsynced_bytes() {
    // Clean pages are read back from the disk; dirty ones stay cached.
    for mapped in [false, true] {
        let (_dir, _, file) = sized_file(2 * RELEASE_CHUNK as u64);
        let f: Box<dyn Storage> =
            if mapped { Box::new(MappedFile::new(file).unwrap()) } else { Box::new(FileStorage { file }) };
        f.write_at(&[7; 4096], 0).unwrap();
        f.sync_data().unwrap();
        f.write_at(&[9; 4096], RELEASE_CHUNK as u64 + 8192).unwrap();
        f.drop_cache();
        let mut buf = [0u8; 4096];
        f.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [7; 4096], "mapped: {mapped}");
        f.read_at(&mut buf, RELEASE_CHUNK as u64 + 8192).unwrap();
        assert_eq!(buf, [9; 4096], "mapped: {mapped}");
        // Writes after the drop land as before.
        f.write_at(&[5; 100], 4096).unwrap();
        f.read_at(&mut buf[..100], 4096).unwrap();
        assert_eq!(buf[..100], [5; 100], "mapped: {mapped}");
    }
}
