\echo Use "CREATE EXTENSION quire_smgr" to load this file. \quit

-- Probes of the page protocol, each one request over the backend's
-- connection to quire.pageserver (tenant quire.tenant, timeline
-- quire.timeline). A NULL lsn reads the latest version. Relations are named
-- as on disk: tablespace, database (0 for shared), relfilenode, fork
-- (0 main, 1 fsm, 2 vm, 3 init). Superuser only: they read any page.

CREATE FUNCTION quire_getpage(spc oid, db oid, rel oid, fork int, block bigint,
                              lsn pg_lsn DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'quire_getpage'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- count pages from block first, as one bytea (GetPages requests, pipelined).
CREATE FUNCTION quire_getpages(spc oid, db oid, rel oid, fork int, first bigint,
                               count int, lsn pg_lsn DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'quire_getpages'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION quire_nblocks(spc oid, db oid, rel oid, fork int,
                              lsn pg_lsn DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'quire_nblocks'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION quire_exists(spc oid, db oid, rel oid, fork int,
                             lsn pg_lsn DEFAULT NULL)
RETURNS bool
AS 'MODULE_PATHNAME', 'quire_exists'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION quire_dbsize(db oid, lsn pg_lsn DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'quire_dbsize'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION quire_getpage(oid, oid, oid, int, bigint, pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION quire_getpages(oid, oid, oid, int, bigint, int, pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION quire_nblocks(oid, oid, oid, int, pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION quire_exists(oid, oid, oid, int, pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION quire_dbsize(oid, pg_lsn) FROM PUBLIC;

-- What the storage manager did since start (or the last reset): counters
-- and the sizes of its shared caches. Needs quire_smgr preloaded.
CREATE FUNCTION quire_smgr_stats(OUT name text, OUT value bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'quire_smgr_stats'
LANGUAGE C VOLATILE PARALLEL SAFE;

-- The read requests' latency (send to answer), in microseconds: every
-- non-empty bucket with its upper bound.
CREATE FUNCTION quire_getpage_histogram(OUT le_us bigint, OUT count bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'quire_getpage_histogram'
LANGUAGE C VOLATILE PARALLEL SAFE;

-- The same as percentiles (bucket upper bounds, at most 12.5% high).
CREATE FUNCTION quire_getpage_latency(OUT requests bigint, OUT p50_us float8,
                                      OUT p90_us float8, OUT p99_us float8,
                                      OUT max_us float8, OUT mean_us float8)
RETURNS record
AS 'MODULE_PATHNAME', 'quire_getpage_latency'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION quire_smgr_reset_stats()
RETURNS void
AS 'MODULE_PATHNAME', 'quire_smgr_reset_stats'
LANGUAGE C VOLATILE PARALLEL SAFE;

REVOKE ALL ON FUNCTION quire_smgr_reset_stats() FROM PUBLIC;
