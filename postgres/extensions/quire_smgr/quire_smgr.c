/*-------------------------------------------------------------------------
 *
 * quire_smgr.c
 *	  Quire's compute-side storage manager: its settings and SQL probes.
 *
 * This first layer holds the backend's one connection to the pageserver
 * (pagestream.c) and SQL functions that send single requests over it, so
 * the client can be tested from SQL against a real pageserver before any
 * storage-manager callback uses it.  The connection is opened on first use
 * and opened again after any failure, or when the settings it was opened
 * with change.  Nothing here needs shared_preload_libraries.
 *
 * Errors from pagestream.c come back as return codes with a message; they
 * become ereport(ERROR) here, after the connection has been closed if its
 * stream can no longer be trusted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "varatt.h"

#include "pagestream.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(quire_getpage);
PG_FUNCTION_INFO_V1(quire_getpages);
PG_FUNCTION_INFO_V1(quire_nblocks);
PG_FUNCTION_INFO_V1(quire_exists);
PG_FUNCTION_INFO_V1(quire_dbsize);

/* Settings. */
static char *pageserver_setting = NULL;
static char *tenant_setting = NULL;
static char *timeline_setting = NULL;
static char *auth_token_setting = NULL;
static int	shard_number_setting = 0;
static int	shard_count_setting = 1;
static int	stripe_blocks_setting = 2048;
static int	connect_timeout_ms = 5000;
static int	request_timeout_ms = 30000;

/* Most blocks quire_getpages() reads in one call (32 MB of bytea). */
#define GETPAGES_PROBE_BLOCKS_MAX 4096

/* The backend's connection, and the settings it was opened with. */
static PsConn conn;
static char *conn_settings = NULL;

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Parses 32 hex digits into 16 bytes. */
static bool
parse_id(const char *text, uint8_t *out)
{
	if (strlen(text) != 32)
		return false;
	for (int i = 0; i < 16; i++)
	{
		int			hi = hex_digit(text[2 * i]);
		int			lo = hex_digit(text[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return false;
		out[i] = (uint8_t) ((hi << 4) | lo);
	}
	return true;
}

/* An empty id means "not configured yet"; anything else must parse. */
static bool
check_id(char **newval, void **extra, GucSource source)
{
	uint8_t		id[16];

	if (*newval == NULL || (*newval)[0] == '\0' || parse_id(*newval, id))
		return true;
	GUC_check_errdetail("Expected 32 hexadecimal digits.");
	return false;
}

/*
 * Splits "host:port" (or "[v6]:port") into its parts, in palloc'd memory
 * (with host NULL, only checks the form); false if it is not of that form.
 */
static bool
split_address(const char *address, char **host, char **port)
{
	const char *colon = strrchr(address, ':');
	size_t		host_len;

	if (colon == NULL || colon == address || colon[1] == '\0')
		return false;
	host_len = colon - address;
	if (address[0] == '[' && (host_len < 3 || address[host_len - 1] != ']'))
		return false;
	if (host == NULL)
		return true;
	if (address[0] == '[')
		*host = pnstrdup(address + 1, host_len - 2);
	else
		*host = pnstrdup(address, host_len);
	*port = pstrdup(colon + 1);
	return true;
}

/* Check hooks may run in any memory context: this one allocates nothing. */
static bool
check_pageserver(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0' || split_address(*newval, NULL, NULL))
		return true;
	GUC_check_errdetail("Expected host:port.");
	return false;
}

/* What conn depends on, as one string to compare. */
static char *
current_settings(void)
{
	return psprintf("%s|%s|%s|%s|%d|%d|%d|%d|%d",
					pageserver_setting ? pageserver_setting : "",
					tenant_setting ? tenant_setting : "",
					timeline_setting ? timeline_setting : "",
					auth_token_setting ? auth_token_setting : "",
					shard_number_setting, shard_count_setting,
					stripe_blocks_setting, connect_timeout_ms, request_timeout_ms);
}

/* Only a cancel or a termination should abandon a wait on the pageserver. */
static bool
backend_interrupted(void)
{
	return QueryCancelPending || ProcDiePending;
}

/* The SQLSTATE for an Error the pageserver answered with. */
static int
refusal_sqlstate(uint16_t code)
{
	switch (code)
	{
		case PS_ERR_NOT_FOUND:
			return ERRCODE_UNDEFINED_OBJECT;
		case PS_ERR_UNAUTHENTICATED:
		case PS_ERR_FORBIDDEN:
			return ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
		case PS_ERR_CORRUPT:
			return ERRCODE_DATA_CORRUPTED;
		case PS_ERR_OVERLOADED:
		case PS_ERR_SHUTTING_DOWN:
		case PS_ERR_WAL_NOT_INGESTED:
			return ERRCODE_CONNECTION_FAILURE;
		default:
			return ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
	}
}

/*
 * Turns a failed pagestream call into an ERROR; never returns.  request
 * names the request, or is NULL for opening the connection.
 */
static void
report(PsResult rc, const char *request)
{
	if (rc == PS_REFUSED)
	{
		PsRefusal  *r = &conn.refusal;

		ereport(ERROR,
				(errcode(refusal_sqlstate(r->code)),
				 errmsg("pageserver refused %s: %s: %s",
						request != NULL ? request : "the connection",
						ps_error_name(r->code), r->message),
				 errdetail("Error code %u, details %llu and %llu%s.", r->code,
						   (unsigned long long) r->detail1,
						   (unsigned long long) r->detail2,
						   r->closes ? "; the server closed the connection" : "")));
	}
	/* The interrupt, if that is what stopped the wait, takes precedence. */
	CHECK_FOR_INTERRUPTS();
	if (request == NULL)
		ereport(ERROR,
				(errcode(rc == PS_INVALID ? ERRCODE_INVALID_PARAMETER_VALUE : ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not open a pageserver connection: %s", conn.errmsg)));
	ereport(ERROR,
			(errcode(rc == PS_INVALID ? ERRCODE_INVALID_PARAMETER_VALUE : ERRCODE_CONNECTION_FAILURE),
			 errmsg("pageserver %s failed: %s", request, conn.errmsg)));
}

/* Opens conn if it is closed or was opened with other settings. */
static void
ensure_connected(void)
{
	char	   *settings = current_settings();
	char	   *host;
	char	   *port;
	PsTarget	target;
	PsResult	rc;

	if (conn.fd >= 0 && conn_settings != NULL && strcmp(settings, conn_settings) == 0)
	{
		pfree(settings);
		return;
	}
	ps_close(&conn);
	if (conn_settings != NULL)
		pfree(conn_settings);
	conn_settings = NULL;

	if (pageserver_setting == NULL || !split_address(pageserver_setting, &host, &port))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quire.pageserver is not set"),
				 errhint("Set it to the pageserver's host:port.")));
	memset(&target, 0, sizeof(target));
	if (tenant_setting == NULL || !parse_id(tenant_setting, target.tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quire.tenant is not set")));
	if (timeline_setting == NULL || !parse_id(timeline_setting, target.timeline))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quire.timeline is not set")));
	target.shard_number = (uint32_t) shard_number_setting;
	target.shard_count = (uint32_t) shard_count_setting;
	target.stripe_blocks = (uint32_t) stripe_blocks_setting;
	target.token = auth_token_setting != NULL ? auth_token_setting : "";

	conn.interrupted = backend_interrupted;
	rc = ps_connect(&conn, host, port, &target, connect_timeout_ms, request_timeout_ms);
	if (rc != PS_OK)
		report(rc, NULL);
	conn_settings = MemoryContextStrdup(TopMemoryContext, settings);
	pfree(settings);
}

/*
 * Sends one request and receives its answer.  A connection that was open
 * before this call may have gone stale (a restarted server): the request
 * is resent once on a new one, which is safe since every request is a read.
 */
static void
call(const PsRequest *request, PsAnswer *answer, const char *what)
{
	for (int attempt = 0;; attempt++)
	{
		bool		was_open = conn.fd >= 0;
		PsResult	rc;

		ensure_connected();
		rc = ps_send(&conn, request, NULL);
		if (rc == PS_OK)
			rc = ps_receive(&conn, answer);
		if (rc == PS_OK)
			return;
		if (rc == PS_BROKEN && was_open && attempt == 0 && !backend_interrupted())
			continue;
		report(rc, what);
	}
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
	call(&request, &answer, "GetPage");
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

	ensure_connected();
	while (received < (uint32_t) count)
	{
		/*
		 * As many blocks as the server takes and its frames hold; at least
		 * one, so that a server whose frames cannot hold even one GetPages
		 * page is refused by ps_send rather than looped on.
		 */
		uint32_t	step = Min(conn.limits.blocks_per_request_max,
							   (conn.limits.frame_bytes_max - PS_HEADER_BYTES - 16) / PS_PAGE_BYTES);

		step = Max(step, 1);

		/* Keep the pipeline full, never past what the server reads ahead. */
		while (sent < (uint32_t) count && ps_pending(&conn) < conn.depth_max)
		{
			request.block = first + sent;
			request.count = Min(step, (uint32_t) count - sent);
			request.pages = VARDATA(pages) + (Size) sent * PS_PAGE_BYTES;
			rc = ps_send(&conn, &request, NULL);
			if (rc != PS_OK)
			{
				ps_close(&conn);
				report(rc, "GetPages");
			}
			sent += request.count;
		}
		rc = ps_receive(&conn, &answer);
		if (rc != PS_OK)
		{
			/* Answers still queued behind this one would be misread later. */
			ps_close(&conn);
			report(rc, "GetPages");
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
	call(&request, &answer, "Nblocks");
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
	call(&request, &answer, "Exists");
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
	call(&request, &answer, "DbSize");
	if (answer.size_bytes > (uint64) PG_INT64_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("pageserver says database %u has %llu bytes", request.db_oid,
						(unsigned long long) answer.size_bytes)));
	PG_RETURN_INT64((int64) answer.size_bytes);
}

void
_PG_init(void)
{
	ps_init(&conn);

	/*
	 * PGC_SUSET: which pageserver and timeline a backend reads is the
	 * administrator's choice, and a session must not point its pages
	 * elsewhere.
	 */
	DefineCustomStringVariable("quire.pageserver",
							   "The pageserver's page service, as host:port.",
							   NULL, &pageserver_setting, "", PGC_SUSET, 0,
							   check_pageserver, NULL, NULL);
	DefineCustomStringVariable("quire.tenant",
							   "The tenant whose pages this compute reads (32 hex digits).",
							   NULL, &tenant_setting, "", PGC_SUSET, 0,
							   check_id, NULL, NULL);
	DefineCustomStringVariable("quire.timeline",
							   "The timeline whose pages this compute reads (32 hex digits).",
							   NULL, &timeline_setting, "", PGC_SUSET, 0,
							   check_id, NULL, NULL);
	DefineCustomStringVariable("quire.auth_token",
							   "The signed token sent in the page protocol's Hello.",
							   NULL, &auth_token_setting, "", PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("quire.shard_number",
							"Which shard of the tenant the connection opens.",
							NULL, &shard_number_setting, 0, 0, 255, PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("quire.shard_count",
							"The tenant's number of shards (1 = unsharded).",
							NULL, &shard_count_setting, 1, 1, 256, PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("quire.stripe_blocks",
							"The tenant's shard stripe in pages.",
							NULL, &stripe_blocks_setting, 2048, 1, INT_MAX, PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("quire.connect_timeout",
							"How long opening a pageserver connection may take.",
							NULL, &connect_timeout_ms, 5000, 1, INT_MAX, PGC_SUSET,
							GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("quire.request_timeout",
							"How long reading or writing one frame may take.",
							NULL, &request_timeout_ms, 30000, 1, INT_MAX, PGC_SUSET,
							GUC_UNIT_MS, NULL, NULL, NULL);
	MarkGUCPrefixReserved("quire");
}
