/*-------------------------------------------------------------------------
 *
 * backpressure.c
 *	  Keeps this compute's WAL at most quire.max_ingest_lag ahead of what
 *	  the pageserver has ingested.
 *
 * A read sends the block's last-written LSN as not_modified_since, and the
 * pageserver waits (a bounded time) until it has ingested that far.  When
 * the compute writes WAL faster than the pageserver ingests it (a compute
 * whose reads mostly hit its caches no longer waits on the pageserver at
 * all), the distance grows without bound and reads start failing with
 * WalNotIngested.  So a backend that writes WAL waits, before it commits
 * and before it extends a relation (a bulk load is one long transaction),
 * until the distance is back under the limit.
 *
 * What the pageserver has ingested is learnt for free: every answer carries
 * the LSN it was served at, which for a read at the latest LSN is the last
 * one ingested; backends keep the highest seen in shared memory.  Only when
 * the insert position is more than the limit past that does a backend ask
 * (an Exists on shard 0, which owns the non-block keys and ingests the
 * whole stream), so a compute within its limit pays one request per limit's
 * worth of WAL at most.  The wait polls every 10 ms, cancellably; after
 * quire.retry_timeout it gives up with an ERROR, as a read would.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_tablespace_d.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "portability/instr_time.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/wait_event.h"

#include "backpressure.h"
#include "remote.h"
#include "stats.h"

/* pg_database's relation number: any fork name serves as the probe. */
#define PROBE_RELATION 1262
#define POLL_MS 10

int			quire_max_ingest_lag_mb = 16;

typedef struct BackpressureShared
{
	pg_atomic_uint64 ingested_seen;
} BackpressureShared;

static BackpressureShared *shared = NULL;

void
backpressure_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(BackpressureShared)));
}

void
backpressure_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("quire_smgr backpressure", sizeof(BackpressureShared), &found);
	if (!found)
		pg_atomic_init_u64(&shared->ingested_seen, 0);
	LWLockRelease(AddinShmemInitLock);
}

void
backpressure_saw(XLogRecPtr lsn)
{
	uint64		seen;

	if (shared == NULL)
		return;
	seen = pg_atomic_read_u64(&shared->ingested_seen);
	while (lsn > seen &&
		   !pg_atomic_compare_exchange_u64(&shared->ingested_seen, &seen, lsn))
		;
}

XLogRecPtr
backpressure_ingested_seen(void)
{
	return shared == NULL ? InvalidXLogRecPtr : pg_atomic_read_u64(&shared->ingested_seen);
}

/* The processes whose WAL is a client's work: never the checkpointer's. */
static bool
throttled_process(void)
{
	return MyBackendType == B_BACKEND || MyBackendType == B_AUTOVAC_WORKER ||
		MyBackendType == B_BG_WORKER;
}

/* Asks shard 0 what it has ingested. */
static XLogRecPtr
ask_ingested(void)
{
	RelFileLocator loc = {GLOBALTABLESPACE_OID, InvalidOid, PROBE_RELATION};

	stats_count(QC_INGEST_PROBES, 1);
	(void) remote_exists(loc, MAIN_FORKNUM, InvalidXLogRecPtr);
	return backpressure_ingested_seen();
}

void
backpressure_wait(void)
{
	uint64		limit;
	XLogRecPtr	insert;
	XLogRecPtr	ingested;
	instr_time	started;
	bool		waited = false;

	if (quire_max_ingest_lag_mb <= 0 || shared == NULL || !throttled_process() ||
		!INTERRUPTS_CAN_BE_PROCESSED() || !XLogInsertAllowed())
		return;
	limit = (uint64) quire_max_ingest_lag_mb * 1024 * 1024;
	insert = GetXLogInsertRecPtr();
	if (insert <= backpressure_ingested_seen() + limit)
		return;
	INSTR_TIME_SET_CURRENT(started);
	for (;;)
	{
		instr_time	now;
		double		elapsed_ms;

		ingested = ask_ingested();
		if (insert <= ingested + limit)
			break;
		INSTR_TIME_SET_CURRENT(now);
		INSTR_TIME_SUBTRACT(now, started);
		elapsed_ms = INSTR_TIME_GET_MILLISEC(now);
		if (elapsed_ms >= (double) quire_retry_timeout_ms)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("the pageserver is %llu MB behind this compute's WAL and did not catch up within quire.retry_timeout",
							(unsigned long long) ((insert - ingested) / (1024 * 1024))),
					 errdetail("WAL inserted to %X/%X, ingested to %X/%X; quire.max_ingest_lag is %d MB.",
							   LSN_FORMAT_ARGS(insert), LSN_FORMAT_ARGS(ingested),
							   quire_max_ingest_lag_mb)));
		waited = true;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, POLL_MS,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	if (waited)
	{
		instr_time	now;

		INSTR_TIME_SET_CURRENT(now);
		INSTR_TIME_SUBTRACT(now, started);
		stats_count(QC_INGEST_WAITS, 1);
		stats_count(QC_INGEST_WAIT_US, (uint64) INSTR_TIME_GET_MICROSEC(now));
	}
}

static void
xact_callback(XactEvent event, void *arg)
{
	/* Only a transaction that wrote WAL waits before its commit record. */
	if (event == XACT_EVENT_PRE_COMMIT && XactLastRecEnd != InvalidXLogRecPtr)
		backpressure_wait();
}

void
backpressure_install(void)
{
	RegisterXactCallback(xact_callback, NULL);
}
