/*-------------------------------------------------------------------------
 *
 * caches.h
 *	  The compute's shared-memory caches of relation sizes and of
 *	  last-written LSNs (caches.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUIRE_CACHES_H
#define QUIRE_CACHES_H

#include "access/xlogdefs.h"
#include "common/relpath.h"
#include "storage/block.h"
#include "storage/relfilelocator.h"

/* Entries of each cache, set at postmaster start (quire.*_cache_entries). */
extern int	quire_relsize_cache_entries;
extern int	quire_lwlsn_cache_entries;

/* The prefix of the WAL message that records a relation size. */
#define QUIRE_RELSIZE_MESSAGE_PREFIX "quire.relsize"
#define QUIRE_RELSIZE_MESSAGE_BYTES 20

extern void caches_shmem_request(void);
extern void caches_shmem_startup(void);

/*
 * What the size cache knows of a fork: nothing (not cached), that it does
 * not exist, or its size.
 */
typedef enum RelsizeState
{
	RELSIZE_UNKNOWN,
	RELSIZE_MISSING,
	RELSIZE_KNOWN,
} RelsizeState;

extern RelsizeState relsize_get(RelFileLocator loc, ForkNumber fork, BlockNumber *nblocks);

/*
 * Sets a fork's size.  local says whether this compute made the size (a
 * create, a truncation), which the pageserver may not know yet: such an
 * entry is written to WAL before it is evicted.  A size the pageserver
 * answered (local false) never replaces an entry already there, which
 * another backend may have made since the question was asked.
 */
extern void relsize_set(RelFileLocator loc, ForkNumber fork, BlockNumber nblocks, bool local);

/* Records that the fork does not exist (a pageserver answer; same rule). */
extern void relsize_set_missing(RelFileLocator loc, ForkNumber fork);

/*
 * Raises a cached fork's size to at least nblocks (an extension by this
 * compute); false if the fork is not cached, when the caller must find its
 * size first.
 */
extern bool relsize_extend(RelFileLocator loc, ForkNumber fork, BlockNumber nblocks);

/* Forgets a fork (it was unlinked). */
extern void relsize_forget(RelFileLocator loc, ForkNumber fork);

/*
 * The last-written LSN of a block, or of a fork's size and existence with
 * block InvalidBlockNumber: an LSN at or after the last change of it.
 * A block not cached gets the highest LSN the cache ever evicted, which is
 * never lower than the truth.
 */
extern XLogRecPtr lwlsn_get(RelFileLocator loc, ForkNumber fork, BlockNumber block);
extern void lwlsn_set(RelFileLocator loc, ForkNumber fork, BlockNumber block, XLogRecPtr lsn);

/* Counts for quire_smgr_stats(). */
typedef struct CacheCounts
{
	uint64		relsize_entries;
	uint64		relsize_evictions;
	uint64		relsize_messages;
	uint64		lwlsn_entries;
	uint64		lwlsn_evictions;
	XLogRecPtr	lwlsn_max_evicted;
} CacheCounts;

extern void caches_counts(CacheCounts *out);

#endif							/* QUIRE_CACHES_H */
