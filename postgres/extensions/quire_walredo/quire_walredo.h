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

#endif							/* QUIRE_WALREDO_H */
