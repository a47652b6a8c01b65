/*
 * pagestream_fuzz.c: drives quire_smgr's page-protocol client
 * (postgres/extensions/quire_smgr/pagestream.c) with scripted server bytes
 * over a socketpair, built with AddressSanitizer and UBSan by
 * pagestream_fuzz.sh.
 *
 * Each iteration makes a valid conversation (a HelloOk, then an answer or
 * an Error for each of up to four pipelined requests) and, half the time,
 * mutates its bytes (flips, overwrites, truncation, inserted bytes, a
 * rewritten length).  Unmutated conversations must decode to exactly what
 * was scripted; mutated ones may fail, but only as an error return with a
 * message, never out of bounds, never hanging (the script's end is an end
 * of stream).  Seeded, so a failure replays from its seed.
 *
 *   pagestream_fuzz [ITERATIONS [SEED]]
 */
#include "pagestream.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SCRIPT_BYTES_MAX (300 * 1024)
#define REQUESTS_MAX 4
#define PAGES_PER_REQUEST_MAX 4

static uint64_t rng;

static uint64_t
rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static uint32_t
below(uint32_t n)
{
	return (uint32_t) (rnd() % n);
}

typedef struct Script
{
	uint8_t    *bytes;
	size_t		len;
} Script;

static void
fail(const char *what, uint64_t seed)
{
	fprintf(stderr, "pagestream_fuzz: FAIL (seed %llu): %s\n", (unsigned long long) seed, what);
	exit(1);
}

static void
put(Script *s, const void *p, size_t n)
{
	if (s->len + n > SCRIPT_BYTES_MAX)
		return;
	memcpy(s->bytes + s->len, p, n);
	s->len += n;
}

static void
put_le(Script *s, uint64_t v, int n)
{
	uint8_t		b[8];

	for (int i = 0; i < n; i++)
		b[i] = (uint8_t) (v >> (8 * i));
	put(s, b, (size_t) n);
}

static void
header(Script *s, uint32_t length, uint8_t kind, uint64_t id)
{
	put_le(s, length, 4);
	put_le(s, kind, 1);
	put_le(s, 0, 3);
	put_le(s, id, 8);
}

static void
hello_ok(Script *s)
{
	header(s, 36, 0x81, 0);
	put_le(s, 1, 2);
	put_le(s, 0, 2);
	put_le(s, PS_RESPONSE_FRAME_BYTES_MAX, 4);
	put_le(s, 128, 4);
	put_le(s, 32, 4);
	put_le(s, 1000, 4);
}

static void
error_frame(Script *s, uint64_t id, uint16_t code, uint8_t kind, uint8_t flags)
{
	const char *message = "scripted refusal";
	size_t		n = strlen(message);

	header(s, (uint32_t) (16 + 24 + n), 0xFF, id);
	put_le(s, code, 2);
	put_le(s, kind, 1);
	put_le(s, flags, 1);
	put_le(s, n, 4);
	put_le(s, 0, 8);
	put_le(s, 0, 8);
	put(s, message, n);
}

/* A page whose every byte says which request it answers. */
static void
pages(Script *s, uint64_t id, uint32_t count)
{
	uint8_t		page[PS_PAGE_BYTES];

	memset(page, (int) (id & 0xFF), sizeof(page));
	for (uint32_t i = 0; i < count; i++)
		put(s, page, sizeof(page));
}

static void
answer(Script *s, const PsRequest *r, uint64_t id)
{
	uint64_t	lsn = 0x1000 + id;

	switch (r->kind)
	{
		case PS_KIND_GET_PAGE:
			header(s, 16 + 8 + PS_PAGE_BYTES, 0x82, id);
			put_le(s, lsn, 8);
			pages(s, id, 1);
			break;
		case PS_KIND_GET_PAGES:
			header(s, 16 + 16 + r->count * PS_PAGE_BYTES, 0x83, id);
			put_le(s, lsn, 8);
			put_le(s, r->count, 4);
			put_le(s, 0, 4);
			pages(s, id, r->count);
			break;
		case PS_KIND_NBLOCKS:
			header(s, 16 + 12, 0x84, id);
			put_le(s, lsn, 8);
			put_le(s, id * 7, 4);
			break;
		case PS_KIND_EXISTS:
			header(s, 16 + 9, 0x85, id);
			put_le(s, lsn, 8);
			put_le(s, id & 1, 1);
			break;
		case PS_KIND_DB_SIZE:
			header(s, 16 + 16, 0x86, id);
			put_le(s, lsn, 8);
			put_le(s, id * 8192, 8);
			break;
		default:
			break;
	}
}

static void
mutate(Script *s)
{
	int			n = 1 + (int) below(3);

	for (int i = 0; i < n && s->len > 0; i++)
	{
		size_t		at = below((uint32_t) s->len);

		switch (below(5))
		{
			case 0:
				s->bytes[at] ^= (uint8_t) (1u << below(8));
				break;
			case 1:
				s->bytes[at] = (uint8_t) rnd();
				break;
			case 2:
				s->len = at;
				break;
			case 3:
				if (s->len + 16 <= SCRIPT_BYTES_MAX)
				{
					size_t		k = 1 + below(16);

					memmove(s->bytes + at + k, s->bytes + at, s->len - at);
					for (size_t j = 0; j < k; j++)
						s->bytes[at + j] = (uint8_t) rnd();
					s->len += k;
				}
				break;
			default:
				/* A length or count field: somewhere 4-aligned. */
				at &= ~(size_t) 3;
				if (at + 4 <= s->len)
				{
					uint32_t	v = (uint32_t) rnd();

					if (below(2))
						v %= 300000;
					memcpy(s->bytes + at, &v, 4);
				}
				break;
		}
	}
}

typedef struct Writer
{
	int			fd;
	const Script *script;
} Writer;

static void *
write_script(void *arg)
{
	Writer	   *w = arg;
	size_t		done = 0;

	while (done < w->script->len)
	{
		ssize_t		n = send(w->fd, w->script->bytes + done, w->script->len - done, MSG_NOSIGNAL);

		if (n <= 0)
			break;				/* the client closed: the rest is not needed */
		done += (size_t) n;
	}
	(void) shutdown(w->fd, SHUT_WR);
	return NULL;
}

static void
check_message(const PsConn *conn, uint64_t seed)
{
	size_t		n = strnlen(conn->errmsg, sizeof(conn->errmsg));

	if (n == 0 || n == sizeof(conn->errmsg))
		fail("a failure without a terminated message", seed);
}

static void
one(uint64_t seed)
{
	PsRequest	requests[REQUESTS_MAX];
	char	   *buffers[REQUESTS_MAX];
	bool		refused[REQUESTS_MAX];
	Script		script;
	PsConn		conn;
	PsTarget	target;
	Writer		writer;
	pthread_t	thread;
	int			sv[2];
	int			n;
	bool		mutated;
	bool		hello_refused;
	PsResult	rc;

	rng = seed * 0x9E3779B97F4A7C15ull + 1;
	script.bytes = malloc(SCRIPT_BYTES_MAX);
	if (script.bytes == NULL)
		fail("out of memory", seed);
	script.len = 0;
	n = 1 + (int) below(REQUESTS_MAX);
	for (int i = 0; i < n; i++)
	{
		PsRequest  *r = &requests[i];
		uint32_t	count;

		memset(r, 0, sizeof(*r));
		r->kind = (uint8_t) (PS_KIND_GET_PAGE + below(5));
		r->request_lsn = PS_LSN_LATEST;
		r->rel.spc_oid = 1663;
		r->rel.db_oid = 5;
		r->rel.rel_number = 1259;
		r->count = r->kind == PS_KIND_GET_PAGES ? 1 + below(PAGES_PER_REQUEST_MAX) : 1;
		count = r->count;
		/* Exactly the pages asked for: ASan sees any write past them. */
		buffers[i] = malloc((size_t) count * PS_PAGE_BYTES);
		if (buffers[i] == NULL)
			fail("out of memory", seed);
		r->pages = buffers[i];
		refused[i] = below(6) == 0;
	}
	hello_refused = below(10) == 0;
	if (hello_refused)
		error_frame(&script, 0, PS_ERR_UNKNOWN_TENANT, 0x01, 1);
	else
		hello_ok(&script);
	for (int i = 0; i < n; i++)
	{
		if (refused[i])
			error_frame(&script, (uint64_t) i + 1, PS_ERR_NOT_FOUND, requests[i].kind, 0);
		else
			answer(&script, &requests[i], (uint64_t) i + 1);
	}
	mutated = below(2) == 0;
	if (mutated)
		mutate(&script);

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		fail("socketpair", seed);
	writer.fd = sv[1];
	writer.script = &script;
	if (pthread_create(&thread, NULL, write_script, &writer) != 0)
		fail("pthread_create", seed);

	ps_init(&conn);
	memset(&target, 0, sizeof(target));
	target.shard_count = 1;
	target.stripe_blocks = 2048;
	target.token = "";
	rc = ps_handshake(&conn, sv[0], &target, 2000);
	if (rc == PS_REFUSED)
	{
		if (!mutated && !(hello_refused && conn.refusal.code == PS_ERR_UNKNOWN_TENANT))
			fail("an unmutated Hello refused wrongly", seed);
		if (ps_error_name(conn.refusal.code) == NULL || conn.fd >= 0)
			fail("a refused Hello left open or unnamed", seed);
	}
	else if (rc != PS_OK)
	{
		check_message(&conn, seed);
		if (!mutated)
			fail(conn.errmsg, seed);
	}
	else if (hello_refused && !mutated)
		fail("a scripted refusal was accepted", seed);
	else
	{
		int			sent = 0;
		int			received = 0;

		while (received < n && conn.fd >= 0)
		{
			PsAnswer	a;

			while (sent < n && ps_pending(&conn) < conn.depth_max)
			{
				rc = ps_send(&conn, &requests[sent], NULL);
				if (rc != PS_OK)
					break;
				sent++;
			}
			if (ps_pending(&conn) == 0)
			{
				check_message(&conn, seed);
				if (!mutated)
					fail(conn.errmsg, seed);
				break;
			}
			rc = ps_receive(&conn, &a);
			if (rc == PS_BROKEN || rc == PS_INVALID)
			{
				check_message(&conn, seed);
				if (!mutated)
					fail(conn.errmsg, seed);
				break;
			}
			if (!mutated)
			{
				uint64_t	id = (uint64_t) received + 1;
				const PsRequest *r = &requests[received];

				if ((rc == PS_REFUSED) != refused[received])
					fail("an answer and an Error confused", seed);
				if (rc == PS_REFUSED && conn.refusal.code != PS_ERR_NOT_FOUND)
					fail("the wrong error code", seed);
				if (rc == PS_OK &&
					(a.request_id != id || a.lsn != 0x1000 + id ||
					 (r->kind == PS_KIND_NBLOCKS && a.nblocks != id * 7) ||
					 (r->kind == PS_KIND_EXISTS && a.exists != (id & 1)) ||
					 (r->kind == PS_KIND_DB_SIZE && a.size_bytes != id * 8192) ||
					 ((r->kind == PS_KIND_GET_PAGE || r->kind == PS_KIND_GET_PAGES) &&
					  ((uint8_t) r->pages[r->count * PS_PAGE_BYTES - 1] != (uint8_t) id ||
					   (uint8_t) r->pages[0] != (uint8_t) id))))
					fail("an answer decoded wrongly", seed);
			}
			received++;
		}
	}
	ps_close(&conn);
	if (pthread_join(thread, NULL) != 0)
		fail("pthread_join", seed);
	(void) close(sv[1]);
	for (int i = 0; i < n; i++)
		free(buffers[i]);
	free(script.bytes);
}

int
main(int argc, char **argv)
{
	long		iterations = argc > 1 ? strtol(argv[1], NULL, 10) : 20000;
	uint64_t	first = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;

	for (long i = 0; i < iterations; i++)
		one(first + (uint64_t) i);
	printf("pagestream_fuzz: %ld conversations from seed %llu, no failure\n",
		   iterations, (unsigned long long) first);
	return 0;
}
