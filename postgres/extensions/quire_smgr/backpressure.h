/*-------------------------------------------------------------------------
 *
 * backpressure.h
 *	  How far this compute's WAL may run ahead of what the pageserver has
 *	  ingested, and the waits that keep it there (backpressure.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUIRE_BACKPRESSURE_H
#define QUIRE_BACKPRESSURE_H

#include "access/xlogdefs.h"

/* quire.max_ingest_lag, in MB (0: no limit). */
extern int	quire_max_ingest_lag_mb;

extern void backpressure_shmem_request(void);
extern void backpressure_shmem_startup(void);

/* Registers the commit-time wait (a preloaded library's _PG_init). */
extern void backpressure_install(void);

/* An answer of the pageserver served at lsn: it had ingested that much. */
extern void backpressure_saw(XLogRecPtr lsn);

/* The most the pageserver is known to have ingested (0 if nothing yet). */
extern XLogRecPtr backpressure_ingested_seen(void);

/*
 * Waits, in a backend that writes WAL and may be interrupted, until the
 * pageserver is at most quire.max_ingest_lag behind this compute's WAL;
 * an ERROR if it does not catch up within quire.retry_timeout.
 */
extern void backpressure_wait(void);

#endif							/* QUIRE_BACKPRESSURE_H */
