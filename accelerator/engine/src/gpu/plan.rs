//! Sans-IO plan of a batch's host-to-device copies.

/// One host-to-device copy of a plan: parts `src..src + parts` of the batch, which lie back to back
/// in host memory, copied as one range of `len` bytes starting at `parts[src].as_ptr()` to byte
/// `dst_offset` of the device buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyRun {
    /// Index of the run's first part (never an empty part).
    pub src: usize,
    /// Number of parts the run covers, from `src` to its last non-empty part (empty parts in
    /// between are included in the count; they add no bytes).
    pub parts: usize,
    /// Where the run lands in the device buffer.
    pub dst_offset: usize,
    /// Bytes in the run: the sum of its parts' lengths.
    pub len: usize,
}

/// Plans the copies that put `parts` (a batch's per-sample inputs, in batch order) back to back
/// into one device buffer: consecutive parts that are adjacent in host memory
/// (`parts[i].as_ptr() + parts[i].len() == parts[i + 1].as_ptr()`, as consecutive slots of one
/// arena are) are merged into one copy, as NVIDIA's guidance for batched inputs does (adjacent
/// slots, one `cudaMemcpy`). Runs are maximal: two consecutive runs are never adjacent.
///
/// Empty parts add no bytes and never start or break a run; a batch of only empty parts plans no
/// copy. Merging assumes adjacent parts belong to one allocation (one arena, one pinned
/// registration), which is how a batch's slots are laid out; two separate allocations that happen
/// to touch would be copied as one range spanning both.
pub fn plan_copies(parts: &[&[u8]]) -> Vec<CopyRun> {
    let mut runs: Vec<CopyRun> = Vec::new();
    // The open run, with the address just past its bytes and the index of its last non-empty part.
    let mut open: Option<(CopyRun, usize, usize)> = None;
    let mut dst_offset = 0usize;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        let start = part.as_ptr() as usize;
        match &mut open {
            Some((run, end, last)) if *end == start => {
                run.len += part.len();
                *end = start.wrapping_add(part.len());
                *last = i;
            }
            _ => {
                if let Some((mut run, _, last)) = open.take() {
                    run.parts = last - run.src + 1;
                    runs.push(run);
                }
                let run = CopyRun { src: i, parts: 1, dst_offset, len: part.len() };
                open = Some((run, start.wrapping_add(part.len()), i));
            }
        }
        dst_offset += part.len();
    }
    if let Some((mut run, _, last)) = open {
        run.parts = last - run.src + 1;
        runs.push(run);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The bytes a run copies, read from `arena` (every part of these tests is a slice of it).
    fn run_bytes<'a>(arena: &'a [u8], parts: &[&[u8]], run: &CopyRun) -> &'a [u8] {
        let start = parts[run.src].as_ptr() as usize - arena.as_ptr() as usize;
        &arena[start..start + run.len]
    }

    fn check_invariants(arena: &[u8], parts: &[&[u8]], runs: &[CopyRun]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        assert_eq!(runs.iter().map(|r| r.len).sum::<usize>(), total);
        let mut device = vec![0u8; total];
        let mut next_offset = 0;
        let mut next_part = 0;
        for (k, run) in runs.iter().enumerate() {
            assert!(run.len > 0 && run.parts > 0 && !parts[run.src].is_empty());
            assert_eq!(run.dst_offset, next_offset);
            assert!(run.src >= next_part, "runs overlap");
            assert!(parts[next_part..run.src].iter().all(|p| p.is_empty()), "a non-empty part is in no run");
            let covered = &parts[run.src..run.src + run.parts];
            assert!(!covered.last().unwrap().is_empty());
            assert_eq!(covered.iter().map(|p| p.len()).sum::<usize>(), run.len);
            device[run.dst_offset..run.dst_offset + run.len].copy_from_slice(run_bytes(arena, parts, run));
            if let Some(next) = runs.get(k + 1) {
                let end = parts[run.src].as_ptr() as usize + run.len;
                assert_ne!(end, parts[next.src].as_ptr() as usize, "runs {k} and {} could merge", k + 1);
            }
            next_offset += run.len;
            next_part = run.src + run.parts;
        }
        assert!(parts[next_part..].iter().all(|p| p.is_empty()));
        assert_eq!(device, parts.concat());
    }

    fn slots<'a>(arena: &'a [u8], size: usize, idx: &[usize]) -> Vec<&'a [u8]> {
        idx.iter().map(|&i| &arena[i * size..(i + 1) * size]).collect()
    }

    fn arena(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    #[test]
    fn all_adjacent_is_one_copy() {
        let a = arena(64 * 10);
        let parts = slots(&a, 10, &(0..64).collect::<Vec<_>>());
        let runs = plan_copies(&parts);
        assert_eq!(runs, vec![CopyRun { src: 0, parts: 64, dst_offset: 0, len: 640 }]);
        check_invariants(&a, &parts, &runs);
    }

    #[test]
    fn none_adjacent_is_one_copy_per_part() {
        let a = arena(64 * 10);
        let parts = slots(&a, 10, &[0, 2, 4, 6, 8]);
        let runs = plan_copies(&parts);
        assert_eq!(runs.len(), 5);
        check_invariants(&a, &parts, &runs);
        // Out of order slots are not adjacent either, even when their ranges touch the other way.
        let parts = slots(&a, 10, &[3, 2, 1]);
        assert_eq!(plan_copies(&parts).len(), 3);
        check_invariants(&a, &parts, &plan_copies(&parts));
    }

    #[test]
    fn mixed() {
        let a = arena(64 * 10);
        let parts = slots(&a, 10, &[0, 1, 2, 5, 6, 9]);
        let runs = plan_copies(&parts);
        assert_eq!(
            runs,
            vec![
                CopyRun { src: 0, parts: 3, dst_offset: 0, len: 30 },
                CopyRun { src: 3, parts: 2, dst_offset: 30, len: 20 },
                CopyRun { src: 5, parts: 1, dst_offset: 50, len: 10 },
            ]
        );
        check_invariants(&a, &parts, &runs);
    }

    #[test]
    fn empty_parts() {
        assert!(plan_copies(&[]).is_empty());
        let empty: &[u8] = &[];
        assert!(plan_copies(&[empty, empty]).is_empty());
        let a = arena(40);
        // Leading, middle and trailing empty parts: the middle one does not break the run.
        let parts = [empty, &a[0..10], &a[10..10], &a[10..20], empty, &a[30..40], empty];
        let runs = plan_copies(&parts);
        assert_eq!(
            runs,
            vec![
                CopyRun { src: 1, parts: 3, dst_offset: 0, len: 20 },
                CopyRun { src: 5, parts: 1, dst_offset: 20, len: 10 },
            ]
        );
        check_invariants(&a, &parts, &runs);
    }

    proptest! {
        #[test]
        fn runs_reproduce_the_concatenation(
            segs in proptest::collection::vec((0usize..4096, 0usize..300, any::<bool>()), 0..40)
        ) {
            // Each part either follows the previous one (adjacent) or starts anywhere.
            let a = arena(4096 + 300);
            let mut parts: Vec<&[u8]> = Vec::new();
            let mut next = 0usize;
            for (start, len, follow) in segs {
                let start = if follow && next + len <= a.len() { next } else { start };
                parts.push(&a[start..start + len]);
                next = start + len;
            }
            let runs = plan_copies(&parts);
            check_invariants(&a, &parts, &runs);
        }
    }
}
