/*-------------------------------------------------------------------------
 *
 * quire_smgr.c
 *	  Quire's compute-side storage manager: its settings, its start-up,
 *	  and SQL probes of the page protocol.
 *
 * Loaded through shared_preload_libraries with quire.pageserver set, it
 * becomes the storage manager of every permanent relation (smgr.c), with
 * its shared caches (caches.c) and counters (stats.c), and refuses the
 * commands that copy files behind it (refusals.c).  Loaded any other way
 * (CREATE EXTENSION alone) only the probes work: SQL functions that send
 * single requests over the backend's connections (remote.c), so the
 * protocol client can be tested against a real pageserver from SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/smgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "varatt.h"

#include "backpressure.h"
#include "caches.h"
#include "local_cache.h"
#include "pagestream.h"
#include "quire_smgr.h"
#include "remote.h"
#include "stats.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(quire_getpage);
PG_FUNCTION_INFO_V1(quire_getpages);
PG_FUNCTION_INFO_V1(quire_nblocks);
PG_FUNCTION_INFO_V1(quire_exists);
PG_FUNCTION_INFO_V1(quire_dbsize);

/* Most blocks quire_getpages() reads in one call (32 MB of bytea). */
#define GETPAGES_PROBE_BLOCKS_MAX 4096

static shmem_request_hook_type previous_shmem_request_hook = NULL;
static shmem_startup_hook_type previous_shmem_startup_hook = NULL;

/* An empty id means "not configured yet"; anything else must parse. */
static bool
check_id(char **newval, void **extra, GucSource source)
{
	uint8_t		id[16];

	if (*newval == NULL || (*newval)[0] == '\0' || remote_parse_id(*newval, id))
		return true;
	GUC_check_errdetail("Expected 32 hexadecimal digits.");
	return false;
}

/* Check hooks may run in any memory context: this one allocates nothing. */
static bool
check_pageserver(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0' || remote_check_addresses(*newval))
		return true;
	GUC_check_errdetail("Expected host:port, or a comma-separated list of them, one per shard.");
	return false;
}

/* The request's LSNs: the given one, or latest when it is NULL. */
static void
set_lsns(PsRequest *request, FunctionCallInfo fcinfo, int arg)
{
	if (PG_ARGISNULL(arg))
	{
		/* Latest: nothing was changed by this compute, so no LSN to wait for. */
		request->request_lsn = PS_LSN_LATEST;
		request->not_modified_since = 0;
		return;
	}
	request->request_lsn = PG_GETARG_LSN(arg);
	if (request->request_lsn == InvalidXLogRecPtr || request->request_lsn == PS_LSN_LATEST)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("LSN %X/%X is not a position to read at",
						LSN_FORMAT_ARGS(request->request_lsn))));
	request->not_modified_since = request->request_lsn;
}

/* The relation fork of arguments 0 to 3. */
static void
set_rel(PsRequest *request, FunctionCallInfo fcinfo)
{
	int32		fork = PG_GETARG_INT32(3);

	if (fork < 0 || fork > 3)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("fork %d: expected 0 (main), 1 (fsm), 2 (vm) or 3 (init)", fork)));
	request->rel.spc_oid = PG_GETARG_OID(0);
	request->rel.db_oid = PG_GETARG_OID(1);
	request->rel.rel_number = PG_GETARG_OID(2);
	request->rel.fork = (uint8_t) fork;
}

/* A block number argument, which must be a valid BlockNumber. */
static uint32_t
block_arg(FunctionCallInfo fcinfo, int arg)
{
	int64		block = PG_GETARG_INT64(arg);

	if (block < 0 || block > (int64) MaxBlockNumber)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("block %lld: expected 0 to %u", (long long) block, MaxBlockNumber)));
	return (uint32_t) block;
}

static bool
any_null(FunctionCallInfo fcinfo, int nargs)
{
	for (int i = 0; i < nargs; i++)
		if (PG_ARGISNULL(i))
			return true;
	return false;
}

/* The relation of a probe's request, for routing. */
static RelFileLocator
probe_loc(const PsRequest *request)
{
	RelFileLocator loc;

	loc.spcOid = request->rel.spc_oid;
	loc.dbOid = request->rel.db_oid;
	loc.relNumber = request->rel.rel_number;
	return loc;
}

/* quire_getpage(spc, db, rel, fork, block, lsn): the page as bytea. */
Datum
quire_getpage(PG_FUNCTION_ARGS)
{
	bytea	   *page;
	PsRequest	request;
	PsAnswer	answer;

	if (any_null(fcinfo, 5))
		PG_RETURN_NULL();
	memset(&request, 0, sizeof(request));
	request.kind = PS_KIND_GET_PAGE;
	set_rel(&request, fcinfo);
	request.block = block_arg(fcinfo, 4);
	set_lsns(&request, fcinfo, 5);
	page = (bytea *) palloc(VARHDRSZ + PS_PAGE_BYTES);
	SET_VARSIZE(page, VARHDRSZ + PS_PAGE_BYTES);
	request.pages = VARDATA(page);
	remote_probe_call(remote_shard_of(probe_loc(&request), request.block), &request, &answer, "GetPage");
	PG_RETURN_BYTEA_P(page);
}

/*
 * quire_getpages(spc, db, rel, fork, first, count, lsn): count pages from
 * block first, as one bytea.  The range is cut into GetPages requests of
 * the server's largest size and pipelined, which is what exercises the
 * client's queue.
 */
Datum
quire_getpages(PG_FUNCTION_ARGS)
{
	bytea	   *pages;
	PsRequest	request;
	PsAnswer	answer;
	uint32_t	first;
	int32		count;
	uint32_t	sent = 0;
	uint32_t	received = 0;
	PsConn	   *conn;
	PsResult	rc;

	if (any_null(fcinfo, 6))
		PG_RETURN_NULL();
	memset(&request, 0, sizeof(request));
	request.kind = PS_KIND_GET_PAGES;
	set_rel(&request, fcinfo);
	first = block_arg(fcinfo, 4);
	count = PG_GETARG_INT32(5);
	if (count < 1 || count > GETPAGES_PROBE_BLOCKS_MAX ||
		(uint64) first + (uint64) count - 1 > (uint64) MaxBlockNumber)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%d blocks from block %u: expected 1 to %d, ending by block %u",
						count, first, GETPAGES_PROBE_BLOCKS_MAX, MaxBlockNumber)));
	set_lsns(&request, fcinfo, 6);
	pages = (bytea *) palloc(VARHDRSZ + (Size) count * PS_PAGE_BYTES);
	SET_VARSIZE(pages, VARHDRSZ + (Size) count * PS_PAGE_BYTES);

	conn = remote_probe_conn(remote_shard_of(probe_loc(&request), first));
	while (received < (uint32_t) count)
	{
		/*
		 * As many blocks as the server takes and its frames hold; at least
		 * one, so that a server whose frames cannot hold even one GetPages
		 * page is refused by ps_send rather than looped on.
		 */
		uint32_t	step = Min(conn->limits.blocks_per_request_max,
							   (conn->limits.frame_bytes_max - PS_HEADER_BYTES - 16) / PS_PAGE_BYTES);

		step = Max(step, 1);

		/* Keep the pipeline full, never past what the server reads ahead. */
		while (sent < (uint32_t) count && ps_pending(conn) < conn->depth_max)
		{
			request.block = first + sent;
			request.count = Min(step, (uint32_t) count - sent);
			request.pages = VARDATA(pages) + (Size) sent * PS_PAGE_BYTES;
			rc = ps_send(conn, &request, NULL);
			if (rc != PS_OK)
			{
				ps_close(conn);
				remote_report(conn, rc, "GetPages");
			}
			sent += request.count;
		}
		rc = ps_receive(conn, &answer);
		if (rc != PS_OK)
		{
			/* Answers still queued behind this one would be misread later. */
			ps_close(conn);
			remote_report(conn, rc, "GetPages");
		}
		received += Min(step, (uint32_t) count - received);
	}
	PG_RETURN_BYTEA_P(pages);
}

/* quire_nblocks(spc, db, rel, fork, lsn): the fork's size in blocks. */
Datum
quire_nblocks(PG_FUNCTION_ARGS)
{
	PsRequest	request;
	PsAnswer	answer;

	if (any_null(fcinfo, 4))
		PG_RETURN_NULL();
	memset(&request, 0, sizeof(request));
	request.kind = PS_KIND_NBLOCKS;
	set_rel(&request, fcinfo);
	set_lsns(&request, fcinfo, 4);
	remote_probe_call(0, &request, &answer, "Nblocks");
	PG_RETURN_INT64((int64) answer.nblocks);
}

/* quire_exists(spc, db, rel, fork, lsn): whether the fork exists. */
Datum
quire_exists(PG_FUNCTION_ARGS)
{
	PsRequest	request;
	PsAnswer	answer;

	if (any_null(fcinfo, 4))
		PG_RETURN_NULL();
	memset(&request, 0, sizeof(request));
	request.kind = PS_KIND_EXISTS;
	set_rel(&request, fcinfo);
	set_lsns(&request, fcinfo, 4);
	remote_probe_call(0, &request, &answer, "Exists");
	PG_RETURN_BOOL(answer.exists);
}

/* quire_dbsize(db, lsn): bytes of every relation fork of the database. */
Datum
quire_dbsize(PG_FUNCTION_ARGS)
{
	PsRequest	request;
	PsAnswer	answer;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	memset(&request, 0, sizeof(request));
	request.kind = PS_KIND_DB_SIZE;
	request.db_oid = PG_GETARG_OID(0);
	set_lsns(&request, fcinfo, 1);
	remote_probe_call(0, &request, &answer, "DbSize");
	if (answer.size_bytes > (uint64) PG_INT64_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("pageserver says database %u has %llu bytes", request.db_oid,
						(unsigned long long) answer.size_bytes)));
	PG_RETURN_INT64((int64) answer.size_bytes);
}

static void
shmem_request(void)
{
	if (previous_shmem_request_hook)
		previous_shmem_request_hook();
	caches_shmem_request();
	local_cache_shmem_request();
	backpressure_shmem_request();
	stats_shmem_request();
}

static void
shmem_startup(void)
{
	if (previous_shmem_startup_hook)
		previous_shmem_startup_hook();
	caches_shmem_startup();
	local_cache_shmem_startup();
	backpressure_shmem_startup();
	stats_shmem_startup();
}

/* The settings fixed at postmaster start: only a preloaded library may define them. */
static void
define_postmaster_settings(void)
{
	DefineCustomIntVariable("quire.prefetch_slots",
							"Pages a backend may have prefetched and not yet read.",
							NULL, &quire_prefetch_slots, 64, 0, 1024, PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("quire.relsize_cache_entries",
							"Relation forks whose size the shared cache holds.",
							NULL, &quire_relsize_cache_entries, 65536, 16, INT_MAX / 2,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("quire.lwlsn_cache_entries",
							"Blocks whose last-written LSN the shared cache holds.",
							NULL, &quire_lwlsn_cache_entries, 131072, 16, INT_MAX / 2,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("quire.local_cache_size",
							"Shared memory for pages that left shared buffers (0 = none).",
							NULL, &quire_local_cache_mb, 0, 0, INT_MAX / 2, PGC_POSTMASTER,
							GUC_UNIT_MB, NULL, NULL, NULL);
}

static void
define_settings(void)
{
	/*
	 * PGC_SUSET: which pageserver and timeline a backend reads is the
	 * administrator's choice, and a session must not point its pages
	 * elsewhere.
	 */
	DefineCustomStringVariable("quire.pageserver",
							   "The pageserver's page service as host:port, or one per shard (comma-separated).",
							   NULL, &quire_pageserver_setting, "", PGC_SUSET, 0,
							   check_pageserver, NULL, NULL);
	DefineCustomStringVariable("quire.tenant",
							   "The tenant whose pages this compute reads (32 hex digits).",
							   NULL, &quire_tenant_setting, "", PGC_SUSET, 0,
							   check_id, NULL, NULL);
	DefineCustomStringVariable("quire.timeline",
							   "The timeline whose pages this compute reads (32 hex digits).",
							   NULL, &quire_timeline_setting, "", PGC_SUSET, 0,
							   check_id, NULL, NULL);
	DefineCustomStringVariable("quire.auth_token",
							   "The signed token sent in the page protocol's Hello.",
							   NULL, &quire_auth_token_setting, "", PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("quire.shard_count",
							"The tenant's number of shards (1 = unsharded).",
							NULL, &quire_shard_count_setting, 1, 1, 256, PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("quire.stripe_blocks",
							"The tenant's shard stripe in pages.",
							NULL, &quire_stripe_blocks_setting, 2048, 1, INT_MAX, PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("quire.connect_timeout",
							"How long opening a pageserver connection may take.",
							NULL, &quire_connect_timeout_ms, 5000, 1, INT_MAX, PGC_SUSET,
							GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("quire.request_timeout",
							"How long reading or writing one frame may take.",
							NULL, &quire_request_timeout_ms, 30000, 1, INT_MAX, PGC_SUSET,
							GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("quire.retry_timeout",
							"How long a read retries a pageserver that is away, restarting or behind.",
							NULL, &quire_retry_timeout_ms, 60000, 0, INT_MAX, PGC_SUSET,
							GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("quire.max_ingest_lag",
							"How far this compute's WAL may run ahead of what the pageserver ingested before writers wait (0 = no limit).",
							NULL, &quire_max_ingest_lag_mb, 16, 0, INT_MAX / 2, PGC_SIGHUP,
							GUC_UNIT_MB, NULL, NULL, NULL);
	MarkGUCPrefixReserved("quire");
}

void
_PG_init(void)
{
	if (process_shared_preload_libraries_in_progress)
		define_postmaster_settings();
	define_settings();
	if (!process_shared_preload_libraries_in_progress)
		return;
	if (quire_pageserver_setting == NULL || quire_pageserver_setting[0] == '\0')
	{
		ereport(LOG,
				(errmsg("quire_smgr is preloaded but quire.pageserver is not set: relations stay on local disk")));
		return;
	}
	local_cache_set_owner(quire_tenant_setting, quire_timeline_setting);
	previous_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
	previous_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
	smgr_hook = quire_choose_smgr;
	refusals_install();
	backpressure_install();
}
