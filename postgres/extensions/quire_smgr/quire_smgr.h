/*-------------------------------------------------------------------------
 *
 * quire_smgr.h
 *	  What quire_smgr's modules share: the storage-manager choice
 *	  (smgr.c) and the refusal of commands that bypass the storage manager
 *	  (refusals.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef QUIRE_SMGR_H
#define QUIRE_SMGR_H

#include "storage/smgr.h"

/* smgr_hook: ours for permanent relations, md.c (NULL) for the rest. */
extern const f_smgr *quire_choose_smgr(RelFileLocatorBackend rlocator, char relpersistence);

/* Installs the ProcessUtility hook that refuses file-copying commands. */
extern void refusals_install(void);

#endif							/* QUIRE_SMGR_H */
