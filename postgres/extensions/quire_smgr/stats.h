/*-------------------------------------------------------------------------
 *
 * stats.h
 *	  The compute-side counts and GetPage latency histogram (stats.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUIRE_STATS_H
#define QUIRE_STATS_H

#include "postgres.h"

typedef enum QuireCounter
{
	QC_READ_REQUESTS,			/* GetPage / GetPages sent for a read */
	QC_READ_PAGES,				/* pages those carried */
	QC_PREFETCH_REQUESTS,
	QC_PREFETCH_PAGES,
	QC_PREFETCH_HITS,			/* pages a read took from a prefetch */
	QC_PREFETCH_STALE,			/* prefetched pages dropped as too old */
	QC_PREFETCH_DROPPED,		/* prefetched pages never used */
	QC_NBLOCKS_REMOTE,
	QC_EXISTS_REMOTE,
	QC_ZERO_PAGES,				/* blocks read as zeros: extended here, unknown remotely */
	QC_FPI_ON_EVICT,			/* pages WAL-logged when evicted */
	QC_RECONNECTS,
	QC_RETRIES,					/* requests resent after WalNotIngested/Overloaded */
	QC_LOCAL_HITS,				/* blocks read from the local page cache */
	QC_LOCAL_MISSES,
	QC_LOCAL_STORES,			/* pages put in it (read, written, extended) */
	QC_LOCAL_EVICTIONS,
	QC_INGEST_PROBES,			/* requests asking what the pageserver ingested */
	QC_INGEST_WAITS,			/* commits and extensions that waited for it */
	QC_INGEST_WAIT_US,			/* the time they waited */
	QC_COUNT
} QuireCounter;

extern void stats_shmem_request(void);
extern void stats_shmem_startup(void);
extern void stats_count(QuireCounter counter, uint64 n);
/* One read request's wait, send to answer, in microseconds. */
extern void stats_read_latency(uint64 micros);

#endif							/* QUIRE_STATS_H */
