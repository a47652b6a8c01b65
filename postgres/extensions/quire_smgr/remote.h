/*-------------------------------------------------------------------------
 *
 * remote.h
 *	  A backend's connections to the pageserver's shards, reads routed by
 *	  the stripe rule, prefetch, retries and reconnects (remote.c), and
 *	  the routing itself (routing.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUIRE_REMOTE_H
#define QUIRE_REMOTE_H

#include "access/xlogdefs.h"
#include "common/relpath.h"
#include "storage/block.h"
#include "storage/relfilelocator.h"

#include "pagestream.h"

/* Settings (quire_smgr.c defines them). */
extern char *quire_pageserver_setting;
extern char *quire_tenant_setting;
extern char *quire_timeline_setting;
extern char *quire_auth_token_setting;
extern int	quire_shard_count_setting;
extern int	quire_stripe_blocks_setting;
extern int	quire_connect_timeout_ms;
extern int	quire_request_timeout_ms;
extern int	quire_retry_timeout_ms;
extern int	quire_prefetch_slots;

/* Checks a quire.pageserver value: "host:port[,host:port...]". */
extern bool remote_check_addresses(const char *value);

/* Checks a quire.tenant / quire.timeline value: 32 hex digits. */
extern bool remote_parse_id(const char *text, uint8_t *out);

/*
 * The index-th "host:port" of a comma list (the only one when the list has
 * one), split into palloc'd parts; false if there is none or it is
 * malformed (routing.c).
 */
extern bool remote_nth_address(const char *list, uint32 index, char **host, char **port);

/* The shard of the tenant that owns a relation block. */
extern uint32 remote_shard_of(RelFileLocator loc, BlockNumber block);

/* What a read of one run of blocks came to. */
typedef enum RemoteReadResult
{
	REMOTE_READ_OK,
	/* The pageserver has no such block (or fork) at that LSN. */
	REMOTE_READ_NOT_FOUND,
} RemoteReadResult;

/*
 * Reads count blocks (on one shard, at most the server's per-request
 * limit: see remote_run_limit) from first into pages, contiguous, at
 * the latest LSN not older than not_modified_since.  Retries what can be
 * retried until quire.retry_timeout; any other failure is an ERROR.
 */
extern RemoteReadResult remote_read(RelFileLocator loc, ForkNumber fork, BlockNumber first,
									uint32 count, char *pages, XLogRecPtr not_modified_since);

/* The most blocks remote_read takes in one call for a run starting at first. */
extern uint32 remote_run_limit(RelFileLocator loc, BlockNumber first, uint32 wanted);

/*
 * Takes block `block` from the prefetch ring if it is there and was served
 * at or after not_modified_since (waiting for its answer if need be);
 * false if the caller must read it.
 */
extern bool remote_take_prefetched(RelFileLocator loc, ForkNumber fork, BlockNumber block,
								   XLogRecPtr not_modified_since, char *page);

/* Sends GetPage requests for the blocks, answers kept in the prefetch ring. */
extern void remote_prefetch(RelFileLocator loc, ForkNumber fork, BlockNumber block,
							XLogRecPtr not_modified_since);

/* Nblocks; false if the fork does not exist. */
extern bool remote_nblocks(RelFileLocator loc, ForkNumber fork, XLogRecPtr not_modified_since,
						   BlockNumber *nblocks);

/* Exists. */
extern bool remote_exists(RelFileLocator loc, ForkNumber fork, XLogRecPtr not_modified_since);

/* Forgets prefetched pages of a relation (dropped or truncated). */
extern void remote_forget_prefetched(RelFileLocator loc);

/*
 * For the SQL probes: shard's connection, opened if need be, with nothing
 * outstanding on it.  Any failure is an ERROR.
 */
extern PsConn *remote_probe_conn(uint32 shard);

/* For the SQL probes: one request on shard, resent once on a stale connection. */
extern void remote_probe_call(uint32 shard, const PsRequest *request, PsAnswer *answer,
							  const char *what);

/* Turns a failed pagestream call on conn into an ERROR; never returns. */
extern void remote_report(PsConn *conn, PsResult rc, const char *request) pg_attribute_noreturn();

#endif							/* QUIRE_REMOTE_H */
