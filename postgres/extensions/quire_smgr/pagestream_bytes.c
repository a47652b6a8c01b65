/*-------------------------------------------------------------------------
 *
 * pagestream_bytes.c
 *	  The page protocol's byte-level helpers (pagestream_bytes.h): names,
 *	  little-endian fields, and the checks on an Error frame's contents.
 *	  Plain libc, like pagestream.c.
 *
 *-------------------------------------------------------------------------
 */
#include "pagestream.h"
#include "pagestream_bytes.h"

/* The spec's error names, by code. */
static const char *const error_names[] = {
	NULL, "BadRequest", "UnsupportedVersion", "Unauthenticated", "Forbidden",
	"UnknownTenant", "UnknownTimeline", "ShardNotHere", "WrongShard",
	"NotFound", "LsnBelowGcCutoff", "WalNotIngested", "Corrupt",
	"RedoFailed", "Overloaded", "ShuttingDown", "Internal",
};

const char *
ps_error_name(uint16_t code)
{
	if (code >= sizeof(error_names) / sizeof(error_names[0]))
		return NULL;
	return error_names[code];
}

const char *
kind_name(uint8_t kind)
{
	switch (kind)
	{
		case PS_KIND_HELLO:
			return "Hello";
		case PS_KIND_GET_PAGE:
			return "GetPage";
		case PS_KIND_GET_PAGES:
			return "GetPages";
		case PS_KIND_NBLOCKS:
			return "Nblocks";
		case PS_KIND_EXISTS:
			return "Exists";
		case PS_KIND_DB_SIZE:
			return "DbSize";
		default:
			return "unknown";
	}
}

/* Little-endian stores and loads: the wire order, whatever the host's. */
void
put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t) v;
	p[1] = (uint8_t) (v >> 8);
}

void
put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t) (v >> (8 * i));
}

void
put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t) (v >> (8 * i));
}

uint16_t
get_u16(const uint8_t *p)
{
	return (uint16_t) (p[0] | (p[1] << 8));
}

uint32_t
get_u32(const uint8_t *p)
{
	uint32_t	v = 0;

	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

uint64_t
get_u64(const uint8_t *p)
{
	uint64_t	v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

bool
all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != 0)
			return false;
	return true;
}

/*
 * Whether buf[0..len) is UTF-8 (no overlong forms, no surrogates, nothing
 * above U+10FFFF), as the spec requires of an error message.
 */
bool
is_utf8(const uint8_t *s, size_t len)
{
	size_t		i = 0;

	while (i < len)
	{
		uint8_t		c = s[i];
		size_t		n;
		uint32_t	cp;
		uint32_t	min;

		if (c < 0x80)
		{
			i++;
			continue;
		}
		if ((c & 0xE0) == 0xC0)
		{
			n = 2;
			cp = c & 0x1F;
			min = 0x80;
		}
		else if ((c & 0xF0) == 0xE0)
		{
			n = 3;
			cp = c & 0x0F;
			min = 0x800;
		}
		else if ((c & 0xF8) == 0xF0)
		{
			n = 4;
			cp = c & 0x07;
			min = 0x10000;
		}
		else
			return false;
		if (len - i < n)
			return false;
		for (size_t k = 1; k < n; k++)
		{
			if ((s[i + k] & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += n;
	}
	return true;
}

/* Whether an error code's details are the ones its row defines. */
bool
details_valid(uint16_t code, uint64_t d1, uint64_t d2)
{
	switch (code)
	{
		case PS_ERR_UNSUPPORTED_VERSION:
			return d1 <= UINT16_MAX && d2 <= UINT16_MAX;
		case PS_ERR_WRONG_SHARD:
			return d1 <= UINT32_MAX && d2 <= UINT32_MAX;
		case PS_ERR_LSN_BELOW_GC_CUTOFF:
		case PS_ERR_WAL_NOT_INGESTED:
			return true;
		case PS_ERR_OVERLOADED:
			return d1 <= UINT32_MAX && d2 == 0;
		default:
			return d1 == 0 && d2 == 0;
	}
}

