/*-------------------------------------------------------------------------
 *
 * inmem_smgr.c
 *	  The redo process's storage manager: a few pages in memory, no files.
 *
 * The redo process rebuilds one page at a time.  Its base image is put here
 * before the records are replayed; pages the redo routines write (the
 * target when evicted, scratch pages of rejected blocks, FSM pages that heap
 * redo updates on the side) are kept here until the next page begins.  A
 * page never put reads as zeros.  Every relation "exists" and is reported as
 * as large as a relation can be, so that redo never extends one: extending
 * would only write zero pages, which reading already returns.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "quire_walredo.h"
#include "storage/block.h"
#include "utils/memutils.h"

/* More than any record references (XLR_MAX_BLOCK_ID + 1 = 33) plus FSM pages. */
#define INMEM_MAX_PAGES 64

typedef struct InmemPage
{
	RelFileLocator rlocator;
	ForkNumber	forknum;
	BlockNumber blkno;
	PGIOAlignedBlock data;
} InmemPage;

static InmemPage inmem_pages[INMEM_MAX_PAGES];
static int	inmem_npages = 0;

static void inmem_writev(SMgrRelation reln, ForkNumber forknum,
						 BlockNumber blocknum, const void **buffers,
						 BlockNumber nblocks, bool skipFsync);

static InmemPage *
inmem_find(RelFileLocator rlocator, ForkNumber forknum, BlockNumber blkno)
{
	for (int i = 0; i < inmem_npages; i++)
	{
		InmemPage  *p = &inmem_pages[i];

		if (RelFileLocatorEquals(p->rlocator, rlocator) &&
			p->forknum == forknum && p->blkno == blkno)
			return p;
	}
	return NULL;
}

void
inmem_put_page(RelFileLocator rlocator, ForkNumber forknum,
			   BlockNumber blkno, const char *page)
{
	InmemPage  *p = inmem_find(rlocator, forknum, blkno);

	if (p == NULL)
	{
		if (inmem_npages >= INMEM_MAX_PAGES)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("redo wrote more than %d pages while rebuilding one",
							INMEM_MAX_PAGES)));
		p = &inmem_pages[inmem_npages++];
		p->rlocator = rlocator;
		p->forknum = forknum;
		p->blkno = blkno;
	}
	memcpy(p->data.data, page, BLCKSZ);
}

void
inmem_reset(void)
{
	inmem_npages = 0;
}

static void
inmem_open(SMgrRelation reln)
{
}

static void
inmem_close(SMgrRelation reln, ForkNumber forknum)
{
}

static void
inmem_create(SMgrRelation reln, ForkNumber forknum, bool isRedo)
{
}

static bool
inmem_exists(SMgrRelation reln, ForkNumber forknum)
{
	return true;
}

static void
inmem_unlink(RelFileLocatorBackend rlocator, ForkNumber forknum, bool isRedo)
{
}

static void
inmem_extend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			 const void *buffer, bool skipFsync)
{
	const void *one[1] = {buffer};

	inmem_writev(reln, forknum, blocknum, one, 1, skipFsync);
}

static void
inmem_zeroextend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
				 int nblocks, bool skipFsync)
{
	/* Pages never put already read as zeros. */
}

static bool
inmem_prefetch(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			   int nblocks)
{
	return true;
}

static void
inmem_readv(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			void **buffers, BlockNumber nblocks)
{
	for (BlockNumber i = 0; i < nblocks; i++)
	{
		InmemPage  *p = inmem_find(reln->smgr_rlocator.locator, forknum,
								   blocknum + i);

		if (p != NULL)
			memcpy(buffers[i], p->data.data, BLCKSZ);
		else
			memset(buffers[i], 0, BLCKSZ);
	}
}

/*
 * Only the target survives eviction: every other page redo touched is a
 * scratch page (a rejected block, an FSM page) whose contents nobody reads.
 */
static void
inmem_writev(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			 const void **buffers, BlockNumber nblocks, bool skipFsync)
{
	for (BlockNumber i = 0; i < nblocks; i++)
		if (redo_target.valid &&
			RelFileLocatorEquals(reln->smgr_rlocator.locator, redo_target.rlocator) &&
			forknum == redo_target.forknum && blocknum + i == redo_target.blkno)
			inmem_put_page(reln->smgr_rlocator.locator, forknum, blocknum + i,
						   buffers[i]);
}

static void
inmem_writeback(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
				BlockNumber nblocks)
{
}

static BlockNumber
inmem_nblocks(SMgrRelation reln, ForkNumber forknum)
{
	/*
	 * As large as a relation can be: XLogReadBufferExtended then reads every
	 * block it is asked for instead of extending the relation up to it.
	 */
	return MaxBlockNumber;
}

static void
inmem_truncate(SMgrRelation reln, ForkNumber forknum, BlockNumber old_blocks,
			   BlockNumber nblocks)
{
}

static void
inmem_immedsync(SMgrRelation reln, ForkNumber forknum)
{
}

static void
inmem_registersync(SMgrRelation reln, ForkNumber forknum)
{
}

const f_smgr inmem_smgr = {
	.smgr_init = NULL,
	.smgr_shutdown = NULL,
	.smgr_open = inmem_open,
	.smgr_close = inmem_close,
	.smgr_create = inmem_create,
	.smgr_exists = inmem_exists,
	.smgr_unlink = inmem_unlink,
	.smgr_extend = inmem_extend,
	.smgr_zeroextend = inmem_zeroextend,
	.smgr_prefetch = inmem_prefetch,
	.smgr_readv = inmem_readv,
	.smgr_writev = inmem_writev,
	.smgr_writeback = inmem_writeback,
	.smgr_nblocks = inmem_nblocks,
	.smgr_truncate = inmem_truncate,
	.smgr_immedsync = inmem_immedsync,
	.smgr_registersync = inmem_registersync,
};
