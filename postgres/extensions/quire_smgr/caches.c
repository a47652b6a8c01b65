/*-------------------------------------------------------------------------
 *
 * caches.c
 *	  The compute's two shared-memory caches: relation sizes and
 *	  last-written LSNs.
 *
 * The size cache is authoritative for forks this compute created or
 * extended: Postgres extends relations with zero pages that no WAL record
 * names until later, so the pageserver may not know those blocks yet.  An
 * entry made locally is therefore evicted only after a WAL message
 * ("quire.relsize", a logical message the pageserver's ingest reads)
 * records its size; its LSN becomes the fork's last-written LSN, so the
 * next remote Nblocks waits for it.  Entries learnt from the pageserver
 * are evicted freely.
 *
 * The last-written-LSN cache maps a block (or, with InvalidBlockNumber, a
 * fork's size) to an LSN at or after its last change; a read asks the
 * pageserver for a version not older than that.  Bounded: the oldest
 * entry is evicted and the highest LSN ever evicted stands for every block
 * not cached, which is conservative, never wrong.
 *
 * Each cache is a fixed-size shared hash under one LWLock, with a list in
 * the order entries were last set (the eviction order).  Lock order: the
 * size cache's lock, then the LSN cache's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "lib/ilist.h"
#include "miscadmin.h"
#include "replication/message.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"

#include "caches.h"

int			quire_relsize_cache_entries = 65536;
int			quire_lwlsn_cache_entries = 131072;

typedef struct RelsizeKey
{
	RelFileLocator loc;
	ForkNumber	fork;
} RelsizeKey;

typedef struct RelsizeEntry
{
	RelsizeKey	key;
	BlockNumber nblocks;
	bool		exists;
	bool		local;			/* made by this compute: log before evicting */
	dlist_node	order;
} RelsizeEntry;

typedef struct LwlsnKey
{
	RelFileLocator loc;
	ForkNumber	fork;
	BlockNumber block;
} LwlsnKey;

typedef struct LwlsnEntry
{
	LwlsnKey	key;
	XLogRecPtr	lsn;
	dlist_node	order;
} LwlsnEntry;

typedef struct CachesShared
{
	LWLock	   *relsize_lock;
	LWLock	   *lwlsn_lock;
	dlist_head	relsize_order;
	dlist_head	lwlsn_order;
	uint64		relsize_count;
	uint64		lwlsn_count;
	uint64		relsize_evictions;
	uint64		relsize_messages;
	uint64		lwlsn_evictions;
	XLogRecPtr	lwlsn_max_evicted;
} CachesShared;

static CachesShared *shared = NULL;
static HTAB *relsize_hash = NULL;
static HTAB *lwlsn_hash = NULL;

#define TRANCHE "quire_smgr_caches"

void
caches_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(CachesShared)));
	RequestAddinShmemSpace(hash_estimate_size(quire_relsize_cache_entries, sizeof(RelsizeEntry)));
	RequestAddinShmemSpace(hash_estimate_size(quire_lwlsn_cache_entries, sizeof(LwlsnEntry)));
	RequestNamedLWLockTranche(TRANCHE, 2);
}

void
caches_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("quire_smgr caches", sizeof(CachesShared), &found);
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche(TRANCHE);

		memset(shared, 0, sizeof(*shared));
		shared->relsize_lock = &locks[0].lock;
		shared->lwlsn_lock = &locks[1].lock;
		dlist_init(&shared->relsize_order);
		dlist_init(&shared->lwlsn_order);
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(RelsizeKey);
	info.entrysize = sizeof(RelsizeEntry);
	relsize_hash = ShmemInitHash("quire_smgr relation sizes",
								 quire_relsize_cache_entries, quire_relsize_cache_entries,
								 &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(LwlsnKey);
	info.entrysize = sizeof(LwlsnEntry);
	lwlsn_hash = ShmemInitHash("quire_smgr last-written LSNs",
							   quire_lwlsn_cache_entries, quire_lwlsn_cache_entries,
							   &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	LWLockRelease(AddinShmemInitLock);
}

static RelsizeKey
relsize_key(RelFileLocator loc, ForkNumber fork)
{
	RelsizeKey	key;

	memset(&key, 0, sizeof(key));
	key.loc = loc;
	key.fork = fork;
	return key;
}

static LwlsnKey
lwlsn_key(RelFileLocator loc, ForkNumber fork, BlockNumber block)
{
	LwlsnKey	key;

	memset(&key, 0, sizeof(key));
	key.loc = loc;
	key.fork = fork;
	key.block = block;
	return key;
}

static void
put_u32_le(char *out, uint32 value)
{
	out[0] = (char) (value & 0xFF);
	out[1] = (char) ((value >> 8) & 0xFF);
	out[2] = (char) ((value >> 16) & 0xFF);
	out[3] = (char) ((value >> 24) & 0xFF);
}

/*
 * Writes the WAL message recording a fork's size (docs/quire_smgr.md);
 * returns its LSN, or InvalidXLogRecPtr if WAL cannot be written here.
 */
static XLogRecPtr
log_relsize(const RelsizeKey *key, BlockNumber nblocks)
{
	char		payload[QUIRE_RELSIZE_MESSAGE_BYTES];

	if (!XLogInsertAllowed())
		return InvalidXLogRecPtr;
	memset(payload, 0, sizeof(payload));
	put_u32_le(payload, key->loc.spcOid);
	put_u32_le(payload + 4, key->loc.dbOid);
	put_u32_le(payload + 8, key->loc.relNumber);
	payload[12] = (char) key->fork;
	put_u32_le(payload + 16, nblocks);
	return LogLogicalMessage(QUIRE_RELSIZE_MESSAGE_PREFIX, payload, sizeof(payload), false, false);
}

/* Makes room for one entry in the size cache; its lock is held exclusive. */
static void
relsize_make_room(void)
{
	while (shared->relsize_count >= (uint64) quire_relsize_cache_entries &&
		   !dlist_is_empty(&shared->relsize_order))
	{
		RelsizeEntry *victim = dlist_head_element(RelsizeEntry, order, &shared->relsize_order);
		RelsizeKey	key = victim->key;

		if (victim->local && victim->exists)
		{
			XLogRecPtr	lsn = log_relsize(&key, victim->nblocks);

			if (lsn != InvalidXLogRecPtr)
			{
				lwlsn_set(key.loc, key.fork, InvalidBlockNumber, lsn);
				shared->relsize_messages++;
			}
		}
		dlist_delete(&victim->order);
		hash_search(relsize_hash, &key, HASH_REMOVE, NULL);
		shared->relsize_count--;
		shared->relsize_evictions++;
	}
}

/* The entry for key, made if missing; the size cache's lock is held exclusive. */
static RelsizeEntry *
relsize_enter(const RelsizeKey *key)
{
	bool		found;
	RelsizeEntry *entry = hash_search(relsize_hash, key, HASH_FIND, NULL);

	if (entry != NULL)
	{
		dlist_delete(&entry->order);
		dlist_push_tail(&shared->relsize_order, &entry->order);
		return entry;
	}
	relsize_make_room();
	entry = hash_search(relsize_hash, key, HASH_ENTER_NULL, &found);
	if (entry == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("quire_smgr's relation-size cache is out of shared memory")));
	entry->nblocks = 0;
	entry->exists = false;
	entry->local = false;
	dlist_push_tail(&shared->relsize_order, &entry->order);
	shared->relsize_count++;
	return entry;
}

RelsizeState
relsize_get(RelFileLocator loc, ForkNumber fork, BlockNumber *nblocks)
{
	RelsizeKey	key = relsize_key(loc, fork);
	RelsizeEntry *entry;
	RelsizeState state = RELSIZE_UNKNOWN;

	LWLockAcquire(shared->relsize_lock, LW_SHARED);
	entry = hash_search(relsize_hash, &key, HASH_FIND, NULL);
	if (entry != NULL)
	{
		state = entry->exists ? RELSIZE_KNOWN : RELSIZE_MISSING;
		*nblocks = entry->nblocks;
	}
	LWLockRelease(shared->relsize_lock);
	return state;
}

void
relsize_set(RelFileLocator loc, ForkNumber fork, BlockNumber nblocks, bool local)
{
	RelsizeKey	key = relsize_key(loc, fork);
	RelsizeEntry *entry;

	LWLockAcquire(shared->relsize_lock, LW_EXCLUSIVE);
	entry = hash_search(relsize_hash, &key, HASH_FIND, NULL);
	/* What another backend made meanwhile is newer than a remote answer. */
	if (entry != NULL && !local)
	{
		LWLockRelease(shared->relsize_lock);
		return;
	}
	entry = relsize_enter(&key);
	entry->exists = true;
	entry->nblocks = nblocks;
	entry->local = entry->local || local;
	LWLockRelease(shared->relsize_lock);
}

void
relsize_set_missing(RelFileLocator loc, ForkNumber fork)
{
	RelsizeKey	key = relsize_key(loc, fork);
	RelsizeEntry *entry;

	LWLockAcquire(shared->relsize_lock, LW_EXCLUSIVE);
	entry = hash_search(relsize_hash, &key, HASH_FIND, NULL);
	/* What another backend made meanwhile is newer than a remote answer. */
	if (entry == NULL)
	{
		entry = relsize_enter(&key);
		entry->exists = false;
		entry->nblocks = 0;
	}
	LWLockRelease(shared->relsize_lock);
}

bool
relsize_extend(RelFileLocator loc, ForkNumber fork, BlockNumber nblocks)
{
	RelsizeKey	key = relsize_key(loc, fork);
	RelsizeEntry *entry;
	bool		cached = false;

	LWLockAcquire(shared->relsize_lock, LW_EXCLUSIVE);
	entry = hash_search(relsize_hash, &key, HASH_FIND, NULL);
	if (entry != NULL && entry->exists)
	{
		if (nblocks > entry->nblocks)
			entry->nblocks = nblocks;
		entry->local = true;
		dlist_delete(&entry->order);
		dlist_push_tail(&shared->relsize_order, &entry->order);
		cached = true;
	}
	LWLockRelease(shared->relsize_lock);
	return cached;
}

void
relsize_forget(RelFileLocator loc, ForkNumber fork)
{
	RelsizeKey	key = relsize_key(loc, fork);
	RelsizeEntry *entry;

	LWLockAcquire(shared->relsize_lock, LW_EXCLUSIVE);
	entry = hash_search(relsize_hash, &key, HASH_FIND, NULL);
	if (entry != NULL)
	{
		dlist_delete(&entry->order);
		hash_search(relsize_hash, &key, HASH_REMOVE, NULL);
		shared->relsize_count--;
	}
	LWLockRelease(shared->relsize_lock);
}

XLogRecPtr
lwlsn_get(RelFileLocator loc, ForkNumber fork, BlockNumber block)
{
	LwlsnKey	key = lwlsn_key(loc, fork, block);
	LwlsnEntry *entry;
	XLogRecPtr	lsn;

	LWLockAcquire(shared->lwlsn_lock, LW_SHARED);
	entry = hash_search(lwlsn_hash, &key, HASH_FIND, NULL);
	lsn = entry != NULL ? entry->lsn : shared->lwlsn_max_evicted;
	LWLockRelease(shared->lwlsn_lock);
	return lsn;
}

void
lwlsn_set(RelFileLocator loc, ForkNumber fork, BlockNumber block, XLogRecPtr lsn)
{
	LwlsnKey	key = lwlsn_key(loc, fork, block);
	LwlsnEntry *entry;
	bool		found;

	LWLockAcquire(shared->lwlsn_lock, LW_EXCLUSIVE);
	entry = hash_search(lwlsn_hash, &key, HASH_FIND, NULL);
	if (entry != NULL)
	{
		if (lsn > entry->lsn)
			entry->lsn = lsn;
		dlist_delete(&entry->order);
		dlist_push_tail(&shared->lwlsn_order, &entry->order);
		LWLockRelease(shared->lwlsn_lock);
		return;
	}
	/* Below the eviction floor an entry would say nothing new. */
	if (lsn <= shared->lwlsn_max_evicted)
	{
		LWLockRelease(shared->lwlsn_lock);
		return;
	}
	while (shared->lwlsn_count >= (uint64) quire_lwlsn_cache_entries &&
		   !dlist_is_empty(&shared->lwlsn_order))
	{
		LwlsnEntry *victim = dlist_head_element(LwlsnEntry, order, &shared->lwlsn_order);
		LwlsnKey	victim_key = victim->key;

		if (victim->lsn > shared->lwlsn_max_evicted)
			shared->lwlsn_max_evicted = victim->lsn;
		dlist_delete(&victim->order);
		hash_search(lwlsn_hash, &victim_key, HASH_REMOVE, NULL);
		shared->lwlsn_count--;
		shared->lwlsn_evictions++;
	}
	entry = hash_search(lwlsn_hash, &key, HASH_ENTER_NULL, &found);
	if (entry == NULL)
	{
		/* No room after all: raising the floor is still correct. */
		if (lsn > shared->lwlsn_max_evicted)
			shared->lwlsn_max_evicted = lsn;
		LWLockRelease(shared->lwlsn_lock);
		return;
	}
	entry->lsn = lsn;
	dlist_push_tail(&shared->lwlsn_order, &entry->order);
	shared->lwlsn_count++;
	LWLockRelease(shared->lwlsn_lock);
}

void
caches_counts(CacheCounts *out)
{
	LWLockAcquire(shared->relsize_lock, LW_SHARED);
	out->relsize_entries = shared->relsize_count;
	out->relsize_evictions = shared->relsize_evictions;
	out->relsize_messages = shared->relsize_messages;
	LWLockRelease(shared->relsize_lock);
	LWLockAcquire(shared->lwlsn_lock, LW_SHARED);
	out->lwlsn_entries = shared->lwlsn_count;
	out->lwlsn_evictions = shared->lwlsn_evictions;
	out->lwlsn_max_evicted = shared->lwlsn_max_evicted;
	LWLockRelease(shared->lwlsn_lock);
}
