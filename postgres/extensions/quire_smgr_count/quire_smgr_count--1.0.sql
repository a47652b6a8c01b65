\echo Use "CREATE EXTENSION quire_smgr_count" to load this file. \quit

-- Calls of each storage-manager callback since the server started, across
-- all processes. The "*_blocks" rows count blocks rather than calls, and the
-- "chosen_*" rows count the hook's choices by relation persistence.
CREATE FUNCTION quire_smgr_count(OUT callback text, OUT calls bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'quire_smgr_count'
LANGUAGE C STRICT VOLATILE;
