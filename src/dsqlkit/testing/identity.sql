-- DSQL's server identity inside the backend, so every way of asking agrees: version(),
-- current_setting() and pg_settings report 16.15 ("PostgreSQL 16" for version(), as a real
-- cluster answers). Built-in functions are replaced by inlinable SQL functions (the planner
-- inlines them; fmgr would otherwise find the built-in by its OID). Applied with the DSQL rules.
SET allow_system_table_mods = on;
CREATE FUNCTION dsqlkit_internal.show_setting(text) RETURNS text
  LANGUAGE internal STABLE STRICT PARALLEL SAFE AS 'show_config_by_name';
CREATE FUNCTION dsqlkit_internal.show_setting(text, boolean) RETURNS text
  LANGUAGE internal STABLE STRICT PARALLEL SAFE AS 'show_config_by_name_missing_ok';
CREATE FUNCTION dsqlkit_internal.dsql_setting(name text, value text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE lower(name) WHEN 'server_version' THEN '16.15'
                          WHEN 'server_version_num' THEN '160015' ELSE value END $$;
CREATE OR REPLACE FUNCTION pg_catalog.version() RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT 'PostgreSQL 16'::text $$;
CREATE OR REPLACE FUNCTION pg_catalog.current_setting(text) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT dsqlkit_internal.dsql_setting($1, dsqlkit_internal.show_setting($1)) $$;
CREATE OR REPLACE FUNCTION pg_catalog.current_setting(text, boolean) RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT dsqlkit_internal.dsql_setting($1, dsqlkit_internal.show_setting($1, $2)) $$;
CREATE OR REPLACE VIEW pg_catalog.pg_settings AS
  SELECT a.name, dsqlkit_internal.dsql_setting(a.name, a.setting) AS setting, a.unit, a.category,
         a.short_desc, a.extra_desc, a.context, a.vartype, a.source, a.min_val, a.max_val,
         a.enumvals, dsqlkit_internal.dsql_setting(a.name, a.boot_val) AS boot_val,
         dsqlkit_internal.dsql_setting(a.name, a.reset_val) AS reset_val,
         a.sourcefile, a.sourceline, a.pending_restart
    FROM pg_show_all_settings() a(name, setting, unit, category, short_desc, extra_desc, context,
         vartype, source, min_val, max_val, enumvals, boot_val, reset_val, sourcefile, sourceline,
         pending_restart);
-- Built-in functions that PostgreSQL 16 (and so DSQL) does not have: added in 17 and 18, kept
-- out of reach by renaming them, so calling one fails as on DSQL (42883, "function uuidv7()
-- does not exist"). Only new signatures: overloads PostgreSQL 16 has (random(), reverse(text))
-- stay, and functions 18 merely extended with a defaulted argument (json_strip_nulls) stay.
DO $$
DECLARE
  signature text;
BEGIN
  FOREACH signature IN ARRAY ARRAY[
    -- PostgreSQL 17
    'random(integer, integer)', 'random(bigint, bigint)', 'random(numeric, numeric)',
    'to_bin(integer)', 'to_bin(bigint)', 'to_oct(integer)', 'to_oct(bigint)',
    'uuid_extract_timestamp(uuid)', 'uuid_extract_version(uuid)', 'unicode_assigned(text)',
    'xmltext(text)', 'pg_basetype(regtype)', 'to_regtypemod(text)',
    -- PostgreSQL 18
    'uuidv7()', 'uuidv7(interval)', 'uuidv4()', 'casefold(text)', 'array_sort(anyarray)',
    'array_sort(anyarray, boolean)', 'array_sort(anyarray, boolean, boolean)',
    'array_reverse(anyarray)', 'crc32(bytea)', 'crc32c(bytea)', 'gamma(double precision)',
    'lgamma(double precision)', 'reverse(bytea)']
  LOOP
    IF to_regprocedure('pg_catalog.' || signature) IS NOT NULL THEN
      EXECUTE format('ALTER FUNCTION pg_catalog.%s RENAME TO %I', signature,
                     'dsqlkit_after_pg16_' || split_part(signature, '(', 1));
    END IF;
  END LOOP;
END $$;
RESET allow_system_table_mods;
