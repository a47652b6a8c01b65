/*-------------------------------------------------------------------------
 *
 * quire_smgr_count.c
 *	  A storage manager that forwards every call to md.c and counts it.
 *
 * It exists to prove that the smgr_hook of Quire's core patch works: loaded
 * with shared_preload_libraries, it becomes the storage manager of every
 * relation, and quire_smgr_count() reports how often each callback ran in
 * any process (backends, checkpointer, background writer), plus how many
 * relations the hook saw with each persistence.  It changes no behaviour:
 * every call goes to md.c unchanged.
 *
 * Counters live in shared memory as atomics, so the extension must be
 * preloaded; in a process without them (initdb's bootstrap) it only forwards.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_class.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/smgr.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

PG_MODULE_MAGIC;

typedef enum CountedEvent
{
	EV_OPEN,
	EV_CLOSE,
	EV_CREATE,
	EV_EXISTS,
	EV_UNLINK,
	EV_EXTEND,
	EV_ZEROEXTEND,
	EV_ZEROEXTEND_BLOCKS,
	EV_PREFETCH,
	EV_READV,
	EV_READV_BLOCKS,
	EV_WRITEV,
	EV_WRITEV_BLOCKS,
	EV_WRITEBACK,
	EV_NBLOCKS,
	EV_TRUNCATE,
	EV_IMMEDSYNC,
	EV_REGISTERSYNC,
	EV_CHOSEN_PERMANENT,
	EV_CHOSEN_UNLOGGED,
	EV_CHOSEN_TEMP,
	EV_CHOSEN_UNKNOWN,
	EV_COUNT
} CountedEvent;

/* Names reported by quire_smgr_count(), in CountedEvent order. */
static const char *const event_names[EV_COUNT] = {
	"open", "close", "create", "exists", "unlink", "extend", "zeroextend",
	"zeroextend_blocks", "prefetch", "readv", "readv_blocks", "writev",
	"writev_blocks", "writeback", "nblocks", "truncate", "immedsync", "registersync",
	"chosen_permanent", "chosen_unlogged", "chosen_temp", "chosen_unknown",
};
StaticAssertDecl(lengthof(event_names) == EV_COUNT,
				 "every counted event needs a name");

/* The counters in shared memory; NULL until attached. */
static pg_atomic_uint64 *event_counts = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(quire_smgr_count);

static void
count_event(CountedEvent event, uint64 n)
{
	if (event_counts != NULL)
		pg_atomic_fetch_add_u64(&event_counts[event], n);
}

static void
count_open(SMgrRelation reln)
{
	count_event(EV_OPEN, 1);
	smgr_md.smgr_open(reln);
}

static void
count_close(SMgrRelation reln, ForkNumber forknum)
{
	count_event(EV_CLOSE, 1);
	smgr_md.smgr_close(reln, forknum);
}

static void
count_create(SMgrRelation reln, ForkNumber forknum, bool isRedo)
{
	count_event(EV_CREATE, 1);
	smgr_md.smgr_create(reln, forknum, isRedo);
}

static bool
count_exists(SMgrRelation reln, ForkNumber forknum)
{
	count_event(EV_EXISTS, 1);
	return smgr_md.smgr_exists(reln, forknum);
}

static void
count_unlink(RelFileLocatorBackend rlocator, ForkNumber forknum, bool isRedo)
{
	count_event(EV_UNLINK, 1);
	smgr_md.smgr_unlink(rlocator, forknum, isRedo);
}

static void
count_extend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			 const void *buffer, bool skipFsync)
{
	count_event(EV_EXTEND, 1);
	smgr_md.smgr_extend(reln, forknum, blocknum, buffer, skipFsync);
}

static void
count_zeroextend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
				 int nblocks, bool skipFsync)
{
	count_event(EV_ZEROEXTEND, 1);
	count_event(EV_ZEROEXTEND_BLOCKS, nblocks);
	smgr_md.smgr_zeroextend(reln, forknum, blocknum, nblocks, skipFsync);
}

static bool
count_prefetch(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			   int nblocks)
{
	count_event(EV_PREFETCH, 1);
	return smgr_md.smgr_prefetch(reln, forknum, blocknum, nblocks);
}

static void
count_readv(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			void **buffers, BlockNumber nblocks)
{
	count_event(EV_READV, 1);
	count_event(EV_READV_BLOCKS, nblocks);
	smgr_md.smgr_readv(reln, forknum, blocknum, buffers, nblocks);
}

static void
count_writev(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			 const void **buffers, BlockNumber nblocks, bool skipFsync)
{
	count_event(EV_WRITEV, 1);
	count_event(EV_WRITEV_BLOCKS, nblocks);
	smgr_md.smgr_writev(reln, forknum, blocknum, buffers, nblocks, skipFsync);
}

static void
count_writeback(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
				BlockNumber nblocks)
{
	count_event(EV_WRITEBACK, 1);
	smgr_md.smgr_writeback(reln, forknum, blocknum, nblocks);
}

static BlockNumber
count_nblocks(SMgrRelation reln, ForkNumber forknum)
{
	count_event(EV_NBLOCKS, 1);
	return smgr_md.smgr_nblocks(reln, forknum);
}

static void
count_truncate(SMgrRelation reln, ForkNumber forknum, BlockNumber old_blocks,
			   BlockNumber nblocks)
{
	count_event(EV_TRUNCATE, 1);
	smgr_md.smgr_truncate(reln, forknum, old_blocks, nblocks);
}

static void
count_immedsync(SMgrRelation reln, ForkNumber forknum)
{
	count_event(EV_IMMEDSYNC, 1);
	smgr_md.smgr_immedsync(reln, forknum);
}

static void
count_registersync(SMgrRelation reln, ForkNumber forknum)
{
	count_event(EV_REGISTERSYNC, 1);
	smgr_md.smgr_registersync(reln, forknum);
}

/*
 * init and shutdown stay NULL: core runs md.c's own, and this storage
 * manager has no state of its own to set up per backend.
 */
static const f_smgr counting_smgr = {
	.smgr_init = NULL,
	.smgr_shutdown = NULL,
	.smgr_open = count_open,
	.smgr_close = count_close,
	.smgr_create = count_create,
	.smgr_exists = count_exists,
	.smgr_unlink = count_unlink,
	.smgr_extend = count_extend,
	.smgr_zeroextend = count_zeroextend,
	.smgr_prefetch = count_prefetch,
	.smgr_readv = count_readv,
	.smgr_writev = count_writev,
	.smgr_writeback = count_writeback,
	.smgr_nblocks = count_nblocks,
	.smgr_truncate = count_truncate,
	.smgr_immedsync = count_immedsync,
	.smgr_registersync = count_registersync,
};

static const f_smgr *
count_choose_smgr(RelFileLocatorBackend rlocator, char relpersistence)
{
	switch (relpersistence)
	{
		case RELPERSISTENCE_PERMANENT:
			count_event(EV_CHOSEN_PERMANENT, 1);
			break;
		case RELPERSISTENCE_UNLOGGED:
			count_event(EV_CHOSEN_UNLOGGED, 1);
			break;
		case RELPERSISTENCE_TEMP:
			count_event(EV_CHOSEN_TEMP, 1);
			break;
		default:
			if (RelFileLocatorBackendIsTemp(rlocator))
				count_event(EV_CHOSEN_TEMP, 1);
			else
				count_event(EV_CHOSEN_UNKNOWN, 1);
			break;
	}
	return &counting_smgr;
}

static void
count_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sizeof(pg_atomic_uint64) * EV_COUNT);
}

static void
count_shmem_startup(void)
{
	bool		found;
	pg_atomic_uint64 *counts;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	counts = ShmemInitStruct("quire_smgr_count", sizeof(pg_atomic_uint64) * EV_COUNT,
							 &found);
	if (!found)
	{
		for (int i = 0; i < EV_COUNT; i++)
			pg_atomic_init_u64(&counts[i], 0);
	}
	LWLockRelease(AddinShmemInitLock);
	event_counts = counts;
}

void
_PG_init(void)
{
	/*
	 * Loaded later (CREATE EXTENSION without preloading), the hook would
	 * serve only this backend and the counters would have no shared memory:
	 * install nothing, and let quire_smgr_count() say why.
	 */
	if (!process_shared_preload_libraries_in_progress)
		return;

	if (smgr_hook != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("another storage manager hook is already installed")));

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = count_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = count_shmem_startup;
	smgr_hook = count_choose_smgr;
}

/* quire_smgr_count(): one row per counted event, with its count. */
Datum
quire_smgr_count(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	if (event_counts == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("quire_smgr_count is not attached to shared memory"),
				 errhint("Add quire_smgr_count to shared_preload_libraries.")));

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < EV_COUNT; i++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = CStringGetTextDatum(event_names[i]);
		values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&event_counts[i]));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
