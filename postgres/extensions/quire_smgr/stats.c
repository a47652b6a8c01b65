/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  The compute-side counts of quire_smgr and its GetPage latency
 *	  histogram, in shared memory, and the SQL functions that show them.
 *
 * The histogram is log-linear over microseconds: one bucket per value
 * below 16, then eight per power of two, so a percentile is read as its
 * bucket's upper bound, at most 12.5% above the true value.  Counters are
 * atomics: any backend adds, nobody locks.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

#include "backpressure.h"
#include "caches.h"
#include "local_cache.h"
#include "stats.h"

#define LINEAR_BUCKETS 16
#define SUB_BUCKETS 8
#define EXPONENT_MIN 4
#define EXPONENT_MAX 40
#define BUCKETS (LINEAR_BUCKETS + (EXPONENT_MAX - EXPONENT_MIN + 1) * SUB_BUCKETS)

typedef struct StatsShared
{
	pg_atomic_uint64 counters[QC_COUNT];
	pg_atomic_uint64 latency_sum_us;
	pg_atomic_uint64 latency_max_us;
	pg_atomic_uint64 buckets[BUCKETS];
} StatsShared;

static StatsShared *stats = NULL;

static const char *const counter_names[QC_COUNT] = {
	[QC_READ_REQUESTS] = "read_requests",
	[QC_READ_PAGES] = "read_pages",
	[QC_PREFETCH_REQUESTS] = "prefetch_requests",
	[QC_PREFETCH_PAGES] = "prefetch_pages",
	[QC_PREFETCH_HITS] = "prefetch_hits",
	[QC_PREFETCH_STALE] = "prefetch_stale",
	[QC_PREFETCH_DROPPED] = "prefetch_dropped",
	[QC_NBLOCKS_REMOTE] = "nblocks_remote",
	[QC_EXISTS_REMOTE] = "exists_remote",
	[QC_ZERO_PAGES] = "zero_pages",
	[QC_FPI_ON_EVICT] = "fpi_on_evict",
	[QC_RECONNECTS] = "reconnects",
	[QC_RETRIES] = "retries",
	[QC_LOCAL_HITS] = "local_cache_hits",
	[QC_LOCAL_MISSES] = "local_cache_misses",
	[QC_LOCAL_STORES] = "local_cache_stores",
	[QC_LOCAL_EVICTIONS] = "local_cache_evictions",
	[QC_INGEST_PROBES] = "ingest_probes",
	[QC_INGEST_WAITS] = "ingest_waits",
	[QC_INGEST_WAIT_US] = "ingest_wait_us",
};

PG_FUNCTION_INFO_V1(quire_smgr_stats);
PG_FUNCTION_INFO_V1(quire_getpage_histogram);
PG_FUNCTION_INFO_V1(quire_getpage_latency);
PG_FUNCTION_INFO_V1(quire_smgr_reset_stats);

void
stats_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(StatsShared)));
}

void
stats_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	stats = ShmemInitStruct("quire_smgr stats", sizeof(StatsShared), &found);
	if (!found)
	{
		for (int i = 0; i < QC_COUNT; i++)
			pg_atomic_init_u64(&stats->counters[i], 0);
		pg_atomic_init_u64(&stats->latency_sum_us, 0);
		pg_atomic_init_u64(&stats->latency_max_us, 0);
		for (int i = 0; i < BUCKETS; i++)
			pg_atomic_init_u64(&stats->buckets[i], 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
stats_count(QuireCounter counter, uint64 n)
{
	if (stats != NULL)
		pg_atomic_fetch_add_u64(&stats->counters[counter], n);
}

static int
bucket_of(uint64 micros)
{
	int			exponent;

	if (micros < LINEAR_BUCKETS)
		return (int) micros;
	exponent = pg_leftmost_one_pos64(micros);
	if (exponent > EXPONENT_MAX)
		return BUCKETS - 1;
	return LINEAR_BUCKETS + (exponent - EXPONENT_MIN) * SUB_BUCKETS +
		(int) ((micros >> (exponent - 3)) & (SUB_BUCKETS - 1));
}

/* The largest value bucket b holds. */
static uint64
bucket_upper(int b)
{
	int			exponent;
	int			sub;

	if (b < LINEAR_BUCKETS)
		return (uint64) b;
	exponent = EXPONENT_MIN + (b - LINEAR_BUCKETS) / SUB_BUCKETS;
	sub = (b - LINEAR_BUCKETS) % SUB_BUCKETS;
	return (((uint64) (SUB_BUCKETS + sub + 1)) << (exponent - 3)) - 1;
}

void
stats_read_latency(uint64 micros)
{
	uint64		max;

	if (stats == NULL)
		return;
	pg_atomic_fetch_add_u64(&stats->buckets[bucket_of(micros)], 1);
	pg_atomic_fetch_add_u64(&stats->latency_sum_us, micros);
	max = pg_atomic_read_u64(&stats->latency_max_us);
	while (micros > max &&
		   !pg_atomic_compare_exchange_u64(&stats->latency_max_us, &max, micros))
		;
}

static void
require_stats(void)
{
	if (stats == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("quire_smgr is not the storage manager of this server"),
				 errhint("Load it with shared_preload_libraries and set quire.pageserver.")));
}

/* quire_smgr_stats(): every counter, and the caches' sizes. */
Datum
quire_smgr_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CacheCounts counts;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	struct
	{
		const char *name;
		uint64		value;
	}			extra[9];

	require_stats();
	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < QC_COUNT; i++)
	{
		values[0] = CStringGetTextDatum(counter_names[i]);
		values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&stats->counters[i]));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	caches_counts(&counts);
	extra[0].name = "relsize_cache_entries";
	extra[0].value = counts.relsize_entries;
	extra[1].name = "relsize_cache_evictions";
	extra[1].value = counts.relsize_evictions;
	extra[2].name = "relsize_messages";
	extra[2].value = counts.relsize_messages;
	extra[3].name = "lwlsn_cache_entries";
	extra[3].value = counts.lwlsn_entries;
	extra[4].name = "lwlsn_cache_evictions";
	extra[4].value = counts.lwlsn_evictions;
	extra[5].name = "lwlsn_max_evicted";
	extra[5].value = counts.lwlsn_max_evicted;
	extra[6].name = "local_cache_entries";
	extra[7].name = "local_cache_slots";
	local_cache_counts(&extra[6].value, &extra[7].value);
	extra[8].name = "pageserver_ingested_lsn";
	extra[8].value = backpressure_ingested_seen();
	for (int i = 0; i < lengthof(extra); i++)
	{
		values[0] = CStringGetTextDatum(extra[i].name);
		values[1] = Int64GetDatum((int64) extra[i].value);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* quire_getpage_histogram(): (le_us, count) of every non-empty bucket. */
Datum
quire_getpage_histogram(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	require_stats();
	InitMaterializedSRF(fcinfo, 0);
	for (int b = 0; b < BUCKETS; b++)
	{
		uint64		n = pg_atomic_read_u64(&stats->buckets[b]);

		if (n == 0)
			continue;
		values[0] = Int64GetDatum((int64) bucket_upper(b));
		values[1] = Int64GetDatum((int64) n);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* The bucket bound below which a fraction q of n samples lie. */
static double
percentile(const uint64 *counts, uint64 n, double q)
{
	uint64		rank = (uint64) (q * (double) n);
	uint64		seen = 0;

	if (rank >= n)
		rank = n - 1;
	for (int b = 0; b < BUCKETS; b++)
	{
		seen += counts[b];
		if (seen > rank)
			return (double) bucket_upper(b);
	}
	return (double) bucket_upper(BUCKETS - 1);
}

/*
 * quire_getpage_latency(): requests, p50, p90, p99, max and mean in
 * microseconds of the read requests since the last reset.
 */
Datum
quire_getpage_latency(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, false};
	uint64		counts[BUCKETS];
	uint64		n = 0;

	require_stats();
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR, (errmsg("quire_getpage_latency must return a record")));
	desc = BlessTupleDesc(desc);
	for (int b = 0; b < BUCKETS; b++)
	{
		counts[b] = pg_atomic_read_u64(&stats->buckets[b]);
		n += counts[b];
	}
	values[0] = Int64GetDatum((int64) n);
	if (n == 0)
	{
		for (int i = 1; i < 6; i++)
			nulls[i] = true;
	}
	else
	{
		values[1] = Float8GetDatum(percentile(counts, n, 0.50));
		values[2] = Float8GetDatum(percentile(counts, n, 0.90));
		values[3] = Float8GetDatum(percentile(counts, n, 0.99));
		values[4] = Float8GetDatum((double) pg_atomic_read_u64(&stats->latency_max_us));
		values[5] = Float8GetDatum((double) pg_atomic_read_u64(&stats->latency_sum_us) / (double) n);
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/* quire_smgr_reset_stats(): zeroes the counters and the histogram. */
Datum
quire_smgr_reset_stats(PG_FUNCTION_ARGS)
{
	require_stats();
	for (int i = 0; i < QC_COUNT; i++)
		pg_atomic_write_u64(&stats->counters[i], 0);
	pg_atomic_write_u64(&stats->latency_sum_us, 0);
	pg_atomic_write_u64(&stats->latency_max_us, 0);
	for (int b = 0; b < BUCKETS; b++)
		pg_atomic_write_u64(&stats->buckets[b], 0);
	PG_RETURN_VOID();
}
