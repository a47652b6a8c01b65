/*-------------------------------------------------------------------------
 *
 * quire_walredo.c
 *	  Quire's page-redo service: "postgres --wal-redo quire_walredo DIR".
 *
 * The pageserver rebuilds a page by replaying, on its last image, the WAL
 * records that touched it since.  This process does the replay with
 * Postgres' own redo routines: it sets up a standalone process with shared
 * memory and a tiny buffer pool, makes every relation live in an in-memory
 * storage manager (inmem_smgr.c), sets the core patch's read-buffer filter
 * so that a record touches only the page being rebuilt, closes every other
 * descriptor, enters a seccomp sandbox (redo_sandbox.c), and then serves the
 * binary protocol of docs/redo-protocol.md on stdin/stdout until stdin
 * closes.  DIR is a scratch directory the process owns (Postgres' System V
 * interlock segment is keyed on it); it never reads or writes a cluster's
 * data directory.
 *
 * On any error the process replies with the message and exits: its state
 * after a failed redo routine is not trusted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xlogreader.h"
#include "access/xlogrecovery.h"
#include "access/xlogutils.h"
#include "catalog/pg_control.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "quire_walredo.h"
#include "storage/buf_internals.h"
#include "storage/bufmgr.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

PG_MODULE_MAGIC;

extern PGDLLEXPORT void WalRedoMain(int argc, char *argv[]);

/* Message kinds (docs/redo-protocol.md). */
#define MSG_BEGIN 'B'
#define MSG_PUSH 'P'
#define MSG_APPLY 'A'
#define MSG_GET 'G'
#define MSG_REBUILD 'R'
#define MSG_MASK 'M'
#define MSG_PING 'Y'
#define MSG_PROBE_SANDBOX 'X'
#define REPLY_OK 'K'
#define REPLY_ERROR 'E'

#define TAG_SIZE 17				/* spc, db, rel (u32 each), fork (u8), block (u32) */
#define MAX_MESSAGE (1024 * 1024 * 1024)

RedoTarget	redo_target;

static XLogReaderState *reader;
static MemoryContext page_context;

/* Input: a buffer over stdin. */
static char *in_buf;
static size_t in_cap = 1024 * 1024;
static size_t in_start = 0;
static size_t in_end = 0;

/* Output: replies collected until the process would wait for input. */
static char *out_buf;
static size_t out_cap = 1024 * 1024;
static size_t out_len = 0;

/* The message being handled. */
static char *msg_buf;
static size_t msg_cap = 0;

/* A record copied to MAXALIGNed memory for DecodeXLogRecord. */
static char *rec_buf;
static size_t rec_cap = 0;

static void
write_all(const char *data, size_t len)
{
	while (len > 0)
	{
		ssize_t		n = write(STDOUT_FILENO, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
		{
			/* The pageserver went away: nothing left to serve. */
			proc_exit(1);
		}
		data += n;
		len -= (size_t) n;
	}
}

static void
flush_output(void)
{
	write_all(out_buf, out_len);
	out_len = 0;
}

static void
reply(char status, const char *body, uint32 len)
{
	if (out_len + 5 + len > out_cap)
	{
		flush_output();
		if (5 + (size_t) len > out_cap)
		{
			char		header[5];

			header[0] = status;
			memcpy(header + 1, &len, 4);
			write_all(header, 5);
			write_all(body, len);
			return;
		}
	}
	out_buf[out_len] = status;
	memcpy(out_buf + out_len + 1, &len, 4);
	if (len > 0)
		memcpy(out_buf + out_len + 5, body, len);
	out_len += 5 + len;
}

/* Room for a reply of len bytes (at most out_cap - 5) in the output. */
static char *
reply_space(char status, uint32 len)
{
	char	   *body;

	Assert(5 + (size_t) len <= out_cap);
	if (out_len + 5 + len > out_cap)
		flush_output();
	out_buf[out_len] = status;
	memcpy(out_buf + out_len + 1, &len, 4);
	body = out_buf + out_len + 5;
	out_len += 5 + len;
	return body;
}

/* Reads exactly len bytes from stdin; false at a clean end of input. */
static bool
read_exact(char *dst, size_t len)
{
	while (len > 0)
	{
		size_t		avail = in_end - in_start;

		if (avail == 0)
		{
			ssize_t		n;

			/* About to wait: the pageserver must have every reply first. */
			flush_output();
			in_start = in_end = 0;
			n = read(STDIN_FILENO, in_buf, in_cap);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
				ereport(FATAL, (errmsg("could not read a redo request: %m")));
			if (n == 0)
				return false;
			in_end = (size_t) n;
			continue;
		}
		avail = Min(avail, len);
		memcpy(dst, in_buf + in_start, avail);
		in_start += avail;
		dst += avail;
		len -= avail;
	}
	return true;
}

/* A cursor over a message body; every read is bounds-checked. */
typedef struct Cursor
{
	const char *data;
	size_t		len;
	size_t		pos;
} Cursor;

static const char *
take(Cursor *c, size_t n, const char *what)
{
	const char *p;

	if (c->len - c->pos < n)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("redo request truncated: %s needs %zu bytes, %zu left",
						what, n, c->len - c->pos)));
	p = c->data + c->pos;
	c->pos += n;
	return p;
}

static uint32
take_u32(Cursor *c, const char *what)
{
	uint32		v;

	memcpy(&v, take(c, 4, what), 4);
	return v;
}

static uint64
take_u64(Cursor *c, const char *what)
{
	uint64		v;

	memcpy(&v, take(c, 8, what), 8);
	return v;
}

static void
expect_end(Cursor *c, char kind)
{
	if (c->pos != c->len)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("redo request '%c' has %zu bytes after its end",
						kind, c->len - c->pos)));
}

/*
 * Drops every buffer and stored page of the previous rebuild.  Only the
 * databases of buffers that hold a page are dropped: a rebuild touches one
 * or two, and DropDatabaseBuffers of a database no buffer holds is a scan
 * of the descriptors and nothing more.  (Dropping database 0, where shared
 * catalogs live, also matches the free buffers, whose cleared tags say 0;
 * that costs a hash per buffer, so it happens only when a shared page was
 * rebuilt.)
 */
static void
end_page(void)
{
	Oid			dbs[8];
	int			ndbs = 0;

	for (int i = 0; i < NBuffers; i++)
	{
		BufferDesc *desc = GetBufferDescriptor(i);
		uint32		state = pg_atomic_read_u32(&desc->state);
		Oid			db = desc->tag.dbOid;
		bool		seen = false;

		/* One process, no concurrent change: the unlocked read is exact. */
		if ((state & BM_TAG_VALID) == 0)
			continue;
		for (int j = 0; j < ndbs && !seen; j++)
			seen = dbs[j] == db;
		if (seen)
			continue;
		if (ndbs == lengthof(dbs))
		{
			/* Many databases in one rebuild: drop this one right away. */
			DropDatabaseBuffers(db);
			continue;
		}
		dbs[ndbs++] = db;
	}
	for (int i = 0; i < ndbs; i++)
		DropDatabaseBuffers(dbs[i]);
	inmem_reset();
	redo_target.valid = false;
	MemoryContextReset(page_context);
}

static void
begin_page(Cursor *c)
{
	const char *tag = take(c, TAG_SIZE, "page tag");
	uint8		fork;

	end_page();
	memcpy(&redo_target.rlocator.spcOid, tag, 4);
	memcpy(&redo_target.rlocator.dbOid, tag + 4, 4);
	memcpy(&redo_target.rlocator.relNumber, tag + 8, 4);
	fork = (uint8) tag[12];
	memcpy(&redo_target.blkno, tag + 13, 4);
	if (fork > MAX_FORKNUM)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("invalid fork number %u", fork)));
	if (redo_target.blkno == InvalidBlockNumber)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("invalid block number %u", redo_target.blkno)));
	redo_target.forknum = (ForkNumber) fork;
	redo_target.valid = true;
}

static void
require_target(const char *what)
{
	if (!redo_target.valid)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("%s before a page was begun", what)));
}

static void
push_image(const char *page)
{
	require_target("a base image");
	inmem_put_page(redo_target.rlocator, redo_target.forknum,
				   redo_target.blkno, page);
}

/* Whether a record's resource manager changes pages this process can rebuild. */
static void
check_page_record(XLogRecord *record)
{
	uint8		info = record->xl_info & ~XLR_INFO_MASK;

	if (record->xl_rmid == RM_XLOG_ID &&
		(info == XLOG_FPI || info == XLOG_FPI_FOR_HINT))
		return;
	if (RmgrIdExists(record->xl_rmid) &&
		GetRmgr(record->xl_rmid).rm_mask != NULL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("record of resource manager %u (info 0x%02X) changes no page the redo process can rebuild",
					record->xl_rmid, record->xl_info)));
}

/* Replays one whole WAL record (header included) on the target page. */
static void
apply_record(XLogRecPtr start, XLogRecPtr end, const char *bytes, size_t len)
{
	XLogRecord *record;
	DecodedXLogRecord *decoded;
	char	   *errormsg = NULL;
	pg_crc32c	crc;

	require_target("a record");
	if (len < SizeOfXLogRecord || len > XLogRecordMaxSize)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("record at %X/%X has invalid length %zu",
						LSN_FORMAT_ARGS(start), len)));
	if (len > rec_cap)
	{
		rec_cap = Max(len, rec_cap * 2);
		rec_buf = rec_buf == NULL ?
			MemoryContextAllocHuge(TopMemoryContext, rec_cap) :
			repalloc_huge(rec_buf, rec_cap);
	}
	memcpy(rec_buf, bytes, len);
	record = (XLogRecord *) rec_buf;
	if (record->xl_tot_len != len)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("record at %X/%X says it is %u bytes but %zu were sent",
						LSN_FORMAT_ARGS(start), record->xl_tot_len, len)));
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, rec_buf + SizeOfXLogRecord, len - SizeOfXLogRecord);
	COMP_CRC32C(crc, rec_buf, offsetof(XLogRecord, xl_crc));
	FIN_CRC32C(crc);
	if (!EQ_CRC32C(record->xl_crc, crc))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("record at %X/%X has a wrong checksum",
						LSN_FORMAT_ARGS(start))));
	if (end <= start)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("record end %X/%X is not after its start %X/%X",
						LSN_FORMAT_ARGS(end), LSN_FORMAT_ARGS(start))));
	check_page_record(record);

	decoded = MemoryContextAlloc(page_context, DecodeXLogRecordRequiredSpace(len));
	reader->ReadRecPtr = start;
	reader->EndRecPtr = end;
	if (!DecodeXLogRecord(reader, decoded, record, start, &errormsg))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("record at %X/%X does not decode: %s",
						LSN_FORMAT_ARGS(start),
						errormsg ? errormsg : "no reason given")));
	reader->record = decoded;
	GetRmgr(record->xl_rmid).rm_redo(reader);
	reader->record = NULL;
}

/* Replies with the target page as redo left it, then forgets the rebuild. */
static void
get_page(void)
{
	Buffer		buf;

	require_target("a page request");
	buf = ReadBufferWithoutRelcache(redo_target.rlocator, redo_target.forknum,
									redo_target.blkno, RBM_NORMAL, NULL, true);
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	/* Straight into the output: one copy of the page. */
	memcpy(reply_space(REPLY_OK, BLCKSZ), BufferGetPage(buf), BLCKSZ);
	UnlockReleaseBuffer(buf);
	end_page();
}

static void
apply_message(Cursor *c)
{
	XLogRecPtr	start = take_u64(c, "record start");
	XLogRecPtr	end = take_u64(c, "record end");

	apply_record(start, end, c->data + c->pos, c->len - c->pos);
	c->pos = c->len;
}

/* The batch form: many pages, each with its image and records. */
static void
rebuild_message(Cursor *c)
{
	uint32		npages = take_u32(c, "page count");

	for (uint32 i = 0; i < npages; i++)
	{
		uint8		flags;
		uint32		nrecords;

		begin_page(c);
		flags = (uint8) *take(c, 1, "page flags");
		if (flags & ~1)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("unknown page flags 0x%02X", flags)));
		if (flags & 1)
			push_image(take(c, BLCKSZ, "base image"));
		nrecords = take_u32(c, "record count");
		for (uint32 r = 0; r < nrecords; r++)
		{
			XLogRecPtr	start = take_u64(c, "record start");
			XLogRecPtr	end = take_u64(c, "record end");
			uint32		len = take_u32(c, "record length");

			apply_record(start, end, take(c, len, "record"), len);
		}
		get_page();
	}
	expect_end(c, MSG_REBUILD);
}

/* Applies a resource manager's rm_mask, as wal_consistency_checking does. */
static void
mask_message(Cursor *c)
{
	uint8		rmid = (uint8) *take(c, 1, "resource manager");
	BlockNumber blkno = take_u32(c, "block number");
	PGIOAlignedBlock page;

	memcpy(page.data, take(c, BLCKSZ, "page"), BLCKSZ);
	expect_end(c, MSG_MASK);
	if (!RmgrIdExists(rmid) || GetRmgr(rmid).rm_mask == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("resource manager %u has no mask routine", rmid)));
	GetRmgr(rmid).rm_mask(page.data, blkno);
	reply(REPLY_OK, page.data, BLCKSZ);
}

/*
 * Tests only: one call the sandbox decides on (an empty body is the open()
 * probe).  A refused call kills the process; one let through is answered
 * with its errno, 0 for success.
 */
static void
probe_message(Cursor *c)
{
	char		what = SANDBOX_PROBE_OPEN;
	uint32		arg = 0;
	int32		result;

	if (c->len > 0)
	{
		what = *take(c, 1, "probe");
		arg = take_u32(c, "probe argument");
	}
	expect_end(c, MSG_PROBE_SANDBOX);
	result = redo_sandbox_probe(what, arg);
	reply(REPLY_OK, (const char *) &result, sizeof(result));
}

static void
handle_message(char kind, Cursor *c)
{
	switch (kind)
	{
		case MSG_BEGIN:
			begin_page(c);
			expect_end(c, kind);
			break;
		case MSG_PUSH:
			push_image(take(c, BLCKSZ, "base image"));
			expect_end(c, kind);
			break;
		case MSG_APPLY:
			apply_message(c);
			break;
		case MSG_GET:
			expect_end(c, kind);
			get_page();
			break;
		case MSG_REBUILD:
			rebuild_message(c);
			/* The pool reads these pages while we start on the next. */
			flush_output();
			break;
		case MSG_MASK:
			mask_message(c);
			break;
		case MSG_PING:
			expect_end(c, kind);
			reply(REPLY_OK, NULL, 0);
			break;
		case MSG_PROBE_SANDBOX:
			probe_message(c);
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("unknown redo request kind 0x%02X", (uint8) kind)));
	}
}

static void
serve(void)
{
	for (;;)
	{
		char		header[5];
		uint32		len;
		Cursor		c;

		if (!read_exact(header, 5))
			proc_exit(0);		/* stdin closed: the pool stopped us */
		memcpy(&len, header + 1, 4);
		if (len > MAX_MESSAGE)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("redo request of %u bytes is over the limit", len)));
		if (in_end - in_start >= len)
		{
			/*
			 * The whole body is buffered: read it in place.  Handling a
			 * message never reads more input, so in_buf stays put.
			 */
			c.data = in_buf + in_start;
			c.len = len;
			c.pos = 0;
			in_start += len;
			handle_message(header[0], &c);
			continue;
		}
		if (len > msg_cap)
		{
			msg_cap = Max((size_t) len, msg_cap * 2);
			msg_buf = msg_buf == NULL ?
				MemoryContextAllocHuge(TopMemoryContext, msg_cap) :
				repalloc_huge(msg_buf, msg_cap);
		}
		if (!read_exact(msg_buf, len))
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("input ended inside a redo request")));
		c.data = msg_buf;
		c.len = len;
		c.pos = 0;
		handle_message(header[0], &c);
	}
}

/* The redo filter: every block but the target is already replayed. */
static bool
reject_other_blocks(XLogReaderState *record, uint8 block_id)
{
	RelFileLocator rlocator;
	ForkNumber	forknum;
	BlockNumber blkno;

	XLogRecGetBlockTag(record, block_id, &rlocator, &forknum, &blkno);
	return !(redo_target.valid &&
			 RelFileLocatorEquals(rlocator, redo_target.rlocator) &&
			 forknum == redo_target.forknum && blkno == redo_target.blkno);
}

static const f_smgr *
choose_inmem_smgr(RelFileLocatorBackend rlocator, char relpersistence)
{
	return &inmem_smgr;
}

static void
prepare_scratch_directory(const char *dir)
{
	struct stat st;

	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
		ereport(FATAL,
				(errmsg("redo scratch directory \"%s\" does not exist", dir)));
	SetDataDir(dir);
	ChangeToDataDir();
	/* The notify SLRU scans this directory when shared memory is created. */
	if (mkdir("pg_notify", S_IRWXU) != 0 && errno != EEXIST)
		ereport(FATAL,
				(errmsg("could not create \"%s/pg_notify\": %m", dir)));
}

void
WalRedoMain(int argc, char *argv[])
{
	struct rlimit no_core = {0, 0};

	if (argc != 4)
	{
		write_stderr("usage: postgres --wal-redo quire_walredo SCRATCH_DIRECTORY\n");
		proc_exit(1);
	}
	/* A PANIC in a redo routine aborts; a core file helps nobody here. */
	(void) setrlimit(RLIMIT_CORE, &no_core);

	SetConfigOption("shared_buffers", "128", PGC_POSTMASTER, PGC_S_ARGV);
	SetConfigOption("max_connections", "1", PGC_POSTMASTER, PGC_S_ARGV);
	SetConfigOption("max_worker_processes", "0", PGC_POSTMASTER, PGC_S_ARGV);
	SetConfigOption("max_wal_senders", "0", PGC_POSTMASTER, PGC_S_ARGV);
	SetConfigOption("max_prepared_transactions", "0", PGC_POSTMASTER, PGC_S_ARGV);
	SetConfigOption("max_replication_slots", "0", PGC_POSTMASTER, PGC_S_ARGV);
	SetConfigOption("huge_pages", "off", PGC_POSTMASTER, PGC_S_ARGV);
	/*
	 * Dynamic shared memory as System V segments: at exit they go with
	 * shmctl(IPC_RMID), which the sandbox allows, where POSIX segments would
	 * need unlink() (refused: the process died of SIGSYS at every exit and
	 * left its /dev/shm file and main segment behind).
	 */
	SetConfigOption("dynamic_shared_memory_type", "sysv", PGC_POSTMASTER, PGC_S_ARGV);
	SetConfigOption("fsync", "off", PGC_SIGHUP, PGC_S_ARGV);
	/* Start-up notes (no postmaster.pid to record the segment in) are noise. */
	SetConfigOption("log_min_messages", "warning", PGC_SUSET, PGC_S_ARGV);

	prepare_scratch_directory(argv[3]);
	InitializeMaxBackends();
	process_shmem_requests();
	InitializeShmemGUCs();

	/* Every relation lives in memory; installed before BaseInit's smgrinit. */
	smgr_hook = choose_inmem_smgr;
	redo_read_buffer_filter_hook = reject_other_blocks;

	CreateSharedMemoryAndSemaphores();
	InitProcess();
	BaseInit();
	SetProcessingMode(NormalProcessing);

	/*
	 * Redo runs as recovery would, past consistency: a block reference to a
	 * page that is not there is an error, never a silently skipped change.
	 */
	InRecovery = true;
	reachedConsistency = true;
	CurrentResourceOwner = ResourceOwnerCreate(NULL, "quire wal redo");
	for (int rmid = 0; rmid <= RM_MAX_BUILTIN_ID; rmid++)
		if (RmgrTable[rmid].rm_startup != NULL)
			RmgrTable[rmid].rm_startup();
	reader = XLogReaderAllocate(wal_segment_size, NULL, XL_ROUTINE(), NULL);
	if (reader == NULL)
		ereport(FATAL, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	page_context = AllocSetContextCreate(TopMemoryContext, "redo page",
										 ALLOCSET_DEFAULT_SIZES);
	in_buf = MemoryContextAlloc(TopMemoryContext, in_cap);
	out_buf = MemoryContextAlloc(TopMemoryContext, out_cap);

	redo_enter_sandbox();

	MemoryContextSwitchTo(page_context);
	PG_TRY();
	{
		serve();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		/* The pool refuses replies over 64 kB; a message is far shorter. */
		reply(REPLY_ERROR, edata->message,
			  (uint32) Min(strlen(edata->message), 4096));
		flush_output();
		EmitErrorReport();
		proc_exit(1);
	}
	PG_END_TRY();
	proc_exit(0);
}
