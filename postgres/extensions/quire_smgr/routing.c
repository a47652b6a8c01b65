/*-------------------------------------------------------------------------
 *
 * routing.c
 *	  Where quire_smgr's requests go: the settings' ids and addresses, and
 *	  the shard that owns a relation block.
 *
 * Pure functions over the settings' text; remote.c opens the connections.
 * A block goes to shard (crc32c(spcOid, dbOid, relNumber as little-endian
 * u32s) + block / stripe) % count, the pageserver's rule
 * (postgres/src/key.rs); every other request goes to shard 0.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "port/pg_crc32c.h"

#include "remote.h"

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

bool
remote_parse_id(const char *text, uint8_t *out)
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

/*
 * Splits one "host:port" (or "[v6]:port") of len bytes into its parts, in
 * palloc'd memory (with host NULL, only checks the form).
 */
static bool
split_address(const char *address, size_t len, char **host, char **port)
{
	const char *colon = NULL;
	size_t		host_len;

	for (size_t i = 0; i < len; i++)
		if (address[i] == ':')
			colon = address + i;
	if (colon == NULL || colon == address || (size_t) (colon - address) + 1 >= len)
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
	*port = pnstrdup(colon + 1, len - host_len - 1);
	return true;
}

/*
 * The index-th address of a comma list (the only one when the list has
 * one); false if there is no such address or it is malformed.
 */
bool
remote_nth_address(const char *list, uint32 index, char **host, char **port)
{
	uint32		n = 0;
	const char *start = list;
	const char *chosen = NULL;
	size_t		chosen_len = 0;

	for (const char *p = list;; p++)
	{
		if (*p == ',' || *p == '\0')
		{
			if (n == index || (n == 0 && chosen == NULL))
			{
				chosen = start;
				chosen_len = p - start;
			}
			n++;
			if (*p == '\0')
				break;
			start = p + 1;
		}
	}
	if (n != 1 && index >= n)
		return false;
	return split_address(chosen, chosen_len, host, port);
}

bool
remote_check_addresses(const char *value)
{
	const char *start = value;

	for (const char *p = value;; p++)
	{
		if (*p == ',' || *p == '\0')
		{
			if (!split_address(start, p - start, NULL, NULL))
				return false;
			if (*p == '\0')
				return true;
			start = p + 1;
		}
	}
}

uint32
remote_shard_of(RelFileLocator loc, BlockNumber block)
{
	uint8		identity[12];
	pg_crc32c	crc;
	uint32		count = (uint32) quire_shard_count_setting;
	uint32		stripe = (uint32) Max(quire_stripe_blocks_setting, 1);
	uint32		parts[3] = {loc.spcOid, loc.dbOid, loc.relNumber};

	if (count <= 1)
		return 0;
	/* The pageserver's rule (postgres/src/key.rs): CRC-32C of the ids, little-endian. */
	for (int i = 0; i < 3; i++)
	{
		identity[4 * i] = (uint8) (parts[i] & 0xFF);
		identity[4 * i + 1] = (uint8) ((parts[i] >> 8) & 0xFF);
		identity[4 * i + 2] = (uint8) ((parts[i] >> 16) & 0xFF);
		identity[4 * i + 3] = (uint8) ((parts[i] >> 24) & 0xFF);
	}
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, identity, sizeof(identity));
	FIN_CRC32C(crc);
	return (uint32) ((crc + block / stripe) % count);
}

