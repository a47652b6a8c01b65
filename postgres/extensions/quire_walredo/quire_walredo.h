/*-------------------------------------------------------------------------
 *
 * quire_walredo.h
 *	  Shared declarations of Quire's page-redo service.
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUIRE_WALREDO_H
#define QUIRE_WALREDO_H

#include "storage/relfilelocator.h"
#include "storage/smgr.h"

/* The page being rebuilt: the only page redo may touch. */
typedef struct RedoTarget
{
	RelFileLocator rlocator;
	ForkNumber	forknum;
	BlockNumber blkno;
	bool		valid;
} RedoTarget;

extern RedoTarget redo_target;

/* inmem_smgr.c: a storage manager that keeps a handful of pages in memory. */
extern const f_smgr inmem_smgr;
extern void inmem_reset(void);
extern void inmem_put_page(RelFileLocator rlocator, ForkNumber forknum,
						   BlockNumber blkno, const char *page);

/* redo_sandbox.c: closes inherited descriptors and enters seccomp. */
extern void redo_enter_sandbox(void);

/* The calls the `X` request can probe (docs/redo-protocol.md). */
#define SANDBOX_PROBE_OPEN 'o'
#define SANDBOX_PROBE_KILL 'k'
#define SANDBOX_PROBE_MMAP 'm'
#define SANDBOX_PROBE_MPROTECT 'p'
extern int	redo_sandbox_probe(char what, uint32 arg);

#endif							/* QUIRE_WALREDO_H */
