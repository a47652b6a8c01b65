/*-------------------------------------------------------------------------
 *
 * quire_walredo_probe.c
 *	  The smallest library "postgres --wal-redo" can hand control to.
 *
 * It proves the --wal-redo entry of Quire's core patch: the entry loads this
 * library and calls WalRedoMain(), which reports on stdout what it received
 * and the state of the standalone process it runs in (no postmaster, no data
 * directory, GUCs initialised), then exits with status 0.  The real redo
 * service replaces it behind the same entry.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

extern PGDLLEXPORT void WalRedoMain(int argc, char *argv[]);

void
WalRedoMain(int argc, char *argv[])
{
	printf("wal-redo probe: argc=%d", argc);
	for (int i = 1; i < argc; i++)
		printf(" argv[%d]=%s", i, argv[i]);
	printf(" under_postmaster=%s data_dir=%s block_size=%s\n",
		   IsUnderPostmaster ? "yes" : "no",
		   DataDir ? DataDir : "none",
		   GetConfigOption("block_size", false, false));
	fflush(stdout);
	proc_exit(0);
}
