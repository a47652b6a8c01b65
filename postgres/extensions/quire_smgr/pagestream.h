/*-------------------------------------------------------------------------
 *
 * pagestream.h
 *	  A blocking client of Quire's page protocol (docs/protocol/page-service.md).
 *
 * It owns one TCP connection to a pageserver: the Hello handshake, the
 * encoding of requests, and the decoding and checking of every answer.  It
 * is plain C over libc: it never allocates, never calls ereport/elog and
 * never blocks longer than the connection's timeouts, so whatever bytes a
 * server sends come back as an error return with a message in
 * PsConn.errmsg.  The SQL layer (and later the storage manager) turns those
 * into ereport(ERROR).
 *
 * Requests may be pipelined: ps_send() queues up to PsConn.depth_max
 * requests, and each ps_receive() returns the answer of the oldest one,
 * checked to be its answer (request id, kind, page count).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUIRE_PAGESTREAM_H
#define QUIRE_PAGESTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Sizes and limits of the spec's "Limits" table. */
#define PS_PAGE_BYTES 8192
#define PS_HEADER_BYTES 16
#define PS_BLOCKS_PER_REQUEST_MAX 32
#define PS_TOKEN_BYTES_MAX 4096
#define PS_ERROR_MESSAGE_BYTES_MAX 1024
#define PS_RESPONSE_FRAME_BYTES_MIN (PS_HEADER_BYTES + 8 + PS_PAGE_BYTES)
#define PS_RESPONSE_FRAME_BYTES_MAX (PS_HEADER_BYTES + 16 + PS_BLOCKS_PER_REQUEST_MAX * PS_PAGE_BYTES)
#define PS_PIPELINE_DEPTH_MAX 1024

/* The protocol versions this client speaks. */
#define PS_VERSION_MIN 1
#define PS_VERSION_MAX 1

/* request_lsn meaning "latest". */
#define PS_LSN_LATEST UINT64_MAX

/* The most requests this client keeps unanswered, whatever the server allows. */
#define PS_CLIENT_DEPTH_MAX 64

/* Room for a message naming what went wrong, the server's text included. */
#define PS_ERRMSG_BYTES (PS_ERROR_MESSAGE_BYTES_MAX + 512)

/* Kind bytes. */
#define PS_KIND_HELLO 0x01
#define PS_KIND_GET_PAGE 0x02
#define PS_KIND_GET_PAGES 0x03
#define PS_KIND_NBLOCKS 0x04
#define PS_KIND_EXISTS 0x05
#define PS_KIND_DB_SIZE 0x06
#define PS_KIND_RESPONSE 0x80
#define PS_KIND_ERROR 0xFF

/* Error codes of the spec's table; 0 is none. */
typedef enum PsErrorCode
{
	PS_ERR_NONE = 0,
	PS_ERR_BAD_REQUEST = 1,
	PS_ERR_UNSUPPORTED_VERSION = 2,
	PS_ERR_UNAUTHENTICATED = 3,
	PS_ERR_FORBIDDEN = 4,
	PS_ERR_UNKNOWN_TENANT = 5,
	PS_ERR_UNKNOWN_TIMELINE = 6,
	PS_ERR_SHARD_NOT_HERE = 7,
	PS_ERR_WRONG_SHARD = 8,
	PS_ERR_NOT_FOUND = 9,
	PS_ERR_LSN_BELOW_GC_CUTOFF = 10,
	PS_ERR_WAL_NOT_INGESTED = 11,
	PS_ERR_CORRUPT = 12,
	PS_ERR_REDO_FAILED = 13,
	PS_ERR_OVERLOADED = 14,
	PS_ERR_SHUTTING_DOWN = 15,
	PS_ERR_INTERNAL = 16,
} PsErrorCode;

/* What a call returned. */
typedef enum PsResult
{
	/* The request was answered. */
	PS_OK = 0,
	/* The server answered with an Error (PsConn.refusal); see its closes. */
	PS_REFUSED = 1,
	/* Connection failed, timed out, or the server broke the protocol: it is closed. */
	PS_BROKEN = -1,
	/* The caller asked for something the protocol cannot carry; nothing was sent. */
	PS_INVALID = -2,
} PsResult;

/* Which pageserver shard's timeline a connection reads. */
typedef struct PsTarget
{
	uint8_t		tenant[16];
	uint8_t		timeline[16];
	uint32_t	shard_number;
	uint32_t	shard_count;
	uint32_t	stripe_blocks;
	/* NUL-terminated, visible ASCII, at most PS_TOKEN_BYTES_MAX; may be empty. */
	const char *token;
} PsTarget;

/* What the server's HelloOk allows. */
typedef struct PsLimits
{
	uint16_t	version;
	uint32_t	frame_bytes_max;
	uint32_t	pipeline_depth;
	uint32_t	blocks_per_request_max;
	uint32_t	lsn_wait_ms;
} PsLimits;

/* A relation fork. */
typedef struct PsRel
{
	uint32_t	spc_oid;
	uint32_t	db_oid;
	uint32_t	rel_number;
	uint8_t		fork;
} PsRel;

/* One request.  For GetPage and GetPages, pages has room for count pages. */
typedef struct PsRequest
{
	uint8_t		kind;
	uint64_t	request_lsn;
	uint64_t	not_modified_since;
	PsRel		rel;
	uint32_t	block;			/* GetPage's block, GetPages' first block */
	uint32_t	count;			/* GetPages only */
	uint32_t	db_oid;			/* DbSize only */
	char	   *pages;			/* where the answer's pages go */
} PsRequest;

/* A successful answer (its pages went to the request's buffer). */
typedef struct PsAnswer
{
	uint64_t	request_id;
	uint8_t		kind;			/* the request's kind */
	uint64_t	lsn;			/* the LSN it was served at */
	uint32_t	nblocks;
	bool		exists;
	uint64_t	size_bytes;
} PsAnswer;

/* The server's Error answer. */
typedef struct PsRefusal
{
	uint16_t	code;
	uint8_t		request_kind;
	bool		closes;
	uint64_t	detail1;
	uint64_t	detail2;
	/* The server's text, NUL-terminated (checked UTF-8, no NUL inside). */
	char		message[PS_ERROR_MESSAGE_BYTES_MAX + 1];
} PsRefusal;

/* A request sent and not yet answered. */
typedef struct PsPending
{
	uint64_t	request_id;
	uint8_t		kind;
	uint32_t	count;
	char	   *pages;
} PsPending;

/*
 * One connection.  Zero it (or call ps_init) before first use; fd < 0 means
 * closed.
 */
typedef struct PsConn
{
	int			fd;
	int			io_timeout_ms;	/* bound on each frame's read or write */
	/* Polled while waiting: returning true abandons the call (PS_BROKEN). */
	bool		(*interrupted) (void);
	PsLimits	limits;
	uint64_t	next_id;
	/* The queue of unanswered requests, a ring of depth_max entries. */
	PsPending	pending[PS_CLIENT_DEPTH_MAX];
	uint32_t	pending_head;
	uint32_t	pending_len;
	uint32_t	depth_max;		/* min(server's pipeline_depth, PS_CLIENT_DEPTH_MAX) */
	PsRefusal	refusal;		/* the last Error answer */
	char		errmsg[PS_ERRMSG_BYTES];	/* why the last call failed */
} PsConn;

extern void ps_init(PsConn *conn);

/*
 * Connects to host:port within connect_timeout_ms, sends the Hello and
 * reads its answer.  PS_OK with conn->limits set; PS_REFUSED with
 * conn->refusal (the connection is closed: a refused Hello closes);
 * PS_BROKEN or PS_INVALID with conn->errmsg.
 */
extern PsResult ps_connect(PsConn *conn, const char *host, const char *port,
						   const PsTarget *target, int connect_timeout_ms,
						   int io_timeout_ms);

/*
 * ps_connect's handshake on a stream socket the caller connected (a Unix
 * socket, a test's socketpair); the connection owns fd from here on, also
 * when this fails.
 */
extern PsResult ps_handshake(PsConn *conn, int fd, const PsTarget *target,
							 int io_timeout_ms);

/*
 * Sends one request and queues it; its id goes to *request_id if not NULL.
 * PS_INVALID if the request breaks a rule of the spec (checked before
 * anything is written) or the pipeline is full; PS_BROKEN if the write
 * failed.
 */
extern PsResult ps_send(PsConn *conn, const PsRequest *request, uint64_t *request_id);

/*
 * Receives the answer of the oldest unanswered request.  PS_OK with
 * *answer; PS_REFUSED with conn->refusal (if it closes, so is the
 * connection); PS_BROKEN with conn->errmsg.
 */
extern PsResult ps_receive(PsConn *conn, PsAnswer *answer);

/* Requests sent and not answered. */
extern uint32_t ps_pending(const PsConn *conn);

extern void ps_close(PsConn *conn);

/* The spec's name of an error code ("UnknownTenant"), or NULL if none. */
extern const char *ps_error_name(uint16_t code);

#endif							/* QUIRE_PAGESTREAM_H */
