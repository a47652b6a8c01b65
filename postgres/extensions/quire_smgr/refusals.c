/*-------------------------------------------------------------------------
 *
 * refusals.c
 *	  Refuses the commands that copy relation files behind the storage
 *	  manager's back (CREATE DATABASE ... STRATEGY file_copy, ALTER
 *	  DATABASE ... SET TABLESPACE), and DROP TABLESPACE.
 *
 * Both copy a database's files directory by directory (copydir), so on a
 * compute whose relations live on the pageserver they would copy nothing,
 * and the WAL they write names no page.  They are refused with a clear
 * error before they start; CREATE DATABASE's default strategy, wal_log,
 * goes through shared buffers and works.
 *
 * A tablespace's permanent relations live on the pageserver like any
 * other, so CREATE TABLESPACE works; but DROP TABLESPACE decides that a
 * tablespace is empty by looking at its local directory, which on a
 * compute is always empty, and would drop it with relations still in it.
 * So DROP TABLESPACE is refused.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/defrem.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"

#include "quire_smgr.h"

static ProcessUtility_hook_type previous_utility_hook = NULL;

static bool
has_option(List *options, const char *name)
{
	ListCell   *cell;

	foreach(cell, options)
	{
		DefElem    *option = lfirst_node(DefElem, cell);

		if (strcmp(option->defname, name) == 0)
			return true;
	}
	return false;
}

static bool
asks_file_copy(List *options)
{
	ListCell   *cell;

	foreach(cell, options)
	{
		DefElem    *option = lfirst_node(DefElem, cell);

		if (strcmp(option->defname, "strategy") == 0 && option->arg != NULL &&
			pg_strcasecmp(defGetString(option), "file_copy") == 0)
			return true;
	}
	return false;
}

static void
refuse_file_copies(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				   ProcessUtilityContext context, ParamListInfo params,
				   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *statement = pstmt->utilityStmt;

	if (IsA(statement, CreatedbStmt) && asks_file_copy(((CreatedbStmt *) statement)->options))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("CREATE DATABASE ... STRATEGY file_copy is not supported on a Quire compute"),
				 errdetail("It copies files directly, but this compute's relations live on the pageserver."),
				 errhint("Use STRATEGY wal_log (the default).")));
	if (IsA(statement, AlterDatabaseStmt) &&
		has_option(((AlterDatabaseStmt *) statement)->options, "tablespace"))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("ALTER DATABASE ... SET TABLESPACE is not supported on a Quire compute"),
				 errdetail("It copies files directly, but this compute's relations live on the pageserver.")));
	if (IsA(statement, DropTableSpaceStmt))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("DROP TABLESPACE is not supported on a Quire compute"),
				 errdetail("Postgres tells an empty tablespace by its local directory, but this compute's relations live on the pageserver.")));
	if (previous_utility_hook)
		previous_utility_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

void
refusals_install(void)
{
	previous_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = refuse_file_copies;
}
