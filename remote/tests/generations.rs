//! Generation claims against both backends: claimers on two separate
//! runtimes (two pageservers) racing for the same tenant shard each win
//! distinct numbers, every number is won exactly once (its object holds
//! the winner's name), and a generation learns it was superseded.

mod support;

use std::collections::BTreeMap;

use quire_remote::generation::GenerationRecord;
use quire_remote::{
    CheckGeneration, ClaimGeneration, Generation, GenerationStatus, Get, List, TenantShard,
};
use support::{Backend, block_on, start};

#[test]
fn concurrent_claims_win_distinct_numbers() {
    const CLAIMS_PER_SIDE: usize = 6;
    for backend in Backend::both() {
        let name = backend.name();
        let left = start(backend.config());
        let right = start(backend.config());
        let shard = TenantShard::unsharded([9; 16]);
        let claim = |storage: &quire_remote::RemoteStorage, holder: String| {
            let storage = storage.clone();
            std::thread::spawn(move || {
                let generation = block_on(storage.call(ClaimGeneration {
                    shard,
                    holder: holder.clone(),
                }))
                .unwrap_or_else(|e| panic!("{holder}: {e}"));
                (generation, holder)
            })
        };
        let claimers: Vec<_> = (0..CLAIMS_PER_SIDE)
            .flat_map(|n| {
                [
                    claim(&left, format!("left-{n}")),
                    claim(&right, format!("right-{n}")),
                ]
            })
            .collect();
        let mut won: BTreeMap<Generation, String> = BTreeMap::new();
        for claimer in claimers {
            let (generation, holder) = claimer.join().unwrap();
            if let Some(other) = won.insert(generation, holder.clone()) {
                panic!("{name}: {generation} won by both {other} and {holder}");
            }
        }
        let expected: Vec<u32> = (1..=u32::try_from(2 * CLAIMS_PER_SIDE).unwrap()).collect();
        assert_eq!(
            won.keys().map(|g| g.get()).collect::<Vec<_>>(),
            expected,
            "{name}: numbers won"
        );
        // Each number's object exists once and names its winner.
        let objects = block_on(left.call(List {
            prefix: shard.generations_prefix(),
        }))
        .unwrap();
        assert_eq!(objects.len(), won.len(), "{name}: {objects:?}");
        for (generation, holder) in &won {
            let bytes = block_on(left.call(Get {
                key: shard.generation_key(*generation),
                max_bytes: 1024,
            }))
            .unwrap();
            let record = GenerationRecord::decode(&bytes).unwrap();
            assert_eq!(
                (&record.generation, &record.holder),
                (generation, holder),
                "{name}"
            );
        }
        // Lost races are counted as retries of the claim.
        let lost = left.metrics().retries_of("claim_generation")
            + right.metrics().retries_of("claim_generation");
        eprintln!("{name}: {lost} claims lost to a concurrent claimer and retried");

        let highest = *won.keys().last().unwrap();
        let check =
            |generation| block_on(right.call(CheckGeneration { shard, generation })).unwrap();
        assert_eq!(check(highest), GenerationStatus::Current, "{name}");
        assert_eq!(
            check(Generation::new(3).unwrap()),
            GenerationStatus::Superseded(highest),
            "{name}"
        );
        // Another shard of the same tenant has generations of its own.
        let other = TenantShard {
            number: 1,
            count: 2,
            ..shard
        };
        let first = block_on(left.call(ClaimGeneration {
            shard: other,
            holder: "left".to_owned(),
        }))
        .unwrap();
        assert_eq!(first, Generation::FIRST, "{name}");
        left.shutdown();
        right.shutdown();
    }
}

#[test]
fn a_foreign_name_among_generations_stops_a_claim() {
    for backend in Backend::both() {
        let name = backend.name();
        let storage = start(backend.config());
        let shard = TenantShard::unsharded([4; 16]);
        block_on(storage.call(quire_remote::PutBytes {
            key: format!("{}0000000A", shard.generations_prefix()),
            bytes: bytes::Bytes::from_static(b"?"),
            mode: quire_remote::WriteMode::Overwrite,
        }))
        .unwrap();
        let error = block_on(storage.call(ClaimGeneration {
            shard,
            holder: "x".to_owned(),
        }))
        .unwrap_err();
        assert!(
            matches!(error, quire_remote::RemoteError::Corrupt { .. }),
            "{name}: {error}"
        );
        storage.shutdown();
    }
}
