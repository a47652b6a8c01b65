/*-------------------------------------------------------------------------
 *
 * pagestream.c
 *	  The page protocol's client: sockets, the handshake, request encoding
 *	  and answer decoding (docs/protocol/page-service.md).
 *
 * Every byte from the server is untrusted: a frame's length is checked
 * against what the request at the head of the queue can be answered with
 * before any of its body is read, so nothing is ever read into memory the
 * caller did not size; reserved fields, kinds, request ids, LSNs, counts
 * and error details are checked as the spec says.  Any violation closes the
 * connection (the frame boundary may be lost) and returns PS_BROKEN with a
 * message.  Every wait goes through poll(2) with a deadline.
 *
 * This file uses only libc: no palloc, no ereport, no signals of its own,
 * so that it cannot longjmp out of a half-read frame.
 *
 *-------------------------------------------------------------------------
 */
#include "pagestream.h"
#include "pagestream_bytes.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Fixed body sizes (after the 16-byte header). */
#define HELLO_FIXED_BYTES 56
#define HELLO_OK_BODY_BYTES 20
#define ERROR_FIXED_BYTES 24
#define LSNS_BYTES 16
#define REL_BYTES 16

/* How often a wait looks at conn->interrupted. */
#define INTERRUPT_POLL_MS 100

static void
set_error(PsConn *conn, const char *fmt,...)
	__attribute__((format(printf, 2, 3)));

static void
set_error(PsConn *conn, const char *fmt,...)
{
	va_list		args;

	va_start(args, fmt);
	/* Truncation only shortens the message, which is all we need. */
	(void) vsnprintf(conn->errmsg, sizeof(conn->errmsg), fmt, args);
	va_end(args);
}

/* Closes the connection; every unanswered request is dropped with it. */
void
ps_close(PsConn *conn)
{
	if (conn->fd >= 0)
		(void) close(conn->fd);	/* nothing to do about a failed close */
	conn->fd = -1;
	conn->pending_head = 0;
	conn->pending_len = 0;
}

void
ps_init(PsConn *conn)
{
	memset(conn, 0, sizeof(*conn));
	conn->fd = -1;
	conn->io_timeout_ms = 10000;
}

uint32_t
ps_pending(const PsConn *conn)
{
	return conn->pending_len;
}

/* A protocol or I/O failure: the stream is unusable from here on. */
static PsResult
broken(PsConn *conn, const char *fmt,...)
	__attribute__((format(printf, 2, 3)));

static PsResult
broken(PsConn *conn, const char *fmt,...)
{
	va_list		args;

	va_start(args, fmt);
	(void) vsnprintf(conn->errmsg, sizeof(conn->errmsg), fmt, args);
	va_end(args);
	ps_close(conn);
	return PS_BROKEN;
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	/* CLOCK_MONOTONIC cannot fail on Linux with a valid pointer. */
	(void) clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Waits until fd is ready for events or deadline passes.  0 when ready;
 * otherwise -1 with errmsg set (the caller decides whether to close).
 */
static int
wait_ready(PsConn *conn, int fd, short events, int64_t deadline, int timeout_ms,
		   const char *what)
{
	for (;;)
	{
		struct pollfd pfd;
		int64_t		left = deadline - now_ms();
		int			slice;
		int			rc;

		if (conn->interrupted != NULL && conn->interrupted())
		{
			set_error(conn, "interrupted while %s", what);
			return -1;
		}
		if (left <= 0)
		{
			set_error(conn, "timed out after %d ms %s", timeout_ms, what);
			return -1;
		}
		slice = left > INTERRUPT_POLL_MS ? INTERRUPT_POLL_MS : (int) left;
		if (conn->interrupted == NULL && left < INT32_MAX)
			slice = (int) left;
		pfd.fd = fd;
		pfd.events = events;
		pfd.revents = 0;
		rc = poll(&pfd, 1, slice);
		if (rc < 0)
		{
			if (errno == EINTR)
				continue;
			set_error(conn, "poll failed while %s: %s", what, strerror(errno));
			return -1;
		}
		/* POLLERR and POLLHUP end the wait too: the next call reports them. */
		if (rc > 0)
			return 0;
	}
}

/* Writes all of buf before deadline; PS_BROKEN closes the connection. */
static PsResult
write_all(PsConn *conn, const uint8_t *buf, size_t len, int64_t deadline,
		  const char *what)
{
	size_t		done = 0;

	while (done < len)
	{
		/* MSG_NOSIGNAL: a closed peer must not raise SIGPIPE in a backend. */
		ssize_t		n = send(conn->fd, buf + done, len - done, MSG_NOSIGNAL);

		if (n > 0)
		{
			done += (size_t) n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		{
			if (wait_ready(conn, conn->fd, POLLOUT, deadline, conn->io_timeout_ms, what) != 0)
			{
				ps_close(conn);
				return PS_BROKEN;
			}
			continue;
		}
		return broken(conn, "could not send %s to the pageserver: %s", what,
					  n < 0 ? strerror(errno) : "no progress");
	}
	return PS_OK;
}

/* Reads exactly len bytes before deadline; PS_BROKEN closes the connection. */
static PsResult
read_exact(PsConn *conn, uint8_t *buf, size_t len, int64_t deadline,
		   const char *what)
{
	size_t		done = 0;

	while (done < len)
	{
		ssize_t		n = recv(conn->fd, buf + done, len - done, 0);

		if (n > 0)
		{
			done += (size_t) n;
			continue;
		}
		if (n == 0)
			return broken(conn, "the pageserver closed the connection while %s (%zu of %zu bytes read)",
						  what, done, len);
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
		{
			if (wait_ready(conn, conn->fd, POLLIN, deadline, conn->io_timeout_ms, what) != 0)
			{
				ps_close(conn);
				return PS_BROKEN;
			}
			continue;
		}
		return broken(conn, "could not read from the pageserver while %s: %s",
					  what, strerror(errno));
	}
	return PS_OK;
}

/*
 * Reads the body of an Error frame of `length` bytes answering a request
 * of `kind` into conn->refusal.  PS_REFUSED, or PS_BROKEN.
 */
static PsResult
read_error(PsConn *conn, uint32_t length, uint8_t kind, int64_t deadline)
{
	uint8_t		fixed[ERROR_FIXED_BYTES];
	PsRefusal  *r = &conn->refusal;
	uint32_t	message_length;
	uint8_t		flags;
	PsResult	rc;

	if (length < PS_HEADER_BYTES + ERROR_FIXED_BYTES ||
		length > PS_HEADER_BYTES + ERROR_FIXED_BYTES + PS_ERROR_MESSAGE_BYTES_MAX)
		return broken(conn, "the pageserver sent an Error frame of %u bytes: it has %d to %d",
					  length, PS_HEADER_BYTES + ERROR_FIXED_BYTES,
					  PS_HEADER_BYTES + ERROR_FIXED_BYTES + PS_ERROR_MESSAGE_BYTES_MAX);
	rc = read_exact(conn, fixed, sizeof(fixed), deadline, "reading an Error answer");
	if (rc != PS_OK)
		return rc;
	r->code = get_u16(fixed);
	r->request_kind = fixed[2];
	flags = fixed[3];
	message_length = get_u32(fixed + 4);
	r->detail1 = get_u64(fixed + 8);
	r->detail2 = get_u64(fixed + 16);
	r->closes = (flags & 1) != 0;
	if (ps_error_name(r->code) == NULL)
		return broken(conn, "the pageserver sent error code %u, which the protocol does not define",
					  r->code);
	if (flags > 1)
		return broken(conn, "the pageserver sent an Error with flags 0x%02X: only bit 0 is defined",
					  flags);
	if (!details_valid(r->code, r->detail1, r->detail2))
		return broken(conn, "the pageserver sent %s with details 0x%llX, 0x%llX it does not define",
					  ps_error_name(r->code), (unsigned long long) r->detail1,
					  (unsigned long long) r->detail2);
	if (message_length != length - PS_HEADER_BYTES - ERROR_FIXED_BYTES)
		return broken(conn, "the pageserver sent an Error frame of %u bytes with a message of %u",
					  length, message_length);
	if (r->request_kind != kind)
		return broken(conn, "the pageserver answered a %s with an Error for kind 0x%02X",
					  kind_name(kind), r->request_kind);
	/* message_length <= PS_ERROR_MESSAGE_BYTES_MAX, checked through length above. */
	rc = read_exact(conn, (uint8_t *) r->message, message_length, deadline,
					"reading an Error message");
	if (rc != PS_OK)
		return rc;
	r->message[message_length] = '\0';
	if (!is_utf8((const uint8_t *) r->message, message_length))
		return broken(conn, "the pageserver sent %s with a message that is not UTF-8",
					  ps_error_name(r->code));

	/*
	 * A NUL is valid UTF-8; the message is shown up to it, which is the most
	 * a C string can carry.
	 */
	set_error(conn, "pageserver: %s: %s", ps_error_name(r->code), r->message);
	if (r->closes)
		ps_close(conn);
	return PS_REFUSED;
}

static PsResult
check_served_lsn(PsConn *conn, uint64_t lsn, uint8_t kind)
{
	if (lsn == 0 || lsn == PS_LSN_LATEST)
		return broken(conn, "the pageserver answered a %s at LSN 0x%llX, which is not a position",
					  kind_name(kind), (unsigned long long) lsn);
	return PS_OK;
}

/*
 * Reads one frame answering `head` (whose kind may be Hello).  PS_OK with
 * *answer (or *hello_ok for a Hello), PS_REFUSED or PS_BROKEN.
 */
static PsResult
receive_frame(PsConn *conn, const PsPending *head, PsAnswer *answer,
			  PsLimits *hello_ok)
{
	int64_t		deadline = now_ms() + conn->io_timeout_ms;
	uint8_t		header[PS_HEADER_BYTES];
	uint8_t		body[HELLO_OK_BODY_BYTES];
	uint32_t	length;
	uint32_t	frame_max;
	uint32_t	expected;
	uint32_t	fixed;
	uint8_t		kind;
	uint64_t	id;
	PsResult	rc;

	rc = read_exact(conn, header, sizeof(header), deadline, "waiting for an answer");
	if (rc != PS_OK)
		return rc;
	length = get_u32(header);
	kind = header[4];
	id = get_u64(header + 8);
	frame_max = head->kind == PS_KIND_HELLO ? PS_RESPONSE_FRAME_BYTES_MAX : conn->limits.frame_bytes_max;
	if (length < PS_HEADER_BYTES || length > frame_max)
		return broken(conn, "the pageserver sent a frame of %u bytes: at most %u", length, frame_max);
	if (!all_zero(header + 5, 3))
		return broken(conn, "the pageserver sent a frame with non-zero reserved header bytes");
	if (id != head->request_id)
		return broken(conn, "the pageserver answered request %llu, expected %llu",
					  (unsigned long long) id, (unsigned long long) head->request_id);
	if (kind == PS_KIND_ERROR)
		return read_error(conn, length, head->kind, deadline);
	if (kind != (head->kind | PS_KIND_RESPONSE))
		return broken(conn, "the pageserver answered a %s with kind 0x%02X",
					  kind_name(head->kind), kind);

	/* The exact length each answer has; fixed is what precedes any pages. */
	switch (head->kind)
	{
		case PS_KIND_HELLO:
			fixed = HELLO_OK_BODY_BYTES;
			expected = fixed;
			break;
		case PS_KIND_GET_PAGE:
			fixed = 8;
			expected = fixed + PS_PAGE_BYTES;
			break;
		case PS_KIND_GET_PAGES:
			/* count <= 32 was checked when it was sent: no overflow. */
			fixed = 16;
			expected = fixed + head->count * PS_PAGE_BYTES;
			break;
		case PS_KIND_NBLOCKS:
			fixed = 12;
			expected = fixed;
			break;
		case PS_KIND_EXISTS:
			fixed = 9;
			expected = fixed;
			break;
		case PS_KIND_DB_SIZE:
			fixed = 16;
			expected = fixed;
			break;
		default:
			return broken(conn, "internal: a request of kind 0x%02X is queued", head->kind);
	}
	if (length - PS_HEADER_BYTES != expected)
		return broken(conn, "the pageserver sent a %s answer of %u bytes: its layout has %u",
					  kind_name(head->kind), length, expected + PS_HEADER_BYTES);
	rc = read_exact(conn, body, fixed, deadline, "reading an answer");
	if (rc != PS_OK)
		return rc;

	if (head->kind == PS_KIND_HELLO)
	{
		PsLimits	ok;

		ok.version = get_u16(body);
		ok.frame_bytes_max = get_u32(body + 4);
		ok.pipeline_depth = get_u32(body + 8);
		ok.blocks_per_request_max = get_u32(body + 12);
		ok.lsn_wait_ms = get_u32(body + 16);
		if (!all_zero(body + 2, 2))
			return broken(conn, "the pageserver sent a HelloOk with non-zero reserved bytes");
		if (ok.version < PS_VERSION_MIN || ok.version > PS_VERSION_MAX)
			return broken(conn, "the pageserver chose protocol version %u: this client speaks %d to %d",
						  ok.version, PS_VERSION_MIN, PS_VERSION_MAX);
		if (ok.frame_bytes_max < PS_RESPONSE_FRAME_BYTES_MIN ||
			ok.frame_bytes_max > PS_RESPONSE_FRAME_BYTES_MAX)
			return broken(conn, "the pageserver's HelloOk says frame_bytes_max %u: expected %d to %d",
						  ok.frame_bytes_max, PS_RESPONSE_FRAME_BYTES_MIN, PS_RESPONSE_FRAME_BYTES_MAX);
		if (ok.pipeline_depth < 1 || ok.pipeline_depth > PS_PIPELINE_DEPTH_MAX)
			return broken(conn, "the pageserver's HelloOk says pipeline_depth %u: expected 1 to %d",
						  ok.pipeline_depth, PS_PIPELINE_DEPTH_MAX);
		if (ok.blocks_per_request_max < 1 || ok.blocks_per_request_max > PS_BLOCKS_PER_REQUEST_MAX)
			return broken(conn, "the pageserver's HelloOk says blocks_per_request_max %u: expected 1 to %d",
						  ok.blocks_per_request_max, PS_BLOCKS_PER_REQUEST_MAX);
		*hello_ok = ok;
		return PS_OK;
	}

	memset(answer, 0, sizeof(*answer));
	answer->request_id = id;
	answer->kind = head->kind;
	answer->lsn = get_u64(body);
	rc = check_served_lsn(conn, answer->lsn, head->kind);
	if (rc != PS_OK)
		return rc;
	switch (head->kind)
	{
		case PS_KIND_GET_PAGE:
			return read_exact(conn, (uint8_t *) head->pages, PS_PAGE_BYTES, deadline,
							  "reading a page");
		case PS_KIND_GET_PAGES:
			if (get_u32(body + 8) != head->count)
				return broken(conn, "the pageserver answered a GetPages of %u blocks with %u pages",
							  head->count, get_u32(body + 8));
			if (!all_zero(body + 12, 4))
				return broken(conn, "the pageserver sent a GetPages answer with non-zero reserved bytes");
			return read_exact(conn, (uint8_t *) head->pages,
							  (size_t) head->count * PS_PAGE_BYTES, deadline, "reading pages");
		case PS_KIND_NBLOCKS:
			answer->nblocks = get_u32(body + 8);
			return PS_OK;
		case PS_KIND_EXISTS:
			if (body[8] > 1)
				return broken(conn, "the pageserver sent an Exists answer of %u: expected 0 or 1",
							  body[8]);
			answer->exists = body[8] == 1;
			return PS_OK;
		case PS_KIND_DB_SIZE:
			answer->size_bytes = get_u64(body + 8);
			return PS_OK;
		default:
			return broken(conn, "internal: a request of kind 0x%02X is queued", head->kind);
	}
}

/* Connects a non-blocking socket to one address before deadline; fd or -1. */
static int
connect_one(PsConn *conn, const struct addrinfo *ai, int64_t deadline, int timeout_ms)
{
	int			fd;
	int			one = 1;
	int			soerr = 0;
	socklen_t	soerr_len = sizeof(soerr);

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
	{
		set_error(conn, "could not create a socket: %s", strerror(errno));
		return -1;
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)
	{
		if (errno != EINPROGRESS && errno != EINTR)
		{
			set_error(conn, "could not connect: %s", strerror(errno));
			(void) close(fd);
			return -1;
		}
		if (wait_ready(conn, fd, POLLOUT, deadline, timeout_ms, "connecting") != 0)
		{
			(void) close(fd);
			return -1;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &soerr_len) != 0)
		{
			set_error(conn, "could not learn whether the connection succeeded: %s", strerror(errno));
			(void) close(fd);
			return -1;
		}
		if (soerr != 0)
		{
			set_error(conn, "could not connect: %s", strerror(soerr));
			(void) close(fd);
			return -1;
		}
	}
	/* Requests are small and latency-bound: do not let Nagle hold them. */
	if (ai->ai_family != AF_UNIX &&
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
	{
		set_error(conn, "could not set TCP_NODELAY: %s", strerror(errno));
		(void) close(fd);
		return -1;
	}
	return fd;
}

/* Whether the target's fields are what a Hello may carry; errmsg if not. */
static bool
target_valid(PsConn *conn, const PsTarget *t, size_t *token_len)
{
	const char *token = t->token != NULL ? t->token : "";
	size_t		len = strnlen(token, PS_TOKEN_BYTES_MAX + 1);

	if (t->shard_count < 1 || t->shard_count > 256)
	{
		set_error(conn, "shard count %u: expected 1 to 256", t->shard_count);
		return false;
	}
	if (t->shard_number >= t->shard_count)
	{
		set_error(conn, "shard number %u of %u shards: expected below the count",
				  t->shard_number, t->shard_count);
		return false;
	}
	if (t->stripe_blocks < 1)
	{
		set_error(conn, "stripe of 0 blocks: expected at least 1");
		return false;
	}
	if (len > PS_TOKEN_BYTES_MAX)
	{
		set_error(conn, "the auth token is longer than %d bytes", PS_TOKEN_BYTES_MAX);
		return false;
	}
	for (size_t i = 0; i < len; i++)
	{
		if (token[i] < 0x21 || token[i] > 0x7E)
		{
			set_error(conn, "the auth token has a byte outside visible ASCII at offset %zu", i);
			return false;
		}
	}
	*token_len = len;
	return true;
}

PsResult
ps_connect(PsConn *conn, const char *host, const char *port,
		   const PsTarget *target, int connect_timeout_ms, int io_timeout_ms)
{
	struct addrinfo hints;
	struct addrinfo *addrs = NULL;
	int64_t		deadline;
	size_t		token_len = 0;
	int			fd = -1;
	int			gai;

	ps_close(conn);
	if (!target_valid(conn, target, &token_len))
		return PS_INVALID;

	/*
	 * getaddrinfo() has no timeout of its own; a numeric address never
	 * waits, a host name may wait on the resolver.
	 */
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	gai = getaddrinfo(host, port, &hints, &addrs);
	if (gai != 0)
	{
		set_error(conn, "could not resolve pageserver \"%s:%s\": %s", host, port, gai_strerror(gai));
		return PS_BROKEN;
	}
	if (connect_timeout_ms < 1)
		connect_timeout_ms = 1;
	deadline = now_ms() + connect_timeout_ms;
	set_error(conn, "pageserver \"%s:%s\" has no address", host, port);
	for (struct addrinfo *ai = addrs; ai != NULL && fd < 0; ai = ai->ai_next)
		fd = connect_one(conn, ai, deadline, connect_timeout_ms);
	freeaddrinfo(addrs);
	if (fd < 0)
	{
		char		why[PS_ERRMSG_BYTES];

		memcpy(why, conn->errmsg, sizeof(why));
		set_error(conn, "pageserver \"%s:%s\": %s", host, port, why);
		return PS_BROKEN;
	}
	return ps_handshake(conn, fd, target, io_timeout_ms);
}

PsResult
ps_handshake(PsConn *conn, int fd, const PsTarget *target, int io_timeout_ms)
{
	uint8_t		hello[PS_HEADER_BYTES + HELLO_FIXED_BYTES + PS_TOKEN_BYTES_MAX];
	size_t		token_len = 0;
	size_t		hello_len;
	PsPending	head;
	PsLimits	limits;
	PsResult	rc;
	int			flags;

	ps_close(conn);
	conn->fd = fd;
	conn->io_timeout_ms = io_timeout_ms > 0 ? io_timeout_ms : 1;
	if (!target_valid(conn, target, &token_len))
	{
		ps_close(conn);
		return PS_INVALID;
	}
	/* Every wait is a poll(2) with a deadline, so the socket must not block. */
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
		return broken(conn, "could not make the pageserver socket non-blocking: %s", strerror(errno));

	/* The Hello: magic, versions, identities, shard, token. */
	hello_len = PS_HEADER_BYTES + HELLO_FIXED_BYTES + token_len;
	memset(hello, 0, PS_HEADER_BYTES + HELLO_FIXED_BYTES);
	put_u32(hello, (uint32_t) hello_len);
	hello[4] = PS_KIND_HELLO;
	put_u64(hello + 8, 0);
	memcpy(hello + 16, "QPGS", 4);
	put_u16(hello + 20, PS_VERSION_MIN);
	put_u16(hello + 22, PS_VERSION_MAX);
	memcpy(hello + 24, target->tenant, 16);
	memcpy(hello + 40, target->timeline, 16);
	put_u32(hello + 56, target->shard_number);
	put_u32(hello + 60, target->shard_count);
	put_u32(hello + 64, target->stripe_blocks);
	put_u32(hello + 68, (uint32_t) token_len);
	if (token_len > 0)
		memcpy(hello + 72, target->token, token_len);
	rc = write_all(conn, hello, hello_len, now_ms() + conn->io_timeout_ms, "sending the Hello");
	if (rc != PS_OK)
		return rc;

	head.request_id = 0;
	head.kind = PS_KIND_HELLO;
	head.count = 0;
	head.pages = NULL;
	rc = receive_frame(conn, &head, NULL, &limits);
	if (rc == PS_REFUSED)
	{
		/* A refused Hello closes, whatever the flag says. */
		ps_close(conn);
		return rc;
	}
	if (rc != PS_OK)
		return rc;
	conn->limits = limits;
	conn->depth_max = limits.pipeline_depth < PS_CLIENT_DEPTH_MAX ? limits.pipeline_depth : PS_CLIENT_DEPTH_MAX;
	conn->next_id = 1;
	return PS_OK;
}

/* Whether a request keeps the spec's rules; errmsg if not. */
static bool
request_valid(PsConn *conn, const PsRequest *r)
{
	if (r->request_lsn == 0)
	{
		set_error(conn, "request LSN 0 is not an LSN");
		return false;
	}
	if (r->not_modified_since == PS_LSN_LATEST ||
		(r->request_lsn != PS_LSN_LATEST && r->not_modified_since > r->request_lsn))
	{
		set_error(conn, "not_modified_since %llX is above the request LSN",
				  (unsigned long long) r->not_modified_since);
		return false;
	}
	switch (r->kind)
	{
		case PS_KIND_GET_PAGE:
		case PS_KIND_GET_PAGES:
		case PS_KIND_NBLOCKS:
		case PS_KIND_EXISTS:
			if (r->rel.fork > 3)
			{
				set_error(conn, "fork %u: expected 0 to 3", r->rel.fork);
				return false;
			}
			break;
		case PS_KIND_DB_SIZE:
			return true;
		default:
			set_error(conn, "request kind 0x%02X is not one this client sends", r->kind);
			return false;
	}
	if (r->kind == PS_KIND_GET_PAGE && r->block == UINT32_MAX)
	{
		set_error(conn, "block 4294967295 is InvalidBlockNumber");
		return false;
	}
	if (r->kind == PS_KIND_GET_PAGES &&
		(r->count < 1 || r->count > conn->limits.blocks_per_request_max ||
		 (uint64_t) r->block + r->count - 1 > UINT32_MAX - 1))
	{
		set_error(conn, "GetPages of %u blocks from block %u: at most %u blocks, ending by block 4294967294",
				  r->count, r->block, conn->limits.blocks_per_request_max);
		return false;
	}
	/* A server whose limits disagree must not be asked for a frame it will not send. */
	if (r->kind == PS_KIND_GET_PAGES &&
		(uint64_t) PS_HEADER_BYTES + 16 + (uint64_t) r->count * PS_PAGE_BYTES > conn->limits.frame_bytes_max)
	{
		set_error(conn, "GetPages of %u blocks: its answer would exceed the server's frame_bytes_max %u",
				  r->count, conn->limits.frame_bytes_max);
		return false;
	}
	if ((r->kind == PS_KIND_GET_PAGE || r->kind == PS_KIND_GET_PAGES) && r->pages == NULL)
	{
		set_error(conn, "internal: a %s without a page buffer", kind_name(r->kind));
		return false;
	}
	return true;
}

PsResult
ps_send(PsConn *conn, const PsRequest *request, uint64_t *request_id)
{
	uint8_t		frame[PS_HEADER_BYTES + LSNS_BYTES + REL_BYTES + 8];
	size_t		len;
	PsPending  *slot;
	PsResult	rc;

	if (conn->fd < 0)
	{
		set_error(conn, "not connected to the pageserver");
		return PS_BROKEN;
	}
	if (conn->pending_len >= conn->depth_max)
	{
		set_error(conn, "%u requests are unanswered: the pipeline holds at most %u",
				  conn->pending_len, conn->depth_max);
		return PS_INVALID;
	}
	if (!request_valid(conn, request))
		return PS_INVALID;

	memset(frame, 0, sizeof(frame));
	put_u64(frame + 8, conn->next_id);
	put_u64(frame + 16, request->request_lsn);
	put_u64(frame + 24, request->not_modified_since);
	frame[4] = request->kind;
	if (request->kind == PS_KIND_DB_SIZE)
	{
		put_u32(frame + 32, request->db_oid);
		len = PS_HEADER_BYTES + LSNS_BYTES + 4;
	}
	else
	{
		put_u32(frame + 32, request->rel.spc_oid);
		put_u32(frame + 36, request->rel.db_oid);
		put_u32(frame + 40, request->rel.rel_number);
		frame[44] = request->rel.fork;
		len = PS_HEADER_BYTES + LSNS_BYTES + REL_BYTES;
		if (request->kind == PS_KIND_GET_PAGE)
		{
			put_u32(frame + 48, request->block);
			len += 4;
		}
		else if (request->kind == PS_KIND_GET_PAGES)
		{
			put_u32(frame + 48, request->block);
			put_u32(frame + 52, request->count);
			len += 8;
		}
	}
	put_u32(frame, (uint32_t) len);
	rc = write_all(conn, frame, len, now_ms() + conn->io_timeout_ms, "a request");
	if (rc != PS_OK)
		return rc;

	slot = &conn->pending[(conn->pending_head + conn->pending_len) % PS_CLIENT_DEPTH_MAX];
	slot->request_id = conn->next_id;
	slot->kind = request->kind;
	slot->count = request->kind == PS_KIND_GET_PAGES ? request->count : 1;
	slot->pages = request->pages;
	conn->pending_len++;
	if (request_id != NULL)
		*request_id = conn->next_id;
	conn->next_id++;
	return PS_OK;
}

PsResult
ps_receive(PsConn *conn, PsAnswer *answer)
{
	PsPending	head;
	PsResult	rc;

	if (conn->fd < 0)
	{
		set_error(conn, "not connected to the pageserver");
		return PS_BROKEN;
	}
	if (conn->pending_len == 0)
	{
		set_error(conn, "no request is waiting for an answer");
		return PS_INVALID;
	}
	head = conn->pending[conn->pending_head];
	rc = receive_frame(conn, &head, answer, NULL);
	/* A broken or closing answer already emptied the queue with the socket. */
	if (conn->fd >= 0 && (rc == PS_OK || rc == PS_REFUSED))
	{
		conn->pending_head = (conn->pending_head + 1) % PS_CLIENT_DEPTH_MAX;
		conn->pending_len--;
	}
	return rc;
}
