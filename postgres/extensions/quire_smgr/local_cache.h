/*-------------------------------------------------------------------------
 *
 * local_cache.h
 *	  The compute's local page cache (local_cache.c): pages that left
 *	  shared buffers, kept in shared memory so a later read needs no
 *	  GetPage.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUIRE_LOCAL_CACHE_H
#define QUIRE_LOCAL_CACHE_H

#include "common/relpath.h"
#include "storage/block.h"
#include "storage/relfilelocator.h"

/* Its size in MB (quire.local_cache_size, set at postmaster start; 0 = off). */
extern int	quire_local_cache_mb;

extern void local_cache_shmem_request(void);
extern void local_cache_shmem_startup(void);

/* Notes the tenant and timeline the cache holds pages of (at preload). */
extern void local_cache_set_owner(const char *tenant, const char *timeline);

/*
 * Whether this backend's quire.tenant and quire.timeline are the ones the
 * postmaster started with (its home timeline).
 */
extern bool local_cache_is_home(void);

/* Copies the cached page into buffer; false if it is not cached. */
extern bool local_cache_read(RelFileLocator loc, ForkNumber fork, BlockNumber block, void *buffer);

/* Whether a block is cached (a prefetch of it would be wasted). */
extern bool local_cache_contains(RelFileLocator loc, ForkNumber fork, BlockNumber block);

/* Caches a page: the newest version of the block this compute knows. */
extern void local_cache_store(RelFileLocator loc, ForkNumber fork, BlockNumber block,
							  const void *buffer);

/*
 * Caches a page just read from the pageserver, unless the block is cached
 * already or its last-written LSN is above the page's: a read outside the
 * buffer pool (pg_prewarm's read mode) may race an eviction of a newer
 * version, which must win.
 */
extern void local_cache_store_read(RelFileLocator loc, ForkNumber fork, BlockNumber block,
								   const void *buffer);

/* Drops nblocks blocks from block on. */
extern void local_cache_forget_blocks(RelFileLocator loc, ForkNumber fork, BlockNumber block,
									  BlockNumber nblocks);

/*
 * Drops every block of a fork from block on (InvalidForkNumber: of every
 * fork): a truncation, an unlink, a fork made anew.
 */
extern void local_cache_forget_fork(RelFileLocator loc, ForkNumber fork, BlockNumber from);

/* Pages cached now and slots in all, for quire_smgr_stats(). */
extern void local_cache_counts(uint64 *entries, uint64 *slots);

#endif							/* QUIRE_LOCAL_CACHE_H */
