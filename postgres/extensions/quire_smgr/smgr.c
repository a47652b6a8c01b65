/*-------------------------------------------------------------------------
 *
 * smgr.c
 *	  quire_smgr's storage manager: permanent relations read from the
 *	  pageserver, temp and unlogged ones left on md.c.
 *
 * Nothing is ever written to the pageserver: it rebuilds every page from
 * the WAL the safekeepers hold.  So an evicted page goes only to the local
 * page cache (local_cache.c), which also keeps pages read and extended;
 * a read looks there first.  What this module must get right is which
 * version a read that misses it asks the pageserver for:
 *
 * - Each read sends not_modified_since = the block's last-written LSN
 *   (caches.c), at least the page LSN of its last eviction and never
 *   below the last checkpoint's redo pointer (so never below the LSN this
 *   compute started at), and asks for the latest version; the WAL up to
 *   it is flushed first, since the pageserver can only have WAL this
 *   compute flushed.
 * - A page whose changes no WAL record holds (an FSM page; a page with LSN
 *   0 or GiST's build LSN 1, as index builds leave before they log the
 *   whole index) is WAL-logged as a full-page image when evicted, except
 *   during the shutdown checkpoint, which must be the last record.
 * - Sizes come from the shared size cache, authoritative for forks this
 *   compute created or extended; blocks inside that size the pageserver
 *   has never seen (zero pages Postgres extended with) read as zeros.
 * - Truncations and unlinks raise the fork's own last-written LSN, so no
 *   read of its blocks is served from before them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "access/gist.h"
#include "access/xlog.h"
#include "access/xloginsert.h"
#include "catalog/pg_class.h"
#include "common/relpath.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "storage/bufpage.h"
#include "storage/md.h"
#include "storage/smgr.h"
#include "utils/memutils.h"

#include "backpressure.h"
#include "caches.h"
#include "local_cache.h"
#include "remote.h"
#include "quire_smgr.h"
#include "stats.h"

static void quire_open(SMgrRelation reln);
static void quire_close(SMgrRelation reln, ForkNumber forknum);
static void quire_create(SMgrRelation reln, ForkNumber forknum, bool isRedo);
static bool quire_exists(SMgrRelation reln, ForkNumber forknum);
static void quire_unlink(RelFileLocatorBackend rlocator, ForkNumber forknum, bool isRedo);
static void quire_extend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
						 const void *buffer, bool skipFsync);
static void quire_zeroextend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
							 int nblocks, bool skipFsync);
static bool quire_prefetch(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
						   int nblocks);
static void quire_readv(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
						void **buffers, BlockNumber nblocks);
static void quire_writev(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
						 const void **buffers, BlockNumber nblocks, bool skipFsync);
static void quire_writeback(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
							BlockNumber nblocks);
static BlockNumber quire_nblocks(SMgrRelation reln, ForkNumber forknum);
static void quire_truncate(SMgrRelation reln, ForkNumber forknum, BlockNumber old_blocks,
						   BlockNumber nblocks);
static void quire_immedsync(SMgrRelation reln, ForkNumber forknum);
static void quire_registersync(SMgrRelation reln, ForkNumber forknum);

static const f_smgr quire_smgr_table = {
	.smgr_init = NULL,
	.smgr_shutdown = NULL,
	.smgr_open = quire_open,
	.smgr_close = quire_close,
	.smgr_create = quire_create,
	.smgr_exists = quire_exists,
	.smgr_unlink = quire_unlink,
	.smgr_extend = quire_extend,
	.smgr_zeroextend = quire_zeroextend,
	.smgr_prefetch = quire_prefetch,
	.smgr_readv = quire_readv,
	.smgr_writev = quire_writev,
	.smgr_writeback = quire_writeback,
	.smgr_nblocks = quire_nblocks,
	.smgr_truncate = quire_truncate,
	.smgr_immedsync = quire_immedsync,
	.smgr_registersync = quire_registersync,
};

/*
 * The storage manager of a relation: md.c for temp relations (a backend
 * number) and unlogged ones, ours for permanent ones.  Where the caller
 * does not know the persistence, an unlogged relation is told by its init
 * fork, which always exists on local disk.
 */
const f_smgr *
quire_choose_smgr(RelFileLocatorBackend rlocator, char relpersistence)
{
	char	   *path;
	bool		unlogged;

	if (rlocator.backend != INVALID_PROC_NUMBER)
		return NULL;
	if (relpersistence == RELPERSISTENCE_PERMANENT)
		return &quire_smgr_table;
	if (relpersistence != 0)
		return NULL;
	path = relpathbackend(rlocator.locator, INVALID_PROC_NUMBER, INIT_FORKNUM);
	unlogged = access(path, F_OK) == 0;
	pfree(path);
	return unlogged ? NULL : &quire_smgr_table;
}

static const char *
fork_label(RelFileLocator loc, ForkNumber fork)
{
	return relpathperm(loc, fork);
}

/*
 * The LSN a read of block (InvalidBlockNumber: the size) must not predate.
 * Never below the last checkpoint's redo pointer, which is at or after the
 * LSN this compute started at: a page an earlier compute changed last is
 * in no cache here, and a pageserver that restarted may be behind.
 */
static XLogRecPtr
read_lsn(RelFileLocator loc, ForkNumber fork, BlockNumber block)
{
	XLogRecPtr	lsn = lwlsn_get(loc, fork, InvalidBlockNumber);

	if (block != InvalidBlockNumber)
		lsn = Max(lsn, lwlsn_get(loc, fork, block));
	if (!RecoveryInProgress())
		lsn = Max(lsn, GetRedoRecPtr());
	return lsn;
}

/* The pageserver can only have WAL this compute flushed. */
static void
flush_wal_to(XLogRecPtr lsn)
{
	if (lsn != InvalidXLogRecPtr && !RecoveryInProgress() && lsn > GetFlushRecPtr(NULL))
		XLogFlush(lsn);
}

/*
 * The fork's size from the cache, asking the pageserver when it is not
 * cached; false if the fork does not exist.
 */
static bool
fork_size(RelFileLocator loc, ForkNumber fork, BlockNumber *nblocks)
{
	XLogRecPtr	lsn;

	for (;;)
	{
		switch (relsize_get(loc, fork, nblocks))
		{
			case RELSIZE_KNOWN:
				return true;
			case RELSIZE_MISSING:
				return false;
			case RELSIZE_UNKNOWN:
				break;
		}
		lsn = read_lsn(loc, fork, InvalidBlockNumber);
		flush_wal_to(lsn);
		if (remote_nblocks(loc, fork, lsn, nblocks))
			relsize_set(loc, fork, *nblocks, false);
		else
			relsize_set_missing(loc, fork);
		/* Read the cache again: another backend may have set it meanwhile. */
	}
}

static void
quire_open(SMgrRelation reln)
{
}

static void
quire_close(SMgrRelation reln, ForkNumber forknum)
{
}

static void
quire_create(SMgrRelation reln, ForkNumber forknum, bool isRedo)
{
	RelFileLocator loc = reln->smgr_rlocator.locator;
	BlockNumber nblocks;

	/* Creating a fork that exists keeps it, as md.c does in redo. */
	if (relsize_get(loc, forknum, &nblocks) != RELSIZE_KNOWN)
	{
		relsize_set(loc, forknum, 0, true);
		local_cache_forget_fork(loc, forknum, 0);
	}
}

static bool
quire_exists(SMgrRelation reln, ForkNumber forknum)
{
	BlockNumber nblocks;

	return fork_size(reln->smgr_rlocator.locator, forknum, &nblocks);
}

static void
quire_unlink(RelFileLocatorBackend rlocator, ForkNumber forknum, bool isRedo)
{
	XLogRecPtr	lsn = RecoveryInProgress() ? InvalidXLogRecPtr : GetXLogInsertRecPtr();

	for (ForkNumber fork = 0; fork <= MAX_FORKNUM; fork++)
	{
		if (forknum != InvalidForkNumber && fork != forknum)
			continue;
		relsize_forget(rlocator.locator, fork);
		if (lsn != InvalidXLogRecPtr)
			lwlsn_set(rlocator.locator, fork, InvalidBlockNumber, lsn);
	}
	local_cache_forget_fork(rlocator.locator, forknum, 0);
	remote_forget_prefetched(rlocator.locator);
}

/* Whether writing the WAL a page lacks would break the shutdown checkpoint. */
static bool
shutdown_checkpoint_running(void)
{
	return MyBackendType == B_CHECKPOINTER && ShutdownRequestPending;
}

/*
 * The LSN to remember for a page leaving this compute: its own, or that of
 * the full-page image written now when no WAL holds its content.
 */
static XLogRecPtr
page_leaving(RelFileLocator loc, ForkNumber fork, BlockNumber block, const void *buffer)
{
	Page		page = (Page) buffer;
	XLogRecPtr	lsn = PageGetLSN(page);
	bool		unlogged_content;
	PGIOAlignedBlock copy;

	if (PageIsNew(page))
		return InvalidXLogRecPtr;
	unlogged_content = fork == FSM_FORKNUM || lsn <= GistBuildLSN;
	if (!unlogged_content)
		return lsn;
	if (!XLogInsertAllowed() || shutdown_checkpoint_running())
	{
		/* Only an FSM page or a never-finished build can be here; both are hints. */
		elog(DEBUG1, "quire_smgr: %s block %u leaves without WAL at shutdown",
			 fork_label(loc, fork), block);
		return lsn > GistBuildLSN ? lsn : InvalidXLogRecPtr;
	}
	/* log_newpage sets the page's LSN: on a copy, never on the shared buffer. */
	memcpy(copy.data, page, BLCKSZ);
	lsn = log_newpage(&loc, fork, block, copy.data, fork == MAIN_FORKNUM);
	stats_count(QC_FPI_ON_EVICT, 1);
	return lsn;
}

static void
quire_extend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum, const void *buffer,
			 bool skipFsync)
{
	RelFileLocator loc = reln->smgr_rlocator.locator;
	BlockNumber nblocks;
	XLogRecPtr	lsn;

	if (blocknum == InvalidBlockNumber)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cannot extend %s beyond %u blocks", fork_label(loc, forknum),
						InvalidBlockNumber)));
	/* A bulk load is one transaction: it waits here, not only at commit. */
	backpressure_wait();
	if (!fork_size(loc, forknum, &nblocks))
		relsize_set(loc, forknum, 0, true);
	lsn = page_leaving(loc, forknum, blocknum, buffer);
	if (lsn != InvalidXLogRecPtr)
		lwlsn_set(loc, forknum, blocknum, lsn);
	local_cache_store(loc, forknum, blocknum, buffer);
	while (!relsize_extend(loc, forknum, blocknum + 1))
		(void) fork_size(loc, forknum, &nblocks);
}

static void
quire_zeroextend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum, int nblocks,
				 bool skipFsync)
{
	RelFileLocator loc = reln->smgr_rlocator.locator;
	BlockNumber size;

	if ((uint64) blocknum + (uint64) nblocks >= (uint64) InvalidBlockNumber)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cannot extend %s beyond %u blocks", fork_label(loc, forknum),
						InvalidBlockNumber)));
	backpressure_wait();
	if (!fork_size(loc, forknum, &size))
		relsize_set(loc, forknum, 0, true);
	/* A new empty page may leave shared buffers clean, never written. */
	local_cache_forget_blocks(loc, forknum, blocknum, (BlockNumber) nblocks);
	while (!relsize_extend(loc, forknum, blocknum + nblocks))
		(void) fork_size(loc, forknum, &size);
}

static bool
quire_prefetch(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum, int nblocks)
{
	RelFileLocator loc = reln->smgr_rlocator.locator;

	for (int i = 0; i < nblocks; i++)
	{
		XLogRecPtr	lsn;

		if (local_cache_contains(loc, forknum, blocknum + i))
			continue;
		lsn = read_lsn(loc, forknum, blocknum + i);
		flush_wal_to(lsn);
		remote_prefetch(loc, forknum, blocknum + i, lsn);
	}
	return true;
}

/* A block the pageserver does not have: zeros if this compute extended over it. */
static void
read_missing_block(RelFileLocator loc, ForkNumber fork, BlockNumber block, void *buffer)
{
	BlockNumber nblocks;

	if (fork_size(loc, fork, &nblocks) && block < nblocks)
	{
		MemSet(buffer, 0, BLCKSZ);
		stats_count(QC_ZERO_PAGES, 1);
		return;
	}
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("could not read block %u in %s: the pageserver has no such block",
					block, fork_label(loc, fork))));
}

static void
quire_readv(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum, void **buffers,
			BlockNumber nblocks)
{
	RelFileLocator loc = reln->smgr_rlocator.locator;
	XLogRecPtr	lsns[PS_BLOCKS_PER_REQUEST_MAX];
	static char *scratch = NULL;
	BlockNumber done = 0;

	if (scratch == NULL)
		scratch = MemoryContextAllocAligned(TopMemoryContext,
											(Size) PS_BLOCKS_PER_REQUEST_MAX * BLCKSZ,
											PG_IO_ALIGN_SIZE, 0);
	while (done < nblocks)
	{
		BlockNumber first = blocknum + done;
		uint32		run;
		XLogRecPtr	run_lsn = InvalidXLogRecPtr;

		/* What the local cache or a prefetch holds needs no request. */
		if (local_cache_read(loc, forknum, first, buffers[done]))
		{
			done++;
			continue;
		}
		lsns[0] = read_lsn(loc, forknum, first);
		if (remote_take_prefetched(loc, forknum, first, lsns[0], buffers[done]))
		{
			local_cache_store_read(loc, forknum, first, buffers[done]);
			done++;
			continue;
		}
		run = remote_run_limit(loc, first, Min(nblocks - done, PS_BLOCKS_PER_REQUEST_MAX));
		for (uint32 i = 0; i < run; i++)
		{
			if (i > 0)
				lsns[i] = read_lsn(loc, forknum, first + i);
			run_lsn = Max(run_lsn, lsns[i]);
		}
		flush_wal_to(run_lsn);
		if (run == 1)
		{
			if (remote_read(loc, forknum, first, 1, buffers[done], run_lsn) != REMOTE_READ_OK)
				read_missing_block(loc, forknum, first, buffers[done]);
		}
		else if (remote_read(loc, forknum, first, run, scratch, run_lsn) == REMOTE_READ_OK)
		{
			for (uint32 i = 0; i < run; i++)
				memcpy(buffers[done + i], scratch + (Size) i * BLCKSZ, BLCKSZ);
		}
		else
		{
			/* Some block of the run is missing: find which, one by one. */
			for (uint32 i = 0; i < run; i++)
				if (remote_read(loc, forknum, first + i, 1, buffers[done + i], lsns[i]) != REMOTE_READ_OK)
					read_missing_block(loc, forknum, first + i, buffers[done + i]);
		}
		for (uint32 i = 0; i < run; i++)
			local_cache_store_read(loc, forknum, first + i, buffers[done + i]);
		done += run;
	}
}

static void
quire_writev(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum, const void **buffers,
			 BlockNumber nblocks, bool skipFsync)
{
	RelFileLocator loc = reln->smgr_rlocator.locator;

	for (BlockNumber i = 0; i < nblocks; i++)
	{
		XLogRecPtr	lsn = page_leaving(loc, forknum, blocknum + i, buffers[i]);

		if (lsn != InvalidXLogRecPtr)
			lwlsn_set(loc, forknum, blocknum + i, lsn);
		local_cache_store(loc, forknum, blocknum + i, buffers[i]);
	}
}

static void
quire_writeback(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum, BlockNumber nblocks)
{
}

static BlockNumber
quire_nblocks(SMgrRelation reln, ForkNumber forknum)
{
	RelFileLocator loc = reln->smgr_rlocator.locator;
	BlockNumber nblocks;

	if (!fork_size(loc, forknum, &nblocks))
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open %s: the pageserver has no such relation fork",
						fork_label(loc, forknum))));
	return nblocks;
}

static void
quire_truncate(SMgrRelation reln, ForkNumber forknum, BlockNumber old_blocks, BlockNumber nblocks)
{
	RelFileLocator loc = reln->smgr_rlocator.locator;

	/* RelationTruncate wrote its WAL record before calling this. */
	relsize_set(loc, forknum, nblocks, true);
	local_cache_forget_fork(loc, forknum, nblocks);
	if (!RecoveryInProgress())
		lwlsn_set(loc, forknum, InvalidBlockNumber, GetXLogInsertRecPtr());
	remote_forget_prefetched(loc);
}

static void
quire_immedsync(SMgrRelation reln, ForkNumber forknum)
{
}

static void
quire_registersync(SMgrRelation reln, ForkNumber forknum)
{
}
