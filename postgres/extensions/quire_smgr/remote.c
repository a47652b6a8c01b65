/*-------------------------------------------------------------------------
 *
 * remote.c
 *	  A backend's connections to the tenant's pageserver shards: routing
 *	  by the stripe rule, the prefetch ring, retries and reconnects.
 *
 * Each shard has one connection (pagestream.c), opened on first use and
 * again after it broke, within quire.retry_timeout.  Requests on it are
 * pipelined and answered in order; `outstanding` mirrors the connection's
 * queue, saying for each request whether a read waits for it or which
 * prefetch slot its page goes to.
 *
 * The prefetch ring holds quire.prefetch_slots pages, each one GetPage
 * sent ahead of the read that will want it.  A read takes a slot's page
 * only if the page was served at or after the block's current
 * last-written LSN, so an answer that raced with a newer eviction of the
 * same block is dropped, never used.
 *
 * Every request is a read, so a request lost with a broken connection is
 * sent again on a new one.  WalNotIngested, Overloaded and ShuttingDown
 * answers are retried with a growing pause; NotFound goes back to the
 * caller; every other refusal is an ERROR carrying the server's text.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/memutils.h"

#include "backpressure.h"
#include "local_cache.h"
#include "remote.h"
#include "stats.h"

char	   *quire_pageserver_setting = NULL;
char	   *quire_tenant_setting = NULL;
char	   *quire_timeline_setting = NULL;
char	   *quire_auth_token_setting = NULL;
int			quire_shard_count_setting = 1;
int			quire_stripe_blocks_setting = 2048;
int			quire_connect_timeout_ms = 5000;
int			quire_request_timeout_ms = 30000;
int			quire_retry_timeout_ms = 60000;
int			quire_prefetch_slots = 64;

#define MAX_SHARDS 256
#define DEMAND -1

typedef struct Outstanding
{
	uint64		request_id;
	int			slot;			/* prefetch slot, or DEMAND */
} Outstanding;

typedef struct Shard
{
	PsConn		conn;
	Outstanding out[PS_CLIENT_DEPTH_MAX];
	uint32		out_head;
	uint32		out_len;
} Shard;

typedef enum SlotState
{
	SLOT_FREE,
	SLOT_PENDING,
	SLOT_READY,
} SlotState;

typedef struct Slot
{
	SlotState	state;
	uint32		shard;
	RelFileLocator loc;
	ForkNumber	fork;
	BlockNumber block;
	XLogRecPtr	served_lsn;
	uint64		used_tick;
	char	   *page;
} Slot;

static Shard *shards[MAX_SHARDS];
static char *shards_settings = NULL;
static Slot *slots = NULL;
static int	slot_count = 0;
static uint64 tick = 0;

/* What the connections depend on, as one string to compare. */
static char *
current_settings(void)
{
	return psprintf("%s|%s|%s|%s|%d|%d|%d|%d",
					quire_pageserver_setting ? quire_pageserver_setting : "",
					quire_tenant_setting ? quire_tenant_setting : "",
					quire_timeline_setting ? quire_timeline_setting : "",
					quire_auth_token_setting ? quire_auth_token_setting : "",
					quire_shard_count_setting, quire_stripe_blocks_setting,
					quire_connect_timeout_ms, quire_request_timeout_ms);
}

/* Only a cancel or a termination should abandon a wait on the pageserver. */
static bool
backend_interrupted(void)
{
	return QueryCancelPending || ProcDiePending;
}

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

void
remote_report(PsConn *conn, PsResult rc, const char *request)
{
	if (rc == PS_REFUSED)
	{
		PsRefusal  *r = &conn->refusal;

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
				 errmsg("could not open a pageserver connection: %s", conn->errmsg)));
	ereport(ERROR,
			(errcode(rc == PS_INVALID ? ERRCODE_INVALID_PARAMETER_VALUE : ERRCODE_CONNECTION_FAILURE),
			 errmsg("pageserver %s failed: %s", request, conn->errmsg)));
}

/* Frees every slot waiting on shard s: its connection is gone. */
static void
forget_outstanding(uint32 s)
{
	Shard	   *sh = shards[s];

	for (uint32 i = 0; i < sh->out_len; i++)
	{
		Outstanding *o = &sh->out[(sh->out_head + i) % PS_CLIENT_DEPTH_MAX];

		if (o->slot != DEMAND)
		{
			slots[o->slot].state = SLOT_FREE;
			stats_count(QC_PREFETCH_DROPPED, 1);
		}
	}
	sh->out_head = 0;
	sh->out_len = 0;
}

static void
close_shard(uint32 s)
{
	forget_outstanding(s);
	ps_close(&shards[s]->conn);
}

/* Closes every connection if the settings they were opened with changed. */
static void
check_settings(void)
{
	char	   *settings = current_settings();

	if (shards_settings != NULL && strcmp(settings, shards_settings) == 0)
	{
		pfree(settings);
		return;
	}
	for (int s = 0; s < MAX_SHARDS; s++)
		if (shards[s] != NULL)
			close_shard(s);
	if (shards_settings != NULL)
		pfree(shards_settings);
	shards_settings = MemoryContextStrdup(TopMemoryContext, settings);
	pfree(settings);
}

/*
 * Tries once to connect shard s; PS_OK, or the failure (conn->errmsg).
 * Settings that cannot work are an ERROR at once.
 */
static PsResult
try_connect(uint32 s)
{
	Shard	   *sh = shards[s];
	PsTarget	target;
	char	   *host;
	char	   *port;
	PsResult	rc;

	if (quire_pageserver_setting == NULL || quire_pageserver_setting[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quire.pageserver is not set"),
				 errhint("Set it to the pageserver's host:port.")));
	if (!remote_nth_address(quire_pageserver_setting, s, &host, &port))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quire.pageserver names no address for shard %u of %d", s,
						quire_shard_count_setting),
				 errhint("Give one address for all shards, or one per shard.")));
	memset(&target, 0, sizeof(target));
	if (quire_tenant_setting == NULL || !remote_parse_id(quire_tenant_setting, target.tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quire.tenant is not set")));
	if (quire_timeline_setting == NULL || !remote_parse_id(quire_timeline_setting, target.timeline))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quire.timeline is not set")));
	target.shard_number = s;
	target.shard_count = (uint32) quire_shard_count_setting;
	target.stripe_blocks = (uint32) quire_stripe_blocks_setting;
	target.token = quire_auth_token_setting != NULL ? quire_auth_token_setting : "";
	sh->conn.interrupted = backend_interrupted;
	rc = ps_connect(&sh->conn, host, port, &target, quire_connect_timeout_ms,
					quire_request_timeout_ms);
	pfree(host);
	pfree(port);
	sh->out_head = 0;
	sh->out_len = 0;
	return rc;
}

/*
 * Whether a refusal is worth waiting out.  A tenant, timeline or shard the
 * pageserver does not hold is, for the compute's own timeline once it has
 * been served from it (any backend has seen an answer): its pageserver was
 * replaced and is attaching it again from object storage, which is waited
 * out like a pageserver that is down.  Otherwise (before that, or a
 * session pointed elsewhere) it is a setting that cannot work, an ERROR at
 * once.
 */
static bool
transient_refusal(const PsRefusal *r)
{
	if (r->code == PS_ERR_UNKNOWN_TENANT || r->code == PS_ERR_UNKNOWN_TIMELINE ||
		r->code == PS_ERR_SHARD_NOT_HERE)
		return local_cache_is_home() && backpressure_ingested_seen() != InvalidXLogRecPtr;
	return r->code == PS_ERR_WAL_NOT_INGESTED || r->code == PS_ERR_OVERLOADED ||
		r->code == PS_ERR_SHUTTING_DOWN;
}

/* Sleeps before the next attempt (10 ms doubling to 1 s); false past the deadline. */
static bool
pause_before_retry(instr_time started, int attempt)
{
	instr_time	now;
	long		pause_ms = Min(10L << Min(attempt, 7), 1000L);

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, started);
	if (INSTR_TIME_GET_MILLISEC(now) + pause_ms > quire_retry_timeout_ms)
		return false;
	CHECK_FOR_INTERRUPTS();
	pg_usleep(pause_ms * 1000L);
	CHECK_FOR_INTERRUPTS();
	stats_count(QC_RETRIES, 1);
	return true;
}

/*
 * Shard s's connection, opened (again) if need be: within
 * quire.retry_timeout when retry, else in one attempt.
 */
static Shard *
open_shard(uint32 s, bool retry)
{
	instr_time	started;

	if (s >= MAX_SHARDS || s >= (uint32) quire_shard_count_setting)
		elog(ERROR, "shard %u of %d", s, quire_shard_count_setting);
	check_settings();
	if (shards[s] == NULL)
	{
		shards[s] = MemoryContextAllocZero(TopMemoryContext, sizeof(Shard));
		ps_init(&shards[s]->conn);
	}
	if (shards[s]->conn.fd >= 0)
		return shards[s];
	INSTR_TIME_SET_CURRENT(started);
	for (int attempt = 0;; attempt++)
	{
		PsResult	rc = try_connect(s);

		if (rc == PS_OK)
		{
			if (attempt > 0)
				stats_count(QC_RECONNECTS, 1);
			return shards[s];
		}
		if (rc == PS_INVALID || (rc == PS_REFUSED && !transient_refusal(&shards[s]->conn.refusal)))
			remote_report(&shards[s]->conn, rc, NULL);
		if (!retry || backend_interrupted() || !pause_before_retry(started, attempt))
			remote_report(&shards[s]->conn, rc, NULL);
	}
}

static Shard *
connected_shard(uint32 s)
{
	return open_shard(s, true);
}

/*
 * Receives the answer of the oldest request on shard sh and settles it: a
 * prefetch answer goes to its slot.  Returns the result and, for a read's
 * own request, *was_demand; on PS_BROKEN everything outstanding is gone.
 */
static PsResult
receive_one(uint32 s, PsAnswer *answer, uint64 *request_id, bool *was_demand)
{
	Shard	   *sh = shards[s];
	Outstanding head = sh->out[sh->out_head];
	PsResult	rc;

	Assert(sh->out_len > 0);
	*request_id = head.request_id;
	*was_demand = head.slot == DEMAND;
	rc = ps_receive(&sh->conn, answer);
	if (rc == PS_BROKEN)
	{
		/* The head's slot is freed with the rest. */
		forget_outstanding(s);
		return rc;
	}
	sh->out_head = (sh->out_head + 1) % PS_CLIENT_DEPTH_MAX;
	sh->out_len--;
	if (rc == PS_OK)
		backpressure_saw(answer->lsn);
	if (head.slot != DEMAND)
	{
		Slot	   *slot = &slots[head.slot];

		if (rc == PS_OK)
		{
			slot->state = SLOT_READY;
			slot->served_lsn = answer->lsn;
		}
		else
		{
			slot->state = SLOT_FREE;
			stats_count(QC_PREFETCH_DROPPED, 1);
		}
	}
	/* An Error that closes the connection takes the requests behind it along. */
	if (sh->conn.fd < 0)
		forget_outstanding(s);
	return rc;
}

/* Sends a request on shard s, making room in its pipeline first. */
static PsResult
send_request(uint32 s, const PsRequest *request, int slot, uint64 *request_id)
{
	Shard	   *sh = shards[s];
	PsResult	rc;

	while (ps_pending(&sh->conn) >= sh->conn.depth_max && sh->out_len > 0)
	{
		PsAnswer	answer;
		uint64		id;
		bool		demand;

		rc = receive_one(s, &answer, &id, &demand);
		if (rc == PS_BROKEN)
			return rc;
	}
	rc = ps_send(&sh->conn, request, request_id);
	if (rc == PS_OK)
	{
		Outstanding *o = &sh->out[(sh->out_head + sh->out_len) % PS_CLIENT_DEPTH_MAX];

		o->request_id = *request_id;
		o->slot = slot;
		sh->out_len++;
	}
	else if (rc == PS_BROKEN)
		forget_outstanding(s);
	return rc;
}

/*
 * Sends request on shard s and waits for its answer, settling prefetches
 * queued before it; retries as the file's header says.  Returns PS_OK or
 * PS_REFUSED with NotFound; everything else is an ERROR.
 */
static PsResult
call_with_retries(uint32 s, const PsRequest *request, PsAnswer *answer, const char *what)
{
	instr_time	started;

	INSTR_TIME_SET_CURRENT(started);
	for (int attempt = 0;; attempt++)
	{
		Shard	   *sh = connected_shard(s);
		uint64		id;
		PsResult	rc = send_request(s, request, DEMAND, &id);

		if (rc == PS_INVALID)
			remote_report(&sh->conn, rc, what);
		if (rc == PS_OK)
		{
			for (;;)
			{
				uint64		got;
				bool		demand;

				rc = receive_one(s, answer, &got, &demand);
				if (rc == PS_BROKEN || got == id)
					break;
				if (sh->conn.fd < 0)
				{
					/* Closed by an Error answering an earlier request. */
					rc = PS_BROKEN;
					break;
				}
			}
		}
		if (rc == PS_OK)
			return rc;
		if (rc == PS_REFUSED && sh->conn.refusal.code == PS_ERR_NOT_FOUND)
			return rc;
		if (rc == PS_REFUSED && !transient_refusal(&sh->conn.refusal))
			remote_report(&sh->conn, rc, what);
		if (backend_interrupted() || !pause_before_retry(started, attempt))
			remote_report(&sh->conn, rc, what);
	}
}

uint32
remote_run_limit(RelFileLocator loc, BlockNumber first, uint32 wanted)
{
	uint32		limit = PS_BLOCKS_PER_REQUEST_MAX;
	uint32		stripe = (uint32) Max(quire_stripe_blocks_setting, 1);
	Shard	   *sh = connected_shard(remote_shard_of(loc, first));

	limit = Min(limit, sh->conn.limits.blocks_per_request_max);
	limit = Min(limit, (sh->conn.limits.frame_bytes_max - PS_HEADER_BYTES - 16) / PS_PAGE_BYTES);
	limit = Max(limit, 1);
	/* A run stays inside one stripe, so on one shard. */
	if (quire_shard_count_setting > 1)
		limit = Min(limit, stripe - first % stripe);
	return Min(limit, wanted);
}

RemoteReadResult
remote_read(RelFileLocator loc, ForkNumber fork, BlockNumber first, uint32 count, char *pages,
			XLogRecPtr not_modified_since)
{
	PsRequest	request;
	PsAnswer	answer;
	instr_time	began;
	instr_time	took;
	PsResult	rc;

	memset(&request, 0, sizeof(request));
	request.kind = count == 1 ? PS_KIND_GET_PAGE : PS_KIND_GET_PAGES;
	request.request_lsn = PS_LSN_LATEST;
	request.not_modified_since = not_modified_since;
	request.rel.spc_oid = loc.spcOid;
	request.rel.db_oid = loc.dbOid;
	request.rel.rel_number = loc.relNumber;
	request.rel.fork = (uint8_t) fork;
	request.block = first;
	request.count = count;
	request.pages = pages;
	INSTR_TIME_SET_CURRENT(began);
	rc = call_with_retries(remote_shard_of(loc, first), &request, &answer,
						   count == 1 ? "GetPage" : "GetPages");
	INSTR_TIME_SET_CURRENT(took);
	INSTR_TIME_SUBTRACT(took, began);
	stats_read_latency((uint64) INSTR_TIME_GET_MICROSEC(took));
	stats_count(QC_READ_REQUESTS, 1);
	if (rc != PS_OK)
		return REMOTE_READ_NOT_FOUND;
	stats_count(QC_READ_PAGES, count);
	return REMOTE_READ_OK;
}

static void
ensure_slots(void)
{
	char	   *pages;

	if (slots != NULL || quire_prefetch_slots <= 0)
		return;
	pages = MemoryContextAllocAligned(TopMemoryContext, (Size) quire_prefetch_slots * BLCKSZ,
									  PG_IO_ALIGN_SIZE, 0);
	slots = MemoryContextAllocZero(TopMemoryContext, sizeof(Slot) * quire_prefetch_slots);
	for (int i = 0; i < quire_prefetch_slots; i++)
		slots[i].page = pages + (Size) i * BLCKSZ;
	slot_count = quire_prefetch_slots;
}

static int
find_slot(RelFileLocator loc, ForkNumber fork, BlockNumber block)
{
	for (int i = 0; i < slot_count; i++)
	{
		Slot	   *slot = &slots[i];

		if (slot->state != SLOT_FREE && slot->block == block && slot->fork == fork &&
			RelFileLocatorEquals(slot->loc, loc))
			return i;
	}
	return -1;
}

/* Waits until slot i's answer is in (or its request failed). */
static void
wait_for_slot(int i)
{
	Slot	   *slot = &slots[i];

	while (slot->state == SLOT_PENDING)
	{
		PsAnswer	answer;
		uint64		id;
		bool		demand;

		/* A broken connection frees the slot, which ends the loop. */
		(void) receive_one(slot->shard, &answer, &id, &demand);
	}
}

bool
remote_take_prefetched(RelFileLocator loc, ForkNumber fork, BlockNumber block,
					   XLogRecPtr not_modified_since, char *page)
{
	int			i;

	if (slots == NULL)
		return false;
	i = find_slot(loc, fork, block);
	if (i < 0)
		return false;
	wait_for_slot(i);
	if (slots[i].state != SLOT_READY)
		return false;
	slots[i].state = SLOT_FREE;
	if (slots[i].served_lsn < not_modified_since)
	{
		stats_count(QC_PREFETCH_STALE, 1);
		return false;
	}
	memcpy(page, slots[i].page, BLCKSZ);
	stats_count(QC_PREFETCH_HITS, 1);
	return true;
}

/* A slot to prefetch into: a free one, else the least recently filled ready one. */
static int
claim_slot(void)
{
	int			oldest = -1;
	int			oldest_pending = -1;

	for (int i = 0; i < slot_count; i++)
	{
		if (slots[i].state == SLOT_FREE)
			return i;
		if (slots[i].state == SLOT_READY &&
			(oldest < 0 || slots[i].used_tick < slots[oldest].used_tick))
			oldest = i;
		if (slots[i].state == SLOT_PENDING &&
			(oldest_pending < 0 || slots[i].used_tick < slots[oldest_pending].used_tick))
			oldest_pending = i;
	}
	if (oldest < 0 && oldest_pending >= 0)
	{
		wait_for_slot(oldest_pending);
		oldest = oldest_pending;
	}
	if (oldest >= 0 && slots[oldest].state == SLOT_READY)
		stats_count(QC_PREFETCH_DROPPED, 1);
	if (oldest >= 0)
		slots[oldest].state = SLOT_FREE;
	return oldest;
}

void
remote_prefetch(RelFileLocator loc, ForkNumber fork, BlockNumber block,
				XLogRecPtr not_modified_since)
{
	PsRequest	request;
	uint32		s = remote_shard_of(loc, block);
	uint64		id;
	int			i;
	PsResult	rc;

	ensure_slots();
	if (slot_count == 0 || find_slot(loc, fork, block) >= 0)
		return;
	i = claim_slot();
	if (i < 0)
		return;
	(void) connected_shard(s);
	memset(&request, 0, sizeof(request));
	request.kind = PS_KIND_GET_PAGE;
	request.request_lsn = PS_LSN_LATEST;
	request.not_modified_since = not_modified_since;
	request.rel.spc_oid = loc.spcOid;
	request.rel.db_oid = loc.dbOid;
	request.rel.rel_number = loc.relNumber;
	request.rel.fork = (uint8_t) fork;
	request.block = block;
	request.pages = slots[i].page;
	slots[i].state = SLOT_PENDING;
	slots[i].shard = s;
	slots[i].loc = loc;
	slots[i].fork = fork;
	slots[i].block = block;
	slots[i].used_tick = ++tick;
	rc = send_request(s, &request, i, &id);
	if (rc != PS_OK)
	{
		/* A prefetch is only advice: the read will try again and report. */
		slots[i].state = SLOT_FREE;
		return;
	}
	stats_count(QC_PREFETCH_REQUESTS, 1);
	stats_count(QC_PREFETCH_PAGES, 1);
}

void
remote_forget_prefetched(RelFileLocator loc)
{
	for (int i = 0; i < slot_count; i++)
		if (slots[i].state == SLOT_READY && RelFileLocatorEquals(slots[i].loc, loc))
			slots[i].state = SLOT_FREE;
}

static void
rel_request(PsRequest *request, uint8_t kind, RelFileLocator loc, ForkNumber fork,
			XLogRecPtr not_modified_since)
{
	memset(request, 0, sizeof(*request));
	request->kind = kind;
	request->request_lsn = PS_LSN_LATEST;
	request->not_modified_since = not_modified_since;
	request->rel.spc_oid = loc.spcOid;
	request->rel.db_oid = loc.dbOid;
	request->rel.rel_number = loc.relNumber;
	request->rel.fork = (uint8_t) fork;
}

bool
remote_nblocks(RelFileLocator loc, ForkNumber fork, XLogRecPtr not_modified_since,
			   BlockNumber *nblocks)
{
	PsRequest	request;
	PsAnswer	answer;

	rel_request(&request, PS_KIND_NBLOCKS, loc, fork, not_modified_since);
	stats_count(QC_NBLOCKS_REMOTE, 1);
	if (call_with_retries(0, &request, &answer, "Nblocks") != PS_OK)
		return false;
	*nblocks = answer.nblocks;
	return true;
}

bool
remote_exists(RelFileLocator loc, ForkNumber fork, XLogRecPtr not_modified_since)
{
	PsRequest	request;
	PsAnswer	answer;

	rel_request(&request, PS_KIND_EXISTS, loc, fork, not_modified_since);
	stats_count(QC_EXISTS_REMOTE, 1);
	if (call_with_retries(0, &request, &answer, "Exists") != PS_OK)
		return false;
	return answer.exists;
}

PsConn *
remote_probe_conn(uint32 shard)
{
	Shard	   *sh = open_shard(shard, false);

	while (sh->out_len > 0)
	{
		PsAnswer	answer;
		uint64		id;
		bool		demand;

		if (receive_one(shard, &answer, &id, &demand) == PS_BROKEN)
			sh = open_shard(shard, false);
	}
	return &sh->conn;
}

void
remote_probe_call(uint32 shard, const PsRequest *request, PsAnswer *answer, const char *what)
{
	for (int attempt = 0;; attempt++)
	{
		bool		was_open = shards[shard] != NULL && shards[shard]->conn.fd >= 0;
		PsConn	   *conn = remote_probe_conn(shard);
		PsResult	rc = ps_send(conn, request, NULL);

		if (rc == PS_OK)
			rc = ps_receive(conn, answer);
		if (rc == PS_OK)
			return;
		if (rc == PS_BROKEN && was_open && attempt == 0 && !backend_interrupted())
			continue;
		remote_report(conn, rc, what);
	}
}
