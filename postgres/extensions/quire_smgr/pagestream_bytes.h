/*-------------------------------------------------------------------------
 *
 * pagestream_bytes.h
 *	  The page protocol's byte-level helpers, shared by pagestream.c: the
 *	  spec's error and kind names, little-endian fields, and the checks on
 *	  an Error frame's contents (its UTF-8 message, its details).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAGESTREAM_BYTES_H
#define PAGESTREAM_BYTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

extern const char *kind_name(uint8_t kind);
extern void put_u16(uint8_t *p, uint16_t v);
extern void put_u32(uint8_t *p, uint32_t v);
extern void put_u64(uint8_t *p, uint64_t v);
extern uint16_t get_u16(const uint8_t *p);
extern uint32_t get_u32(const uint8_t *p);
extern uint64_t get_u64(const uint8_t *p);
extern bool all_zero(const uint8_t *p, size_t n);
extern bool is_utf8(const uint8_t *s, size_t len);
extern bool details_valid(uint16_t code, uint64_t d1, uint64_t d2);

#endif							/* PAGESTREAM_BYTES_H */
