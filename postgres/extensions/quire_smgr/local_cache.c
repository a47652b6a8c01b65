/*-------------------------------------------------------------------------
 *
 * local_cache.c
 *	  The compute's local page cache: a second level below shared buffers,
 *	  in shared memory, of quire.local_cache_size MB.
 *
 * A page enters when it is read from the pageserver, written out of
 * shared buffers, or extended with content; a later read of the block
 * takes it from here instead of sending a GetPage.  What is cached is
 * always the newest version this compute knows, because this compute is
 * the only writer of its timeline and every change of a page in shared
 * buffers reaches the storage manager before the buffer is dropped,
 * except where Postgres drops buffers on purpose, and there the blocks
 * are forgotten: truncation and unlink (their callbacks), a fork made anew
 * (create, which also covers a database dropped without per-relation
 * unlinks whose OIDs come back), and blocks zero-extended (a new empty
 * page may leave shared buffers clean, without a write).
 *
 * The cache serves only the tenant and timeline the postmaster started
 * with: a superuser session that points quire.timeline elsewhere reads
 * past it.
 *
 * A page read from the pageserver enters only if no entry is there and no
 * newer version was evicted meanwhile (local_cache_store_read): a read
 * outside the buffer pool, such as pg_prewarm's, can race an eviction.
 *
 * Layout: LOCAL_CACHE_PARTITIONS partitions by key hash, each owning a
 * fixed range of page slots, a shared hash from block to slot, a stack of
 * free slots and an LRU list, under its own LWLock.  Pages are copied in
 * and out under that lock (8 kB, about a microsecond), so a slot is never
 * read while it is being replaced.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "lib/ilist.h"
#include "miscadmin.h"
#include "storage/bufpage.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"

#include "caches.h"
#include "local_cache.h"
#include "remote.h"
#include "stats.h"

#define LOCAL_CACHE_PARTITIONS 16
#define TRANCHE "quire_smgr_local_cache"

int			quire_local_cache_mb = 0;

typedef struct LcKey
{
	RelFileLocator loc;
	ForkNumber	fork;
	BlockNumber block;
} LcKey;

typedef struct LcEntry
{
	LcKey		key;
	uint32		slot;
	dlist_node	lru;
} LcEntry;

typedef struct LcPartition
{
	LWLock	   *lock;
	dlist_head	lru;			/* least recently used first */
	uint32		first_slot;		/* slots [first_slot, first_slot + nslots) */
	uint32		nslots;
	uint32		nfree;			/* free slots on this partition's stack */
} LcPartition;

typedef struct LcShared
{
	LcPartition partitions[LOCAL_CACHE_PARTITIONS];
} LcShared;

static LcShared *shared = NULL;

static void store(RelFileLocator loc, ForkNumber fork, BlockNumber block, const void *buffer,
				  bool if_newest);
static HTAB *hashes[LOCAL_CACHE_PARTITIONS];
static uint32 *free_stack = NULL;	/* each partition's part is its stack */
static char *pages = NULL;
static char owner_tenant[64];
static char owner_timeline[64];

static uint64
total_slots(void)
{
	return (uint64) quire_local_cache_mb * (1024 * 1024 / BLCKSZ);
}

static uint32
partition_slots(int p)
{
	uint64		total = total_slots();
	uint64		start = total * p / LOCAL_CACHE_PARTITIONS;
	uint64		end = total * (p + 1) / LOCAL_CACHE_PARTITIONS;

	return (uint32) (end - start);
}

static Size
arrays_size(void)
{
	return add_size(mul_size(total_slots(), sizeof(uint32)),
					add_size(mul_size(total_slots(), BLCKSZ), PG_IO_ALIGN_SIZE));
}

void
local_cache_shmem_request(void)
{
	if (quire_local_cache_mb <= 0)
		return;
	RequestAddinShmemSpace(MAXALIGN(sizeof(LcShared)));
	RequestAddinShmemSpace(arrays_size());
	for (int p = 0; p < LOCAL_CACHE_PARTITIONS; p++)
		RequestAddinShmemSpace(hash_estimate_size(Max(partition_slots(p), 1), sizeof(LcEntry)));
	RequestNamedLWLockTranche(TRANCHE, LOCAL_CACHE_PARTITIONS);
}

void
local_cache_shmem_startup(void)
{
	bool		found;
	char	   *arrays;

	if (quire_local_cache_mb <= 0)
		return;
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("quire_smgr local cache", sizeof(LcShared), &found);
	arrays = ShmemInitStruct("quire_smgr local cache pages", arrays_size(), &found);
	free_stack = (uint32 *) arrays;
	pages = (char *) TYPEALIGN(PG_IO_ALIGN_SIZE, arrays + total_slots() * sizeof(uint32));
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche(TRANCHE);
		uint32		first = 0;

		for (int p = 0; p < LOCAL_CACHE_PARTITIONS; p++)
		{
			LcPartition *part = &shared->partitions[p];

			part->lock = &locks[p].lock;
			dlist_init(&part->lru);
			part->first_slot = first;
			part->nslots = partition_slots(p);
			part->nfree = part->nslots;
			for (uint32 i = 0; i < part->nslots; i++)
				free_stack[first + i] = first + i;
			first += part->nslots;
		}
	}
	for (int p = 0; p < LOCAL_CACHE_PARTITIONS; p++)
	{
		HASHCTL		info;
		char		name[64];
		long		size = Max(partition_slots(p), 1);

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(LcKey);
		info.entrysize = sizeof(LcEntry);
		snprintf(name, sizeof(name), "quire_smgr local cache %d", p);
		hashes[p] = ShmemInitHash(name, size, size, &info,
								  HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
local_cache_set_owner(const char *tenant, const char *timeline)
{
	strlcpy(owner_tenant, tenant ? tenant : "", sizeof(owner_tenant));
	strlcpy(owner_timeline, timeline ? timeline : "", sizeof(owner_timeline));
}

bool
local_cache_is_home(void)
{
	return strcmp(owner_tenant, quire_tenant_setting ? quire_tenant_setting : "") == 0 &&
		strcmp(owner_timeline, quire_timeline_setting ? quire_timeline_setting : "") == 0;
}

/* Whether this backend reads the timeline the cache holds. */
static bool
usable(void)
{
	return shared != NULL && local_cache_is_home();
}

static LcKey
make_key(RelFileLocator loc, ForkNumber fork, BlockNumber block)
{
	LcKey		key;

	memset(&key, 0, sizeof(key));
	key.loc = loc;
	key.fork = fork;
	key.block = block;
	return key;
}

static int
partition_of(const LcKey *key, uint32 *hash)
{
	*hash = hash_bytes((const unsigned char *) key, sizeof(*key));
	return (int) (*hash % LOCAL_CACHE_PARTITIONS);
}

static char *
slot_page(uint32 slot)
{
	return pages + (Size) slot * BLCKSZ;
}

/* Removes an entry; the caller holds the partition's lock. */
static void
remove_entry(int p, LcEntry *entry)
{
	LcPartition *part = &shared->partitions[p];
	uint32		slot = entry->slot;

	dlist_delete(&entry->lru);
	(void) hash_search(hashes[p], &entry->key, HASH_REMOVE, NULL);
	free_stack[part->first_slot + part->nfree] = slot;
	part->nfree++;
}

bool
local_cache_read(RelFileLocator loc, ForkNumber fork, BlockNumber block, void *buffer)
{
	LcKey		key;
	uint32		hash;
	int			p;
	LcEntry    *entry;

	if (!usable())
		return false;
	key = make_key(loc, fork, block);
	p = partition_of(&key, &hash);
	LWLockAcquire(shared->partitions[p].lock, LW_EXCLUSIVE);
	entry = hash_search_with_hash_value(hashes[p], &key, hash, HASH_FIND, NULL);
	if (entry != NULL)
	{
		memcpy(buffer, slot_page(entry->slot), BLCKSZ);
		dlist_move_tail(&shared->partitions[p].lru, &entry->lru);
	}
	LWLockRelease(shared->partitions[p].lock);
	stats_count(entry != NULL ? QC_LOCAL_HITS : QC_LOCAL_MISSES, 1);
	return entry != NULL;
}

bool
local_cache_contains(RelFileLocator loc, ForkNumber fork, BlockNumber block)
{
	LcKey		key;
	uint32		hash;
	int			p;
	bool		found;

	if (!usable())
		return false;
	key = make_key(loc, fork, block);
	p = partition_of(&key, &hash);
	LWLockAcquire(shared->partitions[p].lock, LW_SHARED);
	found = hash_search_with_hash_value(hashes[p], &key, hash, HASH_FIND, NULL) != NULL;
	LWLockRelease(shared->partitions[p].lock);
	return found;
}

void
local_cache_store(RelFileLocator loc, ForkNumber fork, BlockNumber block, const void *buffer)
{
	store(loc, fork, block, buffer, false);
}

void
local_cache_store_read(RelFileLocator loc, ForkNumber fork, BlockNumber block, const void *buffer)
{
	store(loc, fork, block, buffer, true);
}

/*
 * Puts a page in the cache.  A read's page (if_newest) enters only where
 * no entry is and its LSN is at least the block's last-written LSN, both
 * checked under the partition's lock: an eviction sets that LSN before it
 * stores, so either the read sees it, or the eviction's store comes after
 * the read's and replaces it.
 */
static void
store(RelFileLocator loc, ForkNumber fork, BlockNumber block, const void *buffer, bool if_newest)
{
	LcKey		key;
	uint32		hash;
	int			p;
	LcPartition *part;
	LcEntry    *entry;
	bool		evicted = false;

	if (!usable())
		return;
	key = make_key(loc, fork, block);
	p = partition_of(&key, &hash);
	part = &shared->partitions[p];
	if (part->nslots == 0)
		return;
	LWLockAcquire(part->lock, LW_EXCLUSIVE);
	entry = hash_search_with_hash_value(hashes[p], &key, hash, HASH_FIND, NULL);
	if (if_newest &&
		(entry != NULL || PageGetLSN((Page) buffer) < lwlsn_get(loc, fork, block)))
	{
		LWLockRelease(part->lock);
		return;
	}
	if (entry == NULL)
	{
		uint32		slot;
		bool		found;

		if (part->nfree == 0)
		{
			LcEntry    *victim = dlist_head_element(LcEntry, lru, &part->lru);

			remove_entry(p, victim);
			evicted = true;
		}
		part->nfree--;
		slot = free_stack[part->first_slot + part->nfree];
		entry = hash_search_with_hash_value(hashes[p], &key, hash, HASH_ENTER_NULL, &found);
		if (entry == NULL)
		{
			/* Cannot happen (entries never outnumber slots); keep the slot. */
			part->nfree++;
			LWLockRelease(part->lock);
			return;
		}
		entry->slot = slot;
		dlist_push_tail(&part->lru, &entry->lru);
	}
	else
		dlist_move_tail(&part->lru, &entry->lru);
	memcpy(slot_page(entry->slot), buffer, BLCKSZ);
	LWLockRelease(part->lock);
	stats_count(QC_LOCAL_STORES, 1);
	if (evicted)
		stats_count(QC_LOCAL_EVICTIONS, 1);
}

void
local_cache_forget_blocks(RelFileLocator loc, ForkNumber fork, BlockNumber block,
						  BlockNumber nblocks)
{
	if (shared == NULL)
		return;
	for (BlockNumber i = 0; i < nblocks; i++)
	{
		LcKey		key = make_key(loc, fork, block + i);
		uint32		hash;
		int			p = partition_of(&key, &hash);
		LcEntry    *entry;

		LWLockAcquire(shared->partitions[p].lock, LW_EXCLUSIVE);
		entry = hash_search_with_hash_value(hashes[p], &key, hash, HASH_FIND, NULL);
		if (entry != NULL)
			remove_entry(p, entry);
		LWLockRelease(shared->partitions[p].lock);
	}
}

void
local_cache_forget_fork(RelFileLocator loc, ForkNumber fork, BlockNumber from)
{
	if (shared == NULL)
		return;
	for (int p = 0; p < LOCAL_CACHE_PARTITIONS; p++)
	{
		HASH_SEQ_STATUS scan;
		LcEntry    *entry;

		LWLockAcquire(shared->partitions[p].lock, LW_EXCLUSIVE);
		if (hash_get_num_entries(hashes[p]) > 0)
		{
			hash_seq_init(&scan, hashes[p]);
			while ((entry = hash_seq_search(&scan)) != NULL)
			{
				if (!RelFileLocatorEquals(entry->key.loc, loc) ||
					(fork != InvalidForkNumber && entry->key.fork != fork) ||
					entry->key.block < from)
					continue;
				/* Removing the element just returned keeps the scan valid. */
				remove_entry(p, entry);
			}
		}
		LWLockRelease(shared->partitions[p].lock);
	}
}

void
local_cache_counts(uint64 *entries, uint64 *slots)
{
	*entries = 0;
	*slots = 0;
	if (shared == NULL)
		return;
	for (int p = 0; p < LOCAL_CACHE_PARTITIONS; p++)
	{
		LWLockAcquire(shared->partitions[p].lock, LW_SHARED);
		*entries += (uint64) hash_get_num_entries(hashes[p]);
		*slots += shared->partitions[p].nslots;
		LWLockRelease(shared->partitions[p].lock);
	}
}
